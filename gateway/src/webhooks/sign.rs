//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "<webhook-id>.<webhook-timestamp>.<body>">` with the tenant's secret `whsec_<base64>`.
//! Each tenant's secret lives in `mochi_keys` (entry `w.<tenant>`), made on first use by
//! whichever gateway gets there first (create-only, so every replica signs with the same).

use std::time::Duration;

use async_nats::jetstream::kv;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use protocol::TenantId;
use protocol::shared_value;
use ring::hmac;

/// Prefix of a secret as shown to tenants.
const SECRET_PREFIX: &str = "whsec_";
/// How long a request waits for a tenant's secret to be read or stored.
const STORE_PATIENCE: Duration = Duration::from_secs(5);
/// Random bytes in a secret.
const SECRET_BYTES: usize = 32;

/// A tenant's signing secret.
#[derive(Clone)]
pub struct Secret {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Reads `whsec_<base64>`.
    pub fn parse(text: &str) -> Option<Self> {
        let encoded = text.trim().strip_prefix(SECRET_PREFIX)?;
        let bytes = STANDARD.decode(encoded).ok()?;
        (!bytes.is_empty()).then_some(Self { bytes })
    }

    /// `whsec_<base64>`, as the tenant configures its receiver with.
    pub fn shown(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.bytes))
    }

    /// The `webhook-signature` header of `body` sent as `id` at `timestamp_s`.
    pub fn signature(&self, id: &str, timestamp_s: u64, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.bytes);
        let mut context = hmac::Context::with_key(&key);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp_s.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }

    fn random() -> Result<Self, String> {
        let mut bytes = vec![0u8; SECRET_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "no randomness".to_owned())?;
        Ok(Self { bytes })
    }
}

/// The key of `tenant`'s secret in `mochi_keys`.
fn entry(tenant: &TenantId) -> String {
    format!("w.{tenant}")
}

/// `tenant`'s secret, made and stored on first use (by whichever gateway asks first).
pub async fn secret_of(keys: &kv::Store, tenant: &TenantId) -> Result<Secret, String> {
    let make = || Secret::random().map(|made| made.shown().into_bytes().into());
    let value = shared_value::get_or_create(keys, &entry(tenant), make, STORE_PATIENCE)
        .await
        .map_err(|error| {
            format!(
                "the webhook secret of tenant {tenant}: {}",
                error.with_causes()
            )
        })?;
    let text = String::from_utf8_lossy(&value);
    Secret::parse(&text)
        .ok_or_else(|| format!("the webhook secret of tenant {tenant} is unreadable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks specification's reference tests.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        assert_eq!(
            secret.signature(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_round_trip_and_refuse_other_text() {
        let secret = Secret::random().expect("random");
        let again = Secret::parse(&secret.shown()).expect("parses");
        assert_eq!(again.bytes, secret.bytes);
        for bad in ["", "whsec_", "sk_abc", "whsec_***"] {
            assert!(Secret::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }
}
