//! The OpenAPI 3.1 description of the API, generated from the handlers and types themselves
//! (utoipa): the router and the document are built together (`utoipa_axum`), so a route
//! cannot exist without its description or the other way round. Served at `/openapi.json`.

use protocol::ErrorBody;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document's fixed parts: title, version, security schemes, tags.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mochi-serve",
        description = "Text to video with Genmo's Mochi-1. The video routes are a superset of OpenAI's Videos API.",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    security(("bearer" = [])),
    tags(
        (name = "videos", description = "Jobs: create, list, status, download, delete, cancel, remix (OpenAI's Videos API and our extensions)"),
        (name = "models", description = "The served model"),
        (name = "fleet", description = "What the GPU nodes run"),
        (name = "admin", description = "Dead letters and API keys (admin role)"),
        (name = "seed", description = "The seed service's endpoints, kept as aliases"),
        (name = "operations", description = "Probes, metrics and this document (no credential)")
    )
)]
pub struct ApiDoc;

/// Adds the credential schemes: API keys and OIDC tokens as bearer tokens, and signed
/// download links as query parameters.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`mk_live_…`) or, when configured, an OIDC access token (JWT)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "signed_link",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "sig",
                "The `sig` (with `exp`) of a signed download link from the video object's `links`",
            ))),
        );
    }
}

/// The error answers every authenticated route may give, all with our error body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// Not JSON or a form, a bad header, a method the route does not have.
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// No credential, or not a valid one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The credential's role does not allow this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such job (or another tenant's), route or model.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// A method the route does not have.
    #[response(status = 405)]
    MethodNotAllowed(ErrorBody),
    /// The job's state does not allow this (yet).
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The video's files were removed when their retention ran out.
    #[response(status = 410)]
    Gone(ErrorBody),
    /// The body is too large.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The URI is too long.
    #[response(status = 414)]
    UriTooLong(ErrorBody),
    /// A field or parameter is invalid (named in `param`), or no slot holds the job.
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// A rate limit or quota.
    #[response(status = 429)]
    Limited(ErrorBody),
    /// The headers are too large, or too many.
    #[response(status = 431)]
    HeadersTooLarge(ErrorBody),
    /// An internal error.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// Overloaded, or a dependency is down: retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}
