//! The JWKS of the OIDC verifier: parsing a key set into keys `jsonwebtoken` can verify
//! with, and fetching it over HTTP or HTTPS (hyper, rustls with ring and the system's CA
//! certificates), bounded in size and time.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// Largest JWKS body read, bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

pub(super) struct KeySet {
    pub(super) keys: Vec<CachedKey>,
    pub(super) fetched_at: Instant,
}

pub(super) struct CachedKey {
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    /// The JWK's own `alg`, when it has one.
    pub(super) jwk_alg: Option<String>,
    pub(super) key: DecodingKey,
}

#[derive(Deserialize)]
pub(super) struct RawJwks {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
pub(super) struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// The usable signature keys of a JWKS body; keys of other types or with bad fields are
/// skipped, and a set with none is an error (so that a broken answer does not empty the cache).
pub(super) fn parse_jwks(body: &[u8]) -> Result<KeySet, FetchError> {
    let raw: RawJwks = serde_json::from_slice(body).map_err(FetchError::Json)?;
    let keys: Vec<CachedKey> = raw
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<RawJwk>(value).ok())
        .filter_map(cached_key)
        .collect();
    if keys.is_empty() {
        return Err(FetchError::NoUsableKeys);
    }
    Ok(KeySet {
        keys,
        fetched_at: Instant::now(),
    })
}

pub(super) fn cached_key(jwk: RawJwk) -> Option<CachedKey> {
    if jwk
        .key_use
        .as_deref()
        .is_some_and(|key_use| key_use != "sig")
    {
        return None;
    }
    let decoded_len = |field: &Option<String>| {
        field
            .as_deref()
            .and_then(|value| URL_SAFE_NO_PAD.decode(value).ok())
            .map(|b| b.len())
    };
    let (algorithm, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let (n, e) = (jwk.n.as_deref()?, jwk.e.as_deref()?);
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_components(n, e).ok()?,
            )
        }
        ("EC", Some("P-256"))
            if decoded_len(&jwk.x) == Some(32) && decoded_len(&jwk.y) == Some(32) =>
        {
            let (x, y) = (jwk.x.as_deref()?, jwk.y.as_deref()?);
            (
                Algorithm::ES256,
                DecodingKey::from_ec_components(x, y).ok()?,
            )
        }
        ("OKP", Some("Ed25519")) if decoded_len(&jwk.x) == Some(32) => (
            Algorithm::EdDSA,
            DecodingKey::from_ed_components(jwk.x.as_deref()?).ok()?,
        ),
        _ => return None,
    };
    Some(CachedKey {
        kid: jwk.kid,
        algorithm,
        jwk_alg: jwk.alg,
        key,
    })
}

/// Why a JWKS fetch failed (logged, never shown to clients).
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    #[error("tls handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("cannot build the request")]
    Request(#[source] hyper::http::Error),
    #[error("http exchange failed")]
    Http(#[source] hyper::Error),
    #[error("answered http status {0}")]
    Status(u16),
    #[error("body larger than {MAX_JWKS_BYTES} bytes or unreadable")]
    Body,
    #[error("timed out")]
    Timeout,
    #[error("body is not a jwks")]
    Json(#[source] serde_json::Error),
    #[error("the jwks has no usable RS256, ES256 or Ed25519 signature key")]
    NoUsableKeys,
}

/// Where the JWKS lives and how to reach it.
pub(super) struct JwksEndpoint {
    host: String,
    port: u16,
    /// Host header value.
    authority: String,
    path_and_query: String,
    /// Present for https.
    tls: Option<TlsTarget>,
}

pub(super) struct TlsTarget {
    name: ServerName<'static>,
    /// `None` until [`JwksEndpoint::connect_tls`]: [`OidcConfig::validate`] loads no certificates.
    connector: Option<tokio_rustls::TlsConnector>,
}

impl JwksEndpoint {
    /// Checks `url` (https, or http on loopback; no credentials); loads no certificates.
    pub(super) fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|_| {
            format!("oidc.jwks_url {url:?} is not a URL like https://idp.example/jwks")
        })?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(format!("oidc.jwks_url {url:?} needs a scheme and a host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!("oidc.jwks_url {url:?} must not carry credentials"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let (port, tls) = match scheme {
            "https" => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| format!("oidc.jwks_url {url:?} has an invalid host"))?;
                (
                    443,
                    Some(TlsTarget {
                        name,
                        connector: None,
                    }),
                )
            }
            "http" if loopback => (80, None),
            _ => {
                return Err(format!(
                    "oidc.jwks_url {url:?} must be https (plain http only on a loopback address)"
                ));
            }
        };
        let path_and_query = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        Ok(Self {
            port: authority.port_u16().unwrap_or(port),
            authority: authority.as_str().to_owned(),
            host,
            path_and_query,
            tls,
        })
    }

    /// Builds the TLS client of an https endpoint (a no-op for http).
    pub(super) fn connect_tls(mut self) -> Result<Self, String> {
        if let Some(target) = &mut self.tls {
            target.connector = Some(tls_connector()?);
        }
        Ok(self)
    }

    /// GETs the body (status 200, at most [`MAX_JWKS_BYTES`]); the caller bounds the time.
    pub(super) async fn fetch(&self) -> Result<Bytes, FetchError> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(FetchError::Connect)?;
        let Some(target) = &self.tls else {
            return self.exchange(stream).await;
        };
        let Some(connector) = &target.connector else {
            return Err(FetchError::Tls(std::io::Error::other(
                "tls client not built",
            )));
        };
        let stream = connector
            .connect(target.name.clone(), stream)
            .await
            .map_err(FetchError::Tls)?;
        self.exchange(stream).await
    }

    pub(super) async fn exchange<S>(&self, stream: S) -> Result<Bytes, FetchError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(FetchError::Http)?;
        let request = hyper::Request::get(self.path_and_query.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "mochi-gateway")
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(FetchError::Request)?;
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(FetchError::Http)?;
            if response.status() != hyper::StatusCode::OK {
                return Err(FetchError::Status(response.status().as_u16()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES);
            Ok(body
                .collect()
                .await
                .map_err(|_| FetchError::Body)?
                .to_bytes())
            // `sender` drops here, which lets `connection` finish.
        };
        let (body, _connection) = tokio::join!(exchange, connection);
        body
    }
}

/// rustls with ring and the system's CA certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured).
pub(crate) fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if roots.is_empty() {
        return Err("no CA certificates found for the https oidc.jwks_url; install the system's CA bundle or set SSL_CERT_FILE".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
