-- Idempotency claims become leases held by a token: an in-progress claim lives for a short
-- lease renewed by its holder, and only the holder can complete or release it.
ALTER TABLE idempotency_keys ADD COLUMN owner text;

-- Claims written before this migration have no holder that could ever complete them; they
-- held their key for the whole TTL. Give them a short lease instead, so their keys come free.
UPDATE idempotency_keys
   SET expires_at = LEAST(expires_at, now() + interval '30 seconds')
 WHERE response IS NULL;
