-- A claim is written in place.
--
-- A sender used to claim a batch's rows by setting `status = 'sending'`, which moved
-- each row's entry in the ledger's status index. A claimed row is now stored as
-- `status = 'pending'` with `claimed_at` set (readers still see it as `sending`,
-- `jobs/src/store/deliveries.rs`), so the claim touches no index. On PostgreSQL the same
-- change lets the claim be a HOT update (see that migration).
UPDATE deliveries SET status = 'pending' WHERE status = 'sending';
