//! Real clients, not hand-made JSON: the official `openai` Python package and the official
//! `openai` npm package, Ollama's and TEI's clients (huggingface_hub, llama-index, Haystack) and
//! Cohere's SDK call a running server; their vectors must equal the reference. And
//! schemathesis fuzzes the server against its own `/openapi.json`.
//! `scripts/setup-clients.sh` (run by `make test`) installs both into target/clients.

mod common;

use common::{root, Server};
use std::process::Command;

fn run_client(program: &str, args: &[String], env: &[(&str, String)]) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (run scripts/setup-clients.sh or make test)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{program} failed:\n{text}");
}

fn reference() -> String {
    root()
        .join("../shared/fixtures/reference/all-MiniLM-L6-v2.jsonl")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn official_python_client() {
    let server = Server::start(&["--alias", "text-embedding-3-small=all-MiniLM-L6-v2"]);
    let python = root().join("target/clients/venv/bin/python");
    let script = root().join("tests/clients/openai_python.py");
    run_client(
        python.to_str().unwrap(),
        &[script.to_string_lossy().into_owned(), server.at("/v1"), reference()],
        &[],
    );
}

#[test]
fn ollama_client_and_langchain_ollama() {
    let server = Server::start(&["--alias", "all-minilm:latest=all-MiniLM-L6-v2"]);
    let python = root().join("target/clients/venv/bin/python");
    let script = root().join("tests/clients/ollama_client.py");
    run_client(
        python.to_str().unwrap(),
        &[script.to_string_lossy().into_owned(), server.url.clone(), reference()],
        &[],
    );
}

#[test]
fn tei_clients_huggingface_hub_llama_index_and_haystack() {
    let fixtures = root().join("../shared/fixtures/tiny");
    let embedder = Server::start(&[]);
    let classifier = format!("{}=sentiment", fixtures.join("classifier_bert").display());
    let classifier = Server::start(&["--model", &classifier]);
    let python = root().join("target/clients/venv/bin/python");
    let script = root().join("tests/clients/tei_clients.py");
    run_client(
        python.to_str().unwrap(),
        &[
            script.to_string_lossy().into_owned(),
            embedder.url.clone(),
            classifier.url.clone(),
            reference(),
            fixtures
                .join("classifier_bert/reference.json")
                .to_string_lossy()
                .into_owned(),
        ],
        // Loopback only: no telemetry (the clients are given URLs, so no hub lookups).
        &[
            ("HAYSTACK_TELEMETRY_ENABLED", "False".into()),
            ("HF_HUB_DISABLE_TELEMETRY", "1".into()),
        ],
    );
}

#[test]
fn official_node_client() {
    let server = Server::start(&["--alias", "text-embedding-3-small=all-MiniLM-L6-v2"]);
    let script = root().join("tests/clients/openai_node.cjs");
    let modules = root().join("target/clients/node/node_modules");
    run_client(
        "node",
        &[script.to_string_lossy().into_owned(), server.at("/v1"), reference()],
        &[("NODE_PATH", modules.to_string_lossy().into_owned())],
    );
}

#[test]
fn schemathesis_finds_no_5xx_and_no_schema_violation() {
    // The default model and a reranker, so the rerank routes are in the document and fuzzed too.
    let reranker = format!(
        "{}=rerank-bert",
        root().join("../shared/fixtures/tiny/rerank_bert").display()
    );
    let default = format!("{}=all-MiniLM-L6-v2", common::model_dir().display());
    let server = Server::start(&["--auto-truncate", "--model", &default, "--model", &reranker]);
    let st = root().join("target/clients/venv/bin/schemathesis");
    run_client(
        st.to_str().unwrap(),
        &[
            "run".into(),
            server.at("/openapi.json"),
            "--checks".into(),
            "all".into(),
            "--max-examples".into(),
            "60".into(),
            "--workers".into(),
            "2".into(),
        ],
        &[("NO_COLOR", "1".into())],
    );
}

fn langchain(mode: &str, flags: &[&str]) {
    let mut args = vec!["--alias", "text-embedding-3-small=all-MiniLM-L6-v2"];
    args.extend_from_slice(flags);
    let server = Server::start(&args);
    let python = root().join("target/clients/venv/bin/python");
    let script = root().join("tests/clients/langchain_client.py");
    run_client(
        python.to_str().unwrap(),
        &[
            script.to_string_lossy().into_owned(),
            server.at("/v1"),
            reference(),
            mode.into(),
        ],
        &[],
    );
}

#[test]
fn langchain_default_settings_send_tiktoken_ids_and_get_the_right_vectors() {
    langchain("truncate", &["--auto-truncate"]);
}

#[test]
fn langchain_long_texts_get_openais_400_without_auto_truncate() {
    langchain("strict", &[]);
}

#[test]
fn cohere_sdk_embeds_with_every_embedding_type() {
    let server = Server::start(&[]);
    let python = root().join("target/clients/venv/bin/python");
    let script = root().join("tests/clients/cohere_embed.py");
    run_client(
        python.to_str().unwrap(),
        &[
            script.to_string_lossy().into_owned(),
            server.url.clone(),
            root()
                .join("../shared/bench/corpus/mixed.jsonl")
                .to_string_lossy()
                .into_owned(),
        ],
        &[],
    );
}

#[test]
fn cohere_sdk_reranks_like_the_reference() {
    let fixture = root().join("../shared/fixtures/tiny/rerank_bert");
    let spec = format!("{}=rerank-bert", fixture.display());
    let server = Server::start(&["--model", &spec]);
    let python = root().join("target/clients/venv/bin/python");
    let script = root().join("tests/clients/cohere_rerank.py");
    run_client(
        python.to_str().unwrap(),
        &[
            script.to_string_lossy().into_owned(),
            server.url.clone(),
            fixture.join("reference.json").to_string_lossy().into_owned(),
            "rerank-bert".into(),
        ],
        &[],
    );
}
