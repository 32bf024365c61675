//! Signed one-click unsubscribe tokens: `{PUBLIC_URL}/unsubscribe/{token}` names a
//! campaign and a subscriber, signed with a key derived from `AUTH_SECRET_KEY`, so a
//! link cannot be forged or altered to unsubscribe someone else.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of ours, or altered.
    #[error("the unsubscribe link is invalid or was altered")]
    Invalid,
}

/// Signs and checks unsubscribe tokens.
#[derive(Clone)]
pub struct UnsubscribeSigner {
    key: [u8; 32],
    public_url: String,
}

impl std::fmt::Debug for UnsubscribeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsubscribeSigner")
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl UnsubscribeSigner {
    /// A signer whose key is derived from `secret`, building links under `public_url`.
    pub fn new(secret: &str, public_url: &str) -> Self {
        let key: [u8; 32] = Sha256::digest(format!("mailing:unsubscribe:{secret}")).into();
        UnsubscribeSigner {
            key,
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(payload.as_bytes());
        mac
    }

    /// The token for a campaign × subscriber.
    pub fn token(&self, campaign_id: i64, subscriber_id: i64) -> String {
        let payload = URL_SAFE_NO_PAD.encode(format!("{campaign_id}.{subscriber_id}"));
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// The full one-click URL.
    pub fn url(&self, campaign_id: i64, subscriber_id: i64) -> String {
        format!(
            "{}/unsubscribe/{}",
            self.public_url,
            self.token(campaign_id, subscriber_id)
        )
    }

    /// Checks a token in constant time and returns (campaign id, subscriber id).
    pub fn verify(&self, token: &str) -> Result<(i64, i64), TokenError> {
        if token.len() > 256 {
            return Err(TokenError::Invalid);
        }
        let (payload, sig) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Invalid)?;
        self.mac(payload)
            .verify_slice(&sig)
            .map_err(|_| TokenError::Invalid)?;
        let decoded = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid)?;
        let text = String::from_utf8(decoded).map_err(|_| TokenError::Invalid)?;
        let (c, s) = text.split_once('.').ok_or(TokenError::Invalid)?;
        Ok((
            c.parse().map_err(|_| TokenError::Invalid)?,
            s.parse().map_err(|_| TokenError::Invalid)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_rejects_tampering() {
        let s = UnsubscribeSigner::new("secret", "https://m.example/");
        let t = s.token(7, 42);
        assert_eq!(s.verify(&t), Ok((7, 42)));
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode("7.43"),
            t.split_once('.').unwrap().1
        );
        assert_eq!(s.verify(&forged), Err(TokenError::Invalid));
        assert_eq!(
            UnsubscribeSigner::new("other", "x").verify(&t),
            Err(TokenError::Invalid)
        );
        assert!(s.url(7, 42).starts_with("https://m.example/unsubscribe/"));
    }
}
