//! Read models in tables: typed projections, inline projections (read-your-writes through the
//! `Repository`), and versioned read models rebuilt blue/green while events flow.

mod common;

use std::sync::Arc;

use es_core::{
    Aggregate, BoxError, DomainEvent, Envelope, EventStore, ExpectedVersion, Metadata, NewEvent,
    Repository, StreamFilter, StreamId,
};
use es_postgres::{PgEventStore, PgTyped, PgTypedProjection};
use sqlx::PgConnection;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum TabEvent {
    Opened,
    Charged { cents: i64 },
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
    type Command = Option<i64>;
    type Event = TabEvent;
    type Error = NotOpen;
    fn handle(&self, command: Option<i64>) -> Result<Vec<TabEvent>, NotOpen> {
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

/// One row per tab: its total and how many events made it. A charge of 13 cents is refused.
struct TabTotals;

#[es_core::async_trait]
impl PgTypedProjection for TabTotals {
    type Event = TabEvent;
    const NAME: &'static str = "tab-totals";
    fn filter(&self) -> StreamFilter {
        StreamFilter::category("tab")
    }
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: Envelope<TabEvent>,
    ) -> Result<(), BoxError> {
        let cents = match event.event {
            TabEvent::Opened => 0,
            TabEvent::Charged { cents: 13 } => return Err("unlucky".into()),
            TabEvent::Charged { cents } => cents,
        };
        sqlx::query(
            "INSERT INTO tab_totals (tab, cents, events) VALUES ($1, $2, 1) \
             ON CONFLICT (tab) DO UPDATE SET cents = tab_totals.cents + $2, \
             events = tab_totals.events + 1",
        )
        .bind(event.stream_id.entity_id())
        .bind(cents)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

async fn tab_total(store: &PgEventStore, tab: &str) -> Option<(i64, i64)> {
    sqlx::query_as("SELECT cents, events FROM tab_totals WHERE tab = $1")
        .bind(tab)
        .fetch_optional(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_inline_projection_is_read_right_after_the_command_and_fails_it_when_it_fails() {
    let store = common::store("inline").await;
    sqlx::query("CREATE TABLE tab_totals (tab text PRIMARY KEY, cents bigint, events bigint)")
        .execute(store.pool())
        .await
        .unwrap();
    let store = store.with_inline_projection(Arc::new(PgTyped::new(TabTotals)));
    let tabs = Repository::<Tab>::new(Arc::new(store.clone()));
    tabs.execute("7", None, Metadata::default()).await.unwrap();
    let mut expected = 0;
    for (i, cents) in [100, 20, 3].into_iter().enumerate() {
        tabs.execute("7", Some(cents), Metadata::default())
            .await
            .unwrap();
        expected += cents;
        // Read on another connection, with no waiting: the row committed with the events.
        assert_eq!(
            tab_total(&store, "7").await,
            Some((expected, i as i64 + 2))
        );
    }

    // An event of a type the projection does not know is skipped, not a failure.
    store
        .append(
            &StreamId::new("tab-8").unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::raw("Disputed", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(tab_total(&store, "8").await, None);

    // A failing inline projection fails the command: neither the events nor the rows stay.
    let error = tabs
        .execute("7", Some(13), Metadata::default())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("unlucky"), "{error}");
    let stream = StreamId::new("tab-7").unwrap();
    assert_eq!(store.stream_version(&stream).await.unwrap(), Some(4));
    assert_eq!(tab_total(&store, "7").await, Some((123, 4)));
    common::drop_schema(&store).await;
}
