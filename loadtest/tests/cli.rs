//! `loadtest run` as a user meets it: against a gateway that takes the key but refuses every
//! create (a `viewer` key), the run writes its report, says why nothing was accepted and
//! exits 1; against an address where nothing answers it stops before submitting.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

/// Answers `GET /v1/models` with 200 and everything else with our 403 body, on loopback,
/// until the test ends; the server's URL.
fn viewer_gateway() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0_u8; 8192];
            let read = stream.read(&mut buffer).unwrap_or(0);
            let request = String::from_utf8_lossy(&buffer[..read]);
            let (status, body) = if request.starts_with("GET /v1/models") {
                ("200 OK", r#"{"object":"list","data":[]}"#)
            } else {
                (
                    "403 Forbidden",
                    r#"{"error":{"code":"forbidden","message":"a viewer credential cannot create jobs","type":"permission_error","param":null}}"#,
                )
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    url
}

fn loadtest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
}

#[test]
fn a_run_nothing_is_accepted_in_says_why_and_fails() {
    let out = tempfile::tempdir().unwrap();
    let output = loadtest()
        .args([
            "run",
            "--jobs",
            "3",
            "--time-scale",
            "0.0001",
            "--max-duration-s",
            "20",
        ])
        .args(["--api-key", "mk_live_viewer", "--name", "viewer", "--url"])
        .arg(viewer_gateway())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "accepted none of the requests: 3 × forbidden (a viewer credential cannot create jobs)"
        ),
        "{stderr}"
    );
    // The report is still written: it shows every refusal.
    assert!(out.path().join("viewer.json").is_file());
    assert!(out.path().join("viewer.html").is_file());
}

#[test]
fn nothing_is_submitted_when_the_gateway_does_not_answer() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let out = tempfile::tempdir().unwrap();
    let output = loadtest()
        .args(["run", "--jobs", "3", "--url", &closed, "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach the gateway"), "{stderr}");
    assert!(stderr.contains("--url"), "{stderr}");
    assert!(
        !out.path().join("run.json").exists(),
        "no report of a run that never started"
    );
}
