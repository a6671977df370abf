//! Signed, expiring identity tokens, made and checked with the hub's secret.
//!
//! A token is a standard JWT signed with HMAC-SHA256 (`alg: HS256`), so any
//! JWT tool can read it; the signature comes from the `hmac` and `sha2`
//! crates and is checked in constant time. Only our exact header is
//! accepted, which rules out algorithm confusion (`alg: none` and the like).
//!
//! Claims: `role` (`vendor`, `driver` or `viewer`), `store` for a vendor,
//! `name` for a driver, `iat` and `exp` (seconds since the epoch).

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::protocol::{DriverName, RoleName, StoreId};

/// The only header we make and accept.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// The longest token accepted, in bytes.
const MAX_TOKEN_BYTES: usize = 2048;

/// The hub's signing secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// The secret in `path` (surrounding whitespace ignored); at least
    /// [`MIN_SECRET_BYTES`] bytes.
    /// The file must be readable by its owner only, as ssh requires of keys:
    /// a secret others can read is no secret.
    pub fn read(path: &Path) -> anyhow::Result<Secret> {
        refuse_if_shared(path)?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the secret file {}", path.display()))?;
        Secret::new(bytes.trim_ascii().to_vec())
            .with_context(|| format!("the secret file {}", path.display()))
    }

    /// A secret from raw bytes.
    pub fn new(bytes: Vec<u8>) -> anyhow::Result<Secret> {
        if bytes.len() < MIN_SECRET_BYTES {
            bail!(
                "a secret must be at least {MIN_SECRET_BYTES} bytes (try: head -c 32 /dev/urandom | base64 > secret)"
            );
        }
        Ok(Secret(bytes))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

/// Fails if `path` may be read or written by its group or by others.
#[cfg(unix)]
fn refuse_if_shared(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the secret file {} may be read by others (mode {:o}); make it the owner's only: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_shared(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Who a token says its bearer is, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The role.
    pub role: RoleName,
    /// A vendor's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreId>,
    /// A driver's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<DriverName>,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts with our header and JSON claims.
    #[error("the token is malformed")]
    Malformed,
    /// Not signed with this hub's secret.
    #[error("the token's signature is not valid for this hub")]
    BadSignature,
    /// Past its `exp`.
    #[error("the token expired")]
    Expired,
}

/// A token for `claims`, signed with `secret`.
pub fn mint(secret: &Secret, claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut mac = secret.mac();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// The claims of `token` if `secret` signed it and it has not expired at `now`.
pub fn verify(secret: &Secret, token: &str, now: i64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
    let expected: serde_json::Value = serde_json::from_str(HEADER).expect("our header is JSON");
    if header != expected {
        return Err(TokenError::Malformed);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let signing_input_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
    let mut mac = secret.mac();
    mac.update(&token.as_bytes()[..signing_input_len]);
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> Secret {
        Secret::new(vec![byte; 32]).unwrap()
    }

    fn vendor_claims(exp: i64) -> Claims {
        Claims {
            role: RoleName::Vendor,
            store: Some(StoreId::new("acme").unwrap()),
            name: None,
            iat: 1_000,
            exp,
        }
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let token = mint(&secret(1), &vendor_claims(2_000));
        assert_eq!(verify(&secret(1), &token, 1_999), Ok(vendor_claims(2_000)));
        assert_eq!(verify(&secret(1), &token, 2_000), Err(TokenError::Expired));
    }

    #[test]
    fn forged_tampered_and_malformed_tokens_are_refused() {
        let token = mint(&secret(1), &vendor_claims(2_000));
        assert_eq!(
            verify(&secret(2), &token, 1_500),
            Err(TokenError::BadSignature)
        );

        // Same signature, claims changed to another store.
        let parts: Vec<&str> = token.split('.').collect();
        let mut other = vendor_claims(2_000);
        other.store = Some(StoreId::new("globex").unwrap());
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(
            verify(&secret(1), &tampered, 1_500),
            Err(TokenError::BadSignature)
        );

        // alg:none, with no signature.
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert_eq!(
            verify(&secret(1), &unsigned, 1_500),
            Err(TokenError::Malformed)
        );

        for junk in ["", "a.b", "a.b.c.d", "not a token", &"x".repeat(5000)] {
            assert_eq!(
                verify(&secret(1), junk, 1_500),
                Err(TokenError::Malformed),
                "{junk:.20}"
            );
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Secret::new(b"too short".to_vec()).is_err());
    }
}
