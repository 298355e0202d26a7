//! Shared helpers for tests that run the real `openembed` binary: the model folder, the
//! reference fixture, and a server on a free loopback port that is stopped on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model folder (filled by `make test`).
pub fn model_dir() -> PathBuf {
    let dir = root().join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "run `make model` (or `make test`) first"
    );
    dir
}

/// The reference lines of all-MiniLM-L6-v2 (text, input_ids, embedding, ...), header skipped.
pub fn reference_lines() -> Vec<serde_json::Value> {
    let path = root().join("../shared/fixtures/reference/all-MiniLM-L6-v2.jsonl");
    std::fs::read_to_string(path)
        .expect("reference fixture")
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).expect("fixture line"))
        .collect()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A JSON array of numbers as f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// A running `openembed serve` on 127.0.0.1 with a free port.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    /// Starts the server on the default model with extra flags and environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_openembed"));
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0", "--threads", "2"]);
        if !args.contains(&"--model") {
            cmd.arg("--model")
                .arg(format!("{}=all-MiniLM-L6-v2", model_dir().display()));
        }
        cmd.args(args)
            .env_remove("OPENEMBED_API_KEYS")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn openembed serve");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("openembed listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start: {}", stderr.join().unwrap_or_default());
            }
        };
        Self {
            child: Some(child),
            url,
            stderr: Some(stderr),
        }
    }

    /// Starts the server with extra flags.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal (e.g. `TERM`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits for the process to exit (up to `limit`); returns its exit code and stderr.
    pub fn wait_exit(mut self, limit: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("child");
        let start = Instant::now();
        let code = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status.code();
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let logs = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (code, logs)
    }

    /// A URL on this server.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Current value of a Prometheus sample line starting with `prefix` (summed over matches).
    pub fn metric(&self, prefix: &str) -> f64 {
        let text = reqwest::blocking::get(self.at("/metrics"))
            .expect("metrics")
            .text()
            .expect("text");
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A blocking client with a generous timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// POSTs JSON to `/v1/embeddings`; returns status, headers and the JSON body.
pub fn embed(server: &Server, body: serde_json::Value) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let resp = client()
        .post(server.at("/v1/embeddings"))
        .json(&body)
        .send()
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let json = resp.json().expect("JSON body");
    (status, headers, json)
}

/// POSTs `body` as `content_type` to `path`; returns the status and the JSON body (null when
/// it is not JSON).
pub fn post_raw(server: &Server, path: &str, content_type: &str, body: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .post(server.at(path))
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(serde_json::Value::Null))
}

/// Asserts the OpenAI error shape and returns the `error` object.
pub fn assert_error(body: &serde_json::Value) -> &serde_json::Map<String, serde_json::Value> {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("not an error body: {body}"));
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.contains_key("param") && error.contains_key("code"), "{body}");
    error
}

/// Resident memory of a process in MB (Linux).
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
