//! Memory bounded by design: worst-case request bodies, many at once, against the real binary
//! on 127.0.0.1 (bounded in count and time).

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Worst-case bodies just under the body limit, 16 at once: 2,048 arrays of small token ids
/// (one i64 per two body bytes), then 2,048 long texts. Every one is answered 400, 413 or 429,
/// the server stays up, peak RSS stays under 600 MB, and RSS comes back within 100 MB of its
/// pre-load level within 30 s.
#[test]
fn worst_case_bodies_keep_memory_bounded_and_given_back() {
    let server = Server::start(&[]);
    let pid = server.pid();
    let limit = 16 * 1024 * 1024; // --max-body-bytes default
    assert_eq!(
        embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": "warm up"})).0,
        200
    );
    std::thread::sleep(Duration::from_millis(500));
    let base = rss_mb(pid);
    // Each input's share of the body, less the JSON around it.
    let per_input = (limit - 4096) / 2048 - 8;
    let ids: String = {
        let one: String = "1,".repeat(per_input / 2 - 1);
        let array = format!("[{}1]", one);
        let all: Vec<&str> = (0..2048).map(|_| array.as_str()).collect();
        format!(r#"{{"model":"all-MiniLM-L6-v2","input":[{}]}}"#, all.join(","))
    };
    let texts: String = {
        let text = "many words of text ".repeat(per_input / 19 - 1);
        let all: Vec<String> = (0..2048).map(|i| format!("\"{i} {text}\"")).collect();
        format!(r#"{{"model":"all-MiniLM-L6-v2","input":[{}]}}"#, all.join(","))
    };
    let peak = Mutex::new(base);
    for body in [ids, texts] {
        assert!(body.len() < limit && body.len() > limit - 256 * 1024, "{}", body.len());
        let done = AtomicBool::new(false);
        let statuses: Vec<u16> = std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    let rss = rss_mb(pid);
                    let mut p = peak.lock().unwrap();
                    *p = p.max(rss);
                    drop(p);
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let (body, url) = (&body, &server.url);
                    s.spawn(move || {
                        client()
                            .post(format!("{url}/v1/embeddings"))
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0)
                    })
                })
                .collect();
            let statuses = handles.into_iter().map(|h| h.join().unwrap()).collect();
            done.store(true, Ordering::Relaxed);
            statuses
        });
        assert!(
            statuses.iter().all(|s| [400, 413, 429].contains(s)),
            "unexpected answers: {statuses:?}"
        );
        println!("statuses {statuses:?}");
    }
    let peak = peak.into_inner().unwrap();
    assert_eq!(client().get(server.at("/health")).send().unwrap().status(), 200);
    let started = Instant::now();
    let mut now = rss_mb(pid);
    while now > base + 100.0 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        now = rss_mb(pid);
    }
    println!(
        "RSS before {base:.0} MB, peak {peak:.0} MB, after {now:.0} MB ({:.1} s later)",
        started.elapsed().as_secs_f64()
    );
    assert!(peak <= 600.0, "peak RSS {peak:.0} MB");
    assert!(
        now <= base + 100.0,
        "RSS {now:.0} MB did not come back near {base:.0} MB"
    );
}
