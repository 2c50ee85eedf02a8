//! Who calls, and what they may do: API keys (hashed, in `mochi_keys`), roles, the
//! middleware that authenticates and rate-limits every API request, tenant quotas and
//! signed download links. Audit lines (keys made and revoked, admin actions, refused
//! cross-tenant attempts) go to the log target `mochi::audit`.

pub(crate) mod jwks;
pub mod keys;
pub mod limits;
pub mod oidc;
pub mod quota;
mod role;
pub mod signing;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use protocol::{ErrorCode, TenantId, now_ms};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::metrics;
use keys::KeyCache;
use limits::{Decision, RateClass};
pub use role::{Action, Role};

/// Log target of audit events.
pub const AUDIT: &str = "mochi::audit";

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An API key.
    ApiKey,
    /// An OIDC bearer token.
    Token,
    /// Nothing: authentication is off (loopback only).
    Anonymous,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The tenant whose jobs it acts on.
    pub tenant: TenantId,
    /// What it may do.
    pub role: Role,
    /// Who it is in logs and rate limits: a key id, `oidc:<subject>` or `anonymous`.
    pub id: String,
    /// How it authenticated.
    pub credential: Credential,
}

impl Principal {
    /// 403 unless the caller's role allows `action` (refusals are audited).
    pub fn require(&self, action: Action) -> Result<(), ApiError> {
        if self.role.allows(action) {
            return Ok(());
        }
        tracing::warn!(target: AUDIT, event = "forbidden", tenant = %self.tenant, key_id = %self.id, role = %self.role, "role refused");
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "a {} credential cannot {}; use a key with a role that can",
                self.role,
                action.describe()
            ),
        ))
    }
}

/// The authenticated caller of a request (401 if the middleware let none through).
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(missing_credentials)
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned().map(Caller))
    }
}

/// Authentication settings (`[gateway.auth]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Turns authentication off: every request acts as an admin of `open_tenant`. Refused
    /// unless the gateway listens on loopback only.
    pub disabled: bool,
    /// The tenant of every request while authentication is off.
    pub open_tenant: String,
    /// How often each replica writes a key's last-used time at most, seconds.
    pub key_touch_interval_s: u64,
    /// OIDC bearer tokens, verified against the issuer's JWKS (absent: API keys only).
    pub oidc: Option<oidc::OidcConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            disabled: false,
            open_tenant: "local".to_owned(),
            key_touch_interval_s: 60,
            oidc: None,
        }
    }
}

/// Checks credentials.
#[derive(Clone)]
pub struct Authenticator {
    keys: KeyCache,
    /// The caller of every request while authentication is off.
    open: Option<Principal>,
    /// The OIDC settings, when tokens are accepted.
    oidc_config: Option<oidc::OidcConfig>,
    /// The token verifier, made by [`Authenticator::start`].
    oidc: Arc<OnceLock<oidc::OidcVerifier>>,
}

impl Authenticator {
    /// Over `keys`; `config.disabled` lets every request in as an admin of `open_tenant`.
    pub fn new(config: &AuthConfig, keys: KeyCache) -> Self {
        let open = config.disabled.then(|| Principal {
            tenant: TenantId::new(config.open_tenant.as_str())
                .unwrap_or_else(|_| TenantId::default_tenant()),
            role: Role::Admin,
            id: "anonymous".to_owned(),
            credential: Credential::Anonymous,
        });
        Self {
            keys,
            open,
            oidc_config: config.oidc.clone(),
            oidc: Arc::default(),
        }
    }

    /// Makes the OIDC verifier, if tokens are configured (fails when, say, an https JWKS
    /// URL has no CA certificates to check it with).
    pub fn start_oidc(&self) -> Result<(), String> {
        if let Some(config) = &self.oidc_config
            && self.oidc.get().is_none()
        {
            let verifier = oidc::OidcVerifier::new(config.clone())?;
            let _ = self.oidc.set(verifier);
        }
        Ok(())
    }

    /// The key cache (started by the server).
    pub fn keys(&self) -> &KeyCache {
        &self.keys
    }

    /// Who sent `headers`: `Authorization: Bearer <API key>`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if let Some(open) = &self.open {
            return Ok(open.clone());
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(missing_credentials());
        };
        let bearer = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty());
        let Some(token) = bearer else {
            return Err(unauthorized(
                "the Authorization header must be `Bearer <API key>`",
            ));
        };
        if token.starts_with(keys::KEY_PREFIX) {
            let record = self
                .keys
                .find(token)
                .await
                .map_err(|error| {
                    tracing::warn!(%error, "an API key this replica does not know could not be checked");
                    ApiError::unavailable(
                        "this API key cannot be checked now (the key store did not answer); retry shortly",
                    )
                })?
                .ok_or_else(|| {
                    unauthorized("this API key is not valid; check that it was copied whole, or ask an admin for a new one")
                })?;
            if let Some(refusal) = record.refusal(now_ms()) {
                return Err(unauthorized(refusal));
            }
            self.keys.used(&record);
            return Ok(Principal {
                tenant: record.tenant,
                role: record.role,
                id: record.id,
                credential: Credential::ApiKey,
            });
        }
        let Some(config) = &self.oidc_config else {
            return Err(unauthorized(
                "the bearer credential is not an API key of this service (they start with mk_live_)",
            ));
        };
        let Some(verifier) = self.oidc.get() else {
            return Err(ApiError::unavailable(
                "token verification is starting; retry shortly",
            ));
        };
        let claims = verifier.verify(token).await.map_err(|error| {
            if error.is_unavailable() {
                tracing::warn!(%error, "OIDC keys unavailable");
                ApiError::unavailable(error.to_string())
            } else {
                unauthorized(error.to_string())
            }
        })?;
        let tenant = TenantId::new(claims.tenant.as_str()).map_err(|_| {
            unauthorized(format!(
                "the token's {} claim is not a tenant name (1 to 64 letters, digits, '-' or '_')",
                config.tenant_claim
            ))
        })?;
        let role: Role = claims.role.parse().map_err(|_| {
            unauthorized(format!(
                "the token's {} claim is not a role: use admin, submitter or viewer",
                config.role_claim
            ))
        })?;
        Ok(Principal {
            tenant,
            role,
            id: format!("oidc:{}", claims.subject),
            credential: Credential::Token,
        })
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

fn missing_credentials() -> ApiError {
    unauthorized("send an API key as `Authorization: Bearer <key>`; `mochi keys create` makes one")
}

/// What the middleware checks callers with: the authenticator and the rate limiter. The
/// middleware holds it behind an `Arc`, since axum clones a middleware's state for every
/// request (the authenticator's OIDC settings and open principal are owned strings).
pub struct Gate {
    /// Checks credentials.
    pub auth: Authenticator,
    /// Per-key request rates.
    pub limiter: Arc<limits::RateLimiter>,
}

/// The route of a download by signed link, which needs no credentials.
const CONTENT_ROUTE: &str = "/v1/videos/{id}/content";

/// Middleware of the API: authenticates the caller (401), applies its rate limit (429 with
/// `Retry-After`), hands the [`Principal`] to the handler and adds the `RateLimit-*` headers.
pub async fn middleware(
    State(state): State<Arc<Gate>>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let signed_link = route.as_deref() == Some(CONTENT_ROUTE)
        && request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("sig=")));
    if signed_link {
        // The handler verifies the signature instead.
        return next.run(request).await;
    }
    let principal = match state.auth.authenticate(request.headers()).await {
        Ok(principal) => principal,
        Err(error) => {
            metrics::record_auth_failure();
            return error.into_response();
        }
    };
    let class = if request.method() == Method::POST && route.as_deref() == Some("/v1/videos") {
        RateClass::Create
    } else {
        RateClass::Read
    };
    // Anonymous callers (authentication off, loopback only) have no key to limit.
    let decision = (principal.credential != Credential::Anonymous)
        .then(|| state.limiter.check(&principal.id, class, Instant::now()));
    if let Some(decision) = decision.filter(|d| !d.allowed) {
        metrics::record_rate_limited(class);
        tracing::info!(key_id = %principal.id, tenant = %principal.tenant, ?class, "rate limited");
        let mut response = ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "this key may make {} {} requests a minute; retry in {} s",
                decision.limit,
                match class {
                    RateClass::Create => "create",
                    RateClass::Read => "read",
                },
                decision.retry_after_s
            ),
        )
        .into_response();
        rate_headers(response.headers_mut(), &decision);
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(decision.retry_after_s),
        );
        return response;
    }
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    if let Some(decision) = decision {
        rate_headers(response.headers_mut(), &decision);
    }
    response
}

fn rate_headers(headers: &mut HeaderMap, decision: &Decision) {
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(decision.reset_s));
}

/// Parses `--expires-in` style durations: `90s`, `30m`, `12h`, `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 12h or 30d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 90s, 30m, 12h or 30d"
            ));
        }
    };
    number
        .checked_mul(seconds)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_the_issue_says() {
        use Action::*;
        let table = [
            (Role::Admin, [true, true, true, true]),
            (Role::Submitter, [true, true, true, false]),
            (Role::Viewer, [true, false, false, false]),
        ];
        for (role, allowed) in table {
            for (action, expected) in [Read, Submit, Cancel, Admin].into_iter().zip(allowed) {
                assert_eq!(role.allows(action), expected, "{role} {action:?}");
            }
        }
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        for bad in ["", "10", "5w", "0s", "-3h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
