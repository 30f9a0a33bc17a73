//! The operating system's stop signals. The signal shared by servers and background tasks is a
//! `tokio_util::sync::CancellationToken`.

use std::future::Future;

/// Completes on ctrl-c or SIGTERM.
///
/// The handlers are installed when this is called (inside the runtime), not when the future is
/// first polled: a signal that arrives while the services start, before anything waits for
/// it, still stops them gracefully instead of killing the process.
pub fn os_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        match signals {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {},
                    _ = interrupt.recv() => {},
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "cannot listen for SIGTERM or ctrl-c");
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    }
}
