//! The saga runner under faults and load: a command's failure keeps its kind through the bus,
//! a failing deadline is parked without stopping the others, and sagas sharing a store do not
//! starve each other's deadlines.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use es_core::bus::RetryPolicy;
use es_core::memory::{MemoryEventBus, MemoryEventStore};
use es_core::saga::SagaOutcome;
use es_core::{
    CommandContext, CommandDispatcher, CommandError, Consumer, DeadLetterQueue, DispatchError,
    DomainEvent, Envelope, Error, EventBus, EventStore, ExpectedVersion, HandlerError,
    MessageHandler, Metadata, NewEvent, RecordedEvent, Saga, SagaDecision, SagaRunner, SagaStore,
    StreamId,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Flow {
    Placed { id: String },
    Paid { id: String },
}
impl DomainEvent for Flow {}

fn id_of(flow: &Flow) -> &str {
    match flow {
        Flow::Placed { id } | Flow::Paid { id } => id,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Cmd {
    Confirm(String),
    Cancel(String),
}

fn target(cmd: &Cmd) -> &str {
    match cmd {
        Cmd::Confirm(id) | Cmd::Cancel(id) => id,
    }
}

/// A checkout: confirms on payment, cancels on its timeout. Generic over its name so that two
/// sagas can share one store.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkout<const B: bool>;

impl<const B: bool> Saga for Checkout<B> {
    const NAME: &'static str = if B { "checkout-b" } else { "checkout-a" };
    type Event = Flow;
    type Command = Cmd;
    type Deadline = String;
    type Config = chrono::Duration;

    fn instance_id(event: &Envelope<Flow>) -> Option<String> {
        Some(id_of(&event.event).to_owned())
    }

    fn handle(
        &mut self,
        timeout: &chrono::Duration,
        event: &Envelope<Flow>,
    ) -> SagaDecision<Cmd, String> {
        match &event.event {
            Flow::Placed { id } => SagaDecision::none().schedule_after(
                "timeout",
                event.recorded_at,
                *timeout,
                id.clone(),
            ),
            Flow::Paid { id } => SagaDecision::none()
                .send(Cmd::Confirm(id.clone()))
                .cancel("timeout")
                .complete(),
        }
    }

    fn on_deadline(&mut self, _: &chrono::Duration, id: String) -> SagaDecision<Cmd, String> {
        SagaDecision::none().send(Cmd::Cancel(id)).complete()
    }
}

type CheckoutA = Checkout<false>;
type CheckoutB = Checkout<true>;

/// How a dispatch of a command for one target fails.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `Error::Unavailable`, this many times, then success.
    Unavailable(usize),
    /// A store error that is not transient, always.
    Permanent,
    /// The aggregate refuses, always (through `CommandError::Rejected`).
    Refused,
}

#[derive(Debug, thiserror::Error)]
#[error("the order is already confirmed")]
struct AlreadyConfirmed;

/// Records what it carried out; fails as told for some targets.
#[derive(Default)]
struct Dispatcher {
    faults: Mutex<Vec<(String, Fault)>>,
    attempts: Mutex<Vec<Cmd>>,
    done: Mutex<Vec<Cmd>>,
}

impl Dispatcher {
    fn failing(target: &str, fault: Fault) -> Self {
        let dispatcher = Dispatcher::default();
        dispatcher.fail(target, fault);
        dispatcher
    }

    fn fail(&self, target: &str, fault: Fault) {
        self.faults.lock().unwrap().push((target.to_owned(), fault));
    }

    fn done(&self) -> Vec<Cmd> {
        self.done.lock().unwrap().clone()
    }

    fn attempts_for(&self, id: &str) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|c| target(c) == id)
            .count()
    }
}

#[es_core::async_trait]
impl CommandDispatcher<Cmd> for Dispatcher {
    async fn dispatch(&self, command: Cmd, _: CommandContext) -> Result<(), DispatchError> {
        self.attempts.lock().unwrap().push(command.clone());
        let fault = {
            let mut faults = self.faults.lock().unwrap();
            match faults.iter_mut().find(|(t, _)| t == target(&command)) {
                Some((_, Fault::Unavailable(0))) | None => None,
                Some((_, Fault::Unavailable(n))) => {
                    *n -= 1;
                    Some(Fault::Unavailable(1))
                }
                Some((_, fault)) => Some(*fault),
            }
        };
        match fault {
            None => {
                self.done.lock().unwrap().push(command);
                Ok(())
            }
            Some(Fault::Unavailable(_)) => {
                // As a repository reports a pool timeout: through `CommandError::Store`.
                let error: CommandError<AlreadyConfirmed> =
                    CommandError::Store(Error::unavailable("postgres", "pool timed out"));
                Err(error.into())
            }
            Some(Fault::Permanent) => Err(Error::backend("postgres", "permission denied").into()),
            Some(Fault::Refused) => {
                Err(CommandError::<AlreadyConfirmed>::Rejected(AlreadyConfirmed).into())
            }
        }
    }
}

async fn record(store: &MemoryEventStore, event: Flow) -> RecordedEvent {
    let stream = StreamId::for_aggregate("flow", id_of(&event)).unwrap();
    let appended = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::from_domain(&event, Metadata::new_correlation()).unwrap()],
        )
        .await
        .unwrap();
    store
        .read_stream(&stream, appended.next_expected_version, 1)
        .await
        .unwrap()
        .remove(0)
}

fn runner<S: Saga<Command = Cmd, Config = chrono::Duration>>(
    store: &MemoryEventStore,
    dispatcher: &Arc<Dispatcher>,
    timeout: chrono::Duration,
) -> SagaRunner<S> {
    SagaRunner::<S>::new(store.clone(), dispatcher.clone(), timeout)
}

#[tokio::test]
async fn a_transient_dispatch_failure_asks_the_bus_to_retry_and_a_permanent_one_to_reject() {
    let store = MemoryEventStore::new();
    let hour = chrono::Duration::hours(1);
    let cases = [
        ("o-down", Fault::Unavailable(1), true),
        ("o-broken", Fault::Permanent, false),
        ("o-refused", Fault::Refused, false),
    ];
    for (id, fault, transient) in cases {
        let dispatcher = Arc::new(Dispatcher::failing(id, fault));
        let saga = runner::<CheckoutA>(&store, &dispatcher, hour);
        saga.handle_event(&record(&store, Flow::Placed { id: id.into() }).await)
            .await
            .unwrap();
        let paid = record(&store, Flow::Paid { id: id.into() }).await;
        let handler: &dyn MessageHandler = &saga;
        let result = handler.handle(&paid).await;
        match (transient, &result) {
            (true, Err(HandlerError::Retry(_))) | (false, Err(HandlerError::Reject(_))) => {}
            _ => panic!("{id}: expected transient={transient}, got {result:?}"),
        }
        assert!(
            !store
                .has_handled(CheckoutA::NAME, paid.event_id)
                .await
                .unwrap(),
            "{id}: a failed dispatch records nothing"
        );
        if transient {
            assert!(handler.handle(&paid).await.is_ok(), "the retry succeeds");
            assert_eq!(dispatcher.done(), vec![Cmd::Confirm(id.into())]);
        }
    }
}

#[tokio::test]
async fn a_saga_event_whose_dispatch_fails_transiently_twice_is_retried_and_handled() {
    let store = MemoryEventStore::new();
    let bus = MemoryEventBus::new();
    let dispatcher = Arc::new(Dispatcher::failing("o1", Fault::Unavailable(2)));
    let saga = runner::<CheckoutA>(&store, &dispatcher, chrono::Duration::hours(1));
    let subscription = Consumer::new("checkout", ["flow.#"]).with_retry(RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
    });
    let consumer = bus.subscribe(subscription, Arc::new(saga)).await.unwrap();
    let placed = record(&store, Flow::Placed { id: "o1".into() }).await;
    let paid = record(&store, Flow::Paid { id: "o1".into() }).await;
    bus.publish(&[placed, paid.clone()]).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !store
        .has_handled(CheckoutA::NAME, paid.event_id)
        .await
        .unwrap()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the payment was never handled; dead letters: {:?}",
            bus.dead_letters("checkout", 10).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.stop().await;
    assert_eq!(
        dispatcher.attempts_for("o1"),
        3,
        "two failures, then success"
    );
    assert_eq!(dispatcher.done(), vec![Cmd::Confirm("o1".into())]);
    assert!(
        bus.dead_letters("checkout", 10).await.unwrap().is_empty(),
        "a transient failure is not dead-lettered"
    );
    assert!(
        store
            .deadlines_of(CheckoutA::NAME, "o1")
            .await
            .unwrap()
            .is_empty(),
        "the confirmed order's timeout is cancelled, so it can never cancel a paid order"
    );
}

#[tokio::test]
async fn a_deadline_whose_dispatch_keeps_failing_is_parked_and_the_others_fire() {
    let store = MemoryEventStore::new();
    let dispatcher = Arc::new(Dispatcher::failing("o-bad", Fault::Permanent));
    let saga = runner::<CheckoutA>(&store, &dispatcher, chrono::Duration::zero())
        .with_deadline_backoff(Duration::from_secs(10), Duration::from_secs(60));
    // The failing deadline sorts first: it is set first.
    for id in ["o-bad", "o1", "o2", "o3"] {
        saga.handle_event(&record(&store, Flow::Placed { id: id.into() }).await)
            .await
            .unwrap();
    }
    let now = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(saga.fire_due(now).await.unwrap(), 3, "the others fire");
    let mut done: Vec<_> = dispatcher
        .done()
        .iter()
        .map(|c| target(c).to_owned())
        .collect();
    done.sort();
    assert_eq!(done, ["o1", "o2", "o3"]);

    let parked = store.parked_deadlines(CheckoutA::NAME, 10).await.unwrap();
    assert_eq!(parked.len(), 1, "the failing deadline is kept: {parked:?}");
    assert_eq!(
        (parked[0].instance.as_str(), parked[0].attempts),
        ("o-bad", 1)
    );
    assert!(parked[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("permission denied")));
    let retry_at = parked[0].retry_at.expect("a next attempt");
    assert!(
        retry_at >= now + chrono::Duration::seconds(5)
            && retry_at <= now + chrono::Duration::seconds(10),
        "backoff between half and all of the first wait: {retry_at} after {now}"
    );

    // Until its next attempt it is skipped; then tried again, and the wait grows.
    assert_eq!(saga.fire_due(now).await.unwrap(), 0);
    assert_eq!(
        dispatcher.attempts_for("o-bad"),
        1,
        "skipped until its next attempt"
    );
    let later = retry_at + chrono::Duration::milliseconds(1);
    assert_eq!(saga.fire_due(later).await.unwrap(), 0);
    assert_eq!(dispatcher.attempts_for("o-bad"), 2);
    let parked = store.parked_deadlines(CheckoutA::NAME, 10).await.unwrap();
    assert_eq!(parked[0].attempts, 2);
    assert!(parked[0].retry_at.unwrap() >= later + chrono::Duration::seconds(10));

    // Once the fault is gone, the parked deadline fires like any other.
    dispatcher.faults.lock().unwrap().clear();
    let much_later = parked[0].retry_at.unwrap();
    assert_eq!(saga.fire_due(much_later).await.unwrap(), 1);
    assert!(store
        .parked_deadlines(CheckoutA::NAME, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(dispatcher.done().contains(&Cmd::Cancel("o-bad".into())));
}

#[tokio::test]
async fn a_deadline_refused_or_with_an_undecodable_payload_is_parked_too() {
    let store = MemoryEventStore::new();
    let dispatcher = Arc::new(Dispatcher::failing("o-refused", Fault::Refused));
    let saga = runner::<CheckoutA>(&store, &dispatcher, chrono::Duration::zero());
    for id in ["o-refused", "o-ok"] {
        saga.handle_event(&record(&store, Flow::Placed { id: id.into() }).await)
            .await
            .unwrap();
    }
    // A deadline no version of the saga can read.
    let mut garbage = es_core::saga::SagaChange {
        saga: CheckoutA::NAME.into(),
        instance: "o-garbage".into(),
        expected_version: 0,
        state: "null".into(),
        completed: false,
        schedule: Vec::new(),
        cancel: Vec::new(),
        handled_event: None,
        fired_deadline: None,
    };
    garbage.schedule.push(es_core::saga::DeadlineRecord::new(
        CheckoutA::NAME,
        "o-garbage",
        "timeout",
        Utc::now() - chrono::Duration::hours(1),
        "{not json",
        Metadata::default(),
    ));
    store.save(garbage).await.unwrap();

    let now = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(saga.fire_due(now).await.unwrap(), 1);
    assert_eq!(dispatcher.done(), vec![Cmd::Cancel("o-ok".into())]);
    let parked: HashSet<String> = store
        .parked_deadlines(CheckoutA::NAME, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.instance)
        .collect();
    assert_eq!(
        parked,
        HashSet::from(["o-refused".into(), "o-garbage".into()])
    );
}

#[tokio::test]
async fn two_sagas_sharing_a_store_do_not_starve_each_others_deadlines() {
    let store = MemoryEventStore::new();
    let dispatcher = Arc::new(Dispatcher::default());
    let a = runner::<CheckoutA>(&store, &dispatcher, chrono::Duration::zero());
    let b = runner::<CheckoutB>(&store, &dispatcher, chrono::Duration::zero());
    // 150 of saga A's deadlines, all due before saga B's one.
    for n in 0..150 {
        a.handle_event(
            &record(
                &store,
                Flow::Placed {
                    id: format!("a{n}"),
                },
            )
            .await,
        )
        .await
        .unwrap();
    }
    b.handle_event(&record(&store, Flow::Placed { id: "b0".into() }).await)
        .await
        .unwrap();

    let now = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(
        b.fire_due(now).await.unwrap(),
        1,
        "saga A's backlog hides nothing"
    );
    assert_eq!(dispatcher.done(), vec![Cmd::Cancel("b0".into())]);
    assert_eq!(
        a.fire_due(now).await.unwrap(),
        150,
        "one call works through more than one batch"
    );
    assert_eq!(a.fire_due(now).await.unwrap(), 0);
}

#[tokio::test]
async fn a_timeout_past_the_end_of_time_saturates_instead_of_panicking() {
    let store = MemoryEventStore::new();
    let dispatcher = Arc::new(Dispatcher::default());
    let saga = runner::<CheckoutA>(&store, &dispatcher, chrono::Duration::MAX);
    let placed = record(&store, Flow::Placed { id: "o1".into() }).await;
    assert_eq!(
        saga.handle_event(&placed).await.unwrap(),
        SagaOutcome::Handled
    );
    let pending = store.deadlines_of(CheckoutA::NAME, "o1").await.unwrap();
    assert_eq!(pending[0].due_at, chrono::DateTime::<Utc>::MAX_UTC);
    assert_eq!(saga.fire_due(Utc::now()).await.unwrap(), 0);

    // And the other way: a timeout hugely negative is due at once.
    let saga = runner::<CheckoutA>(&store, &dispatcher, chrono::Duration::MIN);
    let placed = record(&store, Flow::Placed { id: "o2".into() }).await;
    assert_eq!(
        saga.handle_event(&placed).await.unwrap(),
        SagaOutcome::Handled
    );
    assert_eq!(saga.fire_due(Utc::now()).await.unwrap(), 1);
    assert_eq!(dispatcher.done(), vec![Cmd::Cancel("o2".into())]);
}
