//! The container attempt, wired for real, against a Docker endpoint that does not exist: the
//! lookup must come back (not hang, not panic) with every attempt in its message.
//!
//! The only test in this binary, because it sets `DOCKER_HOST` for the whole process.

use es_test_services::{Lookup, Service};

#[test]
fn without_a_docker_engine_the_lookup_fails_saying_what_it_tried() {
    // testcontainers takes its Docker endpoint from DOCKER_HOST before any default socket.
    std::env::set_var(
        "DOCKER_HOST",
        "unix:///nonexistent/es-test-services/docker.sock",
    );
    let silent = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    for service in Service::ALL {
        // The service's own local URL, moved to a port nothing listens on.
        let local = service
            .local_url()
            .replace(&format!(":{}", service.port()), &format!(":{silent}"));
        let error = Lookup::new(service)
            .with_env(None)
            .with_local_url(local.clone())
            .run()
            .expect_err("no server and no Docker engine");
        let message = error.to_string();
        eprintln!("{message}\n");
        assert_eq!(error.attempts.len(), 3, "{message}");
        assert!(
            error.attempts[0] == format!("{} is not set", service.env_var()),
            "{message}"
        );
        assert!(
            error.attempts[1].starts_with(&format!("nothing answers at {local}")),
            "{message}"
        );
        assert!(
            error.attempts[2].starts_with("no container could be started: ")
                && error.attempts[2].contains("/nonexistent/es-test-services/docker.sock"),
            "the Docker client's own error is kept: {message}"
        );
        assert!(
            message.contains(&format!("set {} to a server's URL", service.env_var())),
            "{message}"
        );
    }
}
