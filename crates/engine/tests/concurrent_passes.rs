//! Forward passes started at the same time from several threads, on one model and on two
//! models sharing one compute pool (as the server and the Python package do): every pass
//! finishes, with the same vectors as the same batch alone. A pass whose pool thread joined
//! another pass as a helper while owning its own once left both spinning forever; a watchdog
//! turns such a hang into a failure instead of a stuck test run.

mod common;

use common::*;
use openembed_engine::{compute_pool, LoadOptions, Model, Truncation};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// Callers at once, and passes each.
const CALLERS: usize = 4;
const PASSES: usize = 40;

/// Runs `PASSES` batches from each of `CALLERS` threads, caller `i` on `models[i % len]`, and
/// checks every result against the batch alone; fails when they have not all finished within
/// a minute (a deadlock).
fn run_concurrently(models: Vec<Arc<Model>>) {
    let texts: Vec<String> = (0..12)
        .map(|i| format!("concurrent pass {i}: {}", "several words of text ".repeat(1 + i % 5)))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids: Vec<Vec<u32>> = models[0]
        .tokenize(&refs, None, Truncation::End)
        .unwrap()
        .into_iter()
        .map(|t| t.ids)
        .collect();
    let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let want: Vec<Vec<Vec<f32>>> = models.iter().map(|m| m.embed_ids(&batch).unwrap()).collect();
    let (done, finished) = mpsc::channel();
    // Every pass of every caller starts at the same moment: two passes then often start on
    // two idle pool threads at once.
    let start = Arc::new(Barrier::new(CALLERS));
    for caller in 0..CALLERS {
        let model = models[caller % models.len()].clone();
        let want = want[caller % models.len()].clone();
        let ids = ids.clone();
        let done = done.clone();
        let start = start.clone();
        std::thread::spawn(move || {
            let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
            for pass in 0..PASSES {
                start.wait();
                // Varying sizes, so passes start and end out of step.
                let n = 1 + (pass + caller) % batch.len();
                let got = model.embed_ids(&batch[..n]).unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        max_abs_diff(g, w) <= 1e-5,
                        "caller {caller} pass {pass}: vectors changed"
                    );
                }
            }
            done.send(caller).unwrap();
        });
    }
    drop(done);
    for _ in 0..CALLERS {
        match finished.recv_timeout(Duration::from_secs(60)) {
            Ok(_) => {}
            // A caller that failed leaves the others waiting at the barrier: its panic is above.
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("callers still running after 60 s: a deadlock, or a caller failed (see any panic above)")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a caller failed (see its panic above)"),
        }
    }
}

#[test]
fn concurrent_passes_on_one_model_all_finish() {
    let options = LoadOptions {
        threads: Some(2),
        ..LoadOptions::default()
    };
    let model = Arc::new(Model::load(&minilm_dir(), &options).unwrap());
    run_concurrently(vec![model]);
}

#[test]
fn concurrent_passes_on_two_models_sharing_a_pool_all_finish() {
    let options = LoadOptions {
        pool: Some(compute_pool(Some(2)).unwrap()),
        ..LoadOptions::default()
    };
    let first = Arc::new(Model::load(&minilm_dir(), &options).unwrap());
    let second = Arc::new(Model::load(&minilm_dir(), &options).unwrap());
    run_concurrently(vec![first, second]);
}
