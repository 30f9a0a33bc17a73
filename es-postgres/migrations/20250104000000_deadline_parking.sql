-- Deadlines whose firing failed are parked, not retried in a tight loop: how many times firing
-- failed, when the next attempt is due, and why the last one failed.
ALTER TABLE saga_deadlines
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_at   timestamptz,
    ADD COLUMN last_error text;

-- Due deadlines are read per saga, so one saga's backlog never hides another's.
CREATE INDEX saga_deadlines_saga_due ON saga_deadlines (saga, due_at, id);
DROP INDEX saga_deadlines_due;
