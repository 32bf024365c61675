//! Session state, kept in the database (shared by every API process): refresh tokens
//! (rotated; a reused one revokes its family) and revoked access-token ids.

use super::{Store, StoreError};
use crate::model::{Role, now_ms};

/// What happened when a refresh token was presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was valid and is now used; issue a new pair in the same family.
    Rotated {
        /// The user the family belongs to.
        user_id: i64,
        /// The family to continue.
        family_id: String,
    },
    /// The token was already used or revoked: the whole family is now revoked.
    Reused,
    /// Unknown or expired.
    Invalid,
}

/// What [`Store::access_token_standing`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenStanding {
    /// The token was revoked (logged out).
    pub revoked: bool,
    /// Its user exists with the token's name and role.
    pub user_current: bool,
}

impl Store {
    /// Records a newly issued refresh token.
    pub async fn insert_refresh_token(
        &self,
        id: &str,
        family_id: &str,
        user_id: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(family_id)
        .bind(user_id)
        .bind(expires_at)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Marks a refresh token used, atomically: of two concurrent presentations exactly
    /// one rotates and the other sees a reuse.
    pub async fn use_refresh_token(&self, id: &str) -> Result<RefreshOutcome, StoreError> {
        let now = now_ms();
        let claimed: Option<(i64, String)> = sqlx::query_as(
            "UPDATE refresh_tokens SET used_at = $1 \
             WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1 \
             RETURNING user_id, family_id",
        )
        .bind(now)
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        if let Some((user_id, family_id)) = claimed {
            return Ok(RefreshOutcome::Rotated { user_id, family_id });
        }
        let family: Option<(String, i64)> =
            sqlx::query_as("SELECT family_id, expires_at FROM refresh_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        match family {
            Some((family_id, expires_at)) if expires_at > now => {
                self.revoke_refresh_family(&family_id).await?;
                Ok(RefreshOutcome::Reused)
            }
            _ => Ok(RefreshOutcome::Invalid),
        }
    }

    /// The family a refresh token belongs to, if the token exists.
    pub async fn refresh_family(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar::<_, String>("SELECT family_id FROM refresh_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Revokes every token of a family.
    pub async fn revoke_refresh_family(&self, family_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(family_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Revokes an access token until it would have expired anyway.
    pub async fn revoke_access_token(&self, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($1, $2) \
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Whether an access token still stands, in one round trip (every authenticated
    /// request asks): its `jti` was not revoked (logout), and its user still exists with
    /// the name and role it was issued for. Access tokens are not stored, so deleting a
    /// user ends their live tokens through the second check; the name and role are
    /// compared as well as the id because SQLite may give a deleted user's id to the next
    /// new user.
    pub async fn access_token_standing(
        &self,
        jti: &str,
        user_id: i64,
        username: &str,
        role: Role,
    ) -> Result<TokenStanding, StoreError> {
        let (revoked, user): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM revoked_access_tokens WHERE jti = $1), \
                    (SELECT COUNT(*) FROM users WHERE id = $2 AND username = $3 AND role = $4)",
        )
        .bind(jti)
        .bind(user_id)
        .bind(username)
        .bind(role.as_str())
        .fetch_one(self.pool())
        .await?;
        Ok(TokenStanding {
            revoked: revoked > 0,
            user_current: user > 0,
        })
    }

    /// Deletes expired session rows; returns how many went.
    pub async fn purge_expired_tokens(&self) -> Result<u64, StoreError> {
        let now = now_ms();
        let a = sqlx::query("DELETE FROM revoked_access_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(self.pool())
            .await?
            .rows_affected();
        let b = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(a + b)
    }
}
