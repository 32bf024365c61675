//! The audit log: who did what to which resource, append-only.

use super::{Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, now_ms};

impl Store {
    /// Appends an audit entry. `detail` is a JSON object with no secrets in it.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (workspace_id, actor, action, target, detail, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail.to_string())
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// How many audit entries carry `action` (for tests and stats).
    pub async fn audit_count(&self, action: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_log WHERE action = $1")
                .bind(action)
                .fetch_one(self.pool())
                .await?,
        )
    }
}
