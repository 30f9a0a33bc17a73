//! Golden files: stored JSON of every past version of each event type, which must still decode.
//!
//! Keep a folder of fixtures named `{EventType}.v{version}.json`, each holding one stored
//! payload. [`check_event_fixtures`] fails when
//! - a fixture no longer decodes into today's type (through the upcasters): a breaking change;
//! - today's encoding of a sample differs from the fixture of its current version: the shape
//!   changed without raising the schema version and adding an upcaster;
//! - a sample's current version has no fixture yet (run once with `UPDATE_GOLDEN=1` to write it,
//!   then commit it).
//!
//! ```no_run
//! # use es_core::DomainEvent;
//! # #[derive(serde::Serialize, serde::Deserialize)] enum OrderEvent { Placed { total: u32 } }
//! # impl DomainEvent for OrderEvent {}
//! #[test]
//! fn stored_events_still_decode() {
//!     es_core::testing::golden::check_event_fixtures::<OrderEvent>(
//!         concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/events"),
//!         &[OrderEvent::Placed { total: 5 }],
//!     );
//! }
//! ```

use std::path::Path;

use crate::event::DomainEvent;

/// Checks the fixtures in `dir` against `E` and today's `samples` (one per event type).
#[track_caller]
pub fn check_event_fixtures<E: DomainEvent>(dir: impl AsRef<Path>, samples: &[E]) {
    let dir = dir.as_ref();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    if update {
        std::fs::create_dir_all(dir).expect("create the fixture folder");
    }
    for sample in samples {
        let (event_type, payload) = sample.encode().expect("a sample serializes");
        let version = E::schema_version(&event_type);
        let path = dir.join(format!("{event_type}.v{version}.json"));
        let today: serde_json::Value = serde_json::from_slice(&payload).expect("payload is JSON");
        match std::fs::read(&path) {
            Ok(stored) => {
                let stored: serde_json::Value = serde_json::from_slice(&stored)
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
                assert_eq!(
                    stored,
                    today,
                    "`{event_type}` v{version} is encoded differently from its fixture {}: \
                     raise its schema version and add an upcaster, or re-record with UPDATE_GOLDEN=1 \
                     if the change is only in sample values",
                    path.display()
                );
            }
            Err(_) if update => {
                let pretty = serde_json::to_vec_pretty(&today).expect("json");
                std::fs::write(&path, pretty).expect("write the fixture");
            }
            Err(_) => panic!(
                "no fixture for `{event_type}` v{version} at {}: run the test once with UPDATE_GOLDEN=1 and commit the file",
                path.display()
            ),
        }
    }
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read the fixture folder {}: {e}", dir.display()));
    let mut checked = 0;
    for entry in entries {
        let path = entry.expect("a folder entry").path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let Some((event_type, version)) = stem.rsplit_once(".v") else {
            panic!("fixture {name} is not named {{EventType}}.v{{version}}.json");
        };
        let version: u32 = version
            .parse()
            .unwrap_or_else(|_| panic!("fixture {name} has no numeric version"));
        let payload = std::fs::read(&path).expect("read the fixture");
        if let Err(error) = E::decode(event_type, version, &payload) {
            panic!("stored `{event_type}` v{version} ({name}) no longer decodes: {error}");
        }
        checked += 1;
    }
    assert!(checked > 0, "no fixtures in {}", dir.display());
}
