-- A stream's version is its newest event's, read through the primary key
-- (stream_id, stream_version), which also settles racing writers: the separate version row
-- made every racing writer queue on its row lock and wake one at a time.
DROP TABLE streams;
