//! Slow and idle clients against the real server: a slowloris crowd (many half-sent
//! requests) is cut off by the header timeout while normal clients are served throughout,
//! idle keep-alive connections are closed, and a connection over the cap gets our 503.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Starts a real server with `config`; returns its address and the stop token.
async fn serve(
    config: Config,
) -> (
    common::Gateway,
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<gateway::Result<()>>,
) {
    let gateway = common::start().await;
    let server = gateway::Server::bind(
        config,
        gateway.resources.clone(),
        gateway.state.client.clone(),
        None,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.serve(shutdown.clone()));
    (gateway, addr, shutdown, task)
}

/// One whole request on a fresh connection; the status line of the answer.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("a normal client waited more than 5 s")
        .unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

/// Whether the server has closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn config(header_ms: u64, idle_ms: u64, max_connections: usize) -> Config {
    let mut config = Config::for_test();
    config.connections.header_read_timeout_ms = header_ms;
    config.connections.idle_timeout_ms = idle_ms;
    config.connections.max_connections = max_connections;
    config.request_timeout_ms = idle_ms.min(config.request_timeout_ms) / 2;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_and_normal_clients_served_throughout() {
    let (_gateway, addr, shutdown, task) = serve(config(500, 30_000, 256)).await;
    let attackers: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
                    .await
                    .unwrap();
                let started = Instant::now();
                // One more header line every 100 ms, for at most 5 s.
                while started.elapsed() < Duration::from_secs(5) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        return started.elapsed();
                    }
                    let mut probe = [0u8; 256];
                    match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe))
                        .await
                    {
                        Ok(Ok(0) | Err(_)) => return started.elapsed(),
                        // A 408 (or anything) before closing counts as being cut off.
                        Ok(Ok(_)) => return started.elapsed(),
                        Err(_) => {}
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    // Normal clients during the attack.
    for _ in 0..20 {
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for attacker in attackers {
        let lasted = attacker.await.unwrap();
        assert!(
            lasted < Duration::from_secs(3),
            "a slowloris connection stayed open {lasted:?} with a 0.5 s header timeout"
        );
    }
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn idle_and_silent_connections_are_closed() {
    let (_gateway, addr, shutdown, task) = serve(config(400, 30_000, 16)).await;
    // Keep-alive, one request answered, then nothing.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = kept.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut kept, Duration::from_secs(3)).await,
        "idle keep-alive stays open"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "silent connection stays open"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_stalled_connection_is_closed_by_the_idle_limit() {
    // The header timeout is long; the idle limit (no byte either way) cuts it first.
    let (_gateway, addr, shutdown, task) = serve(config(60_000, 600, 16)).await;
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut stalled, Duration::from_secs(3)).await);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_connection_over_the_cap_gets_our_503() {
    let (_gateway, addr, shutdown, task) = serve(config(10_000, 30_000, 4)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Give the accept loop time to take the four in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(addr).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains(r#""code":"unavailable""#), "{response}");
    drop(held);
    // Once the others are gone, new connections are served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !get(addr, "/healthz").await.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the cap never freed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
