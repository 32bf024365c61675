//! Users and their roles. Password hashing happens in the API (argon2id); this module
//! only stores the PHC string.

use serde::Serialize;

use super::{Page, Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, Role, now_ms};

/// A user as the API shows it (never with its hash).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct User {
    /// Id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// `admin`, `editor` or `viewer`.
    pub role: String,
    /// Creation time, epoch ms.
    pub created_at: i64,
}

/// A user with the stored password hash, for login.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserCredentials {
    /// Id.
    pub id: i64,
    /// Workspace.
    pub workspace_id: i64,
    /// Login name.
    pub username: String,
    /// argon2 PHC string.
    pub password_hash: String,
    /// Role name.
    pub role: String,
}

impl Store {
    /// Creates a user in the default workspace; `Conflict` when the name is taken.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<User, StoreError> {
        let row = sqlx::query_as::<_, User>(
            "INSERT INTO users (workspace_id, username, password_hash, role, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id, username, role, created_at",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now_ms())
        .fetch_one(self.pool())
        .await
        .map_err(|e| {
            if StoreError::is_unique_violation(&e) {
                StoreError::Conflict(format!("a user named '{username}' already exists"))
            } else {
                e.into()
            }
        })?;
        Ok(row)
    }

    /// The credentials of a user, by login name.
    pub async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<UserCredentials>, StoreError> {
        Ok(sqlx::query_as::<_, UserCredentials>(
            "SELECT id, workspace_id, username, password_hash, role FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(self.pool())
        .await?)
    }

    /// A user by id.
    pub async fn user(&self, id: i64) -> Result<User, StoreError> {
        sqlx::query_as::<_, User>("SELECT id, username, role, created_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound("user"))
    }

    /// Replaces a user's password hash.
    pub async fn set_password_hash(&self, id: i64, hash: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// How many users exist (0 on a fresh database).
    pub async fn user_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await?)
    }

    /// A page of users by id.
    pub async fn users(&self, after: i64, limit: u32) -> Result<Page<User>, StoreError> {
        let rows = sqlx::query_as::<_, User>(
            "SELECT id, username, role, created_at FROM users WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::from_rows(rows, limit, |u| u.id))
    }
}
