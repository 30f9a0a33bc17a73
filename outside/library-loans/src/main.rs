//! A lending library built on es-core, the way any outside project would: books are
//! aggregates, a projection keeps each member's current loans, and a saga sends a reminder when
//! a loan runs past its due date. It runs on the in-memory backends, and on PostgreSQL too when
//! `DATABASE_URL` is set; it exits non-zero if the library does not behave.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::memory::MemoryEventStore;
use es_core::{
    Aggregate, BoxError, CheckpointStore, CommandContext, CommandDispatcher, CommandError, DispatchError,
    DomainEvent, Envelope, EventStore, Metadata, Projection, ProjectionRunner, RecordedEvent,
    Repository, Saga, SagaDecision, SagaRunner, SagaStore, StreamFilter,
};
use es_postgres::{PgConfig, PgEventStore};
use serde::{Deserialize, Serialize};

/// A copy of a book on the shelf, or lent to a member.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Book {
    id: String,
    borrower: Option<String>,
    reminders: u32,
}

/// Commands carry what a decision needs; the first one names the book.
#[derive(Debug, Clone)]
enum BookCommand {
    Lend {
        book: String,
        member: String,
        due: DateTime<Utc>,
    },
    Return,
    Remind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum BookEvent {
    Lent {
        book: String,
        member: String,
        due: DateTime<Utc>,
    },
    Returned {
        book: String,
        member: String,
    },
    Reminded {
        book: String,
        member: String,
    },
}

impl DomainEvent for BookEvent {}

#[derive(Debug, thiserror::Error, PartialEq)]
enum LoanError {
    #[error("the book is lent to {0}")]
    AlreadyLent(String),
    #[error("the book is not lent")]
    NotLent,
}

impl Aggregate for Book {
    const TYPE: &'static str = "book";
    type Command = BookCommand;
    type Event = BookEvent;
    type Error = LoanError;

    fn handle(&self, command: BookCommand) -> Result<Vec<BookEvent>, LoanError> {
        let book = self.id.clone();
        match (command, &self.borrower) {
            (BookCommand::Lend { .. }, Some(member)) => Err(LoanError::AlreadyLent(member.clone())),
            (BookCommand::Lend { book, member, due }, None) => {
                Ok(vec![BookEvent::Lent { book, member, due }])
            }
            (BookCommand::Return, Some(member)) => Ok(vec![BookEvent::Returned {
                book,
                member: member.clone(),
            }]),
            (BookCommand::Remind, Some(member)) => Ok(vec![BookEvent::Reminded {
                book,
                member: member.clone(),
            }]),
            (BookCommand::Return | BookCommand::Remind, None) => Err(LoanError::NotLent),
        }
    }

    fn apply(&mut self, event: &BookEvent) {
        match event {
            BookEvent::Lent { book, member, .. } => {
                self.id = book.clone();
                self.borrower = Some(member.clone());
            }
            BookEvent::Returned { .. } => self.borrower = None,
            BookEvent::Reminded { .. } => self.reminders += 1,
        }
    }
}

/// Each member's books on loan.
#[derive(Default)]
struct LoansByMember {
    loans: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

#[async_trait]
impl Projection for LoansByMember {
    fn name(&self) -> &str {
        "loans-by-member"
    }
    fn filter(&self) -> StreamFilter {
        StreamFilter::category(Book::TYPE)
    }
    async fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        let mut loans = self.loans.lock().map_err(|_| "poisoned")?;
        match event.decode::<BookEvent>()? {
            BookEvent::Lent { book, member, .. } => {
                loans.entry(member).or_default().insert(book);
            }
            BookEvent::Returned { book, member } => {
                loans.entry(member).or_default().remove(&book);
            }
            BookEvent::Reminded { .. } => {}
        }
        Ok(())
    }
}

/// Reminds the borrower when a loan runs past its due date.
#[derive(Debug, Default, Serialize, Deserialize)]
struct OverdueReminder {
    book: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Overdue {
    book: String,
}

impl Saga for OverdueReminder {
    const NAME: &'static str = "overdue-reminder";
    type Event = BookEvent;
    type Command = (String, BookCommand);
    type Deadline = Overdue;
    type Config = ();

    fn instance_id(event: &Envelope<BookEvent>) -> Option<String> {
        match &event.event {
            BookEvent::Lent { book, .. } | BookEvent::Returned { book, .. } => Some(book.clone()),
            BookEvent::Reminded { .. } => None,
        }
    }

    fn handle(
        &mut self,
        _: &(),
        event: &Envelope<BookEvent>,
    ) -> SagaDecision<Self::Command, Overdue> {
        match &event.event {
            BookEvent::Lent { book, due, .. } => {
                self.book = book.clone();
                SagaDecision::none().schedule("overdue", *due, Overdue { book: book.clone() })
            }
            BookEvent::Returned { .. } => SagaDecision::none().cancel("overdue"),
            BookEvent::Reminded { .. } => SagaDecision::none(),
        }
    }

    fn on_deadline(&mut self, _: &(), deadline: Overdue) -> SagaDecision<Self::Command, Overdue> {
        SagaDecision::none().send((deadline.book, BookCommand::Remind))
    }
}

/// Carries the saga's commands out on the book repository.
struct Librarian(Repository<Book>);

#[async_trait]
impl CommandDispatcher<(String, BookCommand)> for Librarian {
    async fn dispatch(
        &self,
        (book, command): (String, BookCommand),
        context: CommandContext,
    ) -> Result<(), DispatchError> {
        self.0.execute(&book, command, context).await?;
        Ok(())
    }
}

struct Backend {
    name: &'static str,
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    sagas: Arc<dyn SagaStore>,
}

async fn run_library(backend: Backend) -> Result<(), BoxError> {
    let books = Repository::<Book>::new(backend.store.clone());
    let tag = format!("{}", Utc::now().timestamp_nanos_opt().unwrap_or_default());
    let (dune, emma) = (format!("dune{tag}"), format!("emma{tag}"));
    let lend = |book: &str, member: &str, due| BookCommand::Lend {
        book: book.into(),
        member: member.into(),
        due,
    };

    let meta = Metadata::new_correlation();
    let past = Utc::now() - chrono::Duration::days(1);
    let future = Utc::now() + chrono::Duration::days(14);
    books
        .execute(&dune, lend(&dune, "ada", past), meta.clone())
        .await?;
    books
        .execute(&emma, lend(&emma, "ada", future), meta.clone())
        .await?;
    let refused = books
        .execute(&dune, lend(&dune, "bob", future), meta.clone())
        .await;
    if !matches!(refused, Err(CommandError::Rejected(LoanError::AlreadyLent(ref m))) if m == "ada")
    {
        return Err(format!("lending a lent book must be refused, got {refused:?}").into());
    }

    // The saga sees the loans; the overdue one comes due at once.
    let saga = SagaRunner::<OverdueReminder>::new(
        backend.sagas.clone(),
        Librarian(books.clone()),
        (),
    );
    for event in backend
        .store
        .read_all(
            &StreamFilter::category(Book::TYPE),
            es_core::Position::START,
            10_000,
        )
        .await?
    {
        saga.handle_event(&event).await?;
    }
    let fired = saga.fire_due(Utc::now()).await?;
    if fired < 1 || books.load(&dune).await?.state.reminders != 1 {
        return Err("the overdue loan must get exactly one reminder".into());
    }
    if books.load(&emma).await?.state.reminders != 0 {
        return Err("a loan that is not due gets no reminder".into());
    }

    books.execute(&emma, BookCommand::Return, meta).await?;
    let projection = Arc::new(LoansByMember::default());
    let runner = ProjectionRunner::new(backend.store.clone(), backend.checkpoints.clone());
    runner.catch_up(&*projection).await?;
    let loans = projection
        .loans
        .lock()
        .map_err(|_| "poisoned")?
        .get("ada")
        .cloned()
        .unwrap_or_default();
    if !loans.contains(&dune) || loans.contains(&emma) {
        return Err(format!("ada should have {dune} and not {emma} on loan, has {loans:?}").into());
    }
    println!(
        "{}: lending, refusing, reminding and projecting all work",
        backend.name
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let memory = MemoryEventStore::new();
    run_library(Backend {
        name: "in-memory",
        store: Arc::new(memory.clone()),
        checkpoints: Arc::new(memory.clone()),
        sagas: Arc::new(memory),
    })
    .await?;

    if let Ok(url) = std::env::var("DATABASE_URL") {
        // A schema of its own, dropped afterwards, so runs never see each other.
        let schema = format!("library_loans_{}", Utc::now().timestamp_micros());
        let store = PgEventStore::connect(&url, PgConfig::new(&schema)).await?;
        store.migrate().await?;
        let outcome = run_library(Backend {
            name: "PostgreSQL",
            store: Arc::new(store.clone()),
            checkpoints: Arc::new(store.clone()),
            sagas: Arc::new(store.clone()),
        })
        .await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(store.pool())
            .await?;
        outcome?;
    }
    Ok(())
}
