//! The body of `POST /v1/videos`: OpenAI's create request (`prompt`, `model`, `seconds`,
//! `size`, `input_reference`) and every `JobSpec` field beside it, as JSON or as
//! `multipart/form-data` (what OpenAI's SDKs send), read into one `JobSpec`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use protocol::api::MODEL_ID;
use protocol::record::{Webhook, WebhookEvent};
use protocol::{ErrorCode, JobSpec};
use serde_json::{Map, Number, Value};

use crate::error::ApiError;
use crate::routes::request::{from_fields, json_object, read_body};
use crate::webhooks::target::Target;

/// `JobSpec` fields that take whole numbers (a form sends them as text).
const INTEGER_FIELDS: [&str; 6] = ["num_frames", "fps", "width", "height", "steps", "seed"];
/// `JobSpec` fields that take decimal numbers.
const DECIMAL_FIELDS: [&str; 2] = ["duration_s", "guidance_scale"];

/// A create request, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// What to make.
    pub spec: JobSpec,
    /// Where to post the job's events.
    pub webhook: Option<Webhook>,
}

/// Reads the create request in `body` (JSON or a form, by `Content-Type`): its `JobSpec`
/// and its webhook (a URL whose host is a forbidden IP address is refused now, unless in
/// `allow_hosts`; names are checked at each delivery).
pub async fn create_spec(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    max_body_bytes: usize,
    allow_hosts: &[String],
) -> Result<Created, ApiError> {
    let body = read_body(body, max_body_bytes)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let fields = match mime.as_str() {
        "application/json" => json_object(&body)?,
        "multipart/form-data" => form_fields(content_type, body).await?,
        _ => {
            return Err(ApiError::new(
                ErrorCode::MalformedRequest,
                "send the job as JSON (Content-Type: application/json) or as multipart/form-data",
            ));
        }
    };
    let mut fields = fields;
    let webhook = webhook_of(&mut fields, allow_hosts)?;
    Ok(Created {
        spec: spec_of(fields)?,
        webhook,
    })
}

/// [`create_spec`] with the gateway's body limit and webhook allow-list.
pub async fn create_request(
    state: &crate::state::AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Created, ApiError> {
    create_spec(
        headers,
        body,
        state.config.max_body_bytes,
        &state.config.webhooks.allow_hosts,
    )
    .await
}

/// Takes `webhook_url` and `webhook_events_filter` (default: every event) out of `fields`.
pub fn webhook_of(
    fields: &mut Map<String, Value>,
    allow_hosts: &[String],
) -> Result<Option<Webhook>, ApiError> {
    let url = fields.remove("webhook_url").filter(|v| !v.is_null());
    let filter = fields
        .remove("webhook_events_filter")
        .filter(|v| !v.is_null());
    let Some(url) = url else {
        if filter.is_some() {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "webhook_events_filter needs a webhook_url",
                "webhook_events_filter",
            ));
        }
        return Ok(None);
    };
    let invalid_url =
        |message: String| ApiError::field(ErrorCode::InvalidField, message, "webhook_url");
    let Value::String(url) = url else {
        return Err(invalid_url("webhook_url must be a string".to_owned()));
    };
    let target = Target::parse(&url).map_err(|e| invalid_url(e.to_string()))?;
    target
        .check_literal(allow_hosts)
        .map_err(|e| invalid_url(e.to_string()))?;
    let names: Vec<Value> = match filter {
        None => {
            return Ok(Some(Webhook {
                url,
                events: WebhookEvent::ALL.to_vec(),
            }));
        }
        Some(Value::Array(items)) => items,
        // A form sends a list as text: "start,completed".
        Some(Value::String(text)) => text
            .split(',')
            .map(|name| Value::String(name.trim().to_owned()))
            .collect(),
        Some(_) => Vec::new(),
    };
    let mut events = Vec::new();
    for name in &names {
        let event = WebhookEvent::ALL
            .into_iter()
            .find(|event| name.as_str() == Some(event.as_str()))
            .ok_or_else(|| {
                ApiError::field(
                    ErrorCode::InvalidField,
                    "webhook_events_filter must be a list of start, progress and completed",
                    "webhook_events_filter",
                )
            })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    if events.is_empty() {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "webhook_events_filter must name at least one of start, progress and completed",
            "webhook_events_filter",
        ));
    }
    Ok(Some(Webhook { url, events }))
}

/// Turns the request's fields into a `JobSpec`: OpenAI's names are translated, the rest must
/// be `JobSpec`'s own.
pub fn spec_of(mut fields: Map<String, Value>) -> Result<JobSpec, ApiError> {
    if fields.contains_key("input_reference") {
        return Err(ApiError::field(
            ErrorCode::Unsupported,
            "input_reference is not supported: Mochi-1 makes videos from text only; remove it",
            "input_reference",
        ));
    }
    if let Some(model) = fields.remove("model") {
        check_model(&model)?;
    }
    if let Some(seconds) = fields.remove("seconds") {
        for other in ["duration_s", "num_frames"] {
            if fields.contains_key(other) {
                return Err(ApiError::field(
                    ErrorCode::ConflictingFields,
                    format!("give the length once: seconds or {other}, not both"),
                    "seconds",
                ));
            }
        }
        fields.insert("duration_s".to_owned(), seconds_value(&seconds)?);
    }
    if let Some(size) = fields.remove("size") {
        for other in ["resolution", "width", "height"] {
            if fields.contains_key(other) {
                return Err(ApiError::field(
                    ErrorCode::ConflictingFields,
                    format!("give the size once: size or {other}, not both"),
                    "size",
                ));
            }
        }
        let (width, height) = size_of(&size)?;
        fields.insert("width".to_owned(), Value::from(width));
        fields.insert("height".to_owned(), Value::from(height));
    }
    from_fields(fields)
}

/// Refuses a model this service does not serve (404 `model_not_found`, listing ours).
pub fn check_model(model: &Value) -> Result<(), ApiError> {
    if model.as_str() == Some(MODEL_ID) {
        return Ok(());
    }
    let named = match model {
        Value::String(name) => format!("model {name:?} is not served here"),
        _ => "model must be a string".to_owned(),
    };
    Err(ApiError::field(
        ErrorCode::ModelNotFound,
        format!("{named}; the served models are: {MODEL_ID} (GET /v1/models)"),
        "model",
    ))
}

/// `seconds` (`"4"` or `4`) as the number `duration_s` takes.
fn seconds_value(seconds: &Value) -> Result<Value, ApiError> {
    let parsed = match seconds {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    parsed
        .filter(|s| s.is_finite())
        .and_then(Number::from_f64)
        .map(Value::Number)
        .ok_or_else(|| {
            ApiError::field(
                ErrorCode::InvalidField,
                "seconds must be a length in seconds, as a number or a string (\"4\", 4, 2.5)",
                "seconds",
            )
        })
}

/// `size` (`"848x480"`) as width and height in pixels.
fn size_of(size: &Value) -> Result<(u64, u64), ApiError> {
    let parsed = size.as_str().and_then(|text| {
        let (width, height) = text.trim().split_once(['x', 'X'])?;
        Some((width.parse().ok()?, height.parse().ok()?))
    });
    parsed.ok_or_else(|| {
        ApiError::field(
            ErrorCode::InvalidField,
            "size must be WIDTHxHEIGHT in pixels, multiples of 16 (848x480, 480x848, 1280x720, 720x1280)",
            "size",
        )
    })
}

/// The text fields of a form, numbers where `JobSpec` takes numbers; a file is refused
/// (`input_reference` with the sentence of [`spec_of`]).
async fn form_fields(content_type: &str, body: Bytes) -> Result<Map<String, Value>, ApiError> {
    let malformed = |detail: String| {
        ApiError::new(
            ErrorCode::MalformedRequest,
            format!("the multipart/form-data body cannot be read: {detail}"),
        )
    };
    let boundary = multer::parse_boundary(content_type).map_err(|e| malformed(e.to_string()))?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut fields = Map::new();
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| malformed(e.to_string()))?
    {
        let Some(name) = field.name().map(str::to_owned) else {
            return Err(malformed("a part has no name".to_owned()));
        };
        if name == "input_reference" {
            // `spec_of` refuses it with its sentence, file or not.
            fields.insert(name, Value::Null);
            continue;
        }
        if field.file_name().is_some() {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                format!("{name}: files are not accepted; send text fields only"),
                name,
            ));
        }
        let text = field.text().await.map_err(|e| malformed(e.to_string()))?;
        // A list arrives as repeated `name[]` fields (how OpenAI's SDKs send arrays).
        if let Some(list) = name.strip_suffix("[]") {
            let entry = fields
                .entry(list.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            match entry {
                Value::Array(items) => items.push(Value::String(text)),
                _ => {
                    return Err(ApiError::field(
                        ErrorCode::InvalidField,
                        format!("field `{list}` given twice; give each field once"),
                        list,
                    ));
                }
            }
            continue;
        }
        if fields.contains_key(&name) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                format!("field `{name}` given twice; give each field once"),
                name,
            ));
        }
        let value = form_value(&name, text);
        fields.insert(name, value);
    }
    Ok(fields)
}

/// A form field's text as the JSON value its field takes (a number where one is expected
/// and the text is one; otherwise the text, which the field then refuses by name).
fn form_value(name: &str, text: String) -> Value {
    let trimmed = text.trim();
    if INTEGER_FIELDS.contains(&name)
        && let Ok(number) = trimmed.parse::<u64>()
    {
        return Value::from(number);
    }
    if DECIMAL_FIELDS.contains(&name)
        && let Some(number) = trimmed
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .and_then(Number::from_f64)
    {
        return Value::Number(number);
    }
    Value::String(text)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn object(json: &str) -> Map<String, Value> {
        json_object(json.as_bytes()).expect("object")
    }

    #[test]
    fn webhooks_take_a_public_url_and_known_events() {
        let mut fields = object(
            r#"{"prompt":"x","webhook_url":"https://hooks.example.com/in","webhook_events_filter":["completed","start","completed"]}"#,
        );
        let hook = webhook_of(&mut fields, &[])
            .expect("valid")
            .expect("a webhook");
        assert_eq!(
            hook.events,
            vec![WebhookEvent::Completed, WebhookEvent::Start]
        );
        assert!(
            !fields.contains_key("webhook_url"),
            "taken out of the spec's fields"
        );
        let mut fields = object(r#"{"prompt":"x","webhook_url":"http://example.com/h"}"#);
        let hook = webhook_of(&mut fields, &[])
            .expect("valid")
            .expect("a webhook");
        assert_eq!(hook.events, WebhookEvent::ALL.to_vec());
        for (body, field) in [
            (r#"{"webhook_url":"http://127.0.0.1:9/h"}"#, "webhook_url"),
            (r#"{"webhook_url":"http://[::1]/h"}"#, "webhook_url"),
            (r#"{"webhook_url":"ftp://example.com/"}"#, "webhook_url"),
            (r#"{"webhook_url":7}"#, "webhook_url"),
            (
                r#"{"webhook_url":"https://example.com","webhook_events_filter":["output"]}"#,
                "webhook_events_filter",
            ),
            (
                r#"{"webhook_url":"https://example.com","webhook_events_filter":[]}"#,
                "webhook_events_filter",
            ),
            (
                r#"{"webhook_events_filter":["start"]}"#,
                "webhook_events_filter",
            ),
        ] {
            let error = webhook_of(&mut object(body), &[]).expect_err("refused");
            assert_eq!(error.field.as_deref(), Some(field), "{body}");
        }
        let allowed = webhook_of(
            &mut object(r#"{"webhook_url":"http://127.0.0.1:9/h"}"#),
            &["127.0.0.1".to_owned()],
        );
        assert!(allowed.is_ok_and(|hook| hook.is_some()));
    }

    #[test]
    fn openai_fields_become_the_spec() {
        let spec = spec_of(object(
            r#"{"prompt":"a fox","model":"mochi-1-preview","seconds":"4","size":"848x480","steps":16}"#,
        ))
        .expect("valid");
        assert_eq!(
            (spec.duration_s, spec.width, spec.height, spec.steps),
            (Some(4.0), Some(848), Some(480), Some(16))
        );
        let spec = spec_of(object(
            r#"{"prompt":"a fox","seconds":2.5,"size":"480X848"}"#,
        ))
        .expect("valid");
        assert_eq!(
            (spec.duration_s, spec.width, spec.height),
            (Some(2.5), Some(480), Some(848))
        );
    }

    #[test]
    fn another_model_is_not_found_and_names_ours() {
        for model in [r#""sora-2""#, "3", r#""""#] {
            let error = spec_of(object(&format!(r#"{{"prompt":"x","model":{model}}}"#)))
                .expect_err("not served");
            assert_eq!(error.code, ErrorCode::ModelNotFound);
            assert!(error.message.contains(MODEL_ID), "{}", error.message);
        }
    }

    #[test]
    fn an_input_reference_is_unsupported() {
        let error =
            spec_of(object(r#"{"prompt":"x","input_reference":"file-1"}"#)).expect_err("text only");
        assert_eq!(
            (error.code, error.field.as_deref()),
            (ErrorCode::Unsupported, Some("input_reference"))
        );
    }

    #[test]
    fn lengths_and_sizes_given_twice_conflict() {
        for body in [
            r#"{"prompt":"x","seconds":"4","num_frames":31}"#,
            r#"{"prompt":"x","seconds":"4","duration_s":4}"#,
            r#"{"prompt":"x","size":"848x480","resolution":"480p"}"#,
            r#"{"prompt":"x","size":"848x480","width":848}"#,
        ] {
            let error = spec_of(object(body)).expect_err("conflict");
            assert_eq!(error.code, ErrorCode::ConflictingFields, "{body}");
        }
    }

    #[test]
    fn unreadable_seconds_and_sizes_name_their_field() {
        for (body, field) in [
            (r#"{"prompt":"x","seconds":"four"}"#, "seconds"),
            (r#"{"prompt":"x","seconds":null}"#, "seconds"),
            (r#"{"prompt":"x","size":"848*480"}"#, "size"),
            (r#"{"prompt":"x","size":848}"#, "size"),
            (r#"{"prompt":"x","size":"-848x480"}"#, "size"),
        ] {
            let error = spec_of(object(body)).expect_err("invalid");
            assert_eq!(
                (error.code, error.field.as_deref()),
                (ErrorCode::InvalidField, Some(field)),
                "{body}"
            );
        }
    }

    fn form(parts: &[(&str, &str)], file: Option<&str>) -> (HeaderMap, Bytes) {
        let mut body = String::new();
        for (name, value) in parts {
            body.push_str(&format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        if let Some(name) = file {
            body.push_str(&format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x01\x02\r\n"
            ));
        }
        body.push_str("--XyZ--\r\n");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=XyZ"),
        );
        (headers, Bytes::from(body))
    }

    #[tokio::test]
    async fn a_form_reads_like_json_with_numbers_from_text() {
        let (headers, body) = form(
            &[
                ("prompt", "a fox"),
                ("seconds", "2"),
                ("steps", "8"),
                ("guidance_scale", "3.5"),
                ("priority", "high"),
            ],
            None,
        );
        let spec = create_spec(&headers, Ok(body), 1 << 20, &[])
            .await
            .expect("valid form")
            .spec;
        assert_eq!(
            (
                spec.prompt.as_str(),
                spec.duration_s,
                spec.steps,
                spec.guidance_scale
            ),
            ("a fox", Some(2.0), Some(8), Some(3.5))
        );
        assert_eq!(spec.priority, protocol::spec::Priority::High);
    }

    #[tokio::test]
    async fn a_form_names_bad_text_repeated_fields_and_files() {
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            ErrorCode,
            &'a str,
        );
        let cases: [Case; 4] = [
            (
                &[("prompt", "x"), ("steps", "many")],
                None,
                ErrorCode::InvalidField,
                "steps",
            ),
            (
                &[("prompt", "x"), ("prompt", "y")],
                None,
                ErrorCode::InvalidField,
                "prompt",
            ),
            (
                &[("prompt", "x")],
                Some("input_reference"),
                ErrorCode::Unsupported,
                "input_reference",
            ),
            (
                &[("prompt", "x")],
                Some("avatar"),
                ErrorCode::InvalidField,
                "avatar",
            ),
        ];
        for (parts, file, code, field) in cases {
            let (headers, body) = form(parts, file);
            let error = create_spec(&headers, Ok(body), 1 << 20, &[])
                .await
                .expect_err("refused");
            assert_eq!((error.code, error.field.as_deref()), (code, Some(field)));
        }
    }

    #[tokio::test]
    async fn other_content_types_and_broken_forms_are_malformed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let body = || Ok(Bytes::from_static(b"{}"));
        let error = create_spec(&headers, body(), 1024, &[])
            .await
            .expect_err("text");
        assert_eq!(error.code, ErrorCode::MalformedRequest);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data"),
        );
        let error = create_spec(&headers, body(), 1024, &[])
            .await
            .expect_err("no boundary");
        assert_eq!(error.code, ErrorCode::MalformedRequest);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=XyZ"),
        );
        let error = create_spec(&headers, body(), 1024, &[])
            .await
            .expect_err("no parts");
        assert_eq!(error.code, ErrorCode::MalformedRequest);
    }
}
