//! A saga's commands carry inbox entries: a command dispatched again after a failure (the
//! saga's state not saved) is skipped, while a later decision's commands all go through. A
//! saga also follows the store's log, from a checkpoint of its own. The cases are the shared
//! suite (`testing::saga_command_conformance`), here on the memory store; es-postgres runs it
//! on PostgreSQL.

use es_core::memory::MemoryEventStore;
use es_core::testing;

#[tokio::test]
async fn saga_commands_on_the_memory_store_pass_the_saga_command_suite() {
    testing::saga_command_conformance(MemoryEventStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_commands_pass_the_saga_command_suite_on_two_threads() {
    testing::saga_command_conformance(MemoryEventStore::new()).await;
}
