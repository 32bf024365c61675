//! The delivery ledger: one row per campaign × recipient. The plan stage writes rows
//! (idempotently: a re-run adds nothing twice); the send stage claims a batch's pending
//! rows atomically, so no two workers ever hold the same recipient, and records each
//! outcome. A live sender renews its claims; one older than the lease (its sender died)
//! is found by [`Store::recover_stale_claims`] and taken over by the batch's next send
//! job, or failed where resending could deliver twice.
//!
//! A claimed row ([`DeliveryStatus::Sending`] to readers) is stored as `status =
//! 'pending'` with `claimed_at` set (migration 0010): the claim then changes no indexed
//! column, so PostgreSQL writes it in place (a HOT update, into no index) and SQLite
//! leaves the status index alone. Every query of the send stage tells the two apart by
//! `claimed_at`; `claim_filter` does it for the readers' statuses.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Backend, Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, DeliveryStatus, now_ms};

/// One recipient of the audience, as the plan stage reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AudienceMember {
    /// Subscriber id (the keyset cursor).
    pub id: i64,
    /// Address.
    pub email: String,
}

/// A recipient claimed for sending, with what rendering needs.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Recipient {
    /// Ledger row id.
    pub delivery_id: i64,
    /// Subscriber id.
    pub subscriber_id: i64,
    /// Address.
    pub email: String,
    /// Display name.
    pub name: Option<String>,
    /// JSON object, as text.
    pub attributes: String,
    /// Stable per campaign × recipient; the Message-ID and Idempotency-Key derive from it.
    pub delivery_key: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
}

/// A ledger row as the API shows it.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeliveryRow {
    /// Row id (the keyset cursor).
    pub id: i64,
    /// Subscriber.
    pub subscriber_id: i64,
    /// Address.
    pub email: String,
    /// Outcome.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The provider's message id.
    pub provider_message_id: Option<String>,
    /// The last error or reason.
    pub last_error: Option<String>,
    /// Batch.
    pub batch_no: i64,
    /// Last change, epoch ms.
    pub updated_at: i64,
    /// When the provider accepted it.
    pub sent_at: Option<i64>,
}

/// What became of one claimed recipient.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Accepted by the provider.
    Sent {
        /// The provider's id for the message.
        provider_message_id: Option<String>,
    },
    /// Refused for good.
    Failed {
        /// Why.
        error: String,
    },
    /// Failed for now; goes back to pending unless attempts are exhausted.
    Retry {
        /// Why.
        error: String,
    },
    /// Left out on purpose.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// Counts the enqueued batches of campaign `$1` with a row pending or claimed. After
/// every batch: it must read only the window's rows (see the query-plan test).
const OUTSTANDING_BATCHES: &str = "SELECT COUNT(DISTINCT batch_no) FROM deliveries \
     WHERE campaign_id = $1 AND status = 'pending' \
     AND batch_no <= (SELECT enqueued_through FROM campaigns WHERE id = $1)";

/// Touches and returns the enqueued batches of campaign `$2` with unclaimed pending rows
/// untouched since `$3`. Every ten seconds: it must read only the window's rows.
const STALLED_BATCHES: &str = "UPDATE deliveries SET updated_at = $1 \
     WHERE campaign_id = $2 AND status = 'pending' AND claimed_at IS NULL AND updated_at < $3 \
     AND batch_no <= (SELECT enqueued_through FROM campaigns WHERE id = $2) RETURNING batch_no";

/// The enqueued batches of campaign `$1` holding claims older than `$2`. Every ten
/// seconds: claims exist only in enqueued batches, so it reads only the window's rows.
const STALE_CLAIMED_BATCHES: &str = "SELECT DISTINCT batch_no FROM deliveries \
     WHERE campaign_id = $1 AND status = 'pending' AND claimed_at < $2 \
     AND batch_no <= (SELECT enqueued_through FROM campaigns WHERE id = $1) ORDER BY batch_no";

/// Fails the claims of campaign `$2` older than `$3` (at `$1`), where resending could
/// deliver twice. Reads only the window's rows, as [`STALE_CLAIMED_BATCHES`].
const FAIL_STALE_CLAIMS: &str = "UPDATE deliveries SET status = 'failed', claimed_at = NULL, updated_at = $1, \
     last_error = 'worker stopped while sending; outcome unknown, not resent to avoid a duplicate' \
     WHERE campaign_id = $2 AND status = 'pending' AND claimed_at < $3 \
     AND batch_no <= (SELECT enqueued_through FROM campaigns WHERE id = $2)";

/// How readers' statuses are stored: `(status, condition on the claim)`. A claimed row
/// ([`DeliveryStatus::Sending`]) is `pending` with `claimed_at` set (see the module's
/// documentation); every other status is stored as itself.
fn claim_filter(status: DeliveryStatus) -> (&'static str, &'static str) {
    match status {
        DeliveryStatus::Pending => ("pending", " AND claimed_at IS NULL"),
        DeliveryStatus::Sending => ("pending", " AND claimed_at IS NOT NULL"),
        other => (other.as_str(), ""),
    }
}

/// The audience of campaign `$3` in workspace `$1` after subscriber `$2`, `$4` at most,
/// in subscriber order: members of the campaign's lists, enabled, not suppressed, each
/// once. One text for [`Store::audience_page`] and [`PLAN_PAGE_POSTGRES`], so that the
/// two databases plan the same recipients.
macro_rules! audience_page_sql {
    () => {
        "SELECT s.id, s.email FROM subscribers s \
         WHERE s.workspace_id = $1 AND s.id > $2 AND s.status = 'enabled' \
         AND EXISTS (SELECT 1 FROM list_memberships m JOIN campaign_lists c ON c.list_id = m.list_id \
                     WHERE c.campaign_id = $3 AND m.subscriber_id = s.id) \
         AND NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.workspace_id = s.workspace_id AND x.email = s.email) \
         ORDER BY s.id LIMIT CAST($4 AS BIGINT)"
    };
}

/// The PostgreSQL plan of one page ([`Store::plan_page`]): the audience page, limited
/// first and numbered after, so that a page reads only its own rows; batch numbers from
/// `$5` every `$6` rows; the delivery key computed as [`delivery_key`] computes it.
/// Answers the page's size and its last subscriber.
const PLAN_PAGE_POSTGRES: &str = concat!(
    "WITH page AS (\
       SELECT id, email, row_number() OVER (ORDER BY id) - 1 AS n FROM (",
    audience_page_sql!(),
    ") audience), \
     written AS (\
       INSERT INTO deliveries (campaign_id, subscriber_id, email, delivery_key, batch_no, \
                               status, attempts, created_at, updated_at) \
       SELECT $3, id, email, \
              encode(substr(sha256(convert_to('mailing:delivery:' || $3::bigint || ':' || id, 'UTF8')), 1, 16), 'hex'), \
              $5::bigint + n / $6::bigint, 'pending', 0, $7, $7 \
       FROM page ORDER BY id \
       ON CONFLICT (campaign_id, subscriber_id) DO NOTHING) \
     SELECT COUNT(*), MAX(id) FROM page"
);

/// Outcomes recorded by one statement: 5 parameters each, well under SQLite's and
/// PostgreSQL's limits.
const OUTCOMES_PER_STATEMENT: usize = 100;

/// The delivery key of a campaign × subscriber: stable, opaque, 32 hex digits.
pub fn delivery_key(campaign_id: i64, subscriber_id: i64) -> String {
    let digest = Sha256::digest(format!("mailing:delivery:{campaign_id}:{subscriber_id}"));
    hex::encode(&digest[..16])
}

/// What one page of the plan wrote ([`Store::plan_page`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedPage {
    /// Recipients in the page (including any planned already, left alone).
    pub recipients: u64,
    /// The page's last subscriber: the next page starts after it. None when the audience
    /// has no one left.
    pub last_subscriber: Option<i64>,
    /// Batches the page made.
    pub batches: i64,
}

impl Store {
    /// The next page of a campaign's audience after subscriber `after`: members of its
    /// lists, enabled, not suppressed, each subscriber once (emails are unique per
    /// workspace, so this also de-duplicates by address).
    pub async fn audience_page(
        &self,
        campaign_id: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AudienceMember>, StoreError> {
        Ok(sqlx::query_as::<_, AudienceMember>(audience_page_sql!())
            .bind(DEFAULT_WORKSPACE)
            .bind(after)
            .bind(campaign_id)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?)
    }

    /// Where an interrupted plan resumes: the last planned subscriber id and batch number.
    pub async fn plan_progress(&self, campaign_id: i64) -> Result<(i64, i64), StoreError> {
        let (last, batch): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT MAX(subscriber_id), MAX(batch_no) FROM deliveries WHERE campaign_id = $1",
        )
        .bind(campaign_id)
        .fetch_one(self.pool())
        .await?;
        Ok((last.unwrap_or(0), batch.unwrap_or(-1)))
    }

    /// Batches of a campaign that still have pending recipients nobody has claimed.
    pub async fn pending_batches(&self, campaign_id: i64) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT batch_no FROM deliveries WHERE campaign_id = $1 AND status = 'pending' \
             AND claimed_at IS NULL ORDER BY batch_no",
        )
        .bind(campaign_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Writes a batch of ledger rows in one transaction; rows that exist are left alone.
    pub async fn insert_deliveries(
        &self,
        campaign_id: i64,
        batch_no: i64,
        members: &[AudienceMember],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        insert_batch(
            &mut tx,
            self.backend,
            campaign_id,
            batch_no,
            members,
            now_ms(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Plans the next page of a campaign's audience after subscriber `after`: at most
    /// `limit` recipients, in batches of `batch_size` numbered from `first_batch`, in one
    /// transaction that also touches the campaign. Rows that exist are left alone.
    ///
    /// SQLite reads the page ([`Store::audience_page`]) and writes it back
    /// ([`Store::plan_batches`]). PostgreSQL does both in one statement, on the server:
    /// sending the page to the worker and back cost 20 round trips of 750 parameters per
    /// 5,000 recipients, and those trips, not PostgreSQL's inserts, were most of the
    /// fleet's plan.
    pub async fn plan_page(
        &self,
        campaign_id: i64,
        after: i64,
        first_batch: i64,
        batch_size: u32,
        limit: u32,
    ) -> Result<PlannedPage, StoreError> {
        let batch_size = batch_size.max(1);
        if self.backend == Backend::Sqlite {
            let page = self.audience_page(campaign_id, after, limit).await?;
            let batches = if page.is_empty() {
                0
            } else {
                self.plan_batches(campaign_id, first_batch, batch_size as usize, &page)
                    .await?
            };
            return Ok(PlannedPage {
                recipients: page.len() as u64,
                last_subscriber: page.last().map(|m| m.id),
                batches,
            });
        }
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        // Two foreign-key checks per ledger row: planned once for the page
        // (`fk_checks_keep_plans`), so the page's own query goes unprepared.
        self.fk_checks_keep_plans(&mut tx).await?;
        let (recipients, last): (i64, Option<i64>) = sqlx::query_as(PLAN_PAGE_POSTGRES)
            .persistent(false)
            .bind(DEFAULT_WORKSPACE)
            .bind(after)
            .bind(campaign_id)
            .bind(i64::from(limit))
            .bind(first_batch)
            .bind(i64::from(batch_size))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        self.plan_every_execution(&mut tx).await?;
        if recipients > 0 {
            super::campaigns::touch(&mut *tx, campaign_id, now).await?;
        }
        tx.commit().await?;
        Ok(PlannedPage {
            recipients: recipients.max(0) as u64,
            last_subscriber: last,
            batches: (recipients + i64::from(batch_size) - 1) / i64::from(batch_size),
        })
    }

    /// Writes a page of the plan: `members` split into batches of `batch_size`, numbered
    /// from `first_batch`, in one transaction that also touches the campaign (the
    /// scheduler takes a campaign untouched for long for a lost plan). Rows that exist
    /// are left alone. Returns how many batches the page made.
    pub async fn plan_batches(
        &self,
        campaign_id: i64,
        first_batch: i64,
        batch_size: usize,
        members: &[AudienceMember],
    ) -> Result<i64, StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let mut batches = 0;
        for (i, batch) in members.chunks(batch_size.max(1)).enumerate() {
            insert_batch(
                &mut tx,
                self.backend,
                campaign_id,
                first_batch + i as i64,
                batch,
                now,
            )
            .await?;
            batches += 1;
        }
        super::campaigns::touch(&mut *tx, campaign_id, now).await?;
        tx.commit().await?;
        Ok(batches)
    }

    /// Claims the pending recipients of a batch for this sender, atomically, and returns
    /// them with their subscriber data. Rows claimed by someone else are not returned,
    /// unless their claim is older than `take_over_before` (ms since the epoch): then
    /// their sender stopped mid-batch (its claims are renewed while it lives), and this
    /// sender takes them over. Pass `None` where sending twice must be avoided (a
    /// provider without idempotency keys): such claims are failed by
    /// [`Store::recover_stale_claims`] instead.
    pub async fn claim_batch(
        &self,
        campaign_id: i64,
        batch_no: i64,
        take_over_before: Option<i64>,
    ) -> Result<Vec<Recipient>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE deliveries SET status = 'skipped', updated_at = $1, \
             last_error = 'unsubscribed or suppressed after the campaign was planned' \
             WHERE campaign_id = $2 AND batch_no = $3 AND status = 'pending' AND claimed_at IS NULL AND (\
               EXISTS (SELECT 1 FROM subscribers s WHERE s.id = deliveries.subscriber_id AND s.status <> 'enabled') \
               OR EXISTS (SELECT 1 FROM suppressions x WHERE x.email = deliveries.email \
                          AND x.workspace_id = (SELECT workspace_id FROM campaigns WHERE id = $2)))",
        )
        .bind(now)
        .bind(campaign_id)
        .bind(batch_no)
        .execute(&mut *tx)
        .await?;
        // The claim returns what rendering needs, so a batch's rows cross from SQLite's
        // connection thread once (sqlx hands every row over a channel; reading them back
        // in a second statement cost `serve` ~5% more CPU per message at 1,000,000).
        // The rows are exactly the ones this claim took (another sender of the same
        // batch may hold others). Subqueries, not a join: SQLite's RETURNING reads only
        // the updated table.
        let mut recipients = sqlx::query_as::<_, Recipient>(
            "UPDATE deliveries SET attempts = attempts + 1, claimed_at = $1, \
             updated_at = $1, last_error = CASE WHEN claimed_at IS NOT NULL \
               THEN 'the sender stopped mid-batch; taken over by another' ELSE last_error END \
             WHERE campaign_id = $2 AND batch_no = $3 AND status = 'pending' \
             AND (claimed_at IS NULL OR claimed_at < $4) \
             RETURNING id AS delivery_id, subscriber_id, email, \
               (SELECT s.name FROM subscribers s WHERE s.id = deliveries.subscriber_id) AS name, \
               (SELECT s.attributes FROM subscribers s WHERE s.id = deliveries.subscriber_id) AS attributes, \
               delivery_key, attempts",
        )
        .bind(now)
        .bind(campaign_id)
        .bind(batch_no)
        .bind(take_over_before.unwrap_or(i64::MIN))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        // RETURNING gives rows in no particular order; a batch is sent in ledger order.
        recipients.sort_unstable_by_key(|r| r.delivery_id);
        Ok(recipients)
    }

    /// Renews the claims this sender holds on a batch, so a slow batch is not mistaken
    /// for a dead one. Returns how many rows were renewed.
    pub async fn renew_claims(&self, campaign_id: i64, batch_no: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE deliveries SET claimed_at = $1 WHERE campaign_id = $2 AND batch_no = $3 \
             AND status = 'pending' AND claimed_at IS NOT NULL",
        )
        .bind(now_ms())
        .bind(campaign_id)
        .bind(batch_no)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// Records the outcomes of claimed recipients in one transaction. Only rows still
    /// claimed change, so a late duplicate cannot overwrite a recorded outcome.
    /// A recipient put back for a retry that has had `max_attempts` attempts is failed
    /// instead, keeping its last error.
    pub async fn record_outcomes(
        &self,
        outcomes: &[(i64, Outcome)],
        max_attempts: u32,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        // One statement per chunk of rows (a VALUES list joined by id) instead of one
        // per row: on PostgreSQL each statement is a network round trip.
        for chunk in outcomes.chunks(OUTCOMES_PER_STATEMENT) {
            // Placeholders in the order they appear and bind; bare `?` on SQLite
            // (see `insert_batch`: named ones cost O(n²) to bind there).
            let (max_attempts_at, now_at) = match self.backend {
                Backend::Sqlite => ("?", "?"),
                Backend::Postgres => ("$1", "$2"),
            };
            let mut sql = format!(
                "UPDATE deliveries SET \
                 status = CASE WHEN v.column2 = 'pending' AND deliveries.attempts >= {max_attempts_at} THEN 'failed' ELSE v.column2 END, \
                 provider_message_id = COALESCE(v.column3, deliveries.provider_message_id), \
                 last_error = v.column4, sent_at = COALESCE(v.column5, deliveries.sent_at), \
                 claimed_at = NULL, updated_at = {now_at} FROM (VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                match self.backend {
                    Backend::Sqlite => sql.push_str("(?, ?, ?, ?, ?)"),
                    Backend::Postgres => {
                        let b = 3 + i * 5;
                        sql.push_str(&format!(
                            "(${b}, ${}, ${}, ${}, ${})",
                            b + 1,
                            b + 2,
                            b + 3,
                            b + 4
                        ));
                    }
                }
            }
            sql.push_str(
                ") AS v WHERE deliveries.id = v.column1 AND deliveries.status = 'pending' \
                 AND deliveries.claimed_at IS NOT NULL",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(i64::from(max_attempts))
                .bind(now);
            for (delivery_id, outcome) in chunk {
                let (status, message_id, error, sent_at) = match outcome {
                    Outcome::Sent {
                        provider_message_id,
                    } => (
                        DeliveryStatus::Sent,
                        provider_message_id.as_deref(),
                        None,
                        Some(now),
                    ),
                    Outcome::Failed { error } => {
                        (DeliveryStatus::Failed, None, Some(error.as_str()), None)
                    }
                    Outcome::Skipped { reason } => {
                        (DeliveryStatus::Skipped, None, Some(reason.as_str()), None)
                    }
                    Outcome::Retry { error } => {
                        (DeliveryStatus::Pending, None, Some(error.as_str()), None)
                    }
                };
                query = query
                    .bind(*delivery_id)
                    .bind(status.as_str())
                    .bind(message_id)
                    .bind(error)
                    .bind(sent_at);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims older than `lease_ms` (their sender died mid-batch; a live one renews its
    /// claims). When the provider is idempotent (`resend_safe`) nothing changes here:
    /// the batches holding such claims are returned for enqueueing, and their send job
    /// takes the claims over ([`Store::claim_batch`]). A process that dies before it
    /// enqueues them leaves the claims as they were, for the next look to find. When
    /// resending could deliver twice, the rows are failed with a reason instead, and no
    /// batch is returned.
    pub async fn recover_stale_claims(
        &self,
        campaign_id: i64,
        lease_ms: i64,
        resend_safe: bool,
    ) -> Result<Vec<i64>, StoreError> {
        let now = now_ms();
        let cutoff = now - lease_ms;
        if resend_safe {
            Ok(sqlx::query_scalar::<_, i64>(STALE_CLAIMED_BATCHES)
                .bind(campaign_id)
                .bind(cutoff)
                .fetch_all(self.pool())
                .await?)
        } else {
            sqlx::query(FAIL_STALE_CLAIMS)
                .bind(now)
                .bind(campaign_id)
                .bind(cutoff)
                .execute(self.pool())
                .await?;
            Ok(Vec::new())
        }
    }

    /// Marks every pending recipient of a campaign skipped (a cancelled campaign); those
    /// a sender holds keep their claim, and the sender records their outcome.
    pub async fn skip_pending(&self, campaign_id: i64, reason: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'skipped', last_error = $1, updated_at = $2 \
             WHERE campaign_id = $3 AND status = 'pending' AND claimed_at IS NULL",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(campaign_id)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// Batches of the campaign that are enqueued and not finished (some row pending or
    /// sending): the campaign's share of the queue.
    pub async fn outstanding_batches(&self, campaign_id: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(OUTSTANDING_BATCHES)
            .bind(campaign_id)
            .fetch_one(self.pool())
            .await?)
    }

    /// Starts moving the campaign's window one batch on (`enqueued_through + 1`), if
    /// anything beyond the window is still pending. The move holds the campaign's row
    /// (PostgreSQL) or the write lock (SQLite) until [`WindowAdvance::commit`], so the
    /// caller enqueues the batch in between: concurrent callers wait and then get the
    /// next batch, never the same one, and a process that dies before its commit leaves
    /// the batch enqueued and the window where it was, so it is enqueued again (a
    /// duplicate job claims nothing). Moving first and enqueueing after the commit lost
    /// the batch when the process died in between, until `STALL_RECOVERY_SECS`.
    ///
    /// The batch itself may have no pending row left (its job ran before a commit that
    /// never came): it is still the next one, so that the window moves past it to the
    /// pending batches behind it.
    pub async fn begin_window_advance(
        &self,
        campaign_id: i64,
    ) -> Result<Option<WindowAdvance>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let batch_no: Option<i64> = sqlx::query_scalar(
            "UPDATE campaigns SET enqueued_through = enqueued_through + 1 WHERE id = $1 AND EXISTS \
             (SELECT 1 FROM deliveries d WHERE d.campaign_id = $1 AND d.status = 'pending' \
              AND d.batch_no > campaigns.enqueued_through) \
             RETURNING enqueued_through",
        )
        .bind(campaign_id)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(batch_no.map(|batch_no| WindowAdvance { tx, batch_no }))
    }

    /// Enqueued batches whose pending rows nobody touched for `idle_ms` (their job was
    /// lost, e.g. a queue without persistence restarted). Touches the rows so the next
    /// scan does not return them again at once.
    pub async fn stalled_batches(
        &self,
        campaign_id: i64,
        idle_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let now = now_ms();
        let batches: Vec<i64> = sqlx::query_scalar(STALLED_BATCHES)
            .bind(now)
            .bind(campaign_id)
            .bind(now - idle_ms)
            .fetch_all(self.pool())
            .await?;
        Ok(batches
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect())
    }

    /// A page of a campaign's ledger, optionally one status and/or one address.
    pub async fn deliveries(
        &self,
        campaign_id: i64,
        status: Option<DeliveryStatus>,
        email: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<super::Page<DeliveryRow>, StoreError> {
        let (stored, claim) = status
            .map(claim_filter)
            .map_or((None, ""), |(stored, claim)| (Some(stored), claim));
        let rows = sqlx::query_as::<_, DeliveryRow>(sqlx::AssertSqlSafe(format!(
            "SELECT id, subscriber_id, email, \
             CASE WHEN claimed_at IS NOT NULL AND status = 'pending' THEN 'sending' ELSE status END AS status, \
             attempts, provider_message_id, last_error, batch_no, \
             updated_at, sent_at FROM deliveries WHERE campaign_id = $1 AND id > $2 \
             AND ($3 IS NULL OR status = $3){claim} AND ($4 IS NULL OR email = $4) ORDER BY id LIMIT CAST($5 AS BIGINT)",
        )))
        .bind(campaign_id)
        .bind(after)
        .bind(stored)
        .bind(email)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(super::Page::from_rows(rows, limit, |d| d.id))
    }

    /// Puts a campaign's failed recipients back to pending with fresh attempts, and
    /// reopens the campaign (running) if it had finished. Returns how many rows.
    pub async fn retry_failed(&self, campaign_id: i64) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(
            "UPDATE deliveries SET status = 'pending', attempts = 0, updated_at = $1, claimed_at = NULL, \
             last_error = 'retry requested' WHERE campaign_id = $2 AND status = 'failed'",
        )
        .bind(now)
        .bind(campaign_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            sqlx::query(
                "UPDATE campaigns SET status = 'running', finished_at = NULL, updated_at = $1, last_error = NULL \
                 WHERE id = $2 AND status IN ('done', 'failed')",
            )
            .bind(now)
            .bind(campaign_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Counts a campaign's rows in one status, stopping at `limit`: a range of the
    /// `(campaign_id, status, batch_no)` index, so it reads at most `limit` index
    /// entries however large the ledger is (and, for pending and sending, the rows'
    /// claims).
    pub async fn count_deliveries_up_to(
        &self,
        campaign_id: i64,
        status: DeliveryStatus,
        limit: i64,
    ) -> Result<i64, StoreError> {
        let (stored, claim) = claim_filter(status);
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE campaign_id = $1 AND status = $2{claim} \
             LIMIT CAST($3 AS BIGINT)) AS bounded",
        )))
        .bind(campaign_id)
        .bind(stored)
        .bind(limit)
        .fetch_one(self.pool())
        .await?)
    }

    /// Counts a campaign's rows in one status.
    pub async fn count_deliveries(
        &self,
        campaign_id: i64,
        status: DeliveryStatus,
    ) -> Result<i64, StoreError> {
        self.count_deliveries_up_to(campaign_id, status, i64::MAX)
            .await
    }
}

/// Rows of one batch per INSERT statement: 3 parameters each.
const ROWS_PER_INSERT: usize = 250;

/// Inserts one batch's ledger rows inside `tx`; rows that exist are left alone.
/// Writes one batch's ledger rows, [`ROWS_PER_INSERT`] per statement.
///
/// On SQLite every placeholder is a bare `?` and every row binds its own values: sqlx
/// binds a `$N` placeholder by looking its name up in the statement
/// (`sqlite3_bind_parameter_name`, a linear scan), so a statement of n named parameters
/// cost O(n²) to bind (3.7% of `serve`'s CPU in a `mailing bench` profile). PostgreSQL
/// numbers its parameters and shares the three that every row repeats.
async fn insert_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    campaign_id: i64,
    batch_no: i64,
    members: &[AudienceMember],
    now: i64,
) -> Result<(), StoreError> {
    for chunk in members.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO deliveries (campaign_id, subscriber_id, email, delivery_key, batch_no, \
             status, attempts, created_at, updated_at) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push_str("(?, ?, ?, ?, ?, 'pending', 0, ?, ?)"),
                Backend::Postgres => {
                    let b = i * 3;
                    sql.push_str(&format!(
                        "($1, ${}, ${}, ${}, $2, 'pending', 0, $3, $3)",
                        b + 4,
                        b + 5,
                        b + 6
                    ));
                }
            }
        }
        sql.push_str(" ON CONFLICT (campaign_id, subscriber_id) DO NOTHING");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if backend == Backend::Postgres {
            query = query.bind(campaign_id).bind(batch_no).bind(now);
        }
        for m in chunk {
            if backend == Backend::Sqlite {
                query = query
                    .bind(campaign_id)
                    .bind(m.id)
                    .bind(&m.email)
                    .bind(delivery_key(campaign_id, m.id))
                    .bind(batch_no)
                    .bind(now)
                    .bind(now);
            } else {
                query = query
                    .bind(m.id)
                    .bind(&m.email)
                    .bind(delivery_key(campaign_id, m.id));
            }
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// A window move in progress ([`Store::begin_window_advance`]): enqueue
/// [`WindowAdvance::batch_no`], then [`WindowAdvance::commit`]. Dropped without a
/// commit (the enqueue failed), the window stays where it was.
pub struct WindowAdvance {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    batch_no: i64,
}

impl WindowAdvance {
    /// The batch to enqueue.
    pub fn batch_no(&self) -> i64 {
        self.batch_no
    }

    /// Counts the enqueued batch in the window.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{numbered_subscribers, on_both_databases, on_both_databases_at};

    /// A running campaign over `n` subscribers, planned into batches of `per_batch`
    /// with `enqueued` batches in the window.
    async fn planned(n: usize, per_batch: usize, enqueued: i64) -> (Store, i64) {
        let store = crate::store::memory_store().await;
        let campaign = plan_on(&store, n, per_batch, enqueued).await;
        (store, campaign)
    }

    /// Records every claimed recipient as sent.
    async fn record_sent(store: &Store, claimed: &[Recipient]) {
        let sent: Vec<(i64, Outcome)> = claimed
            .iter()
            .map(|r| {
                (
                    r.delivery_id,
                    Outcome::Sent {
                        provider_message_id: None,
                    },
                )
            })
            .collect();
        store.record_outcomes(&sent, 3).await.unwrap();
    }

    /// [`planned`] on a store of the caller's; answers the campaign.
    async fn plan_on(store: &Store, n: usize, per_batch: usize, enqueued: i64) -> i64 {
        let list = store.create_list("l", None).await.unwrap();
        store
            .add_subscribers(list.id, &numbered_subscribers(n))
            .await
            .unwrap();
        let campaign = crate::store::campaigns::test_campaign(store, list.id, None).await;
        let audience = store.audience_page(campaign.id, 0, n as u32).await.unwrap();
        let batches = store
            .plan_batches(campaign.id, 0, per_batch, &audience)
            .await
            .unwrap();
        assert_eq!(batches as usize, n.div_ceil(per_batch));
        // Planning the same page again writes nothing new.
        store
            .plan_batches(campaign.id, 0, per_batch, &audience)
            .await
            .unwrap();
        assert_eq!(
            store.plan_progress(campaign.id).await.unwrap(),
            (audience[n - 1].id, batches - 1)
        );
        sqlx::query("UPDATE campaigns SET status = 'running', enqueued_through = $1 WHERE id = $2")
            .bind(enqueued - 1)
            .bind(campaign.id)
            .execute(store.pool())
            .await
            .unwrap();
        campaign.id
    }

    /// Inserts a ledger row for `subscriber` in `campaign` with the delivery key `key`.
    async fn insert_with_key(
        store: &Store,
        campaign: i64,
        subscriber: i64,
        key: &str,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "INSERT INTO deliveries (campaign_id, subscriber_id, email, delivery_key, batch_no, \
             status, attempts, created_at, updated_at) \
             VALUES ($1, $2, 'again@example.com', $3, 0, 'pending', 0, 0, 0) RETURNING id",
        )
        .bind(campaign)
        .bind(subscriber)
        .bind(key)
        .fetch_one(store.pool())
        .await
    }

    #[tokio::test]
    async fn the_ledger_keeps_its_rows_ids_and_counter_when_delivery_keys_lose_their_index() {
        on_both_databases_at(
            "the_ledger_keeps_its_rows_ids_and_counter_when_delivery_keys_lose_their_index",
            7,
            async |store: &Store| {
                let campaign = plan_on(store, 5, 5, 1).await;
                let claimed = store.claim_batch(campaign, 0, None).await.unwrap();
                assert_eq!(claimed.len(), 5);
                let outcomes: Vec<(i64, Outcome)> = claimed
                    .iter()
                    .map(|r| {
                        let outcome = if r.delivery_id == claimed[0].delivery_id {
                            Outcome::Sent {
                                provider_message_id: Some("pm-before-upgrade".into()),
                            }
                        } else {
                            Outcome::Retry {
                                error: "try later".into(),
                            }
                        };
                        (r.delivery_id, outcome)
                    })
                    .collect();
                store.record_outcomes(&outcomes, 3).await.unwrap();
                // The newest row goes, so the id counter is ahead of the rows left.
                let newest = claimed.iter().max_by_key(|r| r.delivery_id).unwrap();
                sqlx::query("DELETE FROM deliveries WHERE id = $1")
                    .bind(newest.delivery_id)
                    .execute(store.pool())
                    .await
                    .unwrap();
                // Before: a second row with a key in use is refused.
                assert!(
                    insert_with_key(
                        store,
                        campaign,
                        newest.subscriber_id,
                        &claimed[0].delivery_key
                    )
                    .await
                    .is_err()
                );
                let before = store
                    .deliveries(campaign, None, None, 0, 100)
                    .await
                    .unwrap();

                store.migrate().await.unwrap();

                let after = store
                    .deliveries(campaign, None, None, 0, 100)
                    .await
                    .unwrap();
                assert_eq!(after.items.len(), 4);
                assert_eq!(format!("{:?}", before.items), format!("{:?}", after.items));
                // The pair (campaign, subscriber) is what stays unique, and ids are not reused.
                let again = insert_with_key(
                    store,
                    campaign,
                    newest.subscriber_id,
                    &claimed[0].delivery_key,
                )
                .await
                .unwrap();
                assert!(again > newest.delivery_id, "{again} reuses an id");
                assert!(
                    insert_with_key(store, campaign, newest.subscriber_id, "another-key")
                        .await
                        .is_err()
                );
                // Provider webhooks still find the sent row by its message id.
                let found = store
                    .apply_provider_event(
                        Some("pm-before-upgrade"),
                        Some(&claimed[0].email),
                        crate::store::suppressions::ProviderEvent::Complained,
                        "complaint",
                    )
                    .await
                    .unwrap();
                assert!(found);
                if store.backend() == Backend::Sqlite {
                    let plan =
                        query_plan(store, crate::store::suppressions::SENT_ROW_BY_MESSAGE_ID)
                            .await;
                    assert!(
                        plan.contains(
                            "INDEX deliveries_subscriber (subscriber_id=? AND provider_message_id=?)"
                        ),
                        "{plan}"
                    );
                }
            },
        )
        .await;
    }

    #[tokio::test]
    async fn outcomes_are_recorded_row_by_row_in_chunked_statements() {
        // 250 rows: three statements, the last one partial.
        let (store, campaign) = planned(250, 250, 1).await;
        let claimed = store.claim_batch(campaign, 0, None).await.unwrap();
        assert_eq!(claimed.len(), 250);
        let outcomes: Vec<(i64, Outcome)> = claimed
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let outcome = match i % 4 {
                    0 => Outcome::Sent {
                        provider_message_id: Some(format!("msg-{}", r.delivery_id)),
                    },
                    1 => Outcome::Failed {
                        error: format!("refused {}", r.delivery_id),
                    },
                    2 => Outcome::Skipped {
                        reason: "plugin".into(),
                    },
                    _ => Outcome::Retry {
                        error: "try later".into(),
                    },
                };
                (r.delivery_id, outcome)
            })
            .collect();
        store.record_outcomes(&outcomes, 3).await.unwrap();
        let page = store
            .deliveries(campaign, None, None, 0, 500)
            .await
            .unwrap()
            .items;
        assert_eq!(page.len(), 250);
        for (row, (id, outcome)) in page.iter().zip(&outcomes) {
            assert_eq!(row.id, *id);
            match outcome {
                Outcome::Sent {
                    provider_message_id,
                } => {
                    assert_eq!(row.status, "sent");
                    assert_eq!(&row.provider_message_id, provider_message_id);
                    assert!(row.sent_at.is_some());
                }
                Outcome::Failed { error } => {
                    assert_eq!(row.status, "failed");
                    assert_eq!(row.last_error.as_ref(), Some(error));
                }
                Outcome::Skipped { .. } => assert_eq!(row.status, "skipped"),
                Outcome::Retry { .. } => {
                    assert_eq!(row.status, "pending", "1 attempt of 3: back to pending");
                    assert_eq!(row.last_error.as_deref(), Some("try later"));
                }
            }
        }
        // A late duplicate changes nothing: only rows still claimed are written.
        let late: Vec<(i64, Outcome)> = outcomes
            .iter()
            .map(|(id, _)| {
                (
                    *id,
                    Outcome::Failed {
                        error: "late".into(),
                    },
                )
            })
            .collect();
        store.record_outcomes(&late, 3).await.unwrap();
        assert_eq!(
            store
                .count_deliveries(campaign, DeliveryStatus::Sent)
                .await
                .unwrap(),
            63
        );
        assert_eq!(
            store
                .count_deliveries(campaign, DeliveryStatus::Failed)
                .await
                .unwrap(),
            63
        );
        // Retried rows at their last attempt fail instead, keeping the error.
        let again = store.claim_batch(campaign, 0, None).await.unwrap();
        assert_eq!(again.len(), 62);
        let retry: Vec<(i64, Outcome)> = again
            .iter()
            .map(|r| {
                (
                    r.delivery_id,
                    Outcome::Retry {
                        error: "still down".into(),
                    },
                )
            })
            .collect();
        store.record_outcomes(&retry, 2).await.unwrap();
        assert_eq!(
            store
                .count_deliveries(campaign, DeliveryStatus::Failed)
                .await
                .unwrap(),
            125
        );
        assert_eq!(
            store
                .count_deliveries(campaign, DeliveryStatus::Pending)
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn the_window_counts_only_enqueued_unfinished_batches() {
        let (store, campaign) = planned(100, 10, 3).await;
        assert_eq!(store.outstanding_batches(campaign).await.unwrap(), 3);
        let claimed = store.claim_batch(campaign, 0, None).await.unwrap();
        assert_eq!(
            store.outstanding_batches(campaign).await.unwrap(),
            3,
            "sending counts"
        );
        record_sent(&store, &claimed).await;
        assert_eq!(store.outstanding_batches(campaign).await.unwrap(), 2);
        let advance = store.begin_window_advance(campaign).await.unwrap().unwrap();
        assert_eq!(advance.batch_no(), 3);
        advance.commit().await.unwrap();
        assert_eq!(store.outstanding_batches(campaign).await.unwrap(), 3);
    }

    /// Claims of a sender that died stay claimed; the scheduler finds their batch
    /// without changing a row, and the batch's next job takes them over, but only once
    /// they are older than the lease and only where resending is safe.
    #[tokio::test]
    async fn a_dead_sender_s_stale_claims_are_taken_over_by_the_batch_s_next_job() {
        let (store, campaign) = planned(20, 10, 2).await;
        let dead = store.claim_batch(campaign, 1, None).await.unwrap();
        assert_eq!(dead.len(), 10);
        let lease = 60_000;
        assert!(
            store
                .recover_stale_claims(campaign, lease, true)
                .await
                .unwrap()
                .is_empty(),
            "fresh claims are not stale"
        );
        let fresh_cutoff = now_ms() - lease;
        assert!(
            store
                .claim_batch(campaign, 1, Some(fresh_cutoff))
                .await
                .unwrap()
                .is_empty(),
            "a live sender's claims are not taken over"
        );
        sqlx::query("UPDATE deliveries SET claimed_at = claimed_at - 120000 WHERE batch_no = 1")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(
            store
                .recover_stale_claims(campaign, lease, true)
                .await
                .unwrap(),
            vec![1]
        );
        assert_eq!(
            store
                .count_deliveries(campaign, DeliveryStatus::Pending)
                .await
                .unwrap(),
            10,
            "finding the batch changes no row (batch 0 is pending)"
        );
        assert!(
            store
                .claim_batch(campaign, 1, None)
                .await
                .unwrap()
                .is_empty(),
            "without take-over (SMTP) stale claims are not claimed"
        );
        let taken = store
            .claim_batch(campaign, 1, Some(now_ms() - lease))
            .await
            .unwrap();
        assert_eq!(
            taken.iter().map(|r| r.delivery_id).collect::<Vec<_>>(),
            dead.iter().map(|r| r.delivery_id).collect::<Vec<_>>(),
            "the whole batch, in the same order"
        );
        assert!(taken.iter().all(|r| r.attempts == 2));
        let errors: Vec<Option<String>> =
            sqlx::query_scalar("SELECT last_error FROM deliveries WHERE batch_no = 1")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert!(
            errors
                .iter()
                .all(|e| e.as_deref().is_some_and(|e| e.contains("taken over"))),
            "{errors:?}"
        );
        assert!(
            store
                .recover_stale_claims(campaign, lease, true)
                .await
                .unwrap()
                .is_empty(),
            "taken-over claims are fresh again"
        );
        // Where resending could deliver twice, stale claims are failed, not returned.
        sqlx::query("UPDATE deliveries SET claimed_at = claimed_at - 120000 WHERE batch_no = 1")
            .execute(store.pool())
            .await
            .unwrap();
        assert!(
            store
                .recover_stale_claims(campaign, lease, false)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .count_deliveries(campaign, DeliveryStatus::Failed)
                .await
                .unwrap(),
            10
        );
    }

    /// The window moves only when its move is committed, after the batch was enqueued:
    /// a move dropped uncommitted (the enqueue failed, or the process died) offers the
    /// same batch again, also once that batch has been sent, so the window moves on
    /// past it; a committed move offers the next.
    #[tokio::test]
    async fn the_window_moves_only_when_its_move_is_committed() {
        let (store, campaign) = planned(50, 10, 1).await;
        let lost = store.begin_window_advance(campaign).await.unwrap().unwrap();
        assert_eq!(lost.batch_no(), 1);
        drop(lost);
        // Batch 1's job ran although its move was never committed.
        let claimed = store.claim_batch(campaign, 1, None).await.unwrap();
        assert_eq!(claimed.len(), 10);
        record_sent(&store, &claimed).await;
        let again = store.begin_window_advance(campaign).await.unwrap().unwrap();
        assert_eq!(again.batch_no(), 1, "offered again, not skipped");
        again.commit().await.unwrap();
        for batch in 2..=4 {
            let next = store.begin_window_advance(campaign).await.unwrap().unwrap();
            assert_eq!(next.batch_no(), batch);
            next.commit().await.unwrap();
        }
        assert!(
            store
                .begin_window_advance(campaign)
                .await
                .unwrap()
                .is_none(),
            "nothing beyond the last batch"
        );
    }

    #[tokio::test]
    async fn an_address_suppressed_after_planning_is_skipped_at_claim() {
        let (store, campaign) = planned(5, 5, 1).await;
        assert!(store.suppress("r3@example.com", "complaint").await.unwrap());
        let claimed = store.claim_batch(campaign, 0, None).await.unwrap();
        assert_eq!(claimed.len(), 4);
        assert!(claimed.iter().all(|r| r.email != "r3@example.com"));
        let skipped = store
            .deliveries(campaign, Some(DeliveryStatus::Skipped), None, 0, 10)
            .await
            .unwrap()
            .items;
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].email, "r3@example.com");
    }

    /// The plan SQLite (the version sqlx bundles, not the system's) chooses for `sql`.
    async fn query_plan(store: &Store, sql: &str) -> String {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .fetch_all(store.pool())
                .await
                .unwrap();
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test]
    async fn per_batch_ledger_queries_read_only_the_window() {
        // A planned campaign, so the planner sees real tables (no ANALYZE statistics,
        // as in a fresh deployment).
        let (store, _) = planned(50, 10, 2).await;
        let window_range = "deliveries_status (campaign_id=? AND status=? AND batch_no<?)";
        for sql in [
            OUTSTANDING_BATCHES,
            STALLED_BATCHES,
            STALE_CLAIMED_BATCHES,
            FAIL_STALE_CLAIMS,
        ] {
            let plan = query_plan(&store, sql).await;
            assert!(plan.contains(window_range), "{sql}\n{plan}");
            assert!(!plan.contains("SCAN deliveries"), "{sql}\n{plan}");
        }
    }

    #[tokio::test]
    async fn a_subscriber_s_ledger_rows_are_read_by_index_not_by_scanning_the_ledger() {
        let (store, _) = planned(50, 10, 2).await;
        for sql in [
            crate::store::subscribers::DELETE_SUBSCRIBER_DELIVERIES,
            crate::store::suppressions::SENT_ROW_BY_ADDRESS,
        ] {
            let plan = query_plan(&store, sql).await;
            assert!(
                plan.contains("INDEX deliveries_subscriber (subscriber_id=?)"),
                "{sql}\n{plan}"
            );
            assert!(!plan.contains("SCAN"), "{sql}\n{plan}");
        }
        let sql = crate::store::suppressions::SENT_ROW_BY_MESSAGE_ID;
        let plan = query_plan(&store, sql).await;
        assert!(
            plan.contains(
                "INDEX deliveries_subscriber (subscriber_id=? AND provider_message_id=?)"
            ),
            "{sql}\n{plan}"
        );
        assert!(!plan.contains("SCAN"), "{sql}\n{plan}");
    }

    /// A campaign of three recipients in one batch, claimed and recorded sent with the
    /// provider message id `pm-{delivery_id}` each; returns the campaign and its rows.
    async fn sent_with_message_ids(store: &Store) -> (i64, Vec<Recipient>) {
        let campaign = plan_on(store, 3, 3, 1).await;
        let claimed = store.claim_batch(campaign, 0, None).await.unwrap();
        let outcomes: Vec<(i64, Outcome)> = claimed
            .iter()
            .map(|r| {
                let provider_message_id = Some(format!("pm-{}", r.delivery_id));
                (
                    r.delivery_id,
                    Outcome::Sent {
                        provider_message_id,
                    },
                )
            })
            .collect();
        store.record_outcomes(&outcomes, 3).await.unwrap();
        (campaign, claimed)
    }

    /// Asserts that the campaign's only row not `sent` is `changed`'s, now `status`.
    async fn only_row_changed(store: &Store, campaign: i64, changed: &Recipient, status: &str) {
        let rows = store
            .deliveries(campaign, None, None, 0, 100)
            .await
            .unwrap()
            .items;
        assert_eq!(rows.len(), 3);
        for row in rows {
            let expected = if row.id == changed.delivery_id {
                status
            } else {
                "sent"
            };
            assert_eq!(row.status, expected, "{row:?}");
        }
    }

    #[tokio::test]
    async fn a_provider_event_finds_its_row_by_message_id_under_the_address() {
        on_both_databases(
            "a_provider_event_finds_its_row_by_message_id_under_the_address",
            async |store: &Store| {
                let (campaign, claimed) = sent_with_message_ids(store).await;
                let pm = |r: &Recipient| format!("pm-{}", r.delivery_id);
                let event = crate::store::suppressions::ProviderEvent::Bounced { permanent: false };
                let (first, second) = (&claimed[0], &claimed[1]);
                // Another recipient's id under this address, and an id with no address,
                // change nothing.
                for (id, address) in [(pm(second), Some(first.email.as_str())), (pm(first), None)] {
                    assert!(
                        !store
                            .apply_provider_event(Some(&id), address, event, "450 later")
                            .await
                            .unwrap(),
                        "{id} {address:?}"
                    );
                }
                assert!(
                    store
                        .apply_provider_event(Some(&pm(second)), Some(&second.email), event, "450")
                        .await
                        .unwrap()
                );
                only_row_changed(store, campaign, second, "bounced").await;
                // The id is indexed under its subscriber only.
                let standalone: i64 = sqlx::query_scalar(match store.backend() {
                    Backend::Sqlite => {
                        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'deliveries_provider_message'"
                    }
                    Backend::Postgres => {
                        "SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'deliveries_provider_message'"
                    }
                })
                .fetch_one(store.pool())
                .await
                .unwrap();
                assert_eq!(standalone, 0);
            },
        )
        .await;
    }

    #[tokio::test]
    async fn a_bounce_reported_by_address_alone_marks_that_recipient_s_row() {
        on_both_databases(
            "a_bounce_reported_by_address_alone_marks_that_recipient_s_row",
            async |store: &Store| {
                let (campaign, claimed) = sent_with_message_ids(store).await;
                let bounced = &claimed[1];
                let event = crate::store::suppressions::ProviderEvent::Bounced { permanent: true };
                assert!(
                    store
                        .apply_provider_event(None, Some(&bounced.email), event, "550 no such user")
                        .await
                        .unwrap()
                );
                only_row_changed(store, campaign, bounced, "bounced").await;
                // An address that no subscriber has changes no row.
                assert!(
                    !store
                        .apply_provider_event(None, Some("nobody@example.com"), event, "550")
                        .await
                        .unwrap()
                );
            },
        )
        .await;
    }

    #[tokio::test]
    async fn a_bounded_count_stops_at_its_limit() {
        let (store, campaign) = planned(40, 40, 1).await;
        let pending = DeliveryStatus::Pending;
        assert_eq!(
            store
                .count_deliveries_up_to(campaign, pending, 7)
                .await
                .unwrap(),
            7
        );
        assert_eq!(
            store
                .count_deliveries_up_to(campaign, pending, i64::MAX)
                .await
                .unwrap(),
            40
        );
        assert_eq!(
            store
                .count_deliveries_up_to(campaign, DeliveryStatus::Sent, 7)
                .await
                .unwrap(),
            0
        );
    }

    #[test]
    fn delivery_key_is_stable_and_distinct_per_recipient() {
        assert_eq!(delivery_key(1, 2), delivery_key(1, 2));
        assert_ne!(delivery_key(1, 2), delivery_key(2, 1));
        assert_eq!(delivery_key(1, 2).len(), 32);
        // Keys are stored in ledgers and outboxes: the encoding must never change.
        assert_eq!(delivery_key(1, 2), "aed5244137e3ac71c6722d36f2599c1c");
    }

    /// 14 subscribers, one disabled and one suppressed: 12 recipients, planned in pages
    /// of 5 with batches of 2, then one page planned again.
    async fn plan_in_pages(store: &Store) {
        let list = store.create_list("l", None).await.unwrap();
        store
            .add_subscribers(list.id, &numbered_subscribers(14))
            .await
            .unwrap();
        sqlx::query("UPDATE subscribers SET status = 'blocklisted' WHERE email = 'r3@example.com'")
            .execute(store.pool())
            .await
            .unwrap();
        store.suppress("r7@example.com", "bounce").await.unwrap();
        let campaign = crate::store::campaigns::test_campaign(store, list.id, None).await;
        let (mut after, mut batch, mut pages) = (0, 0, Vec::new());
        loop {
            let page = store
                .plan_page(campaign.id, after, batch, 2, 5)
                .await
                .unwrap();
            let Some(last) = page.last_subscriber else {
                assert_eq!(
                    page,
                    PlannedPage {
                        recipients: 0,
                        last_subscriber: None,
                        batches: 0
                    }
                );
                break;
            };
            pages.push((page.recipients, page.batches));
            after = last;
            batch += page.batches;
        }
        assert_eq!(pages, vec![(5, 3), (5, 3), (2, 1)]);
        // Planning the first page again changes nothing.
        let again = store.plan_page(campaign.id, 0, 0, 2, 5).await.unwrap();
        assert_eq!(again.recipients, 5);
        let ledger: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT d.subscriber_id, d.email, d.delivery_key, d.batch_no FROM deliveries d \
             WHERE d.campaign_id = $1 ORDER BY d.subscriber_id",
        )
        .bind(campaign.id)
        .fetch_all(store.pool())
        .await
        .unwrap();
        let emails: Vec<&str> = ledger.iter().map(|r| r.1.as_str()).collect();
        let expected: Vec<String> = (0..14)
            .filter(|i| *i != 3 && *i != 7)
            .map(|i| format!("r{i}@example.com"))
            .collect();
        assert_eq!(emails, expected);
        let batches: Vec<i64> = ledger.iter().map(|r| r.3).collect();
        assert_eq!(batches, vec![0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 6, 6]);
        for (subscriber, _, key, _) in &ledger {
            assert_eq!(
                key,
                &delivery_key(campaign.id, *subscriber),
                "subscriber {subscriber}"
            );
        }
    }

    /// The import's chunks and the plan's pages let PostgreSQL's foreign-key checks keep
    /// a generic plan for their own statements only (`Store::fk_checks_keep_plans`): on
    /// every pooled connection, the planning the store set up holds again after them.
    #[tokio::test]
    async fn the_plan_leaves_its_connections_planning_every_execution() {
        on_both_databases(
            "the_plan_leaves_its_connections_planning_every_execution",
            async |store: &Store| {
                plan_in_pages(store).await;
                if store.backend() != Backend::Postgres {
                    return;
                }
                let mut held = Vec::new();
                for _ in 0..store.pool().options().get_max_connections() {
                    let mut conn = store.pool().acquire().await.expect("a connection");
                    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
                        .fetch_one(&mut *conn)
                        .await
                        .unwrap();
                    assert_eq!(mode, "force_custom_plan");
                    held.push(conn);
                }
            },
        )
        .await;
    }

    /// Rows stored by status: `(status, claimed)` for each row of the campaign.
    async fn stored_claims(store: &Store, campaign: i64) -> Vec<(String, bool)> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, CAST(CASE WHEN claimed_at IS NULL THEN 0 ELSE 1 END AS BIGINT) \
             FROM deliveries WHERE campaign_id = $1 ORDER BY id",
        )
        .bind(campaign)
        .fetch_all(store.pool())
        .await
        .unwrap();
        rows.into_iter().map(|(s, c)| (s, c == 1)).collect()
    }

    /// A claim changes no indexed column (migration 0010): the row stays `pending` with
    /// `claimed_at` set, and every reader still tells it apart as `sending`.
    #[tokio::test]
    async fn a_claim_is_written_in_place_and_read_as_sending() {
        on_both_databases(
            "a_claim_is_written_in_place_and_read_as_sending",
            async |store: &Store| {
                let campaign = plan_on(store, 10, 5, 2).await;
                let claimed = store.claim_batch(campaign, 0, None).await.unwrap();
                assert_eq!(claimed.len(), 5);
                let stored = stored_claims(store, campaign).await;
                assert!(stored[..5].iter().all(|(s, c)| s == "pending" && *c), "{stored:?}");
                assert!(stored[5..].iter().all(|(s, c)| s == "pending" && !*c), "{stored:?}");

                for (status, n) in [(DeliveryStatus::Sending, 5), (DeliveryStatus::Pending, 5)] {
                    assert_eq!(store.count_deliveries(campaign, status).await.unwrap(), n);
                    let page = store
                        .deliveries(campaign, Some(status), None, 0, 100)
                        .await
                        .unwrap()
                        .items;
                    assert_eq!(page.len(), n as usize, "{status}");
                    assert!(page.iter().all(|d| d.status == status.as_str()), "{page:?}");
                }
                let all = store.deliveries(campaign, None, None, 0, 100).await.unwrap().items;
                let shown: Vec<&str> = all.iter().map(|d| d.status.as_str()).collect();
                assert_eq!(shown, [["sending"; 5], ["pending"; 5]].concat());
                // A claimed row is neither claimed again nor skipped by a cancellation.
                assert!(store.claim_batch(campaign, 0, None).await.unwrap().is_empty());
                assert_eq!(store.skip_pending(campaign, "cancelled").await.unwrap(), 5);
                record_sent(store, &claimed).await;
                assert_eq!(
                    store.count_deliveries(campaign, DeliveryStatus::Sent).await.unwrap(),
                    5
                );
                assert_eq!(store.count_deliveries(campaign, DeliveryStatus::Sending).await.unwrap(), 0);
                if store.backend() == Backend::Postgres {
                    // Room on each page for the claims' row versions (HOT updates).
                    let options: Option<String> = sqlx::query_scalar(
                        "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = 'deliveries'",
                    )
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
                    assert_eq!(options.as_deref(), Some("fillfactor=50"));
                }
            },
        )
        .await;
    }

    /// The claim returns what rendering needs (the subscriber's name and attributes, the
    /// row's key and attempt count) in ledger order, for the rows this claim took only.
    #[tokio::test]
    async fn a_claim_returns_its_rows_with_their_subscribers_in_ledger_order() {
        on_both_databases(
            "a_claim_returns_its_rows_with_their_subscribers_in_ledger_order",
            async |store: &Store| {
                let campaign = plan_on(store, 12, 6, 2).await;
                // Names and attributes set after planning: the claim reads them now.
                sqlx::query(
                    "UPDATE subscribers SET name = 'Name ' || id, \
                     attributes = '{\"n\":' || id || '}' WHERE email <> 'r3@example.com'",
                )
                .execute(store.pool())
                .await
                .unwrap();
                // Another sender holds one row of batch 0.
                let held: i64 = sqlx::query_scalar(
                    "UPDATE deliveries SET claimed_at = $1 WHERE campaign_id = $2 \
                     AND email = 'r2@example.com' RETURNING id",
                )
                .bind(now_ms())
                .bind(campaign)
                .fetch_one(store.pool())
                .await
                .unwrap();
                let claimed = store.claim_batch(campaign, 0, None).await.unwrap();
                let expected: Vec<(i64, i64, String, Option<String>, String, String)> =
                    sqlx::query_as(
                        "SELECT d.id, d.subscriber_id, d.email, s.name, s.attributes, d.delivery_key \
                         FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id \
                         WHERE d.campaign_id = $1 AND d.batch_no = 0 AND d.id <> $2 ORDER BY d.id",
                    )
                    .bind(campaign)
                    .bind(held)
                    .fetch_all(store.pool())
                    .await
                    .unwrap();
                assert_eq!(expected.len(), 5);
                let got: Vec<(i64, i64, String, Option<String>, String, String)> = claimed
                    .iter()
                    .map(|r| {
                        (
                            r.delivery_id,
                            r.subscriber_id,
                            r.email.clone(),
                            r.name.clone(),
                            r.attributes.clone(),
                            r.delivery_key.clone(),
                        )
                    })
                    .collect();
                assert_eq!(got, expected);
                assert!(claimed.iter().all(|r| r.attempts == 1), "{claimed:?}");
                assert!(
                    claimed
                        .iter()
                        .all(|r| r.delivery_key == delivery_key(campaign, r.subscriber_id))
                );
                // The subscriber left without a name or attributes reads as stored.
                let plain = claimed.iter().find(|r| r.email == "r3@example.com").unwrap();
                assert_eq!((plain.name.as_deref(), plain.attributes.as_str()), (None, "{}"));
                assert!(claimed.iter().any(|r| r.name.is_some()));
            },
        )
        .await;
    }

    /// Rows that a sender claimed under the old representation (`status = 'sending'`)
    /// are claims after migration 0010: their sender's outcomes are recorded, and they
    /// are recovered as stale claims if it died.
    #[tokio::test]
    async fn claims_made_before_the_upgrade_stay_claims() {
        on_both_databases_at(
            "claims_made_before_the_upgrade_stay_claims",
            9,
            async |store: &Store| {
                let campaign = plan_on(store, 10, 5, 2).await;
                let claimed = store.claim_batch(campaign, 0, None).await.unwrap();
                sqlx::query("UPDATE deliveries SET status = 'sending', claimed_at = 1 WHERE claimed_at IS NOT NULL")
                    .execute(store.pool())
                    .await
                    .unwrap();
                store.migrate_to(i64::MAX).await.unwrap();
                assert_eq!(store.count_deliveries(campaign, DeliveryStatus::Sending).await.unwrap(), 5);
                assert_eq!(store.count_deliveries(campaign, DeliveryStatus::Pending).await.unwrap(), 5);
                assert_eq!(store.recover_stale_claims(campaign, 1_000, true).await.unwrap(), [0]);
                record_sent(store, &claimed[..2]).await;
                assert_eq!(store.count_deliveries(campaign, DeliveryStatus::Sent).await.unwrap(), 2);
                let taken = store.claim_batch(campaign, 0, Some(now_ms())).await.unwrap();
                assert_eq!(taken.len(), 3, "the stale claims are taken over");
            },
        )
        .await;
    }

    #[tokio::test]
    async fn the_plan_writes_the_same_ledger_on_both_databases() {
        on_both_databases(
            "the_plan_writes_the_same_ledger_on_both_databases",
            plan_in_pages,
        )
        .await;
    }
}
