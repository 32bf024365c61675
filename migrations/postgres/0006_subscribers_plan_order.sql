-- The plan stage pages through a campaign's audience in id order
-- (`workspace_id = ? AND status = 'enabled' AND id > ? ORDER BY id LIMIT ?`). Without
-- this index SQLite answered each page by reading every subscriber of the workspace
-- through the (workspace_id, email) index and sorting them: O(N) per page, O(N²) per
-- campaign (1.5 s per 500-recipient page at 1,000,000 subscribers; found by
-- `mailing bench`). With it, a page is a range read.
CREATE INDEX subscribers_plan_order ON subscribers (workspace_id, status, id);
