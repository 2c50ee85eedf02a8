//! OpenAI's official Python SDK (PyPI `openai`, installed into `.venv` by
//! `scripts/install-deps.sh`), unchanged, against `mochi up --backend simulated`: create and
//! poll, list two pages, download the video and both previews, remix, delete, errors.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The venv's Python, which has the SDK.
fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let has_sdk = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        has_sdk,
        "{} cannot import openai: run scripts/install-deps.sh",
        python.display()
    );
    python
}

#[test]
fn the_openai_python_sdk_drives_the_video_api() {
    let python = python();
    let binary = env!("CARGO_BIN_EXE_mochi");
    let nats_server =
        testkit::nats_server_binary().expect("nats-server: run scripts/install-deps.sh");
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let mut up = Command::new(binary)
        .args(["up", "--backend", "simulated", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--nats-server")
        .arg(&nats_server)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(up.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "mochi up printed {url:?}"
    );
    let key = std::fs::read_to_string(data_dir.join("api-key")).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_videos.py");
    let run = Command::new(&python)
        .arg(&script)
        .args([&url, key.trim()])
        .output()
        .unwrap();
    kill(
        Pid::from_raw(i32::try_from(up.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let stopped = up.wait().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the SDK script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(stopped.success(), "mochi up exited with {stopped}");
}
