//! The [`Aggregate`]: a pure decision function and a fold.

use crate::event::DomainEvent;

/// A consistency boundary: decides events from commands and folds events into state.
///
/// `handle` and `apply` do no I/O. Anything a decision needs from outside (a price, the time,
/// a check against another service) is looked up by the caller and passed in the command.
/// The state starts as [`Default`] and is rebuilt by applying the stream's events in order.
///
/// ```
/// use es_core::{Aggregate, DomainEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Default)]
/// struct Counter { value: u64 }
///
/// enum CounterCommand { Add(u64) }
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// enum CounterEvent { Added { by: u64 } }
/// impl DomainEvent for CounterEvent {}
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("cannot add zero")]
/// struct AddZero;
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "counter";
///     type Command = CounterCommand;
///     type Event = CounterEvent;
///     type Error = AddZero;
///
///     fn handle(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, AddZero> {
///         match command {
///             CounterCommand::Add(0) => Err(AddZero),
///             CounterCommand::Add(by) => Ok(vec![CounterEvent::Added { by }]),
///         }
///     }
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Added { by } => self.value += by }
///     }
/// }
/// ```
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The stream category of this aggregate: its streams are `{TYPE}-{id}`.
    ///
    /// Renaming this orphans the stored events (they stay under the old name).
    const TYPE: &'static str;

    /// Version of the snapshot format; raise it when the state's shape changes and stored
    /// snapshots are then ignored (the state is rebuilt from events).
    const SNAPSHOT_VERSION: u32 = 1;

    /// What can be asked of the aggregate.
    type Command: Send;

    /// What the aggregate records.
    type Event: DomainEvent;

    /// Why a command is refused (a domain error, shown to the caller).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides: the events that `command` produces from the current state, or why not.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves: the state after `event`. Must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);
}
