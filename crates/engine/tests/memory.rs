//! Weights are mapped, not copied twice: resident memory after loading all-MiniLM-L6-v2 (and
//! embedding a batch) stays within the safetensors file size + 100 MB.

mod common;

use openembed_engine::{LoadOptions, Model, Truncation};

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn resident_memory_after_load_is_bounded_by_file_size_plus_100_mb() {
    let dir = common::minilm_dir();
    let Some(before) = resident_bytes() else {
        common::report_skipped("/proc/self/status not available on this OS");
        return;
    };
    let file = std::fs::metadata(dir.join("model.safetensors")).unwrap().len();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    let texts = ["a first sentence", "and a second, somewhat longer, sentence to embed"];
    model.embed_texts(&texts, Truncation::None).unwrap();
    let after = resident_bytes().unwrap();
    let limit = before + file + 100 * 1024 * 1024;
    eprintln!(
        "resident: {} MB before, {} MB after load; file {} MB",
        before >> 20,
        after >> 20,
        file >> 20
    );
    assert!(
        after <= limit,
        "resident {} MB > file {} MB + 100 MB (+{} MB baseline)",
        after >> 20,
        file >> 20,
        before >> 20
    );
}
