//! Reading a request: a JSON body as one object whose fields are read with errors that name
//! the field, the `Idempotency-Key` header.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use protocol::ErrorCode;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Longest idempotency key accepted, bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// The body of a submission: JSON (by `Content-Type`) within the size limit.
pub fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    max_body_bytes: usize,
) -> Result<Bytes, ApiError> {
    let body = read_body(body, max_body_bytes)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            ErrorCode::MalformedRequest,
            "send the job as JSON with Content-Type: application/json",
        ));
    }
    Ok(body)
}

/// A JSON body (by `Content-Type`, within the size limit) read as `T`, with the errors of
/// [`json_object`] and [`from_fields`].
pub fn json_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    max_body_bytes: usize,
) -> Result<T, ApiError> {
    from_fields(json_object(&json_body(headers, body, max_body_bytes)?)?)
}

/// The body, within the size limit (413 `payload_too_large` beyond it).
pub fn read_body(
    body: Result<Bytes, BytesRejection>,
    max_body_bytes: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body is larger than {max_body_bytes} bytes; shorten the prompt"),
            )
        } else {
            ApiError::new(
                ErrorCode::MalformedRequest,
                format!("cannot read the body: {rejection}"),
            )
        }
    })
}

/// The fields of a body that must be one JSON object, refusing a field given twice (JSON
/// parsers disagree on which of the two wins, so neither does).
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::MalformedRequest,
            "the body is empty; send a JSON object with at least a prompt",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let UniqueObject(fields) = UniqueObject::deserialize(&mut deserializer).map_err(|error| {
        let message = strip_position(&error.to_string());
        if error.classify() != serde_json::error::Category::Data {
            return ApiError::new(
                ErrorCode::MalformedRequest,
                format!("the body is not valid JSON: {message}"),
            );
        }
        match repeated_field(&message) {
            Some(field) => ApiError::field(
                ErrorCode::InvalidField,
                format!("field `{field}` given twice; give each field once"),
                field,
            ),
            None => ApiError::new(
                ErrorCode::InvalidField,
                "the job must be a JSON object with at least a prompt",
            ),
        }
    })?;
    deserializer.end().map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedRequest,
            format!(
                "the body has data after the JSON object: {}",
                strip_position(&e.to_string())
            ),
        )
    })?;
    Ok(fields)
}

/// Reads `T` from an object's fields: a value of the wrong type, an unknown or a missing
/// field is a 422 naming the field (by its path) and what it takes.
pub fn from_fields<T: DeserializeOwned>(fields: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(fields)).map_err(|error| {
        let path = error.path().to_string();
        // serde's messages may quote the input: they go to the client that sent it, never
        // to the logs.
        let message = strip_position(&error.into_inner().to_string());
        let field = unknown_field(&message)
            .or_else(|| missing_field(&message))
            .or_else(|| (path != ".").then_some(path));
        match field {
            Some(field) => ApiError::field(
                ErrorCode::InvalidField,
                format!("{field}: {message}"),
                field,
            ),
            None => ApiError::new(
                ErrorCode::InvalidField,
                format!("the job must be a JSON object with at least a prompt: {message}"),
            ),
        }
    })
}

/// A JSON object whose keys are unique.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = UniqueObject;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
                let mut fields = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if fields.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("{REPEATED}{key}`")));
                    }
                    let value = map.next_value::<Value>()?;
                    fields.insert(key, value);
                }
                Ok(UniqueObject(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// How [`UniqueObject`] names a repeated key.
const REPEATED: &str = "repeated field `";

/// The field of a [`REPEATED`] error.
fn repeated_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix(REPEATED)?;
    Some(rest.split('`').next()?.to_owned())
}

/// serde_json's message without its " at line 1 column 7" suffix.
fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}

/// The field of "unknown field `colour`, expected one of …".
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// The field of "missing field `prompt`".
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// The `Idempotency-Key` header: absent, or 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_BYTES
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::field(
                ErrorCode::MalformedRequest,
                "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID works well)",
                "Idempotency-Key",
            )
        })?;
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use protocol::JobSpec;

    /// A `JobSpec` read as the create route reads its JSON fields.
    fn parse_spec(body: &[u8]) -> Result<JobSpec, ApiError> {
        from_fields(json_object(body)?)
    }

    #[test]
    fn wrong_type_names_the_field_and_the_expected_type() {
        let error = parse_spec(br#"{"prompt":"x","steps":"many"}"#).expect_err("wrong type");
        assert_eq!(
            (error.code, error.field.as_deref()),
            (ErrorCode::InvalidField, Some("steps"))
        );
        assert!(error.message.contains("invalid type"), "{}", error.message);
        assert!(error.message.contains("u32"), "{}", error.message);
    }

    #[test]
    fn unknown_field_is_named() {
        let error = parse_spec(br#"{"prompt":"x","colour":"red"}"#).expect_err("unknown field");
        assert_eq!(
            (error.code, error.field.as_deref()),
            (ErrorCode::InvalidField, Some("colour"))
        );
    }

    #[test]
    fn missing_prompt_names_the_field() {
        let error = parse_spec(br#"{"steps":4}"#).expect_err("missing prompt");
        assert_eq!(
            (error.code, error.field.as_deref()),
            (ErrorCode::InvalidField, Some("prompt"))
        );
    }

    #[test]
    fn a_json_value_that_is_not_an_object_is_an_invalid_job() {
        for body in [&b"[1,2]"[..], b"\"x\"", b" 7", b"null"] {
            let error = parse_spec(body).expect_err("not an object");
            assert_eq!((error.code, error.field), (ErrorCode::InvalidField, None));
        }
    }

    #[test]
    fn a_wrong_type_is_an_invalid_field_never_malformed_json() {
        for (body, field) in [
            (&br#"{"prompt":"x","priority":null}"#[..], "priority"),
            (br#"{"prompt":"x","resolution":480}"#, "resolution"),
            (br#"{"prompt":7}"#, "prompt"),
            (br#"{"prompt":"x","seed":-1}"#, "seed"),
        ] {
            let error = parse_spec(body).expect_err("wrong type");
            assert_eq!(
                (error.code, error.field.as_deref()),
                (ErrorCode::InvalidField, Some(field)),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn a_field_given_twice_is_named() {
        let error = parse_spec(br#"{"prompt":"a","steps":4,"prompt":"b"}"#).expect_err("repeated");
        assert_eq!(
            (error.code, error.field.as_deref()),
            (ErrorCode::InvalidField, Some("prompt"))
        );
        assert!(error.message.contains("given twice"), "{}", error.message);
    }

    #[test]
    fn broken_json_empty_and_trailing_data_are_malformed() {
        for body in [
            &br#"{"prompt":"#[..],
            b"  ",
            br#"{"prompt":"x"} 7"#,
            b"\xff\xfe",
            b"prompt=x",
        ] {
            assert_eq!(
                parse_spec(body).expect_err("malformed").code,
                ErrorCode::MalformedRequest,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn content_type_must_be_json() {
        let mut headers = HeaderMap::new();
        let body = || Ok(Bytes::from_static(b"{}"));
        assert!(json_body(&headers, body(), 1024).is_err());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(json_body(&headers, body(), 1024).is_err());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(json_body(&headers, body(), 1024).is_ok());
    }

    #[test]
    fn idempotency_keys_are_checked() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).expect("absent"), None);
        headers.insert("idempotency-key", HeaderValue::from_static("abc-1"));
        assert_eq!(
            idempotency_key(&headers).expect("valid").as_deref(),
            Some("abc-1")
        );
        for bad in ["", "with space", &"k".repeat(256)] {
            headers.insert(
                "idempotency-key",
                HeaderValue::from_str(bad).expect("header"),
            );
            assert!(idempotency_key(&headers).is_err(), "{bad:?}");
        }
    }
}
