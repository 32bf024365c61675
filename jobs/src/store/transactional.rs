//! Transactional messages: one row per message, its own ledger entry (claimed before
//! sending, outcome recorded after), so a redelivered job never sends it twice.

use serde::Serialize;

use super::{Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, now_ms};

/// A transactional message as stored.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TxMessage {
    /// Id.
    pub id: i64,
    /// The template rendered.
    pub template_id: i64,
    /// Recipient address.
    pub email: String,
    /// Recipient name.
    pub name: Option<String>,
    /// Recipient attributes (JSON object text).
    #[serde(skip)]
    pub attributes: String,
    /// Extra template variables (JSON object text).
    #[serde(skip)]
    pub data: String,
    /// From header.
    pub from_addr: String,
    /// Provider name.
    pub provider: String,
    /// Stable key: Message-ID and Idempotency-Key.
    #[serde(skip)]
    pub delivery_key: String,
    /// `pending`, `sending`, `sent` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The provider's id.
    pub provider_message_id: Option<String>,
    /// Last error.
    pub last_error: Option<String>,
    /// Created, epoch ms.
    pub created_at: i64,
    /// Sent, epoch ms.
    pub sent_at: Option<i64>,
}

/// What a transactional message is made of (validated by the caller).
#[derive(Debug, Clone)]
pub struct NewTx {
    /// Template.
    pub template_id: i64,
    /// Recipient address (normalized).
    pub email: String,
    /// Recipient name.
    pub name: Option<String>,
    /// Recipient attributes, JSON object text.
    pub attributes: String,
    /// Extra variables, JSON object text.
    pub data: String,
    /// From header.
    pub from: String,
    /// Provider name.
    pub provider: String,
}

const SELECT_TX: &str = "SELECT id, template_id, email, name, attributes, data, from_addr, provider, delivery_key, \
     status, attempts, provider_message_id, last_error, created_at, sent_at FROM tx_messages";

impl Store {
    /// Stores a transactional message; returns it.
    pub async fn create_tx(&self, new: &NewTx) -> Result<TxMessage, StoreError> {
        let now = now_ms();
        let key = uuid::Uuid::new_v4().simple().to_string();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO tx_messages (workspace_id, template_id, email, name, attributes, data, from_addr, provider, \
             delivery_key, status, attempts, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $10) RETURNING id",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(new.template_id)
        .bind(&new.email)
        .bind(&new.name)
        .bind(&new.attributes)
        .bind(&new.data)
        .bind(&new.from)
        .bind(&new.provider)
        .bind(key)
        .bind(now)
        .fetch_one(self.pool())
        .await?;
        self.tx(id).await
    }

    /// A transactional message by id.
    pub async fn tx(&self, id: i64) -> Result<TxMessage, StoreError> {
        sqlx::query_as::<_, TxMessage>(sqlx::AssertSqlSafe(format!(
            "{SELECT_TX} WHERE id = $1 AND workspace_id = $2"
        )))
        .bind(id)
        .bind(DEFAULT_WORKSPACE)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound("transactional message"))
    }

    /// Claims a pending message for sending (atomic); None when someone else has it or
    /// it is finished.
    pub async fn claim_tx(&self, id: i64) -> Result<Option<TxMessage>, StoreError> {
        let claimed = sqlx::query(
            "UPDATE tx_messages SET status = 'sending', attempts = attempts + 1, updated_at = $1 \
             WHERE id = $2 AND status = 'pending'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1;
        if claimed {
            self.tx(id).await.map(Some)
        } else {
            Ok(None)
        }
    }

    /// Records the outcome of a claimed message: sent, failed for good, or (`retry`)
    /// back to pending unless `max_attempts` were used.
    pub async fn record_tx(
        &self,
        id: i64,
        sent: Option<Option<String>>,
        error: Option<&str>,
        retry: bool,
        max_attempts: u32,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let status = match (&sent, retry) {
            (Some(_), _) => "sent",
            (None, true) => "pending",
            (None, false) => "failed",
        };
        sqlx::query(
            "UPDATE tx_messages SET status = CASE WHEN $1 = 'pending' AND attempts >= $2 THEN 'failed' ELSE $1 END, \
             provider_message_id = $3, last_error = $4, sent_at = CASE WHEN $1 = 'sent' THEN $5 ELSE sent_at END, \
             updated_at = $5 WHERE id = $6 AND status = 'sending'",
        )
        .bind(status)
        .bind(i64::from(max_attempts))
        .bind(sent.flatten())
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
