//! Whole pipelines from text (tokenizer, encoder, pooling, Dense heads, Normalize, prompts)
//! against the round-2 tiny fixtures in `../shared/fixtures/tiny`, each text alone and all of
//! them in one packed batch.

mod common;

use common::*;
use openembed_engine::{LoadOptions, Model, Truncation};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn tiny(name: &str) -> PathBuf {
    shared_dir().join("fixtures/tiny").join(name)
}

fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).expect("reference.json")).expect("json")
}

/// Tokenizes `texts` with `prompt`, checks the ids against `want_ids` (when given), embeds them
/// alone and packed, and compares with `want` within 1e-4.
fn check_texts(
    model: &Model,
    label: &str,
    texts: &[&str],
    prompt: Option<&str>,
    want_ids: &[Option<Vec<u32>>],
    want: &[Vec<f32>],
) {
    let toks = model.tokenize(texts, prompt, Truncation::None).unwrap();
    for ((tok, ids), text) in toks.iter().zip(want_ids).zip(texts) {
        if let Some(ids) = ids {
            assert_eq!(&tok.ids, ids, "{label}: ids of {text:?}");
        }
    }
    let all: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
    let packed = model.embed_ids(&all).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = model.embed_ids(&all[i..=i]).unwrap().remove(0);
        for (how, got) in [("alone", &alone), ("packed", &packed[i])] {
            let diff = max_abs_diff(got, &want[i]);
            assert!(diff <= 1e-4, "{label} {how} {text:?}: max abs diff {diff}");
        }
    }
}

fn texts_of(cases: &[Value]) -> Vec<&str> {
    cases.iter().map(|c| c["text"].as_str().expect("text")).collect()
}

fn column(cases: &[Value], key: &str) -> Vec<Vec<f32>> {
    cases.iter().map(|c| floats(&c[key])).collect()
}

fn id_column(cases: &[Value], key: &str) -> Vec<Option<Vec<u32>>> {
    cases.iter().map(|c| c.get(key).map(ids)).collect()
}

#[test]
fn embeddinggemma_pipeline_with_prompts() {
    let dir = tiny("gemma3_embedding");
    let r = reference(&dir);
    let cases = r["text_cases"].as_array().expect("text_cases");
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(model.info().dimension, 32);
    let texts = texts_of(cases);
    let prompts = &model.info().prompts;
    check_texts(
        &model,
        "plain",
        &texts,
        None,
        &id_column(cases, "input_ids"),
        &column(cases, "st_embedding"),
    );
    check_texts(
        &model,
        "query",
        &texts,
        prompts.get("query").map(String::as_str),
        &id_column(cases, "query_input_ids"),
        &column(cases, "st_embedding_query"),
    );
    check_texts(
        &model,
        "document",
        &texts,
        prompts.get("document").map(String::as_str),
        &vec![None; texts.len()],
        &column(cases, "st_embedding_document"),
    );
}

/// sentence-transformers 6 saves the same model with other file contents (module type names,
/// `pooling_mode`, the first module at the root); it must load to the same vectors.
#[test]
fn embeddinggemma_in_the_sentence_transformers_6_layout() {
    let src = tiny("gemma3_embedding");
    let r = reference(&src);
    let tmp = std::env::temp_dir().join(format!("oe-st6-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for entry in walk(&src) {
        let rel = entry.strip_prefix(&src).unwrap();
        let dest = tmp.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dest).unwrap();
    }
    for (name, content) in r["st6_native_json_files"].as_object().expect("files") {
        std::fs::write(tmp.join(name), content.as_str().unwrap()).unwrap();
    }
    let model = Model::load(&tmp, &LoadOptions::default()).unwrap();
    let cases = r["text_cases"].as_array().unwrap();
    check_texts(
        &model,
        "st6",
        &texts_of(cases),
        None,
        &id_column(cases, "input_ids"),
        &column(cases, "st_embedding"),
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn sentence_transformers_static_embedding_keeps_unknown_tokens() {
    let dir = tiny("static_embedding");
    let r = reference(&dir);
    let cases = r["text_cases"].as_array().unwrap();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(model.info().architecture, "static_embedding");
    assert!(model.info().normalize);
    let texts = texts_of(cases);
    check_texts(
        &model,
        "static",
        &texts,
        None,
        &id_column(cases, "input_ids"),
        &column(cases, "st_embedding"),
    );
    // The per-token vectors average to the unnormalized mean.
    let toks = model.tokenize(&texts, None, Truncation::None).unwrap();
    for (tok, case) in toks.iter().zip(cases) {
        let rows = model.hidden_states(&[tok.ids.as_slice()]).unwrap().remove(0);
        let n = tok.ids.len() as f32;
        let mean: Vec<f32> = (0..32)
            .map(|d| rows.iter().skip(d).step_by(32).sum::<f32>() / n)
            .collect();
        assert!(max_abs_diff(&mean, &floats(&case["mean_unnormalized"])) <= 1e-5);
    }
    // An empty text has no tokens: the zero vector, as EmbeddingBag gives.
    let empty = model.embed_texts(&["", "   "], Truncation::None).unwrap();
    assert!(empty.iter().all(|v| v.iter().all(|x| *x == 0.0)));
}

#[test]
fn model2vec_drops_unknown_tokens() {
    let dir = tiny("model2vec");
    let r = reference(&dir);
    let cases = r["text_cases"].as_array().unwrap();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(model.info().architecture, "model2vec");
    assert_eq!(model.info().max_input_tokens, 512);
    let texts = texts_of(cases);
    check_texts(
        &model,
        "model2vec",
        &texts,
        None,
        &vec![None; texts.len()],
        &column(cases, "embedding"),
    );
    // Only unknown words, or nothing: the zero vector.
    let zeros = model.embed_texts(&["hello world", ""], Truncation::None).unwrap();
    assert!(zeros.iter().all(|v| v.len() == 32 && v.iter().all(|x| *x == 0.0)));
    // The text is cut at max_length × median token length (512 × 4) characters first.
    let long = "t5 ".repeat(1000);
    let tok = model.tokenize(&[&long], None, Truncation::None).unwrap().remove(0);
    assert_eq!(tok.tokens(), 683, "2,048 characters of `t5 ` hold 683 words");
    // sentence-transformers reading the same folder would keep [UNK]: only the text with
    // unknown words differs.
    let st = r["st_static_embedding_of_folder"].as_array().unwrap();
    let ours = model.embed_texts(&texts, Truncation::None).unwrap();
    for ((text, got), st) in texts.iter().zip(&ours).zip(st) {
        let same = max_abs_diff(got, &floats(st)) <= 1e-4;
        assert_eq!(same, !text.contains("hello"), "{text:?}");
    }
}

#[test]
fn jina_bert_v2_encode_from_text() {
    let dir = tiny("jina_bert_v2");
    let r = reference(&dir);
    let cases = r["text_encode"].as_array().unwrap();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    let texts = texts_of(cases);
    check_texts(
        &model,
        "jina-v2",
        &texts,
        None,
        &id_column(cases, "input_ids"),
        &column(cases, "embedding"),
    );
}

/// jina-embeddings-v3: per task (and without one) the hidden states, mean and `encode` of the
/// original code, each text alone, all tasks mixed in one packed batch, and from text with the
/// task instruction in front.
#[test]
fn jina_v3_tasks_alone_mixed_and_from_text() {
    use openembed_engine::models::load_transformer;
    use openembed_engine::transformer::Scratch;
    use openembed_engine::{PackedBatch, Pooling};
    let dir = tiny("jina_v3");
    let r = reference(&dir);
    let transformer = load_transformer(&dir).unwrap();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(
        model.info().tasks,
        ["retrieval.query", "retrieval.passage", "text-matching"]
    );
    let h = transformer.hidden;
    let by_task = r["task_cases"].as_object().unwrap();
    // (task index, ids, hidden rows, mean) of every case of every task.
    let mut all = Vec::new();
    for (name, cases) in by_task {
        let task = (name != "none").then(|| model.task_index(name).unwrap());
        for case in cases.as_array().unwrap() {
            let input = ids(&case["input_ids"]);
            let want: Vec<f32> = case["last_hidden_state"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(floats)
                .collect();
            let batch = PackedBatch::new(&[input.as_slice()]).with_tasks(&[task]);
            let mut scratch = Scratch::default();
            transformer.forward(&batch, &mut scratch, 2);
            let got = &scratch.hidden[..input.len() * h];
            let diff = max_abs_diff(got, &want);
            assert!(
                diff <= 1e-4,
                "{name} {:?}: hidden states differ by {diff}",
                case["text"]
            );
            let mut mean = vec![0.0; h];
            Pooling::Mean.pool(got, h, &mut mean);
            assert!(max_abs_diff(&mean, &floats(&case["mean"])) <= 1e-4);
            all.push((task, input, want));
        }
        // From text: the task instruction in front, mean + L2 like the original `encode`.
        let cases = cases.as_array().unwrap();
        let texts = texts_of(cases);
        let instruction = task.map(|t| model.info().task_instructions[&model.info().tasks[t]].clone());
        let toks = model
            .tokenize(&texts, instruction.as_deref(), Truncation::None)
            .unwrap();
        let inputs: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
        let got = model
            .embed_ids_with_tasks(&inputs, Some(&vec![task; inputs.len()]))
            .unwrap();
        for ((case, tok), got) in cases.iter().zip(&toks).zip(&got) {
            assert_eq!(tok.ids, ids(&case["input_ids"]), "{name} ids");
            let diff = max_abs_diff(got, &floats(&case["encode"]));
            assert!(diff <= 1e-4, "{name} {:?}: encode differs by {diff}", case["text"]);
        }
    }
    // Every case of every task in one packed batch, interleaved: the same rows.
    let order: Vec<usize> = (0..all.len()).map(|i| (i * 7) % all.len()).collect();
    let seqs: Vec<&[u32]> = order.iter().map(|&i| all[i].1.as_slice()).collect();
    let tasks: Vec<Option<usize>> = order.iter().map(|&i| all[i].0).collect();
    let batch = PackedBatch::new(&seqs).with_tasks(&tasks);
    let mut scratch = Scratch::default();
    transformer.forward(&batch, &mut scratch, 2);
    for (slot, &i) in order.iter().enumerate() {
        let rr = batch.range(slot);
        let diff = max_abs_diff(&scratch.hidden[rr.start * h..rr.end * h], &all[i].2);
        assert!(diff <= 1e-4, "mixed batch moved case {i} by {diff}");
    }
    // A task the model does not have is refused by name.
    let err = model.task_index("classification").unwrap_err().to_string();
    assert!(err.contains("retrieval.query"), "{err}");
}

#[test]
fn a_batch_embedded_between_the_layers_of_another_leaves_both_unchanged() {
    let model = Model::load(&minilm_dir(), &LoadOptions::default()).unwrap();
    let long = model
        .tokenize(
            &["a long batch of bulk work", "whose layers are interrupted"],
            None,
            Truncation::End,
        )
        .unwrap();
    let short = model.tokenize(&["a short query"], None, Truncation::End).unwrap();
    let long_ids: Vec<&[u32]> = long.iter().map(|t| t.ids.as_slice()).collect();
    let short_ids: Vec<&[u32]> = short.iter().map(|t| t.ids.as_slice()).collect();
    let alone_long = model.embed_ids(&long_ids).unwrap();
    let alone_short = model.embed_ids(&short_ids).unwrap();

    let mut calls = 0;
    let mut nested = Vec::new();
    let outer = model
        .embed_ids_yielding(&long_ids, None, &mut || {
            calls += 1;
            nested.push(model.embed_ids(&short_ids).unwrap());
        })
        .unwrap();
    // all-MiniLM-L6-v2 has 6 layers: called after each but the last.
    assert_eq!(calls, 5);
    assert_eq!(outer, alone_long, "the interrupted batch's vectors changed");
    for v in nested {
        assert_eq!(
            v, alone_short,
            "the batch run between layers differs from the same batch alone"
        );
    }
}
