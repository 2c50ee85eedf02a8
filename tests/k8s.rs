//! The Kubernetes overlays as CI and an operator meet them: every overlay renders with
//! `kubectl kustomize`, validates against the Kubernetes 1.32 schemas, has no checkov
//! finding (skips are justified beside them) and passes `k8s/check.py`; and each of those
//! checks catches a rendering broken the way a hand edit breaks one.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/k8s-check.sh` with the binary under test and `args`.
fn k8s_check(out: &Path, args: &[&str]) -> Output {
    Command::new(repo().join("scripts/k8s-check.sh"))
        .arg("--mochi")
        .arg(env!("CARGO_BIN_EXE_mochi"))
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect(
            "scripts/k8s-check.sh runs (needs kubectl and .venv-k8s from scripts/install-deps.sh)",
        )
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn every_overlay_renders_validates_and_passes_checkov_and_the_design_checks_and_breakage_is_caught()
{
    let out = tempfile::tempdir().unwrap();
    let output = k8s_check(out.path(), &[]);
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    for overlay in ["dev", "prod"] {
        assert!(
            log.contains(&format!(
                "k8s-check: {overlay}: schemas, checkov and check.py pass"
            )),
            "{log}"
        );
    }
    let prod = std::fs::read_to_string(out.path().join("prod.yaml")).unwrap();
    assert!(prod.contains("sync_interval: always"));

    // Each breakage, and the words of the check that must name it.
    let breakages: [(&str, &str, &str, &[&str]); 8] = [
        (
            "a NATS configuration the server cannot parse",
            "sync_interval: always",
            "sync_interval: always\n      cluster {",
            &["nats-server refuses the rendered nats.conf"],
        ),
        (
            "a writable root file system",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            &["writable root file system", "CKV_K8S_22"],
        ),
        (
            "NATS without its users",
            "include ./nats-auth.conf",
            "# include ./nats-auth.conf",
            &["NATS would run without authorization"],
        ),
        (
            "a GPU node killed before it can hand its job back",
            "terminationGracePeriodSeconds: 150",
            "terminationGracePeriodSeconds: 30",
            &["shorter than drain + hand-back"],
        ),
        (
            "NATS routes without the route password",
            "include ../nats-cluster/cluster.conf",
            "# include ../nats-cluster/cluster.conf",
            &["the cluster's routes are not authenticated"],
        ),
        (
            "a GPU node logged in as another node",
            "value: node-gpu-node-1\n",
            "value: node-gpu-node-0\n",
            &["must log in to NATS as node-gpu-node-1"],
        ),
        (
            "two GPU node Deployments with one node id",
            "value: gpu-node-2\n",
            "value: gpu-node-1\n",
            &["node id gpu-node-1 is taken by another Deployment"],
        ),
        (
            "a field of the wrong type",
            "maxUnavailable: 1",
            "maxUnavailable: true",
            &["did not validate"],
        ),
    ];
    for (what, from, to, expected) in breakages {
        assert!(
            prod.contains(from),
            "{what}: {from:?} is not in the rendering"
        );
        let broken = out.path().join("broken.yaml");
        std::fs::write(&broken, prod.replacen(from, to, 1)).unwrap();
        let output = k8s_check(
            out.path(),
            &["--rendered", broken.to_str().unwrap(), "--overlay", "prod"],
        );
        let log = text(&output);
        assert!(!output.status.success(), "{what} passed:\n{log}");
        for words in expected {
            assert!(log.contains(words), "{what}: no {words:?} in\n{log}");
        }
    }
}
