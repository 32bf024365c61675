-- The send window counts a campaign's unfinished batches after every batch
-- (`status IN ('pending', 'sending') AND batch_no <= enqueued_through`), and the scheduler
-- looks for stalled batches in the same range. With an index on (campaign_id, status)
-- alone both read every pending row of the campaign. With the (campaign_id, batch_no,
-- status) index beside it, SQLite 3.51 chose that one, which is covering, and read every
-- row of every batch up to the window: all that was already sent, so O(N) per batch and
-- O(N²) per campaign (found by `mailing bench` at 1,000,000 recipients: the count took
-- 20 ms at the start and 200 ms at the end). One index on (campaign_id, status,
-- batch_no) serves every query of both, and there is one index fewer to write for each
-- ledger row.
DROP INDEX deliveries_batch;
DROP INDEX deliveries_status;
CREATE INDEX deliveries_status ON deliveries (campaign_id, status, batch_no);
