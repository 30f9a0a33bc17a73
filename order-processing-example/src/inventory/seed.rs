//! The four products a new inventory starts with.

use std::sync::Arc;

use chrono::Utc;
use es_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Repository, StreamAppend, UnitOfWork,
};
use uuid::Uuid;

use super::product::{Product, ProductEvent};

/// The products seeded on first start with empty state.
pub const SEED: [(&str, &str, u64); 4] = [
    ("11111111-1111-1111-1111-111111111111", "Laptop", 100),
    ("22222222-2222-2222-2222-222222222222", "Mouse", 500),
    ("33333333-3333-3333-3333-333333333333", "Keyboard", 200),
    ("44444444-4444-4444-4444-444444444444", "Monitor", 50),
];

/// Seeds the four products, once: a marker stream and the products commit together, each
/// expecting no stream, so of racing first starts exactly one seeds.
pub(super) async fn seed(store: &Arc<dyn EventStore>) -> es_core::Result<()> {
    let metadata = Metadata::new_correlation();
    let mut unit = UnitOfWork::new().append(StreamAppend::new(
        es_core::StreamId::new("inventoryseed-v1")?,
        ExpectedVersion::NoStream,
        vec![NewEvent::raw("InventorySeeded", "{}").with_metadata(metadata.clone())],
    ));
    for (id, name, available_quantity) in SEED {
        let product_id =
            Uuid::parse_str(id).map_err(|e| es_core::Error::InvalidInput(e.to_string()))?;
        let event = ProductEvent::ProductStocked {
            product_id,
            name: name.to_owned(),
            available_quantity,
            at: Utc::now(),
        };
        unit = unit.append(StreamAppend::new(
            Repository::<Product>::stream_id(id)?,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_domain(&event, metadata.clone())?],
        ));
    }
    match store.commit(unit).await {
        Ok(_) => {
            tracing::info!("inventory seeded");
            Ok(())
        }
        Err(error) if error.is_conflict() => Ok(()),
        Err(error) => Err(error),
    }
}
