//! The OIDC verifier against a local JWKS server (plain http on 127.0.0.1, no NATS): keys are
//! generated at test time and tokens signed here.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway::auth::oidc::{OidcConfig, OidcVerifier, TokenClaims, TokenError};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "mochi";

/// A private key of the test and its public JWK.
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key's bytes (what a confused verifier would use as an HMAC secret).
    public_bytes: Vec<u8>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_key(kid: &str) -> SigningKey {
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    let public = private.to_public_key();
    let (n, e) = (public.n().to_bytes_be(), public.e().to_bytes_be());
    SigningKey {
        kid: kid.to_owned(),
        algorithm: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({ "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&n), "e": b64(&e) }),
        public_bytes: n,
    }
}

fn ec_key(kid: &str) -> SigningKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref().to_vec();
    SigningKey {
        kid: kid.to_owned(),
        algorithm: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({ "kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]) }),
        public_bytes: point,
    }
}

fn ed_key(kid: &str) -> SigningKey {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    SigningKey {
        kid: kid.to_owned(),
        algorithm: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({ "kty": "OKP", "kid": kid, "crv": "Ed25519", "alg": "EdDSA", "x": b64(&public) }),
        public_bytes: public,
    }
}

/// RSA key generation is slow: one key for the whole file.
static RSA: LazyLock<SigningKey> = LazyLock::new(|| rsa_key("rsa-1"));

fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>() })
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid token: tenant `acme`, role `operator`, 5 minutes left.
fn claims() -> Value {
    let now = now_s();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "tenant": "acme", "role": "operator",
        "iat": now, "nbf": now, "exp": now + 300,
    })
}

fn claims_with(change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut value = claims();
    change(value.as_object_mut().unwrap());
    value
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    sign_as(key, &key.kid, claims)
}

fn sign_as(key: &SigningKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

/// A token with a hand-written header and signature.
fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let header = b64(&serde_json::to_vec(header).unwrap());
    let payload = b64(&serde_json::to_vec(claims).unwrap());
    format!("{header}.{payload}.{}", b64(signature))
}

/// A token with a hand-written header and payload, correctly signed by `key`.
fn sign_raw(key: &SigningKey, header: &Value, payload: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        b64(&serde_json::to_vec(header).unwrap()),
        b64(payload)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, key.algorithm);
    format!("{message}.{}", signature.unwrap())
}

/// Serves a JWKS on 127.0.0.1 and counts its fetches; stops on drop.
struct JwksServer {
    url: String,
    shared: Arc<Served>,
    task: tokio::task::JoinHandle<()>,
}

struct Served {
    fetches: AtomicUsize,
    /// What the next fetch answers.
    answer: Mutex<(StatusCode, String)>,
}

impl JwksServer {
    async fn start(jwks: &Value) -> Self {
        let shared = Arc::new(Served {
            fetches: AtomicUsize::new(0),
            answer: Mutex::new((StatusCode::OK, jwks.to_string())),
        });
        let router = Router::new()
            .route("/jwks", get(serve_jwks))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { url, shared, task }
    }

    fn answer(&self, status: StatusCode, body: String) {
        *self.shared.answer.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_jwks(State(shared): State<Arc<Served>>) -> Response {
    shared.fetches.fetch_add(1, Ordering::SeqCst);
    let (status, body) = shared.answer.lock().unwrap().clone();
    (status, [("content-type", "application/json")], body).into_response()
}

fn config(url: &str) -> OidcConfig {
    OidcConfig {
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        jwks_url: url.to_owned(),
        ..OidcConfig::default()
    }
}

fn verifier(url: &str) -> OidcVerifier {
    OidcVerifier::new(config(url)).unwrap()
}

fn expected(expires_at_s: u64) -> TokenClaims {
    TokenClaims {
        subject: "user-1".to_owned(),
        tenant: "acme".to_owned(),
        role: "operator".to_owned(),
        expires_at_s,
    }
}

#[tokio::test]
async fn accepts_valid_rs256_es256_and_eddsa_tokens() {
    let (ec, ed) = (ec_key("ec-1"), ed_key("ed-1"));
    let server = JwksServer::start(&jwks(&[&RSA, &ec, &ed])).await;
    let verifier = verifier(&server.url);
    for key in [&*RSA, &ec, &ed] {
        let claims = claims();
        let exp = claims["exp"].as_u64().unwrap();
        let verified = verifier.verify(&sign(key, &claims)).await;
        assert_eq!(verified, Ok(expected(exp)), "{:?}", key.algorithm);
    }
    assert_eq!(server.fetches(), 1, "the JWKS is fetched once and cached");
}

#[tokio::test]
async fn refuses_a_token_signed_by_another_key_with_the_same_kid() {
    let (ec, impostor) = (ec_key("ec-1"), ec_key("ec-1"));
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let verified = verifier(&server.url)
        .verify(&sign(&impostor, &claims()))
        .await;
    assert_eq!(verified, Err(TokenError::BadSignature));
}

#[tokio::test]
async fn refuses_a_tampered_payload() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let token = sign(&ec, &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let elevated = b64(&serde_json::to_vec(&claims_with(|c| {
        c.insert("role".into(), json!("admin"));
    }))
    .unwrap());
    let tampered = format!("{}.{elevated}.{}", parts[0], parts[2]);
    let verified = verifier(&server.url).verify(&tampered).await;
    assert_eq!(verified, Err(TokenError::BadSignature));
}

#[tokio::test]
async fn checks_expiry_with_the_leeway() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let verifier = verifier(&server.url);
    let now = now_s();
    let long_expired = claims_with(|c| {
        c.insert("exp".into(), json!(now - 120));
    });
    let verified = verifier.verify(&sign(&ec, &long_expired)).await;
    assert_eq!(verified, Err(TokenError::Expired));
    let just_expired = claims_with(|c| {
        c.insert("exp".into(), json!(now - 30));
    });
    let verified = verifier.verify(&sign(&ec, &just_expired)).await;
    assert_eq!(verified, Ok(expected(now - 30)), "within the 60 s leeway");
}

#[tokio::test]
async fn refuses_tokens_not_valid_yet() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let verifier = verifier(&server.url);
    for claim in ["nbf", "iat"] {
        let future = claims_with(|c| {
            c.insert(claim.into(), json!(now_s() + 300));
        });
        let verified = verifier.verify(&sign(&ec, &future)).await;
        assert_eq!(verified, Err(TokenError::NotYetValid), "{claim}");
    }
    let within_leeway = claims_with(|c| {
        c.insert("nbf".into(), json!(now_s() + 30));
    });
    assert!(verifier.verify(&sign(&ec, &within_leeway)).await.is_ok());
}

#[tokio::test]
async fn checks_issuer_and_audience() {
    let ed = ed_key("ed-1");
    let server = JwksServer::start(&jwks(&[&ed])).await;
    let verifier = verifier(&server.url);
    let cases = [
        (
            "iss",
            json!("https://evil.test"),
            Err(TokenError::WrongIssuer),
        ),
        (
            "iss",
            json!("https://idp.test/"),
            Err(TokenError::WrongIssuer),
        ),
        ("aud", json!("other"), Err(TokenError::WrongAudience)),
        (
            "aud",
            json!(["other", "another"]),
            Err(TokenError::WrongAudience),
        ),
        ("aud", json!([]), Err(TokenError::WrongAudience)),
        (
            "aud",
            json!(42),
            Err(TokenError::InvalidClaim {
                claim: "aud".to_owned(),
            }),
        ),
    ];
    for (claim, value, outcome) in cases {
        let token = sign(
            &ed,
            &claims_with(|c| {
                c.insert(claim.into(), value.clone());
            }),
        );
        let verified = verifier.verify(&token).await.map(|_| ());
        assert_eq!(verified, outcome, "{claim} = {value}");
    }
    let array = claims_with(|c| {
        c.insert("aud".into(), json!(["other", AUDIENCE]));
    });
    assert!(
        verifier.verify(&sign(&ed, &array)).await.is_ok(),
        "aud as an array"
    );
}

#[tokio::test]
async fn rotated_keys_verify_after_one_refetch() {
    let (old, new) = (ec_key("ec-1"), ed_key("ed-2"));
    let server = JwksServer::start(&jwks(&[&old])).await;
    let verifier = verifier(&server.url);
    assert!(verifier.verify(&sign(&old, &claims())).await.is_ok());
    assert_eq!(server.fetches(), 1);
    server.answer(StatusCode::OK, jwks(&[&new]).to_string());
    assert!(verifier.verify(&sign(&new, &claims())).await.is_ok());
    assert_eq!(server.fetches(), 2, "one refetch for the new kid");
    let verified = verifier.verify(&sign(&old, &claims())).await;
    assert_eq!(
        verified,
        Err(TokenError::UnknownKey),
        "the old key is gone with the new set"
    );
    assert_eq!(
        server.fetches(),
        2,
        "within the interval: no second refetch"
    );
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_interval_even_concurrently() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let verifier = verifier(&server.url);
    let unknown = |n: usize| sign_as(&ec, &format!("unknown-{n}"), &claims());
    // Round 1 fetches the set for the first time; round 2 may refetch once; round 3 not.
    for (round, fetches_after) in [(1, 1), (2, 2), (3, 2)] {
        let attempts = (0..16).map(|n| {
            let verifier = verifier.clone();
            let token = unknown(n);
            async move { verifier.verify(&token).await }
        });
        for verified in futures::future::join_all(attempts).await {
            assert_eq!(verified, Err(TokenError::UnknownKey), "round {round}");
        }
        assert_eq!(server.fetches(), fetches_after, "round {round}");
    }
    assert!(verifier.verify(&sign(&ec, &claims())).await.is_ok());
}

#[tokio::test]
async fn a_failed_refetch_keeps_the_cached_keys() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let verifier = verifier(&server.url);
    assert!(verifier.verify(&sign(&ec, &claims())).await.is_ok());
    server.answer(StatusCode::INTERNAL_SERVER_ERROR, "oops".to_owned());
    let verified = verifier.verify(&sign_as(&ec, "ec-2", &claims())).await;
    assert_eq!(verified, Err(TokenError::UnknownKey));
    assert_eq!(server.fetches(), 2);
    assert!(
        verifier.verify(&sign(&ec, &claims())).await.is_ok(),
        "cache kept"
    );
}

#[tokio::test]
async fn refuses_alg_none() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let verifier = verifier(&server.url);
    for alg in ["none", "None", "NONE"] {
        let header = json!({ "alg": alg, "typ": "JWT", "kid": "ec-1" });
        for signature in [&b""[..], b"anything"] {
            let verified = verifier.verify(&forge(&header, &claims(), signature)).await;
            assert_eq!(verified, Err(TokenError::AlgorithmNotAllowed), "{alg}");
        }
    }
    assert_eq!(server.fetches(), 0, "refused before any key is looked at");
}

#[tokio::test]
async fn refuses_hmac_signed_with_the_public_key() {
    let (ec, ed) = (ec_key("ec-1"), ed_key("ed-1"));
    let server = JwksServer::start(&jwks(&[&RSA, &ec, &ed])).await;
    let verifier = verifier(&server.url);
    for key in [&*RSA, &ec, &ed] {
        let secrets = [key.public_bytes.clone(), key.jwk.to_string().into_bytes()];
        for secret in secrets {
            for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let mut header = Header::new(algorithm);
                header.kid = Some(key.kid.clone());
                let token =
                    jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret))
                        .unwrap();
                let verified = verifier.verify(&token).await;
                assert_eq!(
                    verified,
                    Err(TokenError::AlgorithmNotAllowed),
                    "{}",
                    key.kid
                );
            }
        }
    }
}

#[tokio::test]
async fn refuses_algorithms_outside_the_configured_list() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&RSA, &ec])).await;
    let only_ec = OidcConfig {
        algorithms: vec!["ES256".to_owned()],
        ..config(&server.url)
    };
    let verifier = OidcVerifier::new(only_ec).unwrap();
    assert!(verifier.verify(&sign(&ec, &claims())).await.is_ok());
    let verified = verifier.verify(&sign(&RSA, &claims())).await;
    assert_eq!(verified, Err(TokenError::AlgorithmNotAllowed));
    for alg in ["RS384", "PS256", "ES384", "ES512", "HS256", "", "EdDSA "] {
        let forged = forge(&json!({ "alg": alg, "kid": "ec-1" }), &claims(), b"sig");
        assert_eq!(
            verifier.verify(&forged).await,
            Err(TokenError::AlgorithmNotAllowed),
            "{alg}"
        );
    }
}

#[tokio::test]
async fn refuses_a_key_of_another_type_than_the_token() {
    let (ec, ed) = (ec_key("ec-1"), ed_key("ed-1"));
    let mut ec384 = ec_key("ec-384");
    ec384.jwk["alg"] = json!("ES384");
    let server = JwksServer::start(&jwks(&[&RSA, &ec, &ed, &ec384])).await;
    let verifier = verifier(&server.url);
    // Signed by one key type while naming a key of another.
    let cases = [
        (&ec, "rsa-1"),
        (&ed, "ec-1"),
        (&*RSA, "ed-1"),
        (&ec, "ed-1"),
        (&ec384, "ec-384"),
    ];
    for (signer, kid) in cases {
        let verified = verifier.verify(&sign_as(signer, kid, &claims())).await;
        assert_eq!(
            verified,
            Err(TokenError::KeyMismatch),
            "{:?} as {kid}",
            signer.algorithm
        );
    }
    // The same for a forged RS256 header over an ES256 signature.
    let forged = forge(
        &json!({ "alg": "RS256", "kid": "ec-1" }),
        &claims(),
        &[1; 64],
    );
    assert_eq!(verifier.verify(&forged).await, Err(TokenError::KeyMismatch));
}

#[tokio::test]
async fn a_token_without_kid_uses_the_only_key_of_its_type() {
    let (ec, ed) = (ec_key("ec-1"), ed_key("ed-1"));
    let server = JwksServer::start(&jwks(&[&ec, &ed])).await;
    let verifier = verifier(&server.url);
    let header = Header::new(Algorithm::ES256);
    let token = jsonwebtoken::encode(&header, &claims(), &ec.encoding).unwrap();
    assert!(verifier.verify(&token).await.is_ok());
}

#[tokio::test]
async fn refuses_garbage_without_panicking() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let verifier = verifier(&server.url);
    let good = sign(&ec, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let non_utf8 = b64(&[0xff, 0xfe, 0x00, 0x80]);
    let huge = format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2]);
    let enormous = "a.".repeat(1 << 20);
    let garbage = [
        "",
        ".",
        "..",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "!!!.@@@.###",
        "Bearer abc",
        "eyJ.eyJ.eyJ",
        "a b.c d.e f",
        "é.é.é",
        &format!("{non_utf8}.{non_utf8}.{non_utf8}"),
        &format!("{}.{}.{}", parts[0], parts[1], "*"),
        &format!("{}.{}.{}", parts[0], parts[1], "A"),
        &format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        &format!("{}.{}", parts[0], parts[1]),
        &huge,
        &enormous,
        &forge(&json!(["ES256"]), &claims(), b"sig"),
        &forge(
            &json!({ "alg": ["ES256"], "kid": "ec-1" }),
            &claims(),
            b"sig",
        ),
        &forge(&json!({ "alg": "ES256", "kid": 7 }), &claims(), b"sig"),
        &forge(
            &json!({ "alg": "ES256", "kid": "ec-1", "crit": ["b64"] }),
            &claims(),
            b"sig",
        ),
    ];
    for token in garbage {
        let shown: String = token.chars().take(60).collect();
        assert_eq!(
            verifier.verify(token).await,
            Err(TokenError::Malformed),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn refuses_wrong_claim_types_and_non_object_payloads() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let verifier = verifier(&server.url);
    for payload in [json!([1, 2]), json!("claims"), json!(42), json!(null)] {
        let verified = verifier.verify(&sign(&ec, &payload)).await;
        assert_eq!(verified, Err(TokenError::Malformed), "{payload}");
    }
    let header = json!({ "alg": "ES256", "kid": "ec-1" });
    for payload in [&[0xff, 0xfe, 0x00, 0x80][..], b"{\"exp\": ", b""] {
        let verified = verifier.verify(&sign_raw(&ec, &header, payload)).await;
        assert_eq!(verified, Err(TokenError::Malformed), "{payload:?}");
    }
    let cases = [
        ("exp", json!("tomorrow")),
        ("exp", json!(-5)),
        ("nbf", json!({})),
        ("iss", json!(1)),
        ("sub", json!("")),
        ("sub", json!(["user-1"])),
        ("tenant", json!(7)),
        ("role", json!(["admin"])),
    ];
    for (claim, value) in cases {
        let token = sign(
            &ec,
            &claims_with(|c| {
                c.insert(claim.into(), value.clone());
            }),
        );
        let verified = verifier.verify(&token).await;
        let invalid = TokenError::InvalidClaim {
            claim: claim.to_owned(),
        };
        assert_eq!(verified, Err(invalid), "{claim} = {value}");
    }
}

#[tokio::test]
async fn requires_exp_iss_aud_sub_tenant_and_role() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let verifier = verifier(&server.url);
    for claim in ["exp", "iss", "aud", "sub", "tenant", "role"] {
        let token = sign(
            &ec,
            &claims_with(|c| {
                c.remove(claim);
            }),
        );
        let missing = TokenError::MissingClaim {
            claim: claim.to_owned(),
        };
        assert_eq!(verifier.verify(&token).await, Err(missing), "{claim}");
    }
}

#[tokio::test]
async fn uses_the_configured_claim_names_and_default_role() {
    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let config = OidcConfig {
        tenant_claim: "https://mochi.test/org".to_owned(),
        role_claim: "mochi_role".to_owned(),
        default_role: Some("viewer".to_owned()),
        ..config(&server.url)
    };
    let verifier = OidcVerifier::new(config).unwrap();
    let token = sign(
        &ec,
        &claims_with(|c| {
            c.insert("https://mochi.test/org".into(), json!("globex"));
        }),
    );
    let verified = verifier.verify(&token).await.unwrap();
    assert_eq!(
        (verified.tenant.as_str(), verified.role.as_str()),
        ("globex", "viewer")
    );
    let token = sign(
        &ec,
        &claims_with(|c| {
            c.insert("https://mochi.test/org".into(), json!("globex"));
            c.insert("mochi_role".into(), json!("operator"));
        }),
    );
    assert_eq!(verifier.verify(&token).await.unwrap().role, "operator");
    let verified = verifier.verify(&sign(&ec, &claims())).await;
    let missing = TokenError::MissingClaim {
        claim: "https://mochi.test/org".to_owned(),
    };
    assert_eq!(
        verified,
        Err(missing),
        "`tenant` is not the configured claim"
    );
}

#[tokio::test]
async fn jwks_server_down_is_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    drop(listener);
    let ec = ec_key("ec-1");
    let verified = verifier(&url).verify(&sign(&ec, &claims())).await;
    assert_eq!(verified, Err(TokenError::JwksUnavailable));
    assert!(verified.unwrap_err().is_unavailable());
}

#[tokio::test]
async fn bad_jwks_answers_are_unavailable() {
    let ec = ec_key("ec-1");
    let oversized = json!({ "keys": [ec.jwk.clone()], "padding": "x".repeat(1 << 20) });
    let answers = [
        (StatusCode::NOT_FOUND, jwks(&[&ec]).to_string()),
        (StatusCode::OK, "not json".to_owned()),
        (StatusCode::OK, json!({ "keys": "none" }).to_string()),
        (
            StatusCode::OK,
            json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0" }] }).to_string(),
        ),
        (StatusCode::OK, oversized.to_string()),
    ];
    for (status, body) in answers {
        let server = JwksServer::start(&json!({})).await;
        server.answer(status, body);
        let verified = verifier(&server.url).verify(&sign(&ec, &claims())).await;
        assert_eq!(verified, Err(TokenError::JwksUnavailable), "{status}");
        assert_eq!(server.fetches(), 1);
    }
}

#[tokio::test]
async fn https_to_a_plain_http_server_is_unavailable() {
    // Runs the TLS client (rustls, ring) against a server that does not speak TLS.
    let server = JwksServer::start(&json!({})).await;
    let url = server.url.replace("http://", "https://");
    let Ok(verifier) = OidcVerifier::new(config(&url)) else {
        eprintln!("skipped: this machine has no CA certificates");
        return;
    };
    let verified = verifier.verify(&sign(&ec_key("ec-1"), &claims())).await;
    assert_eq!(verified, Err(TokenError::JwksUnavailable));
}

#[test]
fn error_messages_are_one_sentence_without_the_token() {
    let errors = [
        TokenError::Malformed,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
        TokenError::AlgorithmNotAllowed,
        TokenError::KeyMismatch,
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::MissingClaim {
            claim: "tenant".to_owned(),
        },
        TokenError::InvalidClaim {
            claim: "exp".to_owned(),
        },
        TokenError::JwksUnavailable,
    ];
    for error in errors {
        let message = error.to_string();
        assert!(message.starts_with(char::is_lowercase), "{message}");
        assert!(
            !message.ends_with('.') && !message.contains(". "),
            "{message}"
        );
        assert_eq!(error.is_unavailable(), error == TokenError::JwksUnavailable);
    }
}

#[test]
fn the_verifier_and_its_future_can_cross_threads() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>(_: &T) {}
    fn assert_send<T: Send>(_: T) {}
    let verifier = verifier("http://127.0.0.1:9/jwks");
    assert_send_sync(&verifier);
    assert_send(verifier.verify("a.b.c"));
}

/// Through the gateway (real NATS): valid tokens act for their claims' tenant and role,
/// every bad token is a 401 with our body and a sentence, never a 5xx.
#[tokio::test]
async fn the_gateway_takes_tokens_and_answers_401_for_every_bad_one() {
    use axum::body::Body;
    use axum::http::{Request, header};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let ec = ec_key("ec-1");
    let server = JwksServer::start(&jwks(&[&ec])).await;
    let mut config = gateway::Config::for_test();
    config.auth.oidc = Some(config_for_gateway(&server.url));
    let gateway = common::start_with_auth(config).await;
    let send = |token: String, method: &str, uri: &str| {
        let state = gateway.state.clone();
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"prompt":"a fox"}"#))
            .unwrap();
        async move {
            let response = gateway::app(state).oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body.to_vec())
        }
    };
    let submitter = |change: fn(&mut serde_json::Map<String, Value>)| {
        claims_with(|c| {
            c.insert("role".into(), json!("submitter"));
            change(c);
        })
    };
    let (status, body) = send(sign(&ec, &submitter(|_| {})), "POST", "/v1/videos").await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let viewer = claims_with(|c| {
        c.insert("role".into(), json!("viewer"));
    });
    let (status, _) = send(sign(&ec, &viewer), "POST", "/v1/videos").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(sign(&ec, &viewer), "GET", "/v1/backends").await;
    assert_eq!(status, StatusCode::OK);

    let now = now_s();
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("ec-1".into());
        jsonwebtoken::encode(
            &header,
            &submitter(|_| {}),
            &EncodingKey::from_secret(&ec.public_bytes),
        )
        .unwrap()
    };
    let _ = now;
    let bad: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(
                &ec,
                &submitter(|c| {
                    c.insert("exp".into(), json!(now_s() - 3_600));
                }),
            ),
        ),
        (
            "not yet valid",
            sign(
                &ec,
                &submitter(|c| {
                    c.insert("nbf".into(), json!(now_s() + 3_600));
                }),
            ),
        ),
        (
            "wrong issuer",
            sign(
                &ec,
                &submitter(|c| {
                    c.insert("iss".into(), json!("https://evil.test"));
                }),
            ),
        ),
        (
            "wrong audience",
            sign(
                &ec,
                &submitter(|c| {
                    c.insert("aud".into(), json!("other"));
                }),
            ),
        ),
        ("unknown kid", sign_as(&ec, "nope", &submitter(|_| {}))),
        (
            "alg none",
            forge(
                &json!({"alg": "none", "kid": "ec-1"}),
                &submitter(|_| {}),
                b"",
            ),
        ),
        ("hs256 with the public key", hs256),
        ("garbage", "a.b.c".to_owned()),
        (
            "not a role",
            sign(
                &ec,
                &submitter(|c| {
                    c.insert("role".into(), json!("root"));
                }),
            ),
        ),
        (
            "not a tenant",
            sign(
                &ec,
                &submitter(|c| {
                    c.insert("tenant".into(), json!("a.b"));
                }),
            ),
        ),
    ];
    for (what, token) in bad {
        let (status, body) = send(token, "GET", "/v1/backends").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        let error = serde_json::from_slice::<protocol::ErrorBody>(&body)
            .unwrap()
            .error;
        assert_eq!(error.code, protocol::ErrorCode::Unauthorized, "{what}");
        assert!(error.message.len() > 20, "{what}: {}", error.message);
    }
}

fn config_for_gateway(url: &str) -> OidcConfig {
    config(url)
}
