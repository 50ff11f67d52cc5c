//! Helpers shared by the integration tests (each test crate uses what it needs).

#![allow(dead_code)]

pub mod clip;
pub mod procs;
pub mod synth;

/// Skips (or, under `HOLDFAST_REQUIRE_ROOT_TESTS`, fails) a test that needs root.
#[allow(unused_imports)]
pub use holdfast::testing::is_root_or_skip;

/// Runs the test `name` of this test binary again, alone, in a child process with the
/// environment variable `flag` set to 1 (for what must not reach the other tests: process-wide
/// limits, capabilities), ignored tests included; panics with its output when it failed or did
/// not print `done` (the child's sign that it ran to the end).
pub fn run_in_child(name: &str, flag: &str, done: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(flag, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(
        text.contains(done),
        "the child did not run to the end:\n{text}"
    );
}
