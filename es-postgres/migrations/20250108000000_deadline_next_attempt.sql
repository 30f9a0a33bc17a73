-- Due deadlines by when their next attempt is due: a parked deadline keeps its old due_at, so
-- by due_at every poll stepped over all the parked ones (never dropped) before the due ones.
-- retry_at is always later than due_at, so coalesce(retry_at, due_at) is the time it is due.
CREATE INDEX saga_deadlines_saga_next ON saga_deadlines (saga, (coalesce(retry_at, due_at)), id);
DROP INDEX saga_deadlines_saga_due;
