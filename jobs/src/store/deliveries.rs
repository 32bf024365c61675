//! The delivery ledger: one row per campaign × recipient. The plan stage writes rows
//! (idempotently: a re-run adds nothing twice); the send stage claims a batch's pending
//! rows atomically, so no two workers ever hold the same recipient, and records each
//! outcome. A claim older than the lease whose worker died is recovered by
//! [`Store::recover_stale_claims`].

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Store, StoreError};
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

/// The delivery key of a campaign × subscriber: stable, opaque, 32 hex digits.
pub fn delivery_key(campaign_id: i64, subscriber_id: i64) -> String {
    let digest = Sha256::digest(format!("mailing:delivery:{campaign_id}:{subscriber_id}"));
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
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
        Ok(sqlx::query_as::<_, AudienceMember>(
            "SELECT s.id, s.email FROM subscribers s \
             WHERE s.workspace_id = $1 AND s.id > $2 AND s.status = 'enabled' \
             AND EXISTS (SELECT 1 FROM list_memberships m JOIN campaign_lists c ON c.list_id = m.list_id \
                         WHERE c.campaign_id = $3 AND m.subscriber_id = s.id) \
             AND NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.workspace_id = s.workspace_id AND x.email = s.email) \
             ORDER BY s.id LIMIT $4",
        )
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

    /// Batches of a campaign that still have pending recipients.
    pub async fn pending_batches(&self, campaign_id: i64) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT batch_no FROM deliveries WHERE campaign_id = $1 AND status = 'pending' \
             ORDER BY batch_no",
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
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        for chunk in members.chunks(100) {
            let mut sql = String::from(
                "INSERT INTO deliveries (campaign_id, subscriber_id, email, delivery_key, batch_no, \
                 status, attempts, created_at, updated_at) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 3;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "($1, ${}, ${}, ${}, $2, 'pending', 0, $3, $3)",
                    b + 4,
                    b + 5,
                    b + 6
                ));
            }
            sql.push_str(" ON CONFLICT (campaign_id, subscriber_id) DO NOTHING");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(campaign_id)
                .bind(batch_no)
                .bind(now);
            for m in chunk {
                query = query
                    .bind(m.id)
                    .bind(&m.email)
                    .bind(delivery_key(campaign_id, m.id));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims the pending recipients of a batch for this sender, atomically, and returns
    /// them with their subscriber data. Rows claimed by someone else are not returned.
    pub async fn claim_batch(
        &self,
        campaign_id: i64,
        batch_no: i64,
    ) -> Result<Vec<Recipient>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE deliveries SET status = 'skipped', updated_at = $1, \
             last_error = 'unsubscribed or suppressed after the campaign was planned' \
             WHERE campaign_id = $2 AND batch_no = $3 AND status = 'pending' AND (\
               EXISTS (SELECT 1 FROM subscribers s WHERE s.id = deliveries.subscriber_id AND s.status <> 'enabled') \
               OR EXISTS (SELECT 1 FROM suppressions x WHERE x.email = deliveries.email))",
        )
        .bind(now)
        .bind(campaign_id)
        .bind(batch_no)
        .execute(&mut *tx)
        .await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, claimed_at = $1, \
             updated_at = $1 WHERE campaign_id = $2 AND batch_no = $3 AND status = 'pending' \
             RETURNING id",
        )
        .bind(now)
        .bind(campaign_id)
        .bind(batch_no)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut recipients = sqlx::query_as::<_, Recipient>(
            "SELECT d.id AS delivery_id, d.subscriber_id, d.email, s.name, s.attributes, \
             d.delivery_key, d.attempts FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id \
             WHERE d.campaign_id = $1 AND d.batch_no = $2 AND d.status = 'sending' AND d.claimed_at = $3 \
             ORDER BY d.id",
        )
        .bind(campaign_id)
        .bind(batch_no)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let claimed: std::collections::HashSet<i64> = ids.into_iter().collect();
        recipients.retain(|r| claimed.contains(&r.delivery_id));
        Ok(recipients)
    }

    /// Renews the claims this sender holds on a batch, so a slow batch is not mistaken
    /// for a dead one. Returns how many rows were renewed.
    pub async fn renew_claims(&self, campaign_id: i64, batch_no: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE deliveries SET claimed_at = $1 WHERE campaign_id = $2 AND batch_no = $3 AND status = 'sending'",
        )
        .bind(now_ms())
        .bind(campaign_id)
        .bind(batch_no)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// Records the outcomes of claimed recipients in one transaction. Only rows still
    /// in `sending` change, so a late duplicate cannot overwrite a recorded outcome.
    /// A recipient put back for a retry that has had `max_attempts` attempts is failed
    /// instead, keeping its last error.
    pub async fn record_outcomes(
        &self,
        outcomes: &[(i64, Outcome)],
        max_attempts: u32,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        for (delivery_id, outcome) in outcomes {
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
            sqlx::query(
                "UPDATE deliveries SET \
                 status = CASE WHEN $1 = 'pending' AND attempts >= $2 THEN 'failed' ELSE $1 END, \
                 provider_message_id = COALESCE($3, provider_message_id), last_error = $4, \
                 sent_at = COALESCE($5, sent_at), claimed_at = NULL, updated_at = $6 \
                 WHERE id = $7 AND status = 'sending'",
            )
            .bind(status.as_str())
            .bind(i64::from(max_attempts))
            .bind(message_id)
            .bind(error)
            .bind(sent_at)
            .bind(now)
            .bind(delivery_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Recovers claims older than `lease_ms` (their worker died mid-batch). When the
    /// provider is idempotent (`resend_safe`) the rows go back to pending and their
    /// batches are returned for re-enqueueing; otherwise they are failed with a reason,
    /// because resending could deliver twice. Returns (campaign id, batch) pairs.
    pub async fn recover_stale_claims(
        &self,
        campaign_id: i64,
        lease_ms: i64,
        resend_safe: bool,
    ) -> Result<Vec<i64>, StoreError> {
        let now = now_ms();
        let cutoff = now - lease_ms;
        if resend_safe {
            Ok(sqlx::query_scalar::<_, i64>(
                "UPDATE deliveries SET status = 'pending', claimed_at = NULL, updated_at = $1, \
                 last_error = 'worker stopped mid-batch; retried' \
                 WHERE campaign_id = $2 AND status = 'sending' AND claimed_at < $3 RETURNING batch_no",
            )
            .bind(now)
            .bind(campaign_id)
            .bind(cutoff)
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect())
        } else {
            sqlx::query(
                "UPDATE deliveries SET status = 'failed', claimed_at = NULL, updated_at = $1, \
                 last_error = 'worker stopped while sending; outcome unknown, not resent to avoid a duplicate' \
                 WHERE campaign_id = $2 AND status = 'sending' AND claimed_at < $3",
            )
            .bind(now)
            .bind(campaign_id)
            .bind(cutoff)
            .execute(self.pool())
            .await?;
            Ok(Vec::new())
        }
    }

    /// Marks every pending recipient of a campaign skipped (a cancelled campaign).
    pub async fn skip_pending(&self, campaign_id: i64, reason: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'skipped', last_error = $1, updated_at = $2 \
             WHERE campaign_id = $3 AND status = 'pending'",
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
        Ok(sqlx::query_scalar(
            "SELECT COUNT(DISTINCT d.batch_no) FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id \
             WHERE d.campaign_id = $1 AND d.status IN ('pending', 'sending') AND d.batch_no <= c.enqueued_through",
        )
        .bind(campaign_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Moves the campaign's window one batch on, if the next batch has been planned;
    /// returns the batch to enqueue. Atomic: of concurrent callers each gets a distinct
    /// batch.
    pub async fn advance_window(&self, campaign_id: i64) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE campaigns SET enqueued_through = enqueued_through + 1 WHERE id = $1 AND EXISTS \
             (SELECT 1 FROM deliveries d WHERE d.campaign_id = $1 AND d.batch_no = campaigns.enqueued_through + 1) \
             RETURNING enqueued_through",
        )
        .bind(campaign_id)
        .fetch_optional(self.pool())
        .await?)
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
        let batches: Vec<i64> = sqlx::query_scalar(
            "UPDATE deliveries SET updated_at = $1 WHERE campaign_id = $2 AND status = 'pending' \
             AND updated_at < $3 AND batch_no <= (SELECT enqueued_through FROM campaigns WHERE id = $2) \
             RETURNING batch_no",
        )
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
        let rows = sqlx::query_as::<_, DeliveryRow>(
            "SELECT id, subscriber_id, email, status, attempts, provider_message_id, last_error, batch_no, \
             updated_at, sent_at FROM deliveries WHERE campaign_id = $1 AND id > $2 \
             AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR email = $4) ORDER BY id LIMIT $5",
        )
        .bind(campaign_id)
        .bind(after)
        .bind(status.map(|s| s.as_str()))
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
            "UPDATE deliveries SET status = 'pending', attempts = 0, updated_at = $1, \
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

    /// Counts a campaign's rows in one status.
    pub async fn count_deliveries(
        &self,
        campaign_id: i64,
        status: DeliveryStatus,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE campaign_id = $1 AND status = $2",
        )
        .bind(campaign_id)
        .bind(status.as_str())
        .fetch_one(self.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_key_is_stable_and_distinct_per_recipient() {
        assert_eq!(delivery_key(1, 2), delivery_key(1, 2));
        assert_ne!(delivery_key(1, 2), delivery_key(2, 1));
        assert_eq!(delivery_key(1, 2).len(), 32);
    }
}
