//! The benchmark binary answers `--help` and runs the architectures workload's correctness pass
//! (every tiny fixture against its reference) on any machine.

use std::process::Command;

#[test]
fn help_names_the_workloads() {
    let out = Command::new(env!("CARGO_BIN_EXE_openembed-bench"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Usage") && text.contains("--workloads"), "{text}");
}

#[test]
fn a_missing_corpus_is_an_error_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_openembed-bench"))
        .args(["--corpus", "/nonexistent/corpus.jsonl", "--threads", "1"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/corpus.jsonl"));
}
