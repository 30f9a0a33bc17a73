//! Typed projections: decoded events, unknown types skipped, state owned by the adaptor; and
//! inline projections giving read-your-writes through the `Repository`.

use std::sync::Arc;
use std::time::Duration;

use es_core::memory::MemoryEventStore;
use es_core::projection::{Typed, TypedProjection};
use es_core::{
    Aggregate, BoxError, DomainEvent, Envelope, EventStore, ExpectedVersion, Metadata, NewEvent,
    ProjectionRunner, Repository, StreamFilter, StreamId,
};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum TabEvent {
    Opened,
    Charged { cents: u64 },
}
impl DomainEvent for TabEvent {}

#[derive(Debug, Default, Clone, PartialEq)]
struct Tab {
    open: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the tab is not open")]
struct NotOpen;

impl Aggregate for Tab {
    const TYPE: &'static str = "tab";
    type Command = Option<u64>;
    type Event = TabEvent;
    type Error = NotOpen;
    fn handle(&self, command: Option<u64>) -> Result<Vec<TabEvent>, NotOpen> {
        match command {
            None => Ok(vec![TabEvent::Opened]),
            Some(cents) if self.open => Ok(vec![TabEvent::Charged { cents }]),
            Some(_) => Err(NotOpen),
        }
    }
    fn apply(&mut self, event: &TabEvent) {
        if let TabEvent::Opened = event {
            self.open = true;
        }
    }
}

#[derive(Default)]
struct Totals {
    cents: u64,
    events: u64,
}

impl TypedProjection for Totals {
    type Event = TabEvent;
    const NAME: &'static str = "tab-totals";
    fn filter(&self) -> StreamFilter {
        StreamFilter::category("tab")
    }
    fn apply(&mut self, event: Envelope<TabEvent>) -> Result<(), BoxError> {
        self.events += 1;
        if let TabEvent::Charged { cents } = event.event {
            self.cents += cents;
        }
        Ok(())
    }
}

async fn append(store: &MemoryEventStore, stream: &str, event_type: &str, payload: &str) {
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::raw(event_type, payload.to_owned())],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_typed_projection_skips_an_unknown_event_type_and_keeps_going() {
    let store = MemoryEventStore::new();
    append(&store, "tab-1", "Opened", "null").await;
    // Another service added a type to the category that this code does not know yet.
    append(&store, "tab-1", "Disputed", r#"{"reason":"x"}"#).await;
    append(&store, "tab-1", "Charged", r#"{"cents":250}"#).await;
    append(&store, "other-1", "Charged", r#"{"cents":999}"#).await;
    append(&store, "tab-2", "Disputed", r#"{"reason":"y"}"#).await;

    let totals = Arc::new(Typed::new(Totals::default()));
    let runner = ProjectionRunner::new(store.clone(), MemoryEventStore::new());
    let mut handle = runner.spawn(totals.clone());
    let head = store.head().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), handle.wait_for(head))
        .await
        .expect("the unknown type does not halt the runner");
    assert_eq!(totals.read().cents, 250);
    assert_eq!(
        totals.read().events,
        2,
        "unknown types and other categories are skipped"
    );
    assert_eq!(handle.status().last_error, None);
    handle.stop().await;
}

#[tokio::test]
async fn a_known_type_that_fails_to_decode_is_an_error_not_a_skip() {
    let store = MemoryEventStore::new();
    append(&store, "tab-1", "Charged", r#"{"cents":"lots"}"#).await;
    let totals = Typed::new(Totals::default());
    let runner = ProjectionRunner::new(store.clone(), store.clone());
    assert!(runner.catch_up(&totals).await.is_err());
    assert_eq!(totals.read().events, 0);
}

#[tokio::test]
async fn an_inline_typed_projection_is_read_right_after_the_command() {
    let totals = Arc::new(Typed::new(Totals::default()));
    let store = MemoryEventStore::new().with_inline_projection(totals.clone());
    let tabs = Repository::<Tab>::new(store.clone());
    tabs.execute("7", None, Metadata::default()).await.unwrap();
    for cents in [100, 20, 3] {
        tabs.execute("7", Some(cents), Metadata::default())
            .await
            .unwrap();
        // No waiting: the read model moved in the append's own commit.
        assert!(totals.read().cents > 0);
    }
    assert_eq!(totals.read().cents, 123);
    assert_eq!(totals.read().events, 4);
}

#[derive(Default)]
struct TotalsV2(Totals);

impl TypedProjection for TotalsV2 {
    type Event = TabEvent;
    const NAME: &'static str = "tab-totals";
    const VERSION: u32 = 2;
    fn filter(&self) -> StreamFilter {
        StreamFilter::category("tab")
    }
    fn apply(&mut self, event: Envelope<TabEvent>) -> Result<(), BoxError> {
        // Version 2 counts in tenths of a cent.
        if let TabEvent::Charged { cents } = event.event {
            self.0.cents += cents * 10;
        }
        self.0.events += 1;
        Ok(())
    }
}

async fn eventually(mut check: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("reached in time");
}

#[tokio::test]
async fn memory_read_models_follow_the_log_and_a_new_version_takes_over_whole() {
    use es_core::memory::MemoryReadModels;
    use es_core::ProjectionAdmin;

    let store = MemoryEventStore::new();
    append(&store, "tab-1", "Charged", r#"{"cents":5}"#).await;
    let models = MemoryReadModels::new(store.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let v1 = Arc::new(Typed::new(Totals::default()));
    let running = tokio::spawn({
        let (models, v1) = (models.clone(), v1.clone());
        async move {
            models
                .run(v1, async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    eventually(|| v1.read().cents == 5).await;
    append(&store, "tab-1", "Charged", r#"{"cents":7}"#).await;
    eventually(|| v1.read().cents == 12).await;
    let _ = stop.send(());
    running.await.unwrap();

    // The new code's state is built whole from the log before it serves.
    let v2 = Typed::new(TotalsV2::default());
    models.catch_up(&v2).await.unwrap();
    assert_eq!(v2.read().0.cents, 120);
    let status = models.status().await.unwrap();
    assert_eq!((status[0].version, status[0].generation), (2, 2));
    // The old code leaves the newer model alone.
    models.catch_up(&v1).await.unwrap();
    assert_eq!(models.status().await.unwrap()[0].version, 2);
}
