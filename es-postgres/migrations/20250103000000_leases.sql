-- Leases: at most one holder of a named role (a relay) at a time. Expiry is compared with the
-- database clock only, so the clocks of the hosts that hold leases need not agree.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);
