-- The ledger's indexes, for what its queries look rows up by.
--
-- Two indexes that every campaign wrote to and no query needed as they were:
--
-- The delivery key is a function of (campaign_id, subscriber_id) (the first 16 bytes of
-- SHA-256 over both, `jobs/src/store/deliveries.rs`), and that pair is already unique,
-- so its own UNIQUE index guarded nothing; no query looks a row up by its key. Its
-- values are random, so each ledger row inserted into a random leaf of a large B-tree,
-- and on PostgreSQL every status change (pending, sending, sent) is an update that is
-- not HOT (status is indexed), which inserts the new row version into every index
-- again, this one included.
--
-- Provider message ids are looked up only by value (provider webhooks), and a row has
-- one only once it is sent: the partial index leaves out the pending and sending row
-- versions that the full one held too.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_delivery_key_key;
DROP INDEX deliveries_provider_message;
CREATE INDEX deliveries_provider_message ON deliveries (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- And one that two queries needed: deleting a subscriber deletes their ledger rows, and a
-- bounce reported by address finds the row through the subscriber; both read the whole
-- ledger without it (75-445 ms at 1,000,000 rows on SQLite). A campaign inserts its
-- rows in subscriber order, so this index grows at its end or next to the rows of
-- earlier campaigns, not at random.
CREATE INDEX deliveries_subscriber ON deliveries (subscriber_id);
