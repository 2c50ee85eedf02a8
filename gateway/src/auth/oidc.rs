//! OIDC bearer tokens: a JWT verifier against the identity provider's JWKS.
//!
//! Accepts RS256, ES256 and EdDSA (Ed25519) only; `none` and every HMAC algorithm are
//! refused before any key is looked at, so a public key can never serve as an HMAC secret.
//! The JWKS is fetched lazily, cached, refreshed when older than [`JWKS_MAX_AGE_S`], and
//! refetched for an unknown `kid` at most once per `jwks_refetch_min_interval_s`; one fetch
//! is in flight at a time, and a failed fetch keeps the cached keys. Signatures are checked
//! by `jsonwebtoken::crypto::verify` (ring), always with the key's own algorithm; the claims
//! (`exp`, `nbf`, `iat`, `iss`, `aud`, `sub`, tenant, role) here. HTTPS: rustls with ring and
//! the system's CA certificates.
//!
//! One file, past 500 lines: every check a token goes through is here in the order it is
//! made, so a security review reads one file; the JWKS fetch is apart (`jwks.rs`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::errors::ErrorKind;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::jwks::{CachedKey, FetchError, JwksEndpoint, KeySet, parse_jwks};

/// Longest bearer token accepted, bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
pub use super::jwks::MAX_JWKS_BYTES;
/// Age after which cached keys are refetched (a failed refresh keeps them), seconds.
pub const JWKS_MAX_AGE_S: u64 = 15 * 60;
/// With no keys cached, a failed fetch is retried at most this often, ms.
pub const JWKS_RETRY_AFTER_FAILURE_MS: u64 = 1_000;
/// Largest `leeway_s` accepted by [`OidcConfig::validate`].
pub const MAX_LEEWAY_S: u64 = 600;
/// The algorithms this verifier can accept; `algorithms` picks among them.
pub const SUPPORTED_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// Settings of the OIDC verifier (`[gateway.auth.oidc]` or wherever the caller nests it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// Exact `iss` tokens must carry.
    pub issuer: String,
    /// Value that must be the token's `aud` or one of its `aud` entries.
    pub audience: String,
    /// URL of the issuer's JWKS: https, or http on a loopback address only.
    pub jwks_url: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, seconds.
    pub leeway_s: u64,
    /// Claim holding the tenant name.
    pub tenant_claim: String,
    /// Claim holding the role.
    pub role_claim: String,
    /// Role of tokens without the role claim (`None`: such tokens are refused).
    pub default_role: Option<String>,
    /// Accepted signing algorithms, a subset of [`SUPPORTED_ALGORITHMS`].
    pub algorithms: Vec<String>,
    /// An unknown `kid` refetches the JWKS at most once per this interval, seconds.
    pub jwks_refetch_min_interval_s: u64,
    /// Timeout of one JWKS fetch (connect, TLS, request, body), ms.
    pub jwks_timeout_ms: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: String::new(),
            leeway_s: 60,
            tenant_claim: "tenant".to_owned(),
            role_claim: "role".to_owned(),
            default_role: None,
            algorithms: SUPPORTED_ALGORITHMS.map(str::to_owned).to_vec(),
            jwks_refetch_min_interval_s: 60,
            jwks_timeout_ms: 5_000,
        }
    }
}

impl OidcConfig {
    /// Checks that every field is usable; the message names the field and what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.trim().is_empty() {
            return Err("oidc.issuer is required: the exact `iss` of the tokens".to_owned());
        }
        if self.audience.trim().is_empty() {
            return Err("oidc.audience is required: this service's `aud` value".to_owned());
        }
        JwksEndpoint::parse(&self.jwks_url)?;
        if self.leeway_s > MAX_LEEWAY_S {
            return Err(format!("oidc.leeway_s must be at most {MAX_LEEWAY_S}"));
        }
        if self.tenant_claim.is_empty() || self.role_claim.is_empty() {
            return Err("oidc.tenant_claim and oidc.role_claim must name a claim".to_owned());
        }
        if self.default_role.as_deref().is_some_and(str::is_empty) {
            return Err("oidc.default_role must be a role name or unset".to_owned());
        }
        if self.algorithms.is_empty() {
            return Err("oidc.algorithms must list at least one of RS256, ES256, EdDSA".to_owned());
        }
        if let Some(bad) = self
            .algorithms
            .iter()
            .find(|alg| parse_algorithm(alg).is_none())
        {
            return Err(format!(
                "oidc.algorithms: {bad:?} is not accepted; use RS256, ES256 or EdDSA"
            ));
        }
        if self.jwks_refetch_min_interval_s == 0 {
            return Err("oidc.jwks_refetch_min_interval_s must be at least 1".to_owned());
        }
        if !(1..=60_000).contains(&self.jwks_timeout_ms) {
            return Err("oidc.jwks_timeout_ms must be between 1 and 60000".to_owned());
        }
        Ok(())
    }
}

/// What a valid token says (tenant and role unchecked: the caller validates them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The `sub` claim.
    pub subject: String,
    /// The tenant claim's value.
    pub tenant: String,
    /// The role claim's value, or the configured default role.
    pub role: String,
    /// The `exp` claim, seconds since the Unix epoch.
    pub expires_at_s: u64,
}

/// Why a token was refused; `Display` is one sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT: wrong shape, size, base64 or JSON.
    #[error(
        "the bearer token is not a well-formed JWT; send the token exactly as the identity provider issued it"
    )]
    Malformed,
    /// `exp` is past (beyond the leeway).
    #[error("the token has expired; get a new token from the identity provider")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("the token is not valid yet; check the clock of the issuing system or retry later")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error(
        "the token comes from an issuer this service does not trust; get a token from the configured identity provider"
    )]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error(
        "the token is not meant for this service; request a token with this service's audience"
    )]
    WrongAudience,
    /// `alg` is none, HMAC or outside the configured allow-list.
    #[error(
        "the token's signing algorithm is not accepted; sign tokens with RS256, ES256 or EdDSA"
    )]
    AlgorithmNotAllowed,
    /// The key named by `kid` is of another type, curve or `alg` than the token.
    #[error(
        "the token's algorithm does not match the signing key it names; get a new token from the identity provider"
    )]
    KeyMismatch,
    /// `kid` is not in the JWKS, even after a refetch.
    #[error(
        "the token was signed with a key the identity provider does not publish; get a new token"
    )]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is not valid; get a new token from the identity provider")]
    BadSignature,
    /// A required claim is absent.
    #[error("the token lacks the `{claim}` claim; get a token that carries it")]
    MissingClaim {
        /// Name of the absent claim.
        claim: String,
    },
    /// A claim has the wrong JSON type or an empty value.
    #[error(
        "the token's `{claim}` claim has the wrong type or an empty value; get a token with a valid one"
    )]
    InvalidClaim {
        /// Name of the claim.
        claim: String,
    },
    /// No key is cached and the JWKS could not be fetched (503 for the caller, others 401).
    #[error("the identity provider's signing keys cannot be fetched right now; retry shortly")]
    JwksUnavailable,
}

impl TokenError {
    /// True when the fault is ours or the identity provider's (503), not the token's (401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::JwksUnavailable)
    }
}

/// Verifies bearer tokens; clones share one cached JWKS.
#[derive(Clone)]
pub struct OidcVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: OidcConfig,
    endpoint: JwksEndpoint,
    /// Held (by one task) for the length of a fetch: one fetch in flight at a time.
    fetch_lock: tokio::sync::Mutex<()>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    keys: Option<Arc<KeySet>>,
    /// Completed fetch attempts, so that a task that waited on a fetch uses its result.
    generation: u64,
    last_attempt: Option<Instant>,
    last_kid_refetch: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Refresh {
    /// Nothing cached yet.
    Missing,
    /// The token's `kid` is not in the cached set.
    UnknownKid,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.inner.config.issuer)
            .field("jwks_url", &self.inner.config.jwks_url)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// Validates `config` and prepares the HTTP(S) client; fetches nothing yet.
    pub fn new(config: OidcConfig) -> Result<Self, String> {
        config.validate()?;
        let endpoint = JwksEndpoint::parse(&config.jwks_url)?.connect_tls()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                endpoint,
                fetch_lock: tokio::sync::Mutex::new(()),
                cache: Mutex::new(Cache::default()),
            }),
        })
    }

    /// Verifies `token` (without `Bearer `) and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let header = parse_header(token)?;
        let algorithm = parse_algorithm(&header.alg)
            .filter(|_| self.inner.config.algorithms.contains(&header.alg))
            .ok_or(TokenError::AlgorithmNotAllowed)?;
        let keys = self.keys_for(header.kid.as_deref()).await?;
        let key = select_key(&keys, header.kid.as_deref(), algorithm, &header.alg)?;
        let claims = check_signature(token, key)?;
        self.check_claims(&claims)
    }

    /// The cached key set, fetched or refetched as `kid` requires.
    async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, TokenError> {
        let (cached, generation) = {
            let cache = self.cache();
            (cache.keys.clone(), cache.generation)
        };
        let Some(keys) = cached else {
            return self
                .refresh(Refresh::Missing, generation)
                .await
                .ok_or(TokenError::JwksUnavailable);
        };
        let stale = keys.fetched_at.elapsed() >= Duration::from_secs(JWKS_MAX_AGE_S);
        let keys = if stale {
            self.refresh_stale(keys, generation).await
        } else {
            keys
        };
        let known = match kid {
            Some(kid) => keys.keys.iter().any(|key| key.kid.as_deref() == Some(kid)),
            None => true,
        };
        if known {
            return Ok(keys);
        }
        Ok(self
            .refresh(Refresh::UnknownKid, generation)
            .await
            .unwrap_or(keys))
    }

    /// Refetches old keys unless another task is fetching; on failure keeps them.
    async fn refresh_stale(&self, keys: Arc<KeySet>, generation: u64) -> Arc<KeySet> {
        let Ok(_guard) = self.inner.fetch_lock.try_lock() else {
            return keys;
        };
        let min_interval = Duration::from_secs(self.inner.config.jwks_refetch_min_interval_s);
        {
            let cache = self.cache();
            let recently_tried = cache
                .last_attempt
                .is_some_and(|at| at.elapsed() < min_interval);
            if cache.generation != generation || recently_tried {
                return cache.keys.clone().unwrap_or(keys);
            }
        }
        self.fetch_and_store().await.unwrap_or(keys)
    }

    /// Fetches unless another task's fetch completed since `generation` or the rate limit
    /// says no; returns the keys cached afterwards.
    async fn refresh(&self, reason: Refresh, generation: u64) -> Option<Arc<KeySet>> {
        let _guard = self.inner.fetch_lock.lock().await;
        {
            let mut cache = self.cache();
            if cache.generation != generation {
                return cache.keys.clone();
            }
            let allowed = match reason {
                Refresh::Missing => cache.last_attempt.is_none_or(|at| {
                    at.elapsed() >= Duration::from_millis(JWKS_RETRY_AFTER_FAILURE_MS)
                }),
                Refresh::UnknownKid => cache.last_kid_refetch.is_none_or(|at| {
                    at.elapsed()
                        >= Duration::from_secs(self.inner.config.jwks_refetch_min_interval_s)
                }),
            };
            if !allowed {
                return cache.keys.clone();
            }
            if reason == Refresh::UnknownKid {
                cache.last_kid_refetch = Some(Instant::now());
            }
        }
        self.fetch_and_store().await
    }

    /// One fetch (the caller holds `fetch_lock`); a failure keeps the cached keys.
    async fn fetch_and_store(&self) -> Option<Arc<KeySet>> {
        let timeout = Duration::from_millis(self.inner.config.jwks_timeout_ms);
        let result = match tokio::time::timeout(timeout, self.inner.endpoint.fetch()).await {
            Ok(result) => result.and_then(|body| parse_jwks(&body)),
            Err(_) => Err(FetchError::Timeout),
        };
        let mut cache = self.cache();
        cache.generation += 1;
        cache.last_attempt = Some(Instant::now());
        match result {
            Ok(keys) => {
                let url = &self.inner.config.jwks_url;
                tracing::info!(%url, keys = keys.keys.len(), "fetched the oidc jwks");
                cache.keys = Some(Arc::new(keys));
            }
            Err(error) => {
                let (url, cached) = (&self.inner.config.jwks_url, cache.keys.is_some());
                tracing::warn!(%url, %error, cached, "oidc jwks fetch failed");
            }
        }
        cache.keys.clone()
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // The cache holds no invariant a panicking holder could break.
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check_claims(&self, claims: &Map<String, Value>) -> Result<TokenClaims, TokenError> {
        let config = &self.inner.config;
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expires_at_s = numeric_date(claims, "exp")?.ok_or_else(|| missing("exp"))?;
        if now_s >= expires_at_s.saturating_add(config.leeway_s) {
            return Err(TokenError::Expired);
        }
        for claim in ["nbf", "iat"] {
            if numeric_date(claims, claim)?
                .is_some_and(|at| at > now_s.saturating_add(config.leeway_s))
            {
                return Err(TokenError::NotYetValid);
            }
        }
        if string_claim(claims, "iss")?.ok_or_else(|| missing("iss"))? != config.issuer {
            return Err(TokenError::WrongIssuer);
        }
        let audience_ok = match claims.get("aud") {
            None => return Err(missing("aud")),
            Some(Value::String(aud)) => *aud == config.audience,
            Some(Value::Array(auds)) => auds
                .iter()
                .any(|aud| aud.as_str() == Some(&config.audience)),
            Some(_) => return Err(invalid("aud")),
        };
        if !audience_ok {
            return Err(TokenError::WrongAudience);
        }
        let subject = string_claim(claims, "sub")?.ok_or_else(|| missing("sub"))?;
        let tenant = string_claim(claims, &config.tenant_claim)?
            .ok_or_else(|| missing(&config.tenant_claim))?;
        let role = match string_claim(claims, &config.role_claim)? {
            Some(role) => role,
            None => config
                .default_role
                .clone()
                .ok_or_else(|| missing(&config.role_claim))?,
        };
        Ok(TokenClaims {
            subject,
            tenant,
            role,
            expires_at_s,
        })
    }
}

fn missing(claim: &str) -> TokenError {
    TokenError::MissingClaim {
        claim: claim.to_owned(),
    }
}

fn invalid(claim: &str) -> TokenError {
    TokenError::InvalidClaim {
        claim: claim.to_owned(),
    }
}

/// A non-empty string claim; `None` when absent (or JSON null).
fn string_claim(claims: &Map<String, Value>, claim: &str) -> Result<Option<String>, TokenError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) if !value.is_empty() => Ok(Some(value.clone())),
        Some(_) => Err(invalid(claim)),
    }
}

/// A NumericDate claim (seconds, fractions dropped); `None` when absent.
fn numeric_date(claims: &Map<String, Value>, claim: &str) -> Result<Option<u64>, TokenError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::Number(number)) => match (number.as_u64(), number.as_f64()) {
            (Some(seconds), _) => Ok(Some(seconds)),
            // NumericDate may carry fractions of a second: dropped.
            (None, Some(seconds)) if seconds.is_finite() && seconds >= 0.0 => {
                Ok(Some(seconds as u64))
            }
            _ => Err(invalid(claim)),
        },
        Some(_) => Err(invalid(claim)),
    }
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    /// Critical extensions: none is understood, so any present refuses the token.
    crit: Option<Value>,
}

/// The header of a JWS compact token, after shape checks on the whole token.
fn parse_header(token: &str) -> Result<RawHeader, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let parts: Vec<&str> = token.split('.').collect();
    let base64url = |part: &&str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // An empty signature is let through to the algorithm check, so that `alg: none` is
    // reported as such; no accepted algorithm verifies an empty signature.
    if parts.len() != 3
        || parts[0].is_empty()
        || parts[1].is_empty()
        || !parts.iter().all(base64url)
    {
        return Err(TokenError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| TokenError::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if header.crit.is_some() {
        return Err(TokenError::Malformed);
    }
    Ok(header)
}

/// The key for `kid` (or the only key of the token's type when it has none).
fn select_key<'k>(
    keys: &'k KeySet,
    kid: Option<&str>,
    algorithm: Algorithm,
    alg_name: &str,
) -> Result<&'k CachedKey, TokenError> {
    let fits = |key: &&CachedKey| {
        key.algorithm == algorithm
            && key
                .jwk_alg
                .as_deref()
                .is_none_or(|jwk_alg| jwk_alg == alg_name)
    };
    match kid {
        Some(kid) => {
            let mut named = keys
                .keys
                .iter()
                .filter(|key| key.kid.as_deref() == Some(kid))
                .peekable();
            if named.peek().is_none() {
                return Err(TokenError::UnknownKey);
            }
            named.find(fits).ok_or(TokenError::KeyMismatch)
        }
        None => {
            let mut candidates = keys.keys.iter().filter(fits);
            match (candidates.next(), candidates.next()) {
                (Some(key), None) => Ok(key),
                _ => Err(TokenError::UnknownKey),
            }
        }
    }
}

/// Checks the signature with `key` (whose type [`select_key`] matched to the token's `alg`)
/// and returns the claims, not yet validated.
fn check_signature(token: &str, key: &CachedKey) -> Result<Map<String, Value>, TokenError> {
    let (message, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (_, payload) = message.split_once('.').ok_or(TokenError::Malformed)?;
    match jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, key.algorithm) {
        Ok(true) => {}
        Ok(false) => return Err(TokenError::BadSignature),
        Err(error) if matches!(error.kind(), ErrorKind::Base64(_)) => {
            return Err(TokenError::Malformed);
        }
        Err(_) => return Err(TokenError::BadSignature),
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn valid() -> OidcConfig {
        OidcConfig {
            issuer: "https://idp.example".to_owned(),
            audience: "mochi".to_owned(),
            jwks_url: "https://idp.example/.well-known/jwks.json".to_owned(),
            ..OidcConfig::default()
        }
    }

    fn refused(change: impl FnOnce(&mut OidcConfig)) -> String {
        let mut config = valid();
        change(&mut config);
        config.validate().unwrap_err()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = OidcConfig::default();
        assert_eq!(config.leeway_s, 60);
        assert_eq!(config.tenant_claim, "tenant");
        assert_eq!(config.role_claim, "role");
        assert_eq!(config.algorithms, ["RS256", "ES256", "EdDSA"]);
        assert_eq!(config.jwks_refetch_min_interval_s, 60);
        assert_eq!(config.jwks_timeout_ms, 5_000);
        assert_eq!(config.default_role, None);
    }

    #[test]
    fn accepts_a_complete_config() {
        valid().validate().unwrap();
        let loopback = OidcConfig {
            jwks_url: "http://127.0.0.1:8080/jwks".to_owned(),
            ..valid()
        };
        loopback.validate().unwrap();
        let ipv6 = OidcConfig {
            jwks_url: "http://[::1]:9/jwks".to_owned(),
            ..valid()
        };
        ipv6.validate().unwrap();
    }

    #[test]
    fn default_config_needs_issuer_and_audience() {
        assert!(
            OidcConfig::default()
                .validate()
                .unwrap_err()
                .contains("issuer")
        );
        assert!(refused(|c| c.audience = " ".to_owned()).contains("audience"));
    }

    #[test]
    fn refuses_bad_jwks_urls() {
        for url in [
            "",
            "not a url",
            "/jwks",
            "ftp://idp.example/jwks",
            "http://idp.example/jwks",
            "https://user:pw@idp.example/jwks",
        ] {
            let message = refused(|c| c.jwks_url = url.to_owned());
            assert!(message.contains("jwks_url"), "{url}: {message}");
        }
    }

    #[test]
    fn refuses_algorithms_outside_the_three() {
        for alg in ["none", "HS256", "RS384", "PS256", "es256", ""] {
            let message = refused(|c| c.algorithms = vec!["ES256".to_owned(), alg.to_owned()]);
            assert!(message.contains("algorithms"), "{alg}: {message}");
        }
        assert!(refused(|c| c.algorithms.clear()).contains("algorithms"));
        let subset = OidcConfig {
            algorithms: vec!["EdDSA".to_owned()],
            ..valid()
        };
        subset.validate().unwrap();
    }

    #[test]
    fn refuses_out_of_range_limits_and_empty_names() {
        assert!(refused(|c| c.leeway_s = MAX_LEEWAY_S + 1).contains("leeway_s"));
        assert!(refused(|c| c.jwks_refetch_min_interval_s = 0).contains("interval"));
        assert!(refused(|c| c.jwks_timeout_ms = 0).contains("timeout"));
        assert!(refused(|c| c.jwks_timeout_ms = 60_001).contains("timeout"));
        assert!(refused(|c| c.tenant_claim.clear()).contains("tenant_claim"));
        assert!(refused(|c| c.role_claim.clear()).contains("role_claim"));
        assert!(refused(|c| c.default_role = Some(String::new())).contains("default_role"));
    }

    #[test]
    fn deserializes_with_defaults_and_refuses_unknown_fields() {
        let config: OidcConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://idp.example", "audience": "mochi",
            "jwks_url": "https://idp.example/jwks", "default_role": "viewer"
        }))
        .unwrap();
        assert_eq!(config.default_role.as_deref(), Some("viewer"));
        assert_eq!(config.leeway_s, 60);
        let unknown = serde_json::from_value::<OidcConfig>(serde_json::json!({ "isuser": "x" }));
        assert!(unknown.is_err());
    }

    #[test]
    fn new_refuses_an_invalid_config() {
        assert!(OidcVerifier::new(OidcConfig::default()).is_err());
    }

    #[test]
    fn numeric_dates_accept_integers_and_fractions_only() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "a": 10, "b": 10.9, "c": -1, "d": "10", "e": null, "f": 1e300
        }))
        .unwrap();
        assert_eq!(numeric_date(&claims, "a"), Ok(Some(10)));
        assert_eq!(numeric_date(&claims, "b"), Ok(Some(10)));
        assert_eq!(numeric_date(&claims, "f"), Ok(Some(u64::MAX)));
        assert_eq!(numeric_date(&claims, "missing"), Ok(None));
        for claim in ["c", "d", "e"] {
            assert_eq!(numeric_date(&claims, claim), Err(invalid(claim)));
        }
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys() {
        let body = serde_json::json!({ "keys": [
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
            { "kty": "EC", "kid": "p384", "crv": "P-384", "x": "AAAA", "y": "AAAA" },
            { "kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": "AAAA" },
            { "kty": "OKP", "kid": "enc", "use": "enc", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32]) },
            { "kty": "RSA", "kid": 5, "n": "AQAB", "e": "AQAB" },
            { "kty": "RSA", "kid": "no-e", "n": "AQAB" },
            "not an object",
            { "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32]) },
        ]});
        let keys = parse_jwks(&serde_json::to_vec(&body).unwrap()).unwrap();
        let kids: Vec<_> = keys.keys.iter().map(|key| key.kid.as_deref()).collect();
        assert_eq!(kids, [Some("ed")]);
        assert!(matches!(
            parse_jwks(br#"{"keys": []}"#),
            Err(FetchError::NoUsableKeys)
        ));
        assert!(matches!(parse_jwks(b"[1, 2]"), Err(FetchError::Json(_))));
        assert!(matches!(
            parse_jwks(&[0xff, 0xfe]),
            Err(FetchError::Json(_))
        ));
    }

    #[test]
    fn header_parsing_refuses_bad_shapes() {
        let header = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let ok = format!("{}.e30.c2ln", header(r#"{"alg":"ES256","kid":"k"}"#));
        assert_eq!(parse_header(&ok).unwrap().kid.as_deref(), Some("k"));
        let none = format!("{}.e30.", header(r#"{"alg":"none"}"#));
        assert_eq!(parse_header(&none).unwrap().alg, "none");
        for token in [
            String::new(),
            ".e30.c2ln".to_owned(),
            format!("{}..c2ln", header(r#"{"alg":"ES256"}"#)),
            format!("{}.e30.c2ln", header(r#"{"alg":"ES256","crit":["exp"]}"#)),
            format!("{}.e30.c2ln", header(r#"{"alg":5}"#)),
            format!("{}.e30.c2ln", header(r#"{"kid":"k"}"#)),
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0xfd])),
            format!("{}.e30.c2ln=", header(r#"{"alg":"ES256"}"#)),
        ] {
            assert!(
                matches!(parse_header(&token), Err(TokenError::Malformed)),
                "{token}"
            );
        }
    }

    #[test]
    fn only_jwks_unavailable_is_unavailable() {
        assert!(TokenError::JwksUnavailable.is_unavailable());
        assert!(!TokenError::UnknownKey.is_unavailable());
        assert!(!TokenError::Expired.is_unavailable());
    }
}
