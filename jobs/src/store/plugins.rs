//! The plugin registry as stored: components content-addressed by sha256, named and
//! versioned. Validation lives in `mailing-plugins`; callers validate before storing.

use serde::Serialize;

use super::{Page, Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, now_ms};

/// A registered plugin, without its bytes.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PluginRow {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// sha256 of the component (hex).
    pub sha256: String,
    /// Size of the component in bytes.
    pub size_bytes: i64,
    /// Upload time, epoch ms.
    pub created_at: i64,
}

macro_rules! select_plugin {
    () => {
        "SELECT id, name, version, sha256, size_bytes, created_at FROM plugins"
    };
}

/// Campaign states in which a campaign still needs its plugins.
const LIVE_STATES: &str = "('draft', 'scheduled', 'running', 'paused')";

impl Store {
    /// Stores a validated component under a name and version; `Conflict` when that
    /// name and version exist.
    pub async fn create_plugin(
        &self,
        name: &str,
        version: &str,
        sha256: &str,
        component: &[u8],
    ) -> Result<PluginRow, StoreError> {
        let exists: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM plugins WHERE workspace_id = $1 AND name = $2 AND version = $3",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(name)
        .bind(version)
        .fetch_one(self.pool())
        .await?;
        if exists > 0 {
            return Err(StoreError::Conflict(format!(
                "plugin {name}@{version} is already registered; upload it under a new version"
            )));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO plugins (workspace_id, name, version, sha256, size_bytes, component, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(name)
        .bind(version)
        .bind(sha256)
        .bind(component.len() as i64)
        .bind(component.to_vec())
        .bind(now_ms())
        .fetch_one(self.pool())
        .await?;
        self.plugin(id).await
    }

    /// A plugin by id.
    pub async fn plugin(&self, id: i64) -> Result<PluginRow, StoreError> {
        sqlx::query_as::<_, PluginRow>(concat!(
            select_plugin!(),
            " WHERE id = $1 AND workspace_id = $2"
        ))
        .bind(id)
        .bind(DEFAULT_WORKSPACE)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound("plugin"))
    }

    /// A plugin's component bytes.
    pub async fn plugin_component(&self, id: i64) -> Result<Vec<u8>, StoreError> {
        sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT component FROM plugins WHERE id = $1 AND workspace_id = $2",
        )
        .bind(id)
        .bind(DEFAULT_WORKSPACE)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound("plugin"))
    }

    /// A page of plugins by id.
    pub async fn plugins(&self, after: i64, limit: u32) -> Result<Page<PluginRow>, StoreError> {
        let rows = sqlx::query_as::<_, PluginRow>(concat!(
            select_plugin!(),
            " WHERE workspace_id = $1 AND id > $2 ORDER BY id LIMIT CAST($3 AS BIGINT)"
        ))
        .bind(DEFAULT_WORKSPACE)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::from_rows(rows, limit, |p| p.id))
    }

    /// Ids of the campaigns not yet finished that name this plugin.
    pub async fn campaigns_using_plugin(&self, id: i64) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, plugins FROM campaigns WHERE workspace_id = $1 AND status IN {LIVE_STATES} \
             AND plugins <> '[]' ORDER BY id"
        )))
        .bind(DEFAULT_WORKSPACE)
        .fetch_all(self.pool())
        .await?;
        let mut using = Vec::new();
        for (campaign_id, plugins) in rows {
            let chain: Vec<super::campaigns::CampaignPlugin> = serde_json::from_str(&plugins)
                .map_err(|e| StoreError::Corrupt(format!("campaign {campaign_id} plugins: {e}")))?;
            if chain.iter().any(|p| p.plugin_id == id) {
                using.push(campaign_id);
            }
        }
        Ok(using)
    }

    /// Deletes a plugin that no unfinished campaign uses; `Conflict` otherwise.
    pub async fn delete_plugin(&self, id: i64) -> Result<(), StoreError> {
        self.plugin(id).await?;
        let using = self.campaigns_using_plugin(id).await?;
        if !using.is_empty() {
            let ids: Vec<String> = using.iter().map(i64::to_string).collect();
            return Err(StoreError::Conflict(format!(
                "plugin {id} is used by unfinished campaign(s) {}; it cannot be deleted",
                ids.join(", ")
            )));
        }
        sqlx::query("DELETE FROM plugins WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
