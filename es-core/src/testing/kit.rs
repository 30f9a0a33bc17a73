use std::fmt;

use chrono::Utc;
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::event::{DomainEvent, Envelope, Metadata};
use crate::saga::{Saga, SagaDecision};
use crate::stream::{Position, StreamId};

/// Given events, when a command, then events or an error: a test of an aggregate's decisions.
///
/// ```
/// # use es_core::{Aggregate, DomainEvent};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Default)] struct Light { on: bool }
/// # #[derive(Debug)] enum Switch { On, Off }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] enum LightEvent { TurnedOn, TurnedOff }
/// # impl DomainEvent for LightEvent {}
/// # #[derive(Debug, PartialEq, thiserror::Error)] #[error("already so")] struct AlreadySo;
/// # impl Aggregate for Light {
/// #     const TYPE: &'static str = "light";
/// #     type Command = Switch; type Event = LightEvent; type Error = AlreadySo;
/// #     fn handle(&self, c: Switch) -> Result<Vec<LightEvent>, AlreadySo> {
/// #         match (c, self.on) {
/// #             (Switch::On, false) => Ok(vec![LightEvent::TurnedOn]),
/// #             (Switch::Off, true) => Ok(vec![LightEvent::TurnedOff]),
/// #             _ => Err(AlreadySo),
/// #         }
/// #     }
/// #     fn apply(&mut self, e: &LightEvent) { self.on = matches!(e, LightEvent::TurnedOn) }
/// # }
/// use es_core::testing::AggregateTest;
///
/// AggregateTest::<Light>::given_no_events()
///     .when(Switch::On)
///     .then_expect_events(vec![LightEvent::TurnedOn]);
///
/// AggregateTest::<Light>::given(vec![LightEvent::TurnedOn])
///     .when(Switch::On)
///     .then_expect_error(AlreadySo);
/// ```
#[derive(Debug)]
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

/// The outcome of [`AggregateTest::when`], to assert on.
#[derive(Debug)]
pub struct AggregateOutcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// A new aggregate.
    pub fn given_no_events() -> Self {
        AggregateTest {
            state: A::default(),
        }
    }

    /// The aggregate after `events`.
    pub fn given(events: Vec<A::Event>) -> Self {
        let mut state = A::default();
        for event in &events {
            state.apply(event);
        }
        AggregateTest { state }
    }

    /// Lets the aggregate decide `command`.
    pub fn when(self, command: A::Command) -> AggregateOutcome<A> {
        let result = self.state.handle(command);
        AggregateOutcome {
            state: self.state,
            result,
        }
    }
}

impl<A: Aggregate> AggregateOutcome<A>
where
    A::Event: PartialEq + fmt::Debug,
    A::Error: fmt::Debug,
{
    /// Asserts the command decided exactly `expected`.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> A {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command decided other events");
                let mut state = self.state;
                for event in &events {
                    state.apply(event);
                }
                // Decided events must survive the store's codec.
                for event in &events {
                    let (ty, payload) = event.encode().expect("decided events serialize");
                    let back = A::Event::decode(&ty, A::Event::schema_version(&ty), &payload)
                        .expect("decided events decode");
                    assert_eq!(&back, event, "an event changed through its codec");
                }
                state
            }
            Err(error) => panic!("expected events {expected:?}, the command failed: {error:?}"),
        }
    }

    /// Asserts the command failed with `expected`.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, the command decided {events:?}"),
            Err(error) => assert_eq!(error, expected, "the command failed otherwise"),
        }
    }

    /// Asserts the command failed with an error that `check` accepts.
    #[track_caller]
    pub fn then_expect_error_matching(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Ok(events) => panic!("expected an error, the command decided {events:?}"),
            Err(error) => assert!(check(&error), "unexpected error: {error:?}"),
        }
    }
}

/// Wraps a domain event in an envelope with fresh ids and the given metadata, for tests of
/// sagas and projections.
pub fn envelope<E>(stream_id: &str, version: u64, event: E, metadata: Metadata) -> Envelope<E> {
    Envelope {
        event,
        event_id: Uuid::now_v7(),
        stream_id: StreamId::new(stream_id).expect("a valid stream id"),
        stream_version: version,
        position: Position::new(version, version),
        recorded_at: Utc::now(),
        metadata,
    }
}

/// Given events, when an event or a deadline, then commands and deadlines: a test of a saga.
#[derive(Debug)]
pub struct SagaTest<S: Saga> {
    saga: S,
    config: S::Config,
}

impl<S: Saga> SagaTest<S>
where
    S::Config: fmt::Debug,
    S: fmt::Debug,
{
    /// A new saga instance with `config`.
    pub fn new(config: S::Config) -> Self {
        SagaTest {
            saga: S::default(),
            config,
        }
    }

    /// The saga after handling `events` (their decisions are dropped).
    pub fn given(mut self, events: Vec<Envelope<S::Event>>) -> Self {
        for event in &events {
            let _ = self.saga.handle(&self.config, event);
        }
        self
    }

    /// Hands the saga `event` and returns its decision and new state.
    pub fn when(mut self, event: Envelope<S::Event>) -> (SagaDecision<S::Command, S::Deadline>, S) {
        let decision = self.saga.handle(&self.config, &event);
        (decision, self.saga)
    }

    /// Hands the saga a due `deadline` and returns its decision and new state.
    pub fn when_deadline(
        mut self,
        deadline: S::Deadline,
    ) -> (SagaDecision<S::Command, S::Deadline>, S) {
        let decision = self.saga.on_deadline(&self.config, deadline);
        (decision, self.saga)
    }
}
