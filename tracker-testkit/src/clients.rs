//! Clients run to completion.

use std::process::Command;

/// Runs a load generator or client to completion and returns its stdout; fails the test with
/// its output if it fails.
pub fn run_client(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("running {program} (installed by `cargo xtask test`?): {error}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
