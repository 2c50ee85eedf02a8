//! The web page, used as a person would: Debian's Chromium driven by Playwright for Python
//! (`tests/web/page_test.py`, installed by `scripts/install-deps.sh`) against `mochi up`.
//! Screenshots of every step land in `target/web-screenshots/`; with
//! `MOCHI_DOCS_SCREENSHOT=<path>` the walk also writes the README's screenshot there.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::path::PathBuf;
use std::process::Command;

/// Where the screenshots go: `target/web-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(&tmp).join("web-screenshots")
}

/// Runs the page walk against a fresh `mochi up --backend <backend>`.
fn walk(backend: &str, extra: &[&str]) {
    let python = common::venv_program("python");
    let has_playwright = Command::new(&python)
        .args(["-c", "import playwright, axe_playwright_python"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        has_playwright,
        "the venv lacks playwright or axe-playwright-python: run scripts/install-deps.sh"
    );
    let chromium = std::env::var("MOCHI_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/install-deps.sh (Debian's chromium package)"
    );
    let up = common::MochiUp::start_with(backend);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web/page_test.py");
    let run = Command::new(&python)
        .arg(&script)
        .args([&up.url, &up.key])
        .arg(screenshot_dir())
        .args(extra)
        .env("MOCHI_CHROMIUM", &chromium)
        .output()
        .unwrap();
    let stopped = up.stop();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "the page walk failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(stopped, "mochi up did not exit cleanly on SIGTERM");
}

/// Sign in (a wrong key first), a bad field, the estimate, submit, the progress bar through
/// intermediate values to 100 %, the video playing, download equal to the API's bytes,
/// cancel a second job, history (thumbnails, filter, paging, opening a job), remix, delete,
/// sign out, another tenant seeing nothing, a phone-sized screen, axe-core on three states.
#[test]
fn the_page_walks_from_sign_in_to_a_playing_video() {
    walk("simulated", &[]);
}

/// The same page against the embedded tiny model: a small job's progress, its video playing
/// and its download.
#[test]
fn the_page_plays_a_video_of_the_tiny_model() {
    walk("mochi", &["--tiny"]);
}
