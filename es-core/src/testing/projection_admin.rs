use std::future::Future;
use std::time::Duration;

use crate::projection::{ProjectionAdmin, ProjectionInfo, ProjectionPhase};
use crate::store::EventStore;
use crate::stream::ExpectedVersion;
use crate::stream::StreamId;

use super::sample_event;

/// Checks a backend's [`ProjectionAdmin`] and the runner behind it: status with lag, and a
/// rebuild into a new generation that takes over once caught up.
///
/// `name` is a versioned read model that reads only category `category` (fresh, with no
/// events yet), and `catch_up` runs the backend's runner for it until it has caught up and
/// no rebuild is under way.
pub async fn projection_admin_conformance<F, Fut>(
    admin: &dyn ProjectionAdmin,
    store: &dyn EventStore,
    name: &str,
    category: &str,
    catch_up: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    async fn generations(admin: &dyn ProjectionAdmin, name: &str) -> Vec<ProjectionInfo> {
        let status = admin.status().await.expect("status answers");
        status.into_iter().filter(|g| g.name == name).collect()
    }

    catch_up().await;
    let first = generations(admin, name).await;
    assert_eq!(
        first.len(),
        1,
        "a caught-up read model has one generation: {first:?}"
    );
    assert_eq!(first[0].phase, ProjectionPhase::Active);
    assert_eq!(first[0].events_behind, 0, "nothing to read yet");
    assert_eq!(first[0].time_behind, Duration::ZERO);

    let stream = StreamId::new(format!("{category}-1")).expect("valid stream id");
    let results = store
        .append(
            &stream,
            ExpectedVersion::Any,
            (1..=3).map(|n| sample_event("Counted", n)).collect(),
        )
        .await
        .expect("append");
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A backend may show events only once older transactions have ended (a gap-safe log):
    // wait, within reason, for the lag to show them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lagging = loop {
        let lagging = generations(admin, name).await;
        if lagging[0].events_behind >= 3 || tokio::time::Instant::now() > deadline {
            break lagging;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        lagging[0].events_behind, 3,
        "lag counts the events still to read"
    );
    assert!(
        lagging[0].time_behind >= Duration::from_millis(5),
        "lag in time is the age of the oldest event still to read: {:?}",
        lagging[0].time_behind
    );

    catch_up().await;
    let caught_up = generations(admin, name).await;
    assert_eq!(caught_up[0].events_behind, 0);
    assert_eq!(
        Some(caught_up[0].position),
        results.positions.last().copied(),
        "the checkpoint is the last event read"
    );

    admin.rebuild(name).await.expect("rebuild");
    admin.rebuild(name).await.expect("asking again is harmless");
    let rebuilding = generations(admin, name).await;
    assert_eq!(
        rebuilding.len(),
        2,
        "one active, one building: {rebuilding:?}"
    );
    let building = rebuilding
        .iter()
        .find(|g| g.phase == ProjectionPhase::Building)
        .expect("a building generation");
    assert!(building.generation > first[0].generation);

    catch_up().await;
    let rebuilt = generations(admin, name).await;
    assert_eq!(
        rebuilt.len(),
        1,
        "the rebuilt generation replaced the old: {rebuilt:?}"
    );
    assert_eq!(rebuilt[0].phase, ProjectionPhase::Active);
    assert_eq!(rebuilt[0].generation, building.generation);
    assert_eq!(rebuilt[0].events_behind, 0);
    assert_eq!(Some(rebuilt[0].position), results.positions.last().copied());

    let unknown = format!("unknown{}", uuid::Uuid::new_v4().simple());
    assert!(
        matches!(
            admin.rebuild(&unknown).await,
            Err(crate::Error::InvalidInput(_))
        ),
        "rebuilding an unknown projection is invalid input"
    );
}
