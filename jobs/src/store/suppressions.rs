//! The suppression list (addresses never mailed again: hard bounces, complaints,
//! unsubscribes, manual entries) and the provider events that feed it.

use serde::Serialize;

use super::{Page, Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, now_ms};

/// A suppressed address.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Suppression {
    /// The address.
    pub email: String,
    /// Why: `bounce`, `complaint`, `unsubscribe`, `manual`.
    pub reason: String,
    /// When, epoch ms.
    pub created_at: i64,
}

/// What a provider reported about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderEvent {
    /// Delivered to the mailbox.
    Delivered,
    /// Delayed; the provider keeps trying.
    Delayed,
    /// Bounced; `permanent` for a hard bounce (suppresses the address).
    Bounced {
        /// Hard bounce.
        permanent: bool,
    },
    /// The recipient marked it as spam (suppresses the address).
    Complained,
}

/// The ledger row with a provider message id, among the rows of the subscriber with an
/// address: `$1` the id, `$2` the address, `$3` the workspace. Message ids are indexed
/// under their subscriber only (migration 0009: providers' ids are random, and an index
/// on them alone cost every sent message a random B-tree leaf). As for an address alone,
/// a row sent to an address its subscriber has since changed is not found.
pub(crate) const SENT_ROW_BY_MESSAGE_ID: &str = "SELECT d.id, d.email FROM deliveries d \
     WHERE d.subscriber_id IN (SELECT s.id FROM subscribers s WHERE s.workspace_id = $3 AND s.email = $2) \
     AND d.provider_message_id = $1 LIMIT 1";

/// The newest sent ledger row for address `$1` in workspace `$2`, for a bounce reported
/// by address alone. Found through the subscriber with that address (the ledger is
/// indexed by subscriber, not by address): a row sent to an address its subscriber has
/// since changed is not found, though the address is still suppressed.
pub(crate) const SENT_ROW_BY_ADDRESS: &str = "SELECT d.id, d.email FROM deliveries d \
     WHERE d.subscriber_id IN (SELECT s.id FROM subscribers s WHERE s.workspace_id = $2 AND s.email = $1) \
     AND d.email = $1 AND d.status = 'sent' ORDER BY d.sent_at DESC LIMIT 1";

impl Store {
    /// Suppresses an address (idempotent; the first reason stays).
    pub async fn suppress(&self, email: &str, reason: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO suppressions (workspace_id, email, reason, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (workspace_id, email) DO NOTHING",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(email)
        .bind(reason)
        .bind(now_ms())
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    /// Removes an address from the list; returns whether it was there.
    pub async fn unsuppress(&self, email: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("DELETE FROM suppressions WHERE workspace_id = $1 AND email = $2")
                .bind(DEFAULT_WORKSPACE)
                .bind(email)
                .execute(self.pool())
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// A page of suppressions, by address.
    pub async fn suppressions(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Suppression>, StoreError> {
        let mut rows = sqlx::query_as::<_, Suppression>(
            "SELECT email, reason, created_at FROM suppressions WHERE workspace_id = $1 AND email > $2 \
             ORDER BY email LIMIT CAST($3 AS BIGINT)",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more {
            rows.last().map(|s| s.email.clone())
        } else {
            None
        };
        Ok(Page { items: rows, next })
    }

    /// Whether a webhook event id was already applied.
    pub async fn event_seen(&self, id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM webhook_events WHERE id = $1")
                .bind(id)
                .fetch_one(self.pool())
                .await?
                > 0,
        )
    }

    /// Forgets webhook event ids older than `age_ms` (providers stop redelivering long
    /// before); returns how many went.
    pub async fn purge_webhook_events(&self, age_ms: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM webhook_events WHERE received_at < $1")
                .bind(now_ms() - age_ms)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    /// Records a webhook event id; false when it was seen before (skip it).
    pub async fn first_time_event(&self, id: &str, source: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO webhook_events (id, source, received_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(source)
        .bind(now_ms())
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    /// Applies a provider event to the ledger row with this provider message id among the
    /// address's rows (or, without an id, to the newest sent row for the address), and
    /// suppresses the address for hard bounces and complaints. An id without an address
    /// matches no row. Returns whether a ledger row changed.
    pub async fn apply_provider_event(
        &self,
        provider_message_id: Option<&str>,
        email: Option<&str>,
        event: ProviderEvent,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let id: Option<(i64, String)> = match (provider_message_id, email) {
            (Some(pid), Some(e)) => {
                sqlx::query_as(SENT_ROW_BY_MESSAGE_ID)
                    .bind(pid)
                    .bind(e)
                    .bind(DEFAULT_WORKSPACE)
                    .fetch_optional(self.pool())
                    .await?
            }
            // An id without an address: no index leads to it (see SENT_ROW_BY_MESSAGE_ID).
            (Some(_), None) => None,
            (None, Some(e)) => {
                sqlx::query_as(SENT_ROW_BY_ADDRESS)
                    .bind(e)
                    .bind(DEFAULT_WORKSPACE)
                    .fetch_optional(self.pool())
                    .await?
            }
            (None, None) => None,
        };
        let address = id
            .as_ref()
            .map(|(_, e)| e.clone())
            .or_else(|| email.map(str::to_owned));
        let changed = match (&id, event) {
            (Some((row, _)), ProviderEvent::Bounced { .. }) | (Some((row, _)), ProviderEvent::Complained) => {
                let status = if event == ProviderEvent::Complained { "complained" } else { "bounced" };
                sqlx::query(
                    "UPDATE deliveries SET status = $1, last_error = $2, updated_at = $3 \
                     WHERE id = $4 AND status IN ('sent', 'bounced')",
                )
                .bind(status)
                .bind(detail)
                .bind(now)
                .bind(row)
                .execute(self.pool())
                .await?
                .rows_affected()
                    == 1
            }
            (Some((row, _)), ProviderEvent::Delayed) => {
                sqlx::query("UPDATE deliveries SET last_error = $1, updated_at = $2 WHERE id = $3 AND status = 'sent'")
                    .bind(format!("delivery delayed: {detail}"))
                    .bind(now)
                    .bind(row)
                    .execute(self.pool())
                    .await?
                    .rows_affected()
                    == 1
            }
            _ => false,
        };
        if let Some(address) = address {
            match event {
                ProviderEvent::Bounced { permanent: true } => {
                    self.suppress(&address, "bounce").await?;
                }
                ProviderEvent::Complained => {
                    self.suppress(&address, "complaint").await?;
                }
                _ => {}
            }
        }
        Ok(changed)
    }
}
