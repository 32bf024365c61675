//! Users and their roles. Password hashing happens in the API (argon2id); this module
//! only stores the PHC string.

use serde::Serialize;

use super::{Backend, Page, Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, Role, now_ms};

/// A user as the API shows it (never with its hash).
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
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

    /// Deletes a user and every refresh token of theirs (so no session of theirs can be
    /// refreshed), and returns the row as it was. `NotFound` when there is no such user;
    /// `Conflict` when it is the last admin, so the workspace always keeps one. Two
    /// admins deleting each other at once cannot leave none: the admin rows are locked
    /// (PostgreSQL) or the write lock taken (SQLite) before the count.
    ///
    /// Access tokens are not stored, so they cannot be revoked here: the API honours an
    /// access token only while [`Store::access_token_standing`] finds its user current.
    pub async fn delete_user(&self, id: i64) -> Result<User, StoreError> {
        let mut tx = self.pool().begin().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT id FROM users WHERE role = 'admin' FOR UPDATE")
                .fetch_all(&mut *tx)
                .await?;
        }
        // A write first: on SQLite it takes the write lock, so what is read next cannot
        // change before the commit.
        sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let user = sqlx::query_as::<_, User>(
            "SELECT id, username, role, created_at FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("user"))?;
        if user.role == Role::Admin.as_str() {
            let admins = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users WHERE role = $1")
                .bind(Role::Admin.as_str())
                .fetch_one(&mut *tx)
                .await?;
            if admins <= 1 {
                return Err(StoreError::Conflict(format!(
                    "'{}' is the last admin: create another admin before deleting this one",
                    user.username
                )));
            }
        }
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(user)
    }

    /// A page of users by id.
    pub async fn users(&self, after: i64, limit: u32) -> Result<Page<User>, StoreError> {
        let rows = sqlx::query_as::<_, User>(
            "SELECT id, username, role, created_at FROM users WHERE id > $1 ORDER BY id LIMIT CAST($2 AS BIGINT)",
        )
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::from_rows(rows, limit, |u| u.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> Store {
        crate::store::memory_store().await
    }

    #[tokio::test]
    async fn deleting_a_user_ends_their_sessions_but_the_last_admin_stays() {
        let store = store().await;
        let root = store.create_user("root", "x", Role::Admin).await.unwrap();
        let ed = store.create_user("ed", "x", Role::Editor).await.unwrap();
        store
            .insert_refresh_token("r1", "f1", ed.id, i64::MAX)
            .await
            .unwrap();
        assert!(
            store
                .access_token_standing("t", ed.id, "ed", Role::Editor)
                .await
                .unwrap()
                .user_current
        );
        assert!(
            !store
                .access_token_standing("t", ed.id, "ed", Role::Admin)
                .await
                .unwrap()
                .user_current
        );
        store.revoke_access_token("t", i64::MAX).await.unwrap();
        let standing = store
            .access_token_standing("t", ed.id, "ed", Role::Editor)
            .await
            .unwrap();
        assert!(standing.revoked && standing.user_current, "{standing:?}");

        assert_eq!(store.delete_user(ed.id).await.unwrap().username, "ed");
        assert!(
            !store
                .access_token_standing("t", ed.id, "ed", Role::Editor)
                .await
                .unwrap()
                .user_current
        );
        assert_eq!(
            store.use_refresh_token("r1").await.unwrap(),
            crate::store::tokens::RefreshOutcome::Invalid
        );
        assert!(matches!(
            store.delete_user(ed.id).await,
            Err(StoreError::NotFound(_))
        ));

        assert!(matches!(
            store.delete_user(root.id).await,
            Err(StoreError::Conflict(m)) if m.contains("last admin")
        ));
        let second = store.create_user("second", "x", Role::Admin).await.unwrap();
        store.delete_user(root.id).await.unwrap();
        assert!(matches!(
            store.delete_user(second.id).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.user_count().await.unwrap(), 1);
    }
}
