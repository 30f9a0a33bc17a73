//! A small domain shared by the tests: a bank account.
#![allow(dead_code, unreachable_pub)]

use es_core::{Aggregate, DomainEvent, Upcaster};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub open: bool,
    pub owner: String,
    pub balance: i64,
    pub applied: u64,
}

#[derive(Debug, Clone)]
pub enum AccountCommand {
    Open { owner: String },
    Deposit(i64),
    Withdraw(i64),
    Noop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
}

/// Version 1 of `Opened` stored the owner as `name`.
fn opened_v1_to_v2(mut v: serde_json::Value) -> Result<serde_json::Value, String> {
    let name = v
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or("missing name")?
        .to_owned();
    v = serde_json::json!({ "owner": name });
    Ok(v)
}

static UPCASTERS: &[Upcaster] = &[Upcaster::new("Opened", 1, opened_v1_to_v2)];

impl DomainEvent for AccountEvent {
    fn schema_version(event_type: &str) -> u32 {
        if event_type == "Opened" {
            2
        } else {
            1
        }
    }
    fn upcasters() -> &'static [Upcaster] {
        UPCASTERS
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("not open")]
    NotOpen,
    #[error("already open")]
    AlreadyOpen,
    #[error("insufficient funds")]
    InsufficientFunds,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open { owner } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw(amount) if amount > self.balance => {
                Err(AccountError::InsufficientFunds)
            }
            AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
            AccountCommand::Noop => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        self.applied += 1;
        match event {
            AccountEvent::Opened { owner } => {
                self.open = true;
                self.owner = owner.clone();
            }
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }
}
