//! Errors: the crate's own (`Error`) and what clients get (`ApiError`, JSON with a stable
//! code, a sentence saying what to change, and the field at fault).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::{ErrorBody, ErrorCode, SpecError};

/// What can stop the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    /// Loading the configuration failed.
    #[error(transparent)]
    LoadConfig(#[from] protocol::config::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
    /// The state the API needs (keys, signing key) could not be loaded.
    #[error("cannot start the gateway: {0}")]
    Start(String),
    /// The Prometheus recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
}

/// Result with the gateway's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The stable code; it decides the HTTP status.
    pub code: ErrorCode,
    /// One sentence saying what to change.
    pub message: String,
    /// The request field at fault.
    pub field: Option<String>,
}

impl ApiError {
    /// An error without a field.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// An error naming the field at fault.
    pub fn field(code: ErrorCode, message: impl Into<String>, field: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// A 404 for a job that does not exist (or belongs to another tenant).
    pub fn job_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("no job {id}: check the id returned by POST /v1/videos"),
        )
    }

    /// An internal failure: logged here with its details, answered with a generic sentence.
    pub fn internal(context: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, context, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; the details are in the server's logs",
        )
    }

    /// A dependency is down or overloaded.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

/// The HTTP status of each error code ([`ErrorCode::http_status`] decides it).
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl From<SpecError> for ApiError {
    fn from(error: SpecError) -> Self {
        Self::field(error.code(), error.to_string(), error.field())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody::new(self.code, self.message, self.field.as_deref());
        (status_of(self.code), Json(body)).into_response()
    }
}
