//! Every shell example of `docs/api.md` that calls `curl` runs against
//! `mochi up --backend simulated`, with `URL` its address, `KEY` its admin key and `ID` a
//! finished job, and must succeed: curl fails on any HTTP error (`--fail-with-body` from a
//! `.curlrc` the test writes), bash on any failed command.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

/// The fenced `sh` blocks of `markdown` that call curl.
fn curl_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                if block.contains("curl ") {
                    blocks.push(block.clone());
                }
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn bash(
    up: &common::MochiUp,
    curlrc: &std::path::Path,
    script: &str,
    id: &str,
) -> std::process::Output {
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(&up.dir)
        .env("URL", &up.url)
        .env("KEY", &up.key)
        .env("ID", id)
        .env("CURL_HOME", curlrc)
        .output()
        .unwrap()
}

#[test]
fn every_curl_example_of_the_api_reference_works() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let blocks = curl_blocks(&docs);
    assert!(
        blocks.len() >= 5,
        "only {} curl examples found",
        blocks.len()
    );
    let up = common::MochiUp::start();
    let curlrc = tempfile::tempdir().unwrap();
    std::fs::write(
        curlrc.path().join(".curlrc"),
        "fail-with-body\nmax-time = 60\nsilent\nshow-error\n",
    )
    .unwrap();
    // A finished job for the examples that need one.
    let created = bash(
        &up,
        curlrc.path(),
        r#"curl -X POST $URL/v1/videos -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"prompt":"a fox","steps":4}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'"#,
        "",
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let id = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = bash(
            &up,
            curlrc.path(),
            r#"curl $URL/v1/videos/$ID -H "Authorization: Bearer $KEY" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])'"#,
            &id,
        );
        if String::from_utf8_lossy(&status.stdout).trim() == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "the example job never completed");
        std::thread::sleep(Duration::from_millis(200));
    }
    for block in &blocks {
        let script = block.replace("http://127.0.0.1:8080", &up.url);
        let run = bash(&up, curlrc.path(), &script, &id);
        assert!(
            run.status.success(),
            "this example of docs/api.md failed:\n{block}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    assert!(up.dir.join("fox.mp4").exists() && up.dir.join("fox.jpg").exists());
    assert!(up.stop(), "mochi up did not exit cleanly");
}
