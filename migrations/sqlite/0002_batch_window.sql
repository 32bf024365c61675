-- The send window: the highest batch number enqueued so far. Plan and send keep at most
-- BATCH_WINDOW batches of a campaign outstanding, so no campaign floods the queue.
ALTER TABLE campaigns ADD COLUMN enqueued_through INTEGER NOT NULL DEFAULT -1;
