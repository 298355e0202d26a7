//! Overload and slow clients against the real binary on 127.0.0.1 (bounded in time and count):
//! ≥ 5× capacity for 20 s gives only 200 or 429 with Retry-After while /health stays fast and
//! memory bounded, and the queue drains afterwards; trickling clients are cut off; connections
//! over the limit get a clear 503.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Resident memory bound for all-MiniLM-L6-v2 under any load (model ~96 MB + queue + buffers).
const RSS_BOUND_MB: f64 = 400.0;

/// One load test at a time: each measures a server on the machine's two cores, and another
/// test's server and clients running beside it would be measured too.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn five_times_capacity_gives_only_200_or_429_and_recovers() {
    let _alone = alone();
    let server = Server::start(&["--max-queued-tokens", "4000"]);
    let addr = server.url.clone();
    let texts: Vec<String> = reference_lines()
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_string())
        .take(32)
        .collect();
    let body = json!({"model": "all-MiniLM-L6-v2", "input": texts});
    let stop = AtomicBool::new(false);
    let (sent, ok, limited, ok_tokens) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let unexpected: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let health_ms: Mutex<Vec<f64>> = Mutex::new(Vec::new());
    let max_rss = Mutex::new(0.0f64);
    let load_for = Duration::from_secs(20);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                let c = client();
                while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < 50_000 {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let resp = match c.post(format!("{addr}/v1/embeddings")).json(&body).send() {
                        Ok(r) => r,
                        Err(e) => {
                            unexpected.lock().unwrap().push(format!("transport error: {e}"));
                            continue;
                        }
                    };
                    match resp.status().as_u16() {
                        200 => {
                            let v: serde_json::Value = resp.json().unwrap();
                            ok.fetch_add(1, Ordering::Relaxed);
                            ok_tokens.fetch_add(v["usage"]["total_tokens"].as_u64().unwrap(), Ordering::Relaxed);
                        }
                        429 => {
                            let retry = resp
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                            if retry.is_none_or(|r| r < 1) {
                                unexpected.lock().unwrap().push("429 without Retry-After".into());
                            }
                            let v: serde_json::Value = resp.json().unwrap();
                            assert_eq!(v["error"]["code"], "rate_limit_exceeded");
                            limited.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        other => unexpected.lock().unwrap().push(format!("status {other}")),
                    }
                }
            });
        }
        s.spawn(|| {
            let c = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let status = c
                    .get(format!("{addr}/health"))
                    .send()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                health_ms.lock().unwrap().push(if status == 200 {
                    t.elapsed().as_secs_f64() * 1e3
                } else {
                    f64::INFINITY
                });
                let rss = rss_mb(server.pid());
                let mut m = max_rss.lock().unwrap();
                *m = m.max(rss);
                drop(m);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(load_for);
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed().as_secs_f64();
    let unexpected = unexpected.into_inner().unwrap();
    assert!(
        unexpected.is_empty(),
        "{} unexpected answers, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    let (sent, ok, limited) = (sent.into_inner(), ok.into_inner(), limited.into_inner());
    let served_tokens_per_s = ok_tokens.into_inner() as f64 / elapsed;
    let tokens_per_request = served_tokens_per_s * elapsed / ok.max(1) as f64;
    let offered_tokens_per_s = sent as f64 * tokens_per_request / elapsed;
    let health = health_ms.into_inner().unwrap();
    let worst_health = health.iter().cloned().fold(0.0, f64::max);
    let max_rss = max_rss.into_inner().unwrap();
    println!(
        "sent {sent}, ok {ok}, 429 {limited}; offered {offered_tokens_per_s:.0} tok/s vs served {served_tokens_per_s:.0} tok/s \
         ({:.1}x); /health worst {worst_health:.1} ms over {} probes; max RSS {max_rss:.0} MB",
        offered_tokens_per_s / served_tokens_per_s,
        health.len()
    );
    assert!(ok > 0 && limited > 0);
    assert!(
        offered_tokens_per_s >= 5.0 * served_tokens_per_s,
        "the load was not 5x capacity"
    );
    assert!(worst_health < 100.0, "/health took {worst_health:.1} ms under load");
    assert!(
        max_rss < RSS_BOUND_MB,
        "RSS {max_rss:.0} MB over the {RSS_BOUND_MB} MB bound"
    );

    // Once the load stops the queue drains and the server answers normally again.
    let t = Instant::now();
    while server.metric("openembed_queue_tokens") > 0.0 {
        assert!(t.elapsed() < Duration::from_secs(15), "the queue did not drain");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..5 {
        assert_eq!(embed(&server, body.clone()).0, 200);
    }
}

fn read_all(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[test]
fn trickling_clients_are_cut_off() {
    let _alone = alone();
    let server = Server::start(&["--header-timeout", "1", "--body-timeout", "1"]);
    let addr = server.url.trim_start_matches("http://").to_string();

    // Headers one byte every 200 ms: the connection is closed after the header timeout.
    let mut slow = TcpStream::connect(&addr).unwrap();
    let start = Instant::now();
    let request = b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    let mut cut = false;
    for b in request {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if start.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let (answer, _) = read_all(&mut slow, Duration::from_secs(3));
    assert!(
        cut || start.elapsed() < Duration::from_secs(8),
        "slow headers were not cut off"
    );
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A body trickled one byte every 200 ms: 408 in the OpenAI shape after the body timeout.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(
        b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n",
    )
    .unwrap();
    let start = Instant::now();
    let mut answer = String::new();
    for _ in 0..20 {
        if slow.write_all(b" ").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        slow.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(n) = slow.read(&mut buf) {
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        slow.set_nonblocking(false).unwrap();
        if !answer.is_empty() {
            break;
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "the trickled body was not cut off"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("invalid_request_error"), "{answer}");

    // The server is fine afterwards.
    assert_eq!(
        embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": "still here"})).0,
        200
    );
}

#[test]
fn connections_over_the_limit_get_a_clear_503() {
    let _alone = alone();
    let server = Server::start(&["--max-connections", "4", "--header-timeout", "30"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(&addr).unwrap();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
    let (answer, took) = read_all(&mut extra, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("Too many open connections") && answer.to_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(2));
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(client().get(server.at("/health")).send().unwrap().status(), 200);
}
