//! The real `mochi` binary: `up` starts the stack (by default the embedded tiny Mochi
//! model, created on first start), `generate` makes an MP4 through the real pipeline and
//! says its video is noise, SIGINT stops everything and leaves no nats-server behind.
#![allow(clippy::unwrap_used, clippy::large_futures)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn nats_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_dir(data_dir.join("nats"))
        .ok()?
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_prefix("nats-server_")?
                .strip_suffix(".ports")?
                .parse()
                .ok()
        })
}

#[test]
fn up_generate_and_sigint_leave_an_mp4_and_no_nats_server() {
    let binary = env!("CARGO_BIN_EXE_mochi");
    let nats_server =
        testkit::nats_server_binary().expect("nats-server: run scripts/install-deps.sh");
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let mut up = Command::new(binary)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
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
    let nats = nats_pid(&data_dir).expect("nats-server ports file");
    // The embedded server has generated passwords (kept private) and refuses anonymity.
    let passwords = data_dir.join("nats/users.json");
    let mode = std::fs::metadata(&passwords).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", passwords.display());
    let config = std::fs::read_to_string(data_dir.join("nats/nats.conf")).unwrap();
    assert!(config.contains("authorization") && !config.contains("no_auth_user"));
    let users: std::collections::HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&passwords).unwrap()).unwrap();
    assert!(
        users
            .values()
            .all(|password| !config.contains(password.as_str()))
    );
    let answer = anonymous_connect(&nats_url(&data_dir, nats));
    assert!(answer.contains("Authorization Violation"), "{answer}");

    let output: PathBuf = work.path().join("out.mp4");
    let generate = Command::new(binary)
        .args([
            "generate",
            "a red fox running through fresh snow",
            "--frames",
            "13",
            "--width",
            "256",
            "--height",
            "144",
            "--steps",
            "4",
        ])
        .args(["--server", &url, "--data-dir"])
        .arg(&data_dir)
        .arg("-o")
        .arg(&output)
        .env_remove("MOCHI_API_KEY")
        .output()
        .unwrap();
    assert!(
        generate.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&generate.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&generate.stdout).trim(),
        output.display().to_string()
    );
    let info = gpu_node::mp4::probe(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!(
        (info.decoded_frames, info.width, info.height),
        (13, 256, 144)
    );
    // The job ran through the tiny Mochi model, created under the data dir, and the CLI
    // said that its output is noise.
    let stderr = String::from_utf8_lossy(&generate.stderr);
    assert!(
        stderr.contains("tiny Mochi model") && stderr.contains("noise"),
        "{stderr}"
    );
    let model_dir = data_dir.join("models/mochi-tiny");
    assert!(gpu_node::model_dir::check::check(&model_dir).is_ok());

    // The first start wrote an admin key only its owner can read; without it the API
    // answers 401 with a sentence that says what to send.
    let key_file = data_dir.join("api-key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "api-key file mode {mode:o}");
    assert!(
        std::fs::read_to_string(&key_file)
            .unwrap()
            .starts_with("mk_live_")
    );
    let anonymous = Command::new(binary)
        .args(["generate", "x", "--server", &url, "--data-dir"])
        .arg(work.path().join("elsewhere"))
        .env_remove("MOCHI_API_KEY")
        .output()
        .unwrap();
    assert!(!anonymous.status.success());
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("Authorization: Bearer"),
        "{stderr}"
    );

    // A bad request is refused with a clear error, and the CLI says which field.
    let bad = Command::new(binary)
        .args([
            "generate", "x", "--width", "850", "--height", "480", "--server", &url,
        ])
        .env(
            "MOCHI_API_KEY",
            std::fs::read_to_string(&key_file).unwrap().trim(),
        )
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("width") && stderr.contains("multiple of 16"),
        "{stderr}"
    );

    // `mochi keys` finds the running stack through the data dir: a viewer key may read
    // but not create, and once revoked it is refused.
    let keys = |args: &[&str]| {
        let output = Command::new(binary)
            .arg("keys")
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env_remove("MOCHI_NATS__URL")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "mochi keys {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let created = keys(&[
        "create", "--tenant", "local", "--role", "viewer", "--name", "ci",
    ]);
    let viewer = created.lines().last().unwrap().to_owned();
    assert!(viewer.starts_with("mk_live_"), "{created}");
    let id = created
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(keys(&["list"]).contains(&id));
    let as_viewer = Command::new(binary)
        .args(["generate", "x", "--server", &url])
        .env("MOCHI_API_KEY", &viewer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&as_viewer.stderr);
    assert!(stderr.contains("403"), "{stderr}");
    keys(&["revoke", &id]);
    let listed = keys(&["list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&id) && l.contains("revoked")),
        "{listed}"
    );

    kill(
        Pid::from_raw(i32::try_from(up.id()).unwrap()),
        Signal::SIGINT,
    )
    .unwrap();
    let status = wait_with_timeout(&mut up, Duration::from_secs(60));
    assert!(status.success(), "mochi up exited with {status}");
    let gone = testkit::wait_until(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{nats}")).exists()
    });
    assert!(
        gone,
        "nats-server {nats} still running after mochi up stopped"
    );
}

fn nats_url(data_dir: &Path, pid: i32) -> String {
    let ports =
        std::fs::read_to_string(data_dir.join(format!("nats/nats-server_{pid}.ports"))).unwrap();
    let ports: serde_json::Value = serde_json::from_str(&ports).unwrap();
    ports["nats"][0].as_str().unwrap().to_owned()
}

/// Speaks the NATS protocol without credentials; returns what the server answers.
fn anonymous_connect(url: &str) -> String {
    let address = url.trim_start_matches("nats://");
    let stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    assert!(info.starts_with("INFO"), "{info}");
    (&stream)
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    answer
}

fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("mochi up did not stop within {timeout:?} of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
