//! The multi-aggregate command suite: [`MultiCommand`] on a store under test, with writers
//! racing it from other "processes".

use std::sync::Arc;
use std::time::Duration;

use crate::aggregate::Aggregate;
use crate::event::{DomainEvent, Metadata};
use crate::multi_command::MultiCommand;
use crate::repository::{CommandContext, CommandError, Repository};
use crate::store::EventStore;

/// Checks [`MultiCommand`] against `store`: transfers racing between accounts from two
/// "processes" (each with its own cached repository) keep the total and never overdraw; a
/// refusal or a plain read stands on the versions it read; a message delivered to two
/// processes at once is carried out by exactly one.
pub async fn multi_command_conformance(store: Arc<dyn EventStore>) {
    racing_transfers_keep_the_total_and_never_overdraw(store.clone()).await;
    one_message_racing_itself_is_carried_out_once(store).await;
}

/// A balance; an event records the balance it leaves, decided from the state, so a decision
/// on stale state would show as a balance that does not follow from the one before.
#[derive(Debug, Default, Clone, PartialEq)]
struct Account {
    balance: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum AccountEvent {
    Changed { by: i64, to: u64 },
}

impl DomainEvent for AccountEvent {}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("insufficient funds")]
struct Insufficient;

impl Aggregate for Account {
    const TYPE: &'static str = "mcaccount";
    type Command = i64;
    type Event = AccountEvent;
    type Error = Insufficient;

    fn handle(&self, by: i64) -> std::result::Result<Vec<AccountEvent>, Insufficient> {
        let to = self.balance.checked_add_signed(by).ok_or(Insufficient)?;
        Ok(vec![AccountEvent::Changed { by, to }])
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Changed { to, .. } => self.balance = *to,
        }
    }
}

const ACCOUNTS: usize = 6;
const OPENING: i64 = 50;

async fn racing_transfers_keep_the_total_and_never_overdraw(store: Arc<dyn EventStore>) {
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let ids: Arc<Vec<String>> = Arc::new((0..ACCOUNTS).map(|i| format!("{prefix}{i}")).collect());
    let opening = Repository::<Account>::new(store.clone());
    for id in ids.iter() {
        opening
            .execute(id, OPENING, Metadata::default())
            .await
            .expect("opening deposit");
    }
    // Two processes, each with its own cache: neither sees the other's writes but through the
    // store.
    let processes: Vec<Repository<Account>> = (0..2)
        .map(|_| Repository::<Account>::new(store.clone()).with_cache(64))
        .collect();
    let command = MultiCommand::new(store.clone())
        .with_max_retries(200)
        .with_backoff(Duration::from_millis(1), Duration::from_millis(20));
    let mut tasks = Vec::new();
    for worker in 0..8usize {
        let accounts = processes[worker % 2].clone();
        let command = command.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for round in 0..25usize {
                let from = ids[(worker + round) % ACCOUNTS].as_str();
                let to = ids[(worker * 7 + round * 3 + 1) % ACCOUNTS].as_str();
                // The largest transfers overdraw once the money has moved around.
                let amount = 10 + (round as i64 * 13 + worker as i64 * 5) % 40;
                // Fee to a third account, set by what a fourth one holds: a pure read.
                let rate = ids[(worker + 2) % ACCOUNTS].as_str();
                let fee_to = ids[(worker + 3) % ACCOUNTS].as_str();
                let accounts = &accounts;
                let outcome = command
                    .run(Metadata::default(), |mut work| async move {
                        let slots = work.load_many(accounts, &[from, to, fee_to]).await?;
                        let rate = work.load(accounts, rate).await?;
                        let fee = i64::from(work.state(rate).balance % 2 == 0);
                        work.execute(slots[0], -(amount + fee))?;
                        work.execute(slots[1], amount)?;
                        work.execute(slots[2], fee)?;
                        tokio::task::yield_now().await;
                        Ok::<_, CommandError<Insufficient>>((work, ()))
                    })
                    .await;
                match outcome {
                    Ok(_) => {}
                    Err(CommandError::Rejected(Insufficient)) => refused += 1,
                    Err(CommandError::Store(error)) => {
                        panic!("a transfer failed with a store error: {error}")
                    }
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for task in tasks {
        refused += task.await.expect("a transfer task panicked");
    }
    let fresh = Repository::<Account>::new(store.clone());
    let mut total = 0;
    for id in ids.iter() {
        let stream = Repository::<Account>::stream_id(id).expect("stream id");
        let events = store.read_stream_to_end(&stream, 0).await.expect("read");
        let mut balance = 0u64;
        for event in &events {
            let AccountEvent::Changed { by, to } = event.decode().expect("decode");
            assert_eq!(
                balance.checked_add_signed(by),
                Some(to),
                "account {id}: each change follows from the balance before it (no stale decision)"
            );
            balance = to;
        }
        assert_eq!(fresh.load(id).await.expect("load").state.balance, balance);
        total += balance;
    }
    assert_eq!(
        total,
        ACCOUNTS as u64 * OPENING as u64,
        "transfers move money, never make or lose it"
    );
    assert!(
        refused > 0,
        "the suite must provoke refusals to mean anything"
    );
    assert!(
        refused < 200,
        "most transfers go through ({refused} of 200 refused)"
    );
}

async fn one_message_racing_itself_is_carried_out_once(store: Arc<dyn EventStore>) {
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let accounts = Repository::<Account>::new(store.clone());
    accounts
        .execute(&a, 100, Metadata::default())
        .await
        .expect("deposit");
    let message = store
        .read_stream_to_end(&Repository::<Account>::stream_id(&a).expect("id"), 0)
        .await
        .expect("read")
        .remove(0);
    let consumer = format!("mc-{prefix}");
    let command = MultiCommand::new(store.clone()).with_max_retries(50);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (accounts, command) = (accounts.clone(), command.clone());
        let (a, b, message, consumer) = (a.clone(), b.clone(), message.clone(), consumer.clone());
        tasks.push(tokio::spawn(async move {
            let (accounts, a, b) = (&accounts, a.as_str(), b.as_str());
            command
                .run(
                    CommandContext::caused_by(&message, consumer),
                    |mut work| async move {
                        let from = work.load(accounts, a).await?;
                        let to = work.load(accounts, b).await?;
                        work.execute(from, -10)?;
                        work.execute(to, 10)?;
                        tokio::task::yield_now().await;
                        Ok::<_, CommandError<Insufficient>>((work, ()))
                    },
                )
                .await
                .expect("the transfer or its skip")
                .already_handled
        }));
    }
    let mut carried_out = 0;
    for task in tasks {
        if !task.await.expect("task") {
            carried_out += 1;
        }
    }
    assert_eq!(
        carried_out, 1,
        "one delivery carries it out, the others skip"
    );
    assert_eq!(accounts.load(&a).await.expect("load").state.balance, 90);
    assert_eq!(accounts.load(&b).await.expect("load").state.balance, 10);
}
