-- The ledger's indexes, for what its queries look rows up by.
--
-- Two indexes that every campaign wrote to and no query needed as they were:
--
-- The delivery key is a function of (campaign_id, subscriber_id) (the first 16 bytes of
-- SHA-256 over both, `jobs/src/store/deliveries.rs`), and that pair is already unique,
-- so its own UNIQUE index guarded nothing; no query looks a row up by its key. Its
-- values are random, so every ledger row the plan inserted went to a random leaf of a
-- B-tree as large as the ledger: a page read and a page written to the WAL per row once
-- the ledger outgrew SQLite's page cache.
--
-- Provider message ids are looked up only by value (provider webhooks), and a row has
-- one only once it is sent: the partial index leaves out the pending rows' NULLs.
--
-- SQLite cannot drop a column's UNIQUE constraint, so the table is rebuilt with the same
-- columns, ids and AUTOINCREMENT counter (no table refers to deliveries). On a large
-- ledger this copies it once, at the first start of this version.
CREATE TABLE deliveries_rebuilt (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id         INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    subscriber_id       INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
    email               TEXT    NOT NULL,
    delivery_key        TEXT    NOT NULL,
    batch_no            INTEGER NOT NULL,
    status              TEXT    NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped', 'bounced', 'complained')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    provider_message_id TEXT,
    last_error          TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    sent_at             INTEGER,
    claimed_at          INTEGER,
    UNIQUE (campaign_id, subscriber_id)
);
INSERT INTO deliveries_rebuilt (id, campaign_id, subscriber_id, email, delivery_key, batch_no,
                                status, attempts, provider_message_id, last_error, created_at,
                                updated_at, sent_at, claimed_at)
    SELECT id, campaign_id, subscriber_id, email, delivery_key, batch_no, status, attempts,
           provider_message_id, last_error, created_at, updated_at, sent_at, claimed_at
    FROM deliveries ORDER BY id;
-- Ids are never reused, also those of the newest rows deleted before the rebuild.
DELETE FROM sqlite_sequence WHERE name = 'deliveries_rebuilt';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'deliveries_rebuilt', seq FROM sqlite_sequence WHERE name = 'deliveries';
DROP TABLE deliveries;
ALTER TABLE deliveries_rebuilt RENAME TO deliveries;
CREATE INDEX deliveries_status ON deliveries (campaign_id, status, batch_no);
CREATE INDEX deliveries_provider_message ON deliveries (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- And one that two queries needed: deleting a subscriber deletes their ledger rows, and a
-- bounce reported by address finds the row through the subscriber; both read the whole
-- ledger without it (75-445 ms at 1,000,000 rows on SQLite, holding the write lock for
-- the delete). A campaign inserts its rows in subscriber order, so this index grows at
-- its end or next to the rows of earlier campaigns, not at random.
CREATE INDEX deliveries_subscriber ON deliveries (subscriber_id);
