//! The `openembed` binary end to end: `embed` against the reference vectors, errors and exit codes.

mod common;

use common::{model_dir, reference_lines};
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn embed_from_stdin_matches_reference() {
    let cases: Vec<_> = reference_lines()
        .into_iter()
        .filter(|c| !c["text"].as_str().unwrap().contains('\n'))
        .take(5)
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_openembed"))
        .args(["embed", "--threads", "2", "--model"])
        .arg(model_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for c in &cases {
            writeln!(stdin, "{}", c["text"].as_str().unwrap()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), cases.len());
    for (line, case) in lines.iter().zip(&cases) {
        assert_eq!(line["tokens"], case["tokens"]);
        let got: Vec<f64> = line["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let want: Vec<f64> = case["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff <= 1e-4, "{:?}: max abs diff {diff}", case["text"]);
    }
}

#[test]
fn embed_dimensions_and_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_openembed"))
        .args(["embed", "--dimensions", "8", "--model"])
        .arg(model_dir())
        .arg("hello")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e: Vec<f64> = v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(e.len(), 8);
    assert!((e.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-5);

    let out = Command::new(env!("CARGO_BIN_EXE_openembed"))
        .args(["embed", "--model", "/nonexistent", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));

    let long = "word ".repeat(400);
    let out = Command::new(env!("CARGO_BIN_EXE_openembed"))
        .args(["embed", "--model"])
        .arg(model_dir())
        .arg(&long)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--truncate"));
    let out = Command::new(env!("CARGO_BIN_EXE_openembed"))
        .args(["embed", "--truncate", "--model"])
        .arg(model_dir())
        .arg(&long)
        .output()
        .unwrap();
    assert!(out.status.success());

    let out = Command::new(env!("CARGO_BIN_EXE_openembed"))
        .args(["embed", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}
