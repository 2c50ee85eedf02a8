//! OpenAI's official Python SDK (PyPI `openai`, installed into `.venv` by
//! `scripts/install-deps.sh`), unchanged, against `mochi up --backend simulated`: create and
//! poll, list two pages, download the video and both previews, remix, delete, errors.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::process::Command;

#[test]
fn the_openai_python_sdk_drives_the_video_api() {
    let python = common::venv_program("python");
    let has_sdk = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        has_sdk,
        "the venv lacks the openai SDK: run scripts/install-deps.sh"
    );
    let up = common::MochiUp::start();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_videos.py");
    let run = Command::new(&python)
        .arg(&script)
        .args([&up.url, &up.key])
        .output()
        .unwrap();
    let stopped = up.stop();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the SDK script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(stopped, "mochi up did not exit cleanly on SIGTERM");
}
