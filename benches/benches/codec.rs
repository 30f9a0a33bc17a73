//! Criterion micro-benchmarks of the typed layer: encoding and decoding an event, and the
//! in-memory store's append and replay. `cargo bench -p es-benches --bench codec`.

use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use es_benches::{order_placed, BenchEvent, OrderBook, PlaceOrders};
use es_core::memory::MemoryEventStore;
use es_core::{DomainEvent, EventStore, ExpectedVersion, Metadata, NewEvent, Repository, StreamId};

fn codec(c: &mut Criterion) {
    let event = order_placed();
    let (event_type, payload) = event.encode().expect("encodes");
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode OrderPlaced", |b| {
        b.iter(|| event.encode().expect("encodes"))
    });
    group.bench_function("decode OrderPlaced", |b| {
        b.iter(|| BenchEvent::decode(&event_type, 1, &payload).expect("decodes"))
    });
    group.finish();
}

fn memory_store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(100));
    group.bench_function("append 100 events to a fresh stream", |b| {
        let store = MemoryEventStore::new();
        b.iter_batched(
            || {
                let events = (0..100)
                    .map(|_| {
                        NewEvent::from_domain(&order_placed(), Metadata::default())
                            .expect("encodes")
                    })
                    .collect::<Vec<_>>();
                (
                    StreamId::new(format!("s-{}", uuid::Uuid::new_v4())).expect("id"),
                    events,
                )
            },
            |(stream, events)| {
                runtime
                    .block_on(store.append(&stream, ExpectedVersion::NoStream, events))
                    .expect("append")
            },
            BatchSize::SmallInput,
        )
    });
    let store = MemoryEventStore::new();
    let repo = Repository::<OrderBook>::new(store);
    runtime
        .block_on(repo.execute("r", PlaceOrders(10_000), Metadata::default()))
        .expect("seed");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("load a 10,000-event aggregate", |b| {
        b.iter(|| runtime.block_on(repo.load("r")).expect("load"))
    });
    group.finish();
}

// The macro generates an undocumented function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::codec, super::memory_store);
}
criterion_main!(group::benches);
