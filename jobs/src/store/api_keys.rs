//! API keys for machines. A key is `mk_<prefix>_<secret>`: the prefix finds the row,
//! the secret's SHA-256 is compared in constant time. Keys carry a role and can be
//! revoked; the secret is never stored.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Page, Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, Role, now_ms};

/// An API key as listed (never with its secret).
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApiKey {
    /// Id.
    pub id: i64,
    /// A label.
    pub name: String,
    /// The public part of the key (`mk_<prefix>_…`).
    pub prefix: String,
    /// `admin`, `editor` or `viewer`.
    pub role: String,
    /// Who created it.
    pub created_by: String,
    /// When, epoch ms.
    pub created_at: i64,
    /// Last use, epoch ms.
    pub last_used_at: Option<i64>,
    /// When revoked, epoch ms.
    pub revoked_at: Option<i64>,
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0_u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

impl Store {
    /// Creates a key; returns it and the full key text (shown once).
    pub async fn create_api_key(
        &self,
        name: &str,
        role: Role,
        created_by: &str,
    ) -> Result<(ApiKey, String), StoreError> {
        let prefix = random_hex(6);
        let secret = random_hex(32);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO api_keys (workspace_id, name, prefix, secret_hash, role, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(name)
        .bind(&prefix)
        .bind(hash(&secret))
        .bind(role.as_str())
        .bind(created_by)
        .bind(now_ms())
        .fetch_one(self.pool())
        .await?;
        let key = self.api_key(id).await?;
        Ok((key, format!("mk_{prefix}_{secret}")))
    }

    async fn api_key(&self, id: i64) -> Result<ApiKey, StoreError> {
        sqlx::query_as::<_, ApiKey>(
            "SELECT id, name, prefix, role, created_by, created_at, last_used_at, revoked_at FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound("API key"))
    }

    /// A page of keys by id.
    pub async fn api_keys(&self, after: i64, limit: u32) -> Result<Page<ApiKey>, StoreError> {
        let rows = sqlx::query_as::<_, ApiKey>(
            "SELECT id, name, prefix, role, created_by, created_at, last_used_at, revoked_at FROM api_keys \
             WHERE workspace_id = $1 AND id > $2 ORDER BY id LIMIT CAST($3 AS BIGINT)",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::from_rows(rows, limit, |k| k.id))
    }

    /// Revokes a key; false when it does not exist or was already revoked.
    pub async fn revoke_api_key(&self, id: i64) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(self.pool())
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// The key named by `mk_<prefix>_<secret>`, if it is valid and not revoked.
    pub async fn authenticate_api_key(
        &self,
        presented: &str,
    ) -> Result<Option<ApiKey>, StoreError> {
        let Some((prefix, secret)) = presented
            .strip_prefix("mk_")
            .and_then(|r| r.split_once('_'))
        else {
            return Ok(None);
        };
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, secret_hash FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL",
        )
        .bind(prefix)
        .fetch_optional(self.pool())
        .await?;
        let Some((id, stored)) = row else {
            return Ok(None);
        };
        let given = hash(secret);
        let same = given.len() == stored.len()
            && given
                .bytes()
                .zip(stored.bytes())
                .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Ok(None);
        }
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(Some(self.api_key(id).await?))
    }
}
