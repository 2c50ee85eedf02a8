//! The accept loop, with the guards `axum::serve` lacks: a cap on open connections (the one
//! over it gets a 503 with our JSON body and is closed), a time limit on reading a request's
//! headers (hyper starts that clock whenever it waits for a request, so it also closes
//! keep-alive connections left idle) and a limit on connections where no byte moves either
//! way (a client that stops reading a download, or stops sending a body).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ConnectionConfig;
use crate::metrics;

/// Longest request URI read, bytes (414 `uri_too_long` beyond).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes (names and values) read (431 `headers_too_large` beyond).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most headers read (431 `headers_too_large` beyond).
pub const MAX_HEADERS: usize = 128;

/// How long connections get to finish their requests after the stop signal.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish (up to 30 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ConnectionConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let tracker = TaskTracker::new();
    let started = Instant::now();
    loop {
        let (stream, _peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::record_connection_closed("limit");
            tracker.spawn(refuse(stream));
            continue;
        };
        metrics::set_connections_open(config.max_connections - slots.available_permits());
        let app = app.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        let slots = slots.clone();
        tracker.spawn(async move {
            connection(stream, app, &config, started, shutdown).await;
            drop(permit);
            metrics::set_connections_open(config.max_connections - slots.available_permits());
        });
    }
    tracker.close();
    if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
        tracing::warn!("connections still open {DRAIN:?} after the stop; closing them");
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    app: Router,
    config: &ConnectionConfig,
    started: Instant,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(AtomicU64::new(elapsed_ms(started)));
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
        started,
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        // Above the router's own limits (`MAX_HEADERS`, `MAX_HEADER_BYTES`), so that those
        // answer with our error body first.
        .max_headers(2 * MAX_HEADERS)
        .keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let mut draining = false;
    // One timer per connection, set to when it would go idle if no byte moves; it wakes
    // once per idle period at most, not on a fixed tick.
    let idle_at = |last_ms: u64| {
        tokio::time::Instant::from_std(started) + Duration::from_millis(last_ms) + idle
    };
    let check = tokio::time::sleep_until(idle_at(activity.load(Ordering::Relaxed)));
    let mut check = std::pin::pin!(check);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    if error.is_timeout() {
                        metrics::record_connection_closed("header_timeout");
                    }
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = check.as_mut() => {
                let deadline = idle_at(activity.load(Ordering::Relaxed));
                if deadline <= tokio::time::Instant::now() {
                    metrics::record_connection_closed("idle");
                    tracing::debug!("connection idle; closed");
                    return;
                }
                // Bytes moved since the timer was set: wait until the new deadline.
                check.as_mut().reset(deadline);
            }
        }
    }
}

/// Answers 503 with our JSON body to a connection over the limit, then closes it.
async fn refuse(mut stream: TcpStream) {
    let body = serde_json::to_string(&protocol::ErrorBody::new(
        protocol::ErrorCode::Unavailable,
        "the gateway has as many open connections as it allows; retry shortly",
        None,
    ))
    .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A TCP stream that notes when a byte last moved.
struct Tracked {
    inner: TcpStream,
    activity: Arc<AtomicU64>,
    started: Instant,
}

impl Tracked {
    fn touch(&self) {
        self.activity
            .store(elapsed_ms(self.started), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
