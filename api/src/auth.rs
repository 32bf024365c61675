//! Sessions and identities: argon2id password hashes, JWT access tokens (HS256 pinned,
//! `exp`/`nbf`/`iss`/`aud` checked, a `jti` for revocation), opaque rotating refresh
//! tokens stored hashed (a reused one revokes its family), the `Authenticate` hoop that
//! puts a [`Principal`] in the depot, and login throttling per account and per IP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mailing_jobs::Role;
use rand::RngCore;
use salvo::http::header;
use salvo::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;
use crate::state::AppState;

/// The JWT issuer and audience Mailing writes and requires.
pub const ISSUER: &str = "mailing";
/// See [`ISSUER`].
pub const AUDIENCE: &str = "mailing-api";

/// Session settings.
#[derive(Clone)]
pub struct AuthConfig {
    /// `AUTH_SECRET_KEY`: the HS256 key.
    pub secret: String,
    /// Lifetime of access tokens.
    pub access_ttl: Duration,
    /// Lifetime of refresh tokens.
    pub refresh_ttl: Duration,
    /// Failed logins allowed per account from one client IP per window.
    pub max_failures_per_account: u32,
    /// Failed logins allowed per account from all addresses together per window.
    pub max_failures_per_account_anywhere: u32,
    /// Failed logins allowed per client IP per window.
    pub max_failures_per_ip: u32,
    /// The throttling window.
    pub throttle_window: Duration,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &"***")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish_non_exhaustive()
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Username.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Token id, for revocation.
    pub jti: String,
    /// Expiry (seconds since epoch).
    pub exp: i64,
    /// Not before.
    pub nbf: i64,
    /// Issued at.
    pub iat: i64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
}

/// Who is calling, as the `Authenticate` hoop found.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User id.
    pub user_id: i64,
    /// Username.
    pub username: String,
    /// Role.
    pub role: Role,
    /// The access token's id.
    pub jti: String,
    /// The access token's expiry, epoch seconds.
    pub exp: i64,
}

impl Principal {
    /// Fails with 403 unless the principal's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.includes(needed) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this action needs the {needed} role; you are {}",
                self.role
            )))
        }
    }
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing a password failed: {e}")))
}

/// Checks a password against a PHC string; false for any mismatch or malformed hash.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A password hash to verify against when the user does not exist, so that a login for
/// an unknown name costs the same time as one for a known name.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy-password-never-matches").unwrap_or_default())
}

/// A token pair as `/auth/login` and `/auth/refresh` answer it.
#[derive(Debug, Serialize)]
pub struct TokenPair {
    /// The JWT.
    pub access_token: String,
    /// The opaque refresh token.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored id of a refresh token: its SHA-256, so a database leak yields no tokens.
pub fn refresh_token_id(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl AppState {
    /// Issues an access token and a refresh token in `family` (a new family if None).
    pub async fn issue_tokens(
        &self,
        user_id: i64,
        username: &str,
        role: Role,
        family: Option<String>,
    ) -> Result<TokenPair, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            name: username.to_owned(),
            role,
            jti: uuid::Uuid::new_v4().to_string(),
            exp: now + self.auth.access_ttl.as_secs() as i64,
            nbf: now - 5,
            iat: now,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        };
        let access_token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(self.auth.secret.as_bytes()),
        )
        .map_err(|e| ApiError::Internal(format!("signing a token failed: {e}")))?;
        let refresh_token = random_token();
        let family = family.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let expires_at = (now + self.auth.refresh_ttl.as_secs() as i64) * 1000;
        self.store
            .insert_refresh_token(
                &refresh_token_id(&refresh_token),
                &family,
                user_id,
                expires_at,
            )
            .await?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in: self.auth.access_ttl.as_secs(),
        })
    }

    /// Verifies an access token: signature (HS256 only), expiry, not-before, issuer,
    /// audience, that it was not revoked, and that its user still exists as named.
    pub async fn verify_access_token(&self, token: &str) -> Result<Principal, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(self.auth.secret.as_bytes()),
            &validation,
        )
        .map_err(|e| ApiError::Unauthorized(format!("the access token is not valid: {e}")))?;
        let claims = data.claims;
        let user_id = claims
            .sub
            .parse()
            .map_err(|_| ApiError::Unauthorized("the access token names no user".into()))?;
        let principal = |claims: Claims| Principal {
            user_id,
            username: claims.name,
            role: claims.role,
            jti: claims.jti,
            exp: claims.exp,
        };
        // The name and role are part of the signed token, so one token id names one
        // user, name and role: a remembered standing answers for all three.
        let miss = match self.cache.session(&claims.jti, user_id) {
            Ok(()) => return Ok(principal(claims)),
            Err(miss) => miss,
        };
        let standing = self
            .store
            .access_token_standing(&claims.jti, user_id, &claims.name, claims.role)
            .await?;
        if standing.revoked {
            return Err(ApiError::Unauthorized(
                "the access token was revoked (logged out)".into(),
            ));
        }
        // A deleted user's tokens stop at once here (other API processes forget what
        // they remembered within API_CACHE_TTL_MS).
        if !standing.user_current {
            return Err(ApiError::Unauthorized(
                "the access token's user was deleted or changed; log in again".into(),
            ));
        }
        self.cache.put_session(miss, &claims.jti, user_id);
        Ok(principal(claims))
    }
}

/// The hoop that requires a bearer token and puts the [`Principal`] in the depot.
#[derive(Debug, Clone, Copy)]
pub struct Authenticate;

#[async_trait]
impl Handler for Authenticate {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let result = async {
            let state = crate::state::from_depot(depot)?;
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .ok_or_else(|| {
                    ApiError::Unauthorized(
                        "send an access token: Authorization: Bearer <token>".into(),
                    )
                })?;
            if token.starts_with("mk_") {
                let key = state
                    .store
                    .authenticate_api_key(token)
                    .await?
                    .ok_or_else(|| {
                        ApiError::Unauthorized("the API key is not valid or was revoked".into())
                    })?;
                let role: Role = key
                    .role
                    .parse()
                    .map_err(|e: mailing_jobs::UnknownValue| ApiError::Internal(e.to_string()))?;
                return Ok(Principal {
                    user_id: 0,
                    username: format!("api-key:{}", key.name),
                    role,
                    jti: format!("api-key-{}", key.id),
                    exp: i64::MAX / 1000,
                });
            }
            state.verify_access_token(token).await
        }
        .await;
        match result {
            Ok(principal) => {
                depot.insert_typed(principal);
            }
            Err(err) => {
                err.write(req, depot, res).await;
                ctrl.skip_rest();
            }
        }
    }
}

/// The principal the `Authenticate` hoop stored.
pub fn principal(depot: &Depot) -> Result<&Principal, ApiError> {
    depot
        .get_typed::<Principal>()
        .map_err(|_| ApiError::Unauthorized("this route needs an access token".into()))
}

/// Counts failed logins per key within a fixed window (it starts at the key's first
/// failure). In Redis when the deployment has one, so every API replica sees the same
/// counts; in process otherwise. When Redis cannot be reached the process's own counts
/// stand in (logged), so an outage neither locks everyone out nor lets a flood through
/// unthrottled.
#[derive(Clone)]
pub struct LoginThrottle {
    local: moka::sync::Cache<String, (u32, Instant)>,
    shared: Option<SharedCounts>,
    window: Duration,
}

#[derive(Clone)]
struct SharedCounts {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    script: Arc<redis::Script>,
}

/// KEYS[1] = the key's counter; ARGV[1] = the window in ms. Returns the new count.
const FAIL_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("window", &self.window)
            .field("redis", &self.shared.as_ref().map(|s| &s.prefix))
            .finish()
    }
}

impl LoginThrottle {
    /// A throttle held in this process, with the given window.
    pub fn new(window: Duration) -> Self {
        LoginThrottle {
            local: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(window)
                .build(),
            shared: None,
            window,
        }
    }

    /// A throttle held in Redis under `prefix` (e.g. `{namespace}:login`).
    pub fn redis(window: Duration, conn: redis::aio::ConnectionManager, prefix: String) -> Self {
        LoginThrottle {
            shared: Some(SharedCounts {
                conn,
                prefix,
                script: Arc::new(redis::Script::new(FAIL_SCRIPT)),
            }),
            ..Self::new(window)
        }
    }

    fn local_blocked_for(&self, key: &str, limit: u32) -> Option<u64> {
        let (count, start) = self.local.get(key)?;
        let elapsed = start.elapsed();
        if elapsed >= self.window {
            self.local.invalidate(key);
            return None;
        }
        (count >= limit).then(|| (self.window - elapsed).as_secs().max(1))
    }

    fn local_fail(&self, key: &str) {
        let now = Instant::now();
        let window = self.window;
        self.local
            .entry(key.to_owned())
            .and_upsert_with(|old| match old.map(|e| e.into_value()) {
                Some((count, start)) if start.elapsed() < window => (count + 1, start),
                _ => (1, now),
            });
    }

    /// Seconds to wait if `key` has `limit` or more failures in the window.
    pub async fn blocked_for(&self, key: &str, limit: u32) -> Option<u64> {
        let Some(shared) = &self.shared else {
            return self.local_blocked_for(key, limit);
        };
        let mut conn = shared.conn.clone();
        let answer: Result<(Option<u32>, i64), redis::RedisError> = redis::pipe()
            .get(format!("{}:{key}", shared.prefix))
            .pttl(format!("{}:{key}", shared.prefix))
            .query_async(&mut conn)
            .await;
        match answer {
            Ok((Some(count), ttl_ms)) if count >= limit => {
                Some((ttl_ms.max(0) as u64).div_ceil(1000).max(1))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "Login throttle: Redis unreachable; using this process's counts");
                self.local_blocked_for(key, limit)
            }
        }
    }

    /// Records one failure for `key`.
    pub async fn fail(&self, key: &str) {
        self.local_fail(key);
        let Some(shared) = &self.shared else {
            return;
        };
        let mut conn = shared.conn.clone();
        let window_ms = self.window.as_millis() as u64;
        let result: Result<u32, redis::RedisError> = shared
            .script
            .key(format!("{}:{key}", shared.prefix))
            .arg(window_ms)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "Login throttle: cannot count a failure in Redis");
        }
    }

    /// Forgets `key` (after a successful login).
    pub async fn reset(&self, key: &str) {
        self.local.invalidate(key);
        if let Some(shared) = &self.shared {
            let mut conn = shared.conn.clone();
            let result: Result<(), redis::RedisError> = redis::cmd("DEL")
                .arg(format!("{}:{key}", shared.prefix))
                .query_async(&mut conn)
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "Login throttle: cannot reset a counter in Redis");
            }
        }
    }
}

/// Shared pointer to the throttle.
pub type SharedThrottle = Arc<LoginThrottle>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_verifies_only_the_right_password() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong", &phc));
        assert!(!verify_password("x", "not a hash"));
    }

    #[tokio::test]
    async fn throttle_blocks_after_the_limit_and_resets() {
        let t = LoginThrottle::new(Duration::from_secs(60));
        for _ in 0..3 {
            assert!(t.blocked_for("u", 3).await.is_none());
            t.fail("u").await;
        }
        assert!(t.blocked_for("u", 3).await.is_some());
        t.reset("u").await;
        assert!(t.blocked_for("u", 3).await.is_none());
    }
}
