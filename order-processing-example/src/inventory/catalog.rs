//! The product catalog, the inventory's read model: every product's stock, folded in the
//! process on the embedded backends and kept in a table on PostgreSQL, and the reader the
//! product list is served from.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use es_core::projection::TypedDecoder;
use es_core::{Aggregate, BoxError, Projection, RecordedEvent, StreamFilter};
use es_postgres::{PgEventStore, PgProjection};
use sqlx::PgConnection;
use uuid::Uuid;

use super::product::{Product, ProductEvent, ProductView};

/// Every product's stock, folded from the product streams.
#[derive(Debug, Default)]
pub struct ProductCatalog {
    products: Mutex<BTreeMap<Uuid, (Product, u64)>>,
}

#[async_trait]
impl Projection for ProductCatalog {
    fn name(&self) -> &str {
        "product-catalog"
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(Product::TYPE)
    }

    async fn apply(&self, recorded: &RecordedEvent) -> Result<(), BoxError> {
        let event: ProductEvent = recorded.decode()?;
        let product_id = Uuid::parse_str(recorded.stream_id.entity_id())?;
        let mut products = self.products.lock().unwrap_or_else(|e| e.into_inner());
        let entry = products.entry(product_id).or_default();
        if recorded.stream_version > entry.1 {
            entry.0.apply(&event);
            entry.1 = recorded.stream_version;
        }
        Ok(())
    }
}

/// The product catalog's name: its checkpoint, its tables' schema, and what
/// `order-processing projections rebuild` takes.
pub const PRODUCT_CATALOG: &str = "product-catalog";

/// The product catalog on PostgreSQL: the table `product_catalog`, one row per product with
/// its stock and the version of its stream that row reflects, kept by a
/// [`PgReadModelRunner`](es_postgres::PgReadModelRunner). Each event is one `UPDATE` guarded by
/// that version, so an event read twice (a retried batch) changes nothing.
#[derive(Debug, Default)]
pub struct PgProductCatalog {
    decoder: TypedDecoder,
}

#[async_trait]
impl PgProjection for PgProductCatalog {
    fn name(&self) -> &str {
        PRODUCT_CATALOG
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(Product::TYPE)
    }

    fn tables(&self) -> Vec<String> {
        vec!["product_catalog".into()]
    }

    async fn create(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(
            "CREATE TABLE product_catalog (\
               product_id uuid PRIMARY KEY, \
               name text NOT NULL, \
               available bigint NOT NULL, \
               reserved bigint NOT NULL, \
               version bigint NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError> {
        let Some(envelope) = self
            .decoder
            .decode::<ProductEvent>(PRODUCT_CATALOG, event)?
        else {
            return Ok(());
        };
        let product_id = Uuid::parse_str(event.stream_id.entity_id())?;
        let version = i64::try_from(event.stream_version)?;
        // The same arithmetic as `Product::apply`, saturating at zero.
        let (available, reserved) = match envelope.event {
            ProductEvent::ProductStocked {
                name,
                available_quantity,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO product_catalog (product_id, name, available, reserved, version) \
                     VALUES ($1, $2, $3, 0, $4) \
                     ON CONFLICT (product_id) DO UPDATE \
                       SET name = EXCLUDED.name, available = EXCLUDED.available, \
                           version = EXCLUDED.version \
                     WHERE product_catalog.version < EXCLUDED.version",
                )
                .bind(product_id)
                .bind(name)
                .bind(i64::try_from(available_quantity)?)
                .bind(version)
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            ProductEvent::StockReserved { quantity, .. } => {
                let q = i64::try_from(quantity)?;
                (-q, q)
            }
            ProductEvent::StockReleased { quantity, .. } => {
                let q = i64::try_from(quantity)?;
                (q, -q)
            }
            ProductEvent::StockCommitted { quantity, .. } => (0, -i64::try_from(quantity)?),
        };
        // A product never stocked has no row, and none is shown (as in memory).
        sqlx::query(
            "UPDATE product_catalog SET available = greatest(available + $2, 0), \
               reserved = greatest(reserved + $3, 0), version = $4 \
             WHERE product_id = $1 AND version < $4",
        )
        .bind(product_id)
        .bind(available)
        .bind(reserved)
        .bind(version)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Where the product list is read.
#[derive(Clone)]
pub(super) enum Catalog {
    /// Folded in the process (embedded backends).
    Memory(Arc<ProductCatalog>),
    /// The table of [`PgProductCatalog`] (a view of its active generation).
    Postgres(PgEventStore),
}

impl Catalog {
    /// Every product, by id.
    pub(super) async fn list(&self) -> es_core::Result<Vec<ProductView>> {
        match self {
            Catalog::Memory(catalog) => {
                let products = catalog.products.lock().unwrap_or_else(|e| e.into_inner());
                Ok(products.values().filter_map(|(p, _)| p.view()).collect())
            }
            Catalog::Postgres(store) => {
                let rows: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
                    "SELECT product_id, name, available, reserved FROM product_catalog \
                     ORDER BY product_id",
                )
                .fetch_all(store.pool())
                .await
                .map_err(|e| es_core::Error::backend("product catalog", e))?;
                let count = |n: i64| u64::try_from(n).unwrap_or_default();
                Ok(rows
                    .into_iter()
                    .map(|(product_id, name, available, reserved)| ProductView {
                        product_id,
                        name,
                        available_quantity: count(available),
                        reserved_quantity: count(reserved),
                    })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use es_core::memory::MemoryEventStore;
    use es_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Repository};

    use super::super::seed::seed;
    use crate::listing::Listings;

    /// The same product events give the same list from the PostgreSQL table as from the
    /// in-memory fold, with two instances' runners building the table at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_catalog_table_lists_as_the_memory_model_with_two_instances_running() {
        crate::backends::testing::on_postgres(|backends| async move {
            let Listings::Postgres(pg) = backends.listings.clone() else {
                panic!("on PostgreSQL");
            };
            let store = backends.store.clone();
            seed(&store).await.unwrap();
            let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
            let mut moves = 0;
            for (i, id) in ids.iter().enumerate() {
                let stream = Repository::<Product>::stream_id(&id.to_string()).unwrap();
                let mut events = vec![ProductEvent::ProductStocked {
                    product_id: *id,
                    name: format!("Thing {i}"),
                    available_quantity: 40,
                    at: Utc::now(),
                }];
                for k in 0..30u64 {
                    let order_id = Uuid::now_v7();
                    let quantity = k % 4 + 1;
                    events.push(ProductEvent::StockReserved { order_id, quantity });
                    events.push(match k % 3 {
                        0 => ProductEvent::StockCommitted { order_id, quantity },
                        1 => ProductEvent::StockReleased { order_id, quantity },
                        // Restocked while held: the stock is set, the held part stays held.
                        _ => ProductEvent::ProductStocked {
                            product_id: *id,
                            name: format!("Thing {i} v{k}"),
                            available_quantity: 40 + k,
                            at: Utc::now(),
                        },
                    });
                }
                moves += events.len();
                let events = events
                    .iter()
                    .map(|e| NewEvent::from_domain(e, Metadata::default()).unwrap())
                    .collect();
                store
                    .append(&stream, ExpectedVersion::NoStream, events)
                    .await
                    .unwrap();
            }
            assert!(moves > 100);
            let memory = Arc::new(ProductCatalog::default());
            es_core::ProjectionRunner::new(store.clone(), Arc::new(MemoryEventStore::new()))
                .catch_up(&*memory)
                .await
                .unwrap();
            let memory = Catalog::Memory(memory).list().await.unwrap();
            assert_eq!(memory.len(), 7, "four seeded, three of the test");
            let tables = Catalog::Postgres(pg.clone());
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let runs: Vec<_> = (0..2)
                    .map(|_| {
                        let runner =
                            es_postgres::PgReadModelRunner::new(pg.clone()).with_batch_size(9);
                        tokio::spawn(
                            async move { runner.catch_up(&PgProductCatalog::default()).await },
                        )
                    })
                    .collect();
                for run in runs {
                    run.await.unwrap().unwrap();
                }
                // Step until the horizon let every event through (a test beside may hold it).
                if tables.list().await.unwrap() == memory {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the table lists {:?}, the memory model {memory:?}",
                    tables.list().await.unwrap()
                );
            }
        })
        .await;
    }
}
