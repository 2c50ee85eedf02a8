//! Signed download links: `GET /v1/videos/{id}/content?exp=…&sig=…` works without a key.
//! `sig` is `<key id>.<hex HMAC-SHA256>` over the key id, the job id, the variant and the
//! expiry, so that signing keys rotate: the first configured key signs, every configured key
//! verifies (two at once during a rotation).

use std::time::Duration;

use async_nats::jetstream::kv;
use protocol::JobId;
use protocol::shared_value;
use ring::hmac;
use serde::{Deserialize, Serialize};

use protocol::config::Secret;

/// Entry of `mochi_keys` holding the generated signing key when none is configured.
const AUTO_KEY_ENTRY: &str = "signing.auto";
/// How long a start waits for the generated key to be read or stored (a bucket made a
/// moment ago answers once its leader is elected).
const STORE_PATIENCE: Duration = Duration::from_secs(30);
/// The variant of the MP4 itself.
pub const VARIANT_VIDEO: &str = "video";

/// Signed-link settings (`[gateway.links]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// How long a link given in a status response works, seconds.
    pub ttl_s: u64,
    /// Signing keys, newest first: the first signs, all verify. Empty: one key is generated
    /// once into the `mochi_keys` bucket and shared by every replica.
    pub signing_keys: Vec<SigningKeyConfig>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            ttl_s: 3_600,
            signing_keys: Vec::new(),
        }
    }
}

/// One signing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// Its id, carried in each signature (letters, digits, `-`, `_`).
    pub id: String,
    /// The secret, at least 32 bytes.
    pub secret: Secret,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: String,
    /// 64 base62 characters (381 bits).
    secret: String,
}

/// Why a link was refused (all answer 403; the route adds where to get a fresh link).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// `exp` or `sig` is missing or not in their format.
    #[error("the download link is malformed")]
    Malformed,
    /// The link's time is over.
    #[error("the download link expired")]
    Expired,
    /// The signature does not match (altered link, or a key no longer configured).
    #[error("the download link's signature does not match (altered, or signed with a retired key)")]
    BadSignature,
}

/// Signs and verifies links.
#[derive(Clone)]
pub struct LinkSigner {
    keys: Vec<(String, hmac::Key)>,
    ttl_s: u64,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("LinkSigner").field("key_ids", &ids).finish()
    }
}

impl LinkSigner {
    /// A signer over `keys` (id, secret), the first of which signs.
    pub fn new(keys: &[(String, Vec<u8>)], ttl_s: u64) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|(id, secret)| (id.clone(), hmac::Key::new(hmac::HMAC_SHA256, secret)))
                .collect(),
            ttl_s,
        }
    }

    /// The configured keys, or else the shared generated one in `store` (made on first use).
    pub async fn load(config: &LinkConfig, store: &kv::Store) -> Result<Self, String> {
        if !config.signing_keys.is_empty() {
            let keys: Vec<(String, Vec<u8>)> = config
                .signing_keys
                .iter()
                .map(|k| (k.id.clone(), k.secret.expose().as_bytes().to_vec()))
                .collect();
            return Ok(Self::new(&keys, config.ttl_s));
        }
        let make = || {
            let fresh = StoredKey {
                id: format!(
                    "auto-{}",
                    protocol::random::base62(6).map_err(|e| e.to_string())?
                ),
                secret: protocol::random::base62(64).map_err(|e| e.to_string())?,
            };
            serde_json::to_vec(&fresh)
                .map(Into::into)
                .map_err(|e| e.to_string())
        };
        // Every replica reads the one key stored first (another may be storing it now).
        let stored = shared_value::get_or_create(store, AUTO_KEY_ENTRY, make, STORE_PATIENCE)
            .await
            .map_err(|error| error.with_causes())?;
        let key: StoredKey = serde_json::from_slice(&stored)
            .map_err(|_| "the stored signing key is unreadable".to_owned())?;
        Ok(Self::new(
            &[(key.id, key.secret.into_bytes())],
            config.ttl_s,
        ))
    }

    /// A link to `variant` of `job_id` valid until `now_s + ttl`, and that expiry (s).
    pub fn link(&self, job_id: JobId, variant: &str, now_s: u64) -> Option<(String, u64)> {
        let exp = now_s.saturating_add(self.ttl_s);
        let sig = self.sign(job_id, variant, exp)?;
        let variant_query = if variant == VARIANT_VIDEO {
            String::new()
        } else {
            format!("&variant={variant}")
        };
        Some((
            format!("/v1/videos/{job_id}/content?exp={exp}&sig={sig}{variant_query}"),
            exp,
        ))
    }

    /// `<key id>.<hex mac>` with the signing key.
    pub fn sign(&self, job_id: JobId, variant: &str, exp: u64) -> Option<String> {
        let (id, key) = self.keys.first()?;
        let tag = hmac::sign(key, message(id, job_id, variant, exp).as_bytes());
        Some(format!("{id}.{}", protocol::codec::hex(tag.as_ref())))
    }

    /// Checks a link's `exp` and `sig` at `now_s`.
    pub fn verify(
        &self,
        job_id: JobId,
        variant: &str,
        exp: Option<&str>,
        sig: Option<&str>,
        now_s: u64,
    ) -> Result<(), LinkError> {
        let exp: u64 = exp
            .and_then(|e| e.parse().ok())
            .ok_or(LinkError::Malformed)?;
        let (id, mac_hex) = sig
            .and_then(|s| s.split_once('.'))
            .ok_or(LinkError::Malformed)?;
        let mac = unhex(mac_hex).ok_or(LinkError::Malformed)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(known, _)| known == id)
            .ok_or(LinkError::BadSignature)?;
        hmac::verify(key, message(id, job_id, variant, exp).as_bytes(), &mac)
            .map_err(|_| LinkError::BadSignature)?;
        // Checked after the signature, so that an altered expiry reads as altered.
        if exp <= now_s {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

fn message(key_id: &str, job_id: JobId, variant: &str, exp: u64) -> String {
    format!("mochi-link-v1\n{key_id}\n{job_id}\n{variant}\n{exp}")
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(keys: &[(&str, &str)]) -> LinkSigner {
        let keys: Vec<(String, Vec<u8>)> = keys
            .iter()
            .map(|(id, s)| ((*id).to_owned(), s.as_bytes().to_vec()))
            .collect();
        LinkSigner::new(&keys, 3_600)
    }

    #[test]
    fn a_link_verifies_until_it_expires() {
        let signer = signer(&[("k1", "secret-one-secret-one-secret-one")]);
        let job = JobId::new();
        let sig = signer.sign(job, VARIANT_VIDEO, 1_000).expect("sig");
        let verify = |exp: &str, sig: &str, now| {
            signer.verify(job, VARIANT_VIDEO, Some(exp), Some(sig), now)
        };
        assert_eq!(verify("1000", &sig, 999), Ok(()));
        assert_eq!(verify("1000", &sig, 1_000), Err(LinkError::Expired));
        assert_eq!(verify("2000", &sig, 999), Err(LinkError::BadSignature));
        assert_eq!(
            signer.verify(JobId::new(), VARIANT_VIDEO, Some("1000"), Some(&sig), 999),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer.verify(job, "thumbnail", Some("1000"), Some(&sig), 999),
            Err(LinkError::BadSignature)
        );
        for (exp, sig) in [
            ("x", sig.as_str()),
            ("1000", "k1"),
            ("1000", "k1.zz"),
            ("1000", ""),
        ] {
            assert_eq!(
                verify(exp, sig, 999),
                Err(LinkError::Malformed),
                "{exp} {sig}"
            );
        }
    }

    #[test]
    fn rotation_keeps_old_links_while_both_keys_are_configured() {
        let old = signer(&[("k1", "secret-one-secret-one-secret-one")]);
        let both = signer(&[
            ("k2", "secret-two-secret-two-secret-two"),
            ("k1", "secret-one-secret-one-secret-one"),
        ]);
        let new = signer(&[("k2", "secret-two-secret-two-secret-two")]);
        let job = JobId::new();
        let old_sig = old.sign(job, VARIANT_VIDEO, 50).expect("sig");
        assert_eq!(
            both.verify(job, VARIANT_VIDEO, Some("50"), Some(&old_sig), 1),
            Ok(())
        );
        assert!(
            both.sign(job, VARIANT_VIDEO, 50)
                .expect("sig")
                .starts_with("k2.")
        );
        assert_eq!(
            new.verify(job, VARIANT_VIDEO, Some("50"), Some(&old_sig), 1),
            Err(LinkError::BadSignature)
        );
    }
}
