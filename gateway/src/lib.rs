//! The HTTP gateway of mochi-serve: the public API (`/v1/videos`), validation errors with
//! stable codes, downloads with range requests, health and Prometheus metrics.

pub mod auth;
pub mod config;
pub mod error;
pub mod files;
pub mod fleet;
pub mod index;
pub mod metrics;
pub mod openapi;
pub mod record_batch;
pub mod routes;
pub mod serve;
pub mod state;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use protocol::ErrorCode;
use protocol::jetstream::Resources;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

pub use serve::{MAX_HEADER_BYTES, MAX_HEADERS, MAX_URI_BYTES};

pub use config::Config;
pub use error::{ApiError, Error, Result};
pub use state::AppState;

/// The router with every route and layer.
///
/// Every API route is authenticated and rate-limited by [`auth::middleware`] (a download by
/// signed link excepted). The API (`/v1/…`) sits behind, outermost first: load shedding (503 `unavailable` at once
/// while `max_concurrent_requests` API requests are in flight, one limit for all of them), the
/// request timeout (503 `unavailable`) and the body size limit (413 `payload_too_large`).
/// `/healthz`, `/readyz` and `/metrics` stay outside the limit, so that a busy gateway is not
/// taken for a dead one. Every route counts its requests by route template and status.
pub fn app(state: AppState) -> Router {
    let config = state.config.clone();
    let Routers { api, open } = routers();
    let api = api
        .fallback(|| async {
            ApiError::new(
                ErrorCode::NotFound,
                "no such route; the API lives under /v1/videos",
            )
        })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(auth::Gate {
                auth: state.auth.clone(),
                limiter: Arc::clone(&state.limiter),
            }),
            auth::middleware,
        ))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn(track))
        .with_state(state.clone());
    // `Router::layer` wraps each route on its own, which would give each route its own
    // concurrency limit: the limit wraps the routed API once instead.
    let guarded = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overloaded))
        .load_shed()
        .concurrency_limit(config.max_concurrent_requests)
        .timeout(Duration::from_millis(config.request_timeout_ms))
        .service(api);
    open.merge(routes::web::router())
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(track))
        .with_state(state)
        .fallback_service(guarded)
        .layer(axum::middleware::from_fn(request_id))
}

/// The routes, before their layers: the authenticated API and the open operations routes.
struct Routers {
    api: Router<AppState>,
    open: Router<AppState>,
}

/// Builds the routes and the OpenAPI document together (every route is registered with its
/// description, so neither can lack the other).
fn build() -> (Routers, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;

    let (api, mut document) = OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(routes::videos::submit, routes::list::list))
        .routes(routes!(routes::videos::status, routes::videos::delete))
        .routes(routes!(routes::cancel::cancel))
        .routes(routes!(routes::estimate::estimate))
        .routes(routes!(routes::videos::remix))
        .routes(routes!(routes::content::content))
        .routes(routes!(routes::events::events))
        .routes(routes!(routes::models::models))
        .routes(routes!(routes::hooks::secret))
        .routes(routes!(routes::backends::backends))
        .routes(routes!(routes::admin::list))
        .routes(routes!(routes::admin::redrive))
        .routes(routes!(routes::keys::list, routes::keys::create))
        .routes(routes!(routes::keys::revoke))
        // The seed service's endpoints, as aliases.
        .routes(routes!(routes::seed::generate_video))
        .routes(routes!(routes::seed::jobs))
        .routes(routes!(routes::seed::job))
        .routes(routes!(routes::seed::video))
        .split_for_parts();
    let (open, open_document) = OpenApiRouter::<AppState>::new()
        .routes(routes!(routes::health::healthz))
        .routes(routes!(routes::health::readyz))
        .routes(routes!(routes::health::metrics))
        .routes(routes!(routes::seed::health))
        .routes(routes!(openapi_json))
        .split_for_parts();
    document.merge(open_document);
    (Routers { api, open }, document)
}

/// The document `build` made alongside the first router (or on its own, when asked for first).
static DOCUMENT: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();

fn routers() -> Routers {
    let (routers, document) = build();
    DOCUMENT.get_or_init(|| document);
    routers
}

/// The OpenAPI 3.1 document of every route (built once).
pub fn openapi_document() -> &'static utoipa::openapi::OpenApi {
    DOCUMENT.get_or_init(|| build().1)
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "document",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
async fn openapi_json() -> axum::Json<&'static utoipa::openapi::OpenApi> {
    axum::Json(openapi_document())
}

/// The header that names a request in both directions.
const REQUEST_ID: &str = "x-request-id";
/// Longest client-chosen request id kept.
const MAX_REQUEST_ID: usize = 128;

/// Gives every response an `x-request-id`: the client's, when it sent a usable one, else a
/// new one; the request's log lines carry it. Refuses, with our error body, a URI or
/// headers beyond the limits above (the HTTP parser's own, larger limits stay as a
/// backstop, answered without a body).
async fn request_id(request: Request, next: Next) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    let refusal = if uri_bytes > MAX_URI_BYTES {
        Some(ApiError::new(
            ErrorCode::UriTooLong,
            format!("the URI is longer than {MAX_URI_BYTES} bytes; send less in the query string"),
        ))
    } else if header_bytes > MAX_HEADER_BYTES || request.headers().len() > MAX_HEADERS {
        Some(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the headers are larger than {MAX_HEADER_BYTES} bytes or more than {MAX_HEADERS}; send fewer or smaller headers"
            ),
        ))
    } else {
        None
    };
    let given = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned);
    let id = given.unwrap_or_else(|| {
        protocol::random::base62(22)
            .map_or_else(|_| "req_unknown".to_owned(), |r| format!("req_{r}"))
    });
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = match refusal {
        Some(refusal) => refusal.into_response(),
        None => tracing::Instrument::instrument(next.run(request), span).await,
    };
    let headers = response.headers_mut();
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
    // No response is ever to be sniffed into another type (a JSON error into HTML, say).
    headers.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// A known route with a method it does not have (our error body instead of an empty 405).
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{method} is not allowed on {}; see the API reference for the methods of each route",
            uri.path()
        ),
    )
}

/// Turns the errors of the tower layers into our error body.
async fn overloaded(error: tower::BoxError) -> ApiError {
    if error.is::<tower::load_shed::error::Overloaded>() {
        metrics::record_shed("overloaded");
        ApiError::unavailable("the gateway is at its limit of concurrent requests; retry shortly")
    } else if error.is::<tower::timeout::error::Elapsed>() {
        metrics::record_shed("timeout");
        ApiError::unavailable("the request took too long; retry shortly")
    } else {
        ApiError::internal("middleware", &error)
    }
}

async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::record_request(route, method, response.status().as_u16(), started.elapsed());
    response
}

/// A bound, not yet serving gateway (so that the caller can learn the address first).
pub struct Server {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    state: AppState,
}

impl Server {
    /// Validates `config` and binds `config.listen_addr`; `metrics_handle` renders `/metrics`
    /// (`None`: this process has no Prometheus recorder, `/metrics` answers 404).
    pub async fn bind(
        config: Config,
        resources: Resources,
        client: async_nats::Client,
        metrics_handle: Option<PrometheusHandle>,
    ) -> Result<Self> {
        config.validate()?;
        metrics::describe();
        let bind_error = |source| Error::Bind {
            addr: config.listen_addr.clone(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(&config.listen_addr)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        if config.auth.disabled {
            tracing::warn!(addr = %local_addr, tenant = %config.auth.open_tenant, "AUTHENTICATION IS OFF: every request on this loopback listener acts as an admin");
        }
        let mut resources = resources;
        if resources.keys.is_none() {
            resources.keys = Some(
                protocol::jetstream::open_keys(&resources.context)
                    .await
                    .map_err(|e| Error::Start(format!("{e:#}")))?,
            );
        }
        let state = AppState::new(config, resources, client, metrics_handle);
        // Keys, tenant loads and the fleet are kept current for as long as the state lives.
        state.start().await?;
        Ok(Self {
            listener,
            local_addr,
            state,
        })
    }

    /// The bound address (with the port the system picked when the configured one is 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled, then stops accepting connections and returns once
    /// the requests in flight are answered.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(addr = %self.local_addr, "gateway listening");
        let connections = self.state.config.connections.clone();
        let state = self.state.clone();
        let served = serve::serve(self.listener, app(self.state), connections, shutdown).await;
        state.stop().await;
        served.map_err(Error::Serve)?;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Binds and serves until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    resources: Resources,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<()> {
    let server = Box::pin(Server::bind(config, resources, client, None)).await?;
    Box::pin(server.serve(shutdown)).await
}

/// Buckets of every `*_seconds` histogram: 5 ms (a request) to 2 h (a long job), so that
/// one set serves request, submit, step, queue-wait and job times.
pub const SECONDS_BUCKETS: [f64; 20] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1200.0, 1800.0, 3600.0, 7200.0,
];
/// Buckets of every `*_ratio` histogram (the cost model's `observed / predicted − 1`).
pub const RATIO_BUCKETS: [f64; 11] = [
    -0.75, -0.5, -0.25, -0.1, -0.05, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0,
];

/// Buckets of every `*_utilisation` histogram (a share of time, 0 to 1: a GPU's utilisation).
pub const UTILISATION_BUCKETS: [f64; 11] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

/// Installs the process-wide Prometheus recorder (once per process), histograms with
/// buckets (not summaries) so that Prometheus can aggregate them across replicas.
pub fn install_metrics_recorder() -> Result<PrometheusHandle> {
    use metrics_exporter_prometheus::Matcher;
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Suffix("_ratio".to_owned()), &RATIO_BUCKETS)
        })
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Suffix("_utilisation".to_owned()),
                &UTILISATION_BUCKETS,
            )
        })
        .map_err(|e| Error::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| Error::Metrics(e.to_string()))
}

/// Serves the operations routes of a role without an API (coordinator, gpu-node) on
/// `addr`: `/metrics`, `/healthz` (the process is up) and `/readyz` (NATS is connected);
/// anything else is a JSON 404.
pub async fn serve_metrics(
    addr: SocketAddr,
    handle: PrometheusHandle,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    handle.run_upkeep();
                    handle.render().into_response()
                }
            }),
        )
        .route("/healthz", get(routes::health::healthz))
        .route(
            "/readyz",
            get(move || {
                let client = client.clone();
                async move { routes::health::nats_ready(&client) }
            }),
        )
        .fallback(|| async {
            ApiError::new(
                ErrorCode::NotFound,
                "no such route; this port serves /metrics, /healthz and /readyz",
            )
        })
        .method_not_allowed_fallback(method_not_allowed);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(Error::Serve)
}
