//! Per-shoot path tokens (pure): the registration of shoot `ns` sends its
//! reviews to `/shoots/{ns}/{token}/...`, where the token is an HMAC of the
//! namespace under a key only the server (and the Secret it keeps its
//! certificates in) knows. So a caller that can reach the webhook port but
//! is not that shoot's API server cannot act on a shoot's path: no Events
//! in the shoot, no local holds, no metric series. Each shoot's token is
//! its own: a shoot owner who reads their registration learns nothing
//! about another shoot's path.

use base64::Engine as _;
use ring::hmac;

/// The key tokens are made with.
#[derive(Clone)]
pub struct PathKey(hmac::Key);

impl std::fmt::Debug for PathKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathKey(..)")
    }
}

/// What the token of a namespace is a signature of (a fixed context, so the
/// key signs nothing else that could be mistaken for a token).
fn message(namespace: &str) -> Vec<u8> {
    format!("overlay-switch-webhook/shoot-path/v1/{namespace}").into_bytes()
}

impl PathKey {
    /// A key from its bytes (at least 32 of them).
    pub fn new(secret: &[u8]) -> anyhow::Result<PathKey> {
        anyhow::ensure!(
            secret.len() >= 32,
            "the path token key has {} bytes; at least 32 are needed",
            secret.len()
        );
        Ok(PathKey(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// The token of shoot `namespace` (URL-safe base64, 43 characters).
    pub fn token(&self, namespace: &str) -> String {
        let tag = hmac::sign(&self.0, &message(namespace));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Whether `token` is shoot `namespace`'s (compared in constant time).
    pub fn verify(&self, namespace: &str, token: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        hmac::verify(&self.0, &message(namespace), &tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_own_shoots_path_only() {
        let key = PathKey::new(&[7u8; 32]).unwrap();
        let other = PathKey::new(&[8u8; 32]).unwrap();
        let t = key.token("shoot--p--a");
        assert_eq!(t.len(), 43);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(key.verify("shoot--p--a", &t));
        assert!(!key.verify("shoot--p--b", &t), "another shoot's path");
        assert!(!other.verify("shoot--p--a", &t), "another key");
        assert!(!key.verify("shoot--p--a", &t[..42]));
        assert!(!key.verify("shoot--p--a", ""));
        assert!(!key.verify("shoot--p--a", "not base64!"));
        assert_eq!(t, key.token("shoot--p--a"), "the same every time");
        assert!(PathKey::new(&[1u8; 16]).is_err());
    }
}
