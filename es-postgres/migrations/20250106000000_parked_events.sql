-- Events a relay could never publish (the bus refused them for good: a payload its wire format
-- cannot encode, say), set aside so that the relay goes on with the rest of the log. The event
-- itself stays in `events`; this says where it is and why, for an operator.
CREATE TABLE parked_events (
    relay          text NOT NULL,
    event_id       uuid NOT NULL,
    stream_id      text NOT NULL,
    stream_version bigint NOT NULL,
    event_type     text NOT NULL,
    tx_id          bigint NOT NULL,
    seq            bigint NOT NULL,
    error          text NOT NULL,
    parked_at      timestamptz NOT NULL,
    PRIMARY KEY (relay, event_id)
);

-- Listed per relay in log order.
CREATE INDEX parked_events_log_order ON parked_events (relay, tx_id, seq);
