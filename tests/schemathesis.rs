//! schemathesis (PyPI, installed into `.venv` by `scripts/install-deps.sh`) against
//! `/openapi.json` of `mochi up --backend simulated`: examples, boundary values, fuzzed
//! inputs and stateful sequences on every operation, checking that nothing answers 5xx and
//! that every answer matches the document (status, content type, schema, headers), and
//! that requests the document forbids are refused. Not checked: that every request the
//! schemas allow is accepted (`positive_data_acceptance`): the rules across fields (6k+1
//! frames, multiples of 16, a pixel budget, the tenant-name grammar) are the gateway's
//! and answer `422` with a sentence; the schemas describe types, not those rules.
//!
//! CI runs a short pass (`MOCHI_SCHEMATHESIS_EXAMPLES`, default 25 per operation); a longer
//! one: `MOCHI_SCHEMATHESIS_EXAMPLES=500 cargo test --test schemathesis`.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::process::Command;

#[test]
fn every_operation_holds_to_the_openapi_document() {
    let schemathesis = common::venv_program("schemathesis");
    let examples = std::env::var("MOCHI_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let up = common::MochiUp::start();
    let run = Command::new(&schemathesis)
        .arg("run")
        .arg(format!("{}/openapi.json", up.url))
        .args(["--header", &format!("Authorization: Bearer {}", up.key)])
        .args(["--checks", "all"])
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", &examples])
        .args(["--workers", "2"])
        .args(["--seed", "20261205"])
        // Revoking keys would revoke the test's own admin key halfway through.
        .args(["--exclude-operation-id", "revoke"])
        .args(["--request-timeout", "30"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stopped = up.stop();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stopped, "mochi up did not exit cleanly on SIGTERM");
}
