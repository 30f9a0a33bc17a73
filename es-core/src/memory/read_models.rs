use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures_util::StreamExt;

use crate::error::{Error, Result};
use crate::projection::{ProjectionAdmin, ProjectionInfo, ProjectionPhase, Typed, TypedProjection};
use crate::store::EventStore;
use crate::stream::{Position, StreamFilter};

/// Versioned read models in memory: [`Typed`] projections whose state is rebuilt from the log
/// beside the one that serves when their [`VERSION`](TypedProjection::VERSION) rises or when
/// an operator asks ([`ProjectionAdmin::rebuild`]), then swapped in at once. The in-memory
/// counterpart of `es-postgres`'s `PgReadModelRunner`, with the same [`ProjectionAdmin`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), es_core::BoxError> {
/// use es_core::memory::{MemoryEventStore, MemoryReadModels};
/// use es_core::projection::{Typed, TypedProjection};
/// use es_core::{BoxError, DomainEvent, Envelope, ProjectionAdmin};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// enum Ping { Pinged }
/// impl DomainEvent for Ping {}
///
/// #[derive(Default)]
/// struct Pings(u64);
/// impl TypedProjection for Pings {
///     type Event = Ping;
///     const NAME: &'static str = "pings";
///     fn apply(&mut self, _: Envelope<Ping>) -> Result<(), BoxError> { self.0 += 1; Ok(()) }
/// }
///
/// let store = MemoryEventStore::new();
/// let models = MemoryReadModels::new(store.clone());
/// let pings = Typed::new(Pings::default());
/// models.catch_up(&pings).await?;
/// models.rebuild("pings").await?;   // an operator asks
/// models.catch_up(&pings).await?;   // rebuilt beside, then swapped
/// assert_eq!(models.status().await?[0].generation, 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryReadModels {
    store: Arc<dyn EventStore>,
    registry: Arc<Mutex<BTreeMap<String, Entry>>>,
}

#[derive(Clone, Debug)]
struct Entry {
    filter: StreamFilter,
    active: Generation,
    /// A rebuild asked for and not done yet.
    building: Option<Generation>,
}

#[derive(Clone, Copy, Debug)]
struct Generation {
    generation: u64,
    version: u32,
    position: Position,
}

impl fmt::Debug for MemoryReadModels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReadModels")
            .field("store", &self.store)
            .finish()
    }
}

impl MemoryReadModels {
    /// Read models fed from `store`.
    pub fn new(store: impl EventStore + 'static) -> Self {
        MemoryReadModels {
            store: crate::shared::event_store(store),
            registry: Arc::default(),
        }
    }

    fn registry(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // Every change is one assignment; a panic elsewhere leaves a consistent map.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings `model` up to the head: rebuilds it first when its version is newer than the
    /// state's, or a rebuild was asked for (the rebuild reads into a fresh state while `model`
    /// keeps serving, then replaces it at once), then applies what came after its checkpoint.
    /// Code older than the registered version changes nothing.
    pub async fn catch_up<P: TypedProjection + Default>(&self, model: &Typed<P>) -> Result<()> {
        let name = P::NAME;
        let filter = model.read().filter();
        let entry = self
            .registry()
            .entry(name.to_owned())
            .or_insert_with(|| Entry {
                filter: filter.clone(),
                active: Generation {
                    generation: 1,
                    version: P::VERSION,
                    position: Position::START,
                },
                building: None,
            })
            .clone();
        if entry.active.version > P::VERSION {
            tracing::warn!(
                projection = name,
                "a newer version of this projection is registered; leaving it alone"
            );
            return Ok(());
        }
        let rebuild = entry.active.version < P::VERSION || entry.building.is_some();
        let mut active = entry.active;
        if rebuild {
            let generation = entry
                .building
                .map_or(active.generation + 1, |b| b.generation);
            tracing::info!(
                projection = name,
                generation,
                "rebuilding the read model beside the active one"
            );
            let fresh = Typed::new(P::default());
            let position = self.apply(&fresh, &filter, Position::START).await?;
            model.replace(fresh.into_inner());
            active = Generation {
                generation,
                version: P::VERSION,
                position,
            };
        }
        active.position = self.apply(model, &filter, active.position).await?;
        let mut registry = self.registry();
        if let Some(entry) = registry.get_mut(name) {
            entry.active = active;
            entry.filter = filter;
            if rebuild {
                entry.building = None;
            }
        }
        Ok(())
    }

    /// Keeps `model` caught up until `shutdown` completes: catches up, then again after every
    /// append its filter lets through, and at least every second (so a requested rebuild
    /// starts without waiting for an event). Failures are logged and retried on the next turn.
    pub async fn run<P: TypedProjection + Default>(
        &self,
        model: Arc<Typed<P>>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let filter = model.read().filter();
        let head = loop {
            match self.store.head().await {
                Ok(head) => break head,
                Err(error) => {
                    tracing::warn!(projection = P::NAME, %error, "cannot read the head; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        // Only a wake-up call: `catch_up` reads what is new itself.
        let mut appends = self.store.subscribe(filter, head);
        loop {
            if let Err(error) = self.catch_up(&model).await {
                tracing::warn!(projection = P::NAME, %error, "read model catch-up failed; retrying");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = appends.next() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn apply<P: TypedProjection>(
        &self,
        model: &Typed<P>,
        filter: &StreamFilter,
        mut position: Position,
    ) -> Result<Position> {
        loop {
            let page = self.store.read_all(filter, position, 1000).await?;
            let Some(last) = page.last().map(|e| e.position) else {
                return Ok(position);
            };
            for event in &page {
                crate::projection::InlineProjection::apply(model, event)
                    .map_err(|e| Error::backend("projection", e))?;
            }
            position = last;
        }
    }
}

#[async_trait]
impl ProjectionAdmin for MemoryReadModels {
    async fn status(&self) -> Result<Vec<ProjectionInfo>> {
        let entries: Vec<(String, Entry)> = self
            .registry()
            .iter()
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        let mut infos = Vec::new();
        for (name, entry) in entries {
            let mut generations = vec![(entry.active, ProjectionPhase::Active)];
            generations.extend(entry.building.map(|b| (b, ProjectionPhase::Building)));
            for (generation, phase) in generations {
                let mut behind = 0;
                let mut oldest = None;
                let mut position = generation.position;
                loop {
                    let page = self.store.read_all(&entry.filter, position, 1000).await?;
                    let Some(last) = page.last() else { break };
                    oldest = oldest.or(page.first().map(|e| e.recorded_at));
                    behind += page.len() as u64;
                    position = last.position;
                }
                let age = oldest
                    .and_then(|at| (Utc::now() - at).to_std().ok())
                    .unwrap_or(Duration::ZERO);
                infos.push(
                    ProjectionInfo::new(
                        name.clone(),
                        generation.version,
                        generation.generation,
                        phase,
                        generation.position,
                    )
                    .with_lag(behind, age),
                );
            }
        }
        Ok(infos)
    }

    async fn rebuild(&self, name: &str) -> Result<()> {
        let mut registry = self.registry();
        let Some(entry) = registry.get_mut(name) else {
            return Err(Error::InvalidInput(format!(
                "no versioned read model is named `{name}`"
            )));
        };
        if entry.building.is_none() {
            entry.building = Some(Generation {
                generation: entry.active.generation + 1,
                version: entry.active.version,
                position: Position::START,
            });
        }
        Ok(())
    }
}
