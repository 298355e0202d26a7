//! Weights are mapped, not copied twice: resident memory after loading all-MiniLM-L6-v2 (and
//! embedding a batch) stays within the safetensors file size + 100 MB, and none of the file's
//! pages stay resident once the model is built.

mod common;

use openembed_engine::{LoadOptions, Model, Truncation};

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident bytes of this process's mappings of `file` (`/proc/self/smaps`; 0 when unreadable).
fn mapped_resident_bytes(file: &std::path::Path) -> u64 {
    let path = std::fs::canonicalize(file).unwrap();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut inside = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|p| std::path::Path::new(p) == path);
        } else if inside && first == "Rss:" {
            kb += line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kb * 1024
}

#[test]
fn resident_memory_after_load_is_bounded_by_file_size_plus_100_mb() {
    let dir = common::minilm_dir();
    let Some(before) = resident_bytes() else {
        openembed_engine::kernels::report_skipped("/proc/self/status not available on this OS");
        return;
    };
    let file = std::fs::metadata(dir.join("model.safetensors")).unwrap().len();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    // Everything was copied out of the file or is read on demand (embedding rows): none of its
    // pages stay resident after loading (reading weights pulls in neighbouring pages too).
    let file_pages = mapped_resident_bytes(&dir.join("model.safetensors"));
    eprintln!("file pages resident after load: {} kB", file_pages >> 10);
    assert_eq!(
        file_pages,
        0,
        "{} kB of the weights file resident after load",
        file_pages >> 10
    );
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
