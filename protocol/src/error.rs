//! Client-facing error codes and the JSON body every 4xx/5xx carries.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. Clients branch on these; never rename one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body is not valid JSON or does not match the schema.
    MalformedRequest,
    /// The request body is larger than the server accepts.
    PayloadTooLarge,
    /// A field has a value outside its allowed range or set.
    InvalidField,
    /// Two fields were given that exclude each other.
    ConflictingFields,
    /// The job is valid but no known GPU slot can hold it.
    JobTooLarge,
    /// The job, video or route does not exist (or belongs to another tenant).
    NotFound,
    /// The video is not ready yet.
    NotReady,
    /// Credentials are missing or wrong.
    Unauthorized,
    /// The credentials do not allow this action.
    Forbidden,
    /// The caller exceeded a rate limit or quota.
    RateLimited,
    /// The request conflicts with the job's current state.
    Conflict,
    /// The service is overloaded or a dependency is down; retry later.
    Unavailable,
    /// A message was encoded by a newer, unknown version of the protocol.
    UnsupportedVersion,
    /// The job ran and failed.
    JobFailed,
    /// An internal error; the details are in the server's logs.
    Internal,
    /// The tenant has as many queued and running jobs as its quota allows.
    QuotaExceeded,
    /// The job was cancelled (a job's error, never an HTTP answer's).
    Cancelled,
    /// The request names a model this service does not serve.
    ModelNotFound,
    /// The request asks for something Mochi-1 cannot do (e.g. an input image).
    Unsupported,
    /// The job's files were removed when its retention ran out.
    Expired,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The request's URI is longer than the server reads.
    UriTooLong,
    /// The request's headers are larger (or more) than the server reads.
    HeadersTooLarge,
}

impl ErrorCode {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedRequest => "malformed_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidField => "invalid_field",
            Self::ConflictingFields => "conflicting_fields",
            Self::JobTooLarge => "job_too_large",
            Self::NotFound => "not_found",
            Self::NotReady => "not_ready",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::UnsupportedVersion => "unsupported_version",
            Self::JobFailed => "job_failed",
            Self::Internal => "internal",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Cancelled => "cancelled",
            Self::ModelNotFound => "model_not_found",
            Self::Unsupported => "unsupported",
            Self::Expired => "expired",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
        }
    }

    /// The HTTP status answered with this code: the one place that decides it (the gateway's
    /// responses, and the `Mochi-Status` of answers over NATS).
    pub fn http_status(self) -> u16 {
        match self {
            Self::MalformedRequest => 400,
            Self::PayloadTooLarge => 413,
            Self::InvalidField
            | Self::ConflictingFields
            | Self::JobTooLarge
            | Self::Unsupported => 422,
            Self::NotFound | Self::ModelNotFound => 404,
            Self::Expired => 410,
            Self::MethodNotAllowed => 405,
            Self::UriTooLong => 414,
            Self::HeadersTooLarge => 431,
            Self::NotReady | Self::Conflict | Self::JobFailed | Self::Cancelled => 409,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::RateLimited | Self::QuotaExceeded => 429,
            Self::Unavailable => 503,
            Self::UnsupportedVersion | Self::Internal => 500,
        }
    }

    /// OpenAI's error `type` for this code, so that OpenAI clients classify it.
    pub fn openai_type(self) -> &'static str {
        match self {
            Self::MalformedRequest
            | Self::PayloadTooLarge
            | Self::InvalidField
            | Self::ConflictingFields
            | Self::JobTooLarge
            | Self::NotReady
            | Self::Conflict
            | Self::JobFailed
            | Self::Cancelled
            | Self::Unsupported
            | Self::Expired
            | Self::MethodNotAllowed
            | Self::UriTooLong
            | Self::HeadersTooLarge => "invalid_request_error",
            Self::NotFound | Self::ModelNotFound => "not_found_error",
            Self::Unauthorized => "authentication_error",
            Self::Forbidden => "permission_error",
            Self::RateLimited | Self::QuotaExceeded => "rate_limit_error",
            Self::Unavailable | Self::UnsupportedVersion | Self::Internal => "server_error",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error response: `{"error": {"code", "message", "field", "type",
/// "param"}}` (`type` and `param` are OpenAI's names; `param` repeats `field`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// One error: a stable code, a sentence saying what to change, and the offending field.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// One sentence that tells the caller what to change.
    pub message: String,
    /// The request field at fault, as a JSON path (`width`, `spec.steps`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// OpenAI's error class ([`ErrorCode::openai_type`]).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// OpenAI's name for `field` (`null` when no field is at fault).
    #[serde(default)]
    pub param: Option<String>,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
                field: field.map(str::to_owned),
                kind: Some(code.openai_type().to_owned()),
                param: field.map(str::to_owned),
            },
        }
    }
}
