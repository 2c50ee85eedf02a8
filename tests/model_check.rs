//! `mochi model create-tiny` and `mochi model check`: a complete directory passes, a broken
//! one is refused with a non-zero exit and a sentence per problem.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn mochi(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mochi"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_passes_a_complete_directory_and_names_each_problem_of_a_broken_one() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("tiny");
    let dir_arg = dir.to_str().unwrap();
    let created = mochi(&["model", "create-tiny", dir_arg]);
    assert!(created.status.success(), "{created:?}");

    let good = mochi(&["model", "check", dir_arg]);
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok: transformer") && stdout.contains("model directory is complete"),
        "{stdout}"
    );

    let shard = "transformer/diffusion_pytorch_model-00001-of-00002.safetensors";
    std::fs::remove_file(dir.join(shard)).unwrap();
    let broken = mochi(&["model", "check", dir_arg]);
    assert!(!broken.status.success());
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(
        stdout.contains(&format!("problem: missing shard {shard}")),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(
        stderr.contains("is not a usable model directory"),
        "{stderr}"
    );

    // create-tiny repairs it.
    let repaired = mochi(&["model", "create-tiny", dir_arg]);
    assert!(String::from_utf8_lossy(&repaired.stderr).contains("repaired"));
    assert!(mochi(&["model", "check", dir_arg]).status.success());
}
