//! Loading rules: prefixes, position_ids, shards, 16-bit dtypes, and clear errors for
//! everything missing or unsupported.

mod common;

use common::*;
use openembed_engine::models::load_transformer;
use openembed_engine::transformer::Scratch;
use openembed_engine::{Error, LoadOptions, Model, PackedBatch, Truncation};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("openembed-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny_bert() -> PathBuf {
    shared_dir().join("fixtures/tiny/bert")
}

/// Tensors of the tiny BERT as (name, dtype, shape, bytes).
fn tensors() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(tiny_bert().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: BTreeMap<String, TensorView> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(&views, &None, path).unwrap();
}

/// The tiny BERT's tensors as `BertModel` checkpoints name them (`bert.` prefix), with the
/// int64 `position_ids` buffer older ones carry.
fn prefixed_with_position_ids() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let mut t: Vec<_> = tensors()
        .into_iter()
        .map(|(n, d, s, b)| (format!("bert.{n}"), d, s, b))
        .collect();
    let ids: Vec<u8> = (0..128i64).flat_map(|i| i.to_le_bytes()).collect();
    t.push(("bert.embeddings.position_ids".into(), Dtype::I64, vec![1, 128], ids));
    t
}

fn copy_config(dir: &Path) {
    std::fs::copy(tiny_bert().join("config.json"), dir.join("config.json")).unwrap();
}

fn hidden(dir: &Path, ids: &[u32]) -> Vec<f32> {
    let model = load_transformer(dir).unwrap_or_else(|e| panic!("{e}"));
    let mut scratch = Scratch::default();
    model.forward(&PackedBatch::new(&[ids]), &mut scratch, 1);
    scratch.hidden[..ids.len() * model.hidden].to_vec()
}

const IDS: [u32; 5] = [5, 17, 999, 3, 250];

#[test]
fn prefixed_names_position_ids_and_shards_load_the_same_model() {
    let want = hidden(&tiny_bert(), &IDS);

    let dir = temp_dir("prefixed");
    copy_config(&dir);
    write(&dir.join("model.safetensors"), &prefixed_with_position_ids());
    assert!(max_abs_diff(&hidden(&dir, &IDS), &want) == 0.0);

    let dir = temp_dir("sharded");
    copy_config(&dir);
    let all = tensors();
    let (a, b) = all.split_at(all.len() / 2);
    write(&dir.join("model-00001-of-00002.safetensors"), a);
    write(&dir.join("model-00002-of-00002.safetensors"), b);
    let mut map = serde_json::Map::new();
    for (n, ..) in a {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (n, ..) in b {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert!(max_abs_diff(&hidden(&dir, &IDS), &want) == 0.0);
}

#[test]
fn f16_and_bf16_weights_compute_in_f32() {
    let want = hidden(&tiny_bert(), &IDS);
    for (label, dtype) in [("f16", Dtype::F16), ("bf16", Dtype::BF16)] {
        let dir = temp_dir(label);
        copy_config(&dir);
        let t: Vec<_> = tensors()
            .into_iter()
            .map(|(n, _, s, b)| {
                let halves: Vec<u8> = b
                    .chunks_exact(4)
                    .flat_map(|c| {
                        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        if dtype == Dtype::F16 {
                            half::f16::from_f32(v).to_bits()
                        } else {
                            half::bf16::from_f32(v).to_bits()
                        }
                        .to_le_bytes()
                    })
                    .collect();
                (n, dtype, s, halves)
            })
            .collect();
        write(&dir.join("model.safetensors"), &t);
        let got = hidden(&dir, &IDS);
        let tolerance = if dtype == Dtype::F16 { 0.02 } else { 0.15 };
        assert!(
            max_abs_diff(&got, &want) < tolerance,
            "{label}: {}",
            max_abs_diff(&got, &want)
        );
    }
}

#[test]
fn missing_and_unsupported_parts_fail_with_named_errors() {
    // No folder.
    let err = Model::load(Path::new("/nonexistent/model"), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");

    // No config.json.
    let dir = temp_dir("noconfig");
    let err = load_transformer(&dir).err().unwrap();
    assert!(
        matches!(err, Error::MissingFile { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );

    // Unknown architecture.
    std::fs::write(dir.join("config.json"), r#"{"model_type": "mystery"}"#).unwrap();
    let err = load_transformer(&dir).err().unwrap();
    assert!(
        err.to_string().contains("mystery") && err.to_string().contains("bert"),
        "{err}"
    );

    // Broken JSON.
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(load_transformer(&dir)
        .err()
        .unwrap()
        .to_string()
        .contains("config.json"));

    // No weights.
    copy_config(&dir);
    let err = load_transformer(&dir).err().unwrap();
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // A missing tensor is named.
    let t: Vec<_> = tensors()
        .into_iter()
        .filter(|t| !t.0.contains("layer.1.output.dense.weight"))
        .collect();
    write(&dir.join("model.safetensors"), &t);
    let err = load_transformer(&dir).err().unwrap();
    assert!(err.to_string().contains("encoder.layer.1.output.dense.weight"), "{err}");

    // A wrong shape is named.
    let t: Vec<_> = tensors()
        .into_iter()
        .map(|(n, d, s, b)| {
            if n == "embeddings.LayerNorm.weight" {
                (n, d, vec![2, 16], b)
            } else {
                (n, d, s, b)
            }
        })
        .collect();
    write(&dir.join("model.safetensors"), &t);
    let err = load_transformer(&dir).err().unwrap();
    assert!(
        err.to_string().contains("embeddings.LayerNorm.weight") && err.to_string().contains("[32]"),
        "{err}"
    );

    // An unsupported dtype is named.
    let t: Vec<_> = tensors()
        .into_iter()
        .map(|(n, d, s, b)| {
            if n == "embeddings.LayerNorm.bias" {
                (n, Dtype::I32, s, b)
            } else {
                (n, d, s, b)
            }
        })
        .collect();
    write(&dir.join("model.safetensors"), &t);
    let err = load_transformer(&dir).err().unwrap();
    assert!(
        err.to_string().contains("embeddings.LayerNorm.bias") && err.to_string().contains("F32"),
        "{err}"
    );

    // Not a safetensors file.
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    let err = load_transformer(&dir).err().unwrap();
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // A model folder without tokenizer.json.
    write(&dir.join("model.safetensors"), &tensors());
    let err = Model::load(&dir, &LoadOptions::default()).err().unwrap();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = Model::load(
        &minilm_dir(),
        &LoadOptions {
            threads: Some(1),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let vocab = model.info().vocab_size;
    assert!(matches!(
        model.check_token_ids(0, &[101, vocab as i64]),
        Err(Error::TokenIdOutOfRange { .. })
    ));
    assert!(matches!(
        model.check_token_ids(0, &[-1]),
        Err(Error::TokenIdOutOfRange { .. })
    ));
    assert!(matches!(
        model.check_token_ids(0, &[i64::MAX]),
        Err(Error::TokenIdOutOfRange { .. })
    ));
    assert_eq!(
        model.check_token_ids(0, &[101, 7592, 102]).unwrap(),
        vec![101, 7592, 102]
    );
    let too_big = [101u32, vocab as u32 + 5, 102];
    assert!(matches!(
        model.embed_ids(&[&too_big]),
        Err(Error::TokenIdOutOfRange { .. })
    ));
    assert!(matches!(model.embed_ids(&[&[]]), Err(Error::EmptyInput { index: 0 })));
    let long = vec![1000u32; model.info().max_input_tokens + 1];
    assert!(matches!(
        model.embed_ids(&[&[101, 102], &long]),
        Err(Error::InputTooLong { index: 1, .. })
    ));
    // Text that is empty, whitespace, control characters or NUL still embeds (special tokens only).
    let v = model
        .embed_texts(
            &["", "   ", "\u{0}\u{1}\u{7f}", "\u{fffd}"],
            openembed_engine::Truncation::None,
        )
        .unwrap();
    assert!(v.iter().all(|v| v.iter().all(|x| x.is_finite())));
    assert!(model.embed_ids(&[]).unwrap().is_empty());
}

/// A copy of the default model (files linked, `replace` ones written) in a fresh folder.
fn minilm_copy(name: &str, replace: &[(&str, String)]) -> PathBuf {
    let dir = temp_dir(name);
    let src = minilm_dir();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        if replace.iter().any(|(f, _)| *f == file) {
            continue;
        }
        std::os::unix::fs::symlink(src.join(file).canonicalize().unwrap(), dir.join(file)).unwrap();
    }
    for (file, text) in replace {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

fn tokenizer_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(minilm_dir().join("tokenizer.json")).unwrap()).unwrap()
}

/// A tokenizer whose ordinary tokens reach past the embedding table does not belong to the
/// weights: refused at load. A special added token past it (Gemma's `<image_soft_token>`) only
/// appears when a text spells it out: the model loads and that input alone is refused.
#[test]
fn a_tokenizer_that_can_emit_ids_past_the_embedding_table_is_refused() {
    for special in [false, true] {
        let mut tok = tokenizer_json();
        tok["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({
            "id": 30522, "content": "[EXTRA]", "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special
        }));
        let dir = minilm_copy(
            &format!("extra-token-{special}"),
            &[("tokenizer.json", tok.to_string())],
        );
        if !special {
            let err = Model::load(&dir, &LoadOptions::default()).err().expect("refused");
            let msg = err.to_string();
            assert!(msg.contains("30522") && msg.contains("tokenizer"), "{msg}");
            continue;
        }
        let model = Model::load(&dir, &LoadOptions::default()).unwrap();
        assert_eq!(model.embed_texts(&["plain text"], Truncation::None).unwrap().len(), 1);
        let err = model.embed_texts(&["a [EXTRA] token"], Truncation::None).unwrap_err();
        assert!(matches!(err, Error::TokenIdOutOfRange { id: 30522, .. }), "{err}");
        assert!(err.is_input_error());
    }
}

#[test]
fn do_lower_case_lowercases_before_a_cased_tokenizer_as_sentence_transformers_does() {
    // A cased copy of the tokenizer: without lowercasing, capitals miss the uncased vocabulary.
    let mut tok = tokenizer_json();
    tok["normalizer"]["lowercase"] = serde_json::json!(false);
    let sbert = |lower: bool| format!(r#"{{"max_seq_length": 256, "do_lower_case": {lower}}}"#);
    let text = "Hello World, SCHOOL Straße";
    let uncased = Model::load(&minilm_dir(), &LoadOptions::default()).unwrap();
    let want = uncased
        .tokenize(&[text], None, openembed_engine::Truncation::None)
        .unwrap();
    let ids = |lower: bool, name: &str| {
        let dir = minilm_copy(
            name,
            &[
                ("tokenizer.json", tok.to_string()),
                ("sentence_bert_config.json", sbert(lower)),
            ],
        );
        let model = Model::load(&dir, &LoadOptions::default()).unwrap();
        model
            .tokenize(&[text], None, openembed_engine::Truncation::None)
            .unwrap()
            .remove(0)
            .ids
    };
    assert_eq!(
        ids(true, "lower-on"),
        want[0].ids,
        "do_lower_case: same ids as lowercase text"
    );
    assert_ne!(ids(false, "lower-off"), want[0].ids, "a cased tokenizer keeps capitals");
}

#[test]
fn a_pooling_module_without_its_config_is_refused() {
    let dir = minilm_copy("no-pooling-config", &[]);
    std::fs::remove_file(dir.join("1_Pooling/config.json")).unwrap();
    let err = Model::load(&dir, &LoadOptions::default()).err().expect("refused");
    assert!(err.to_string().contains("1_Pooling/config.json"), "{err}");
}

#[test]
fn nomic_flags_the_engine_does_not_compute_are_refused() {
    let src = shared_dir().join("fixtures/tiny/nomic_bert");
    for (flag, value) in [
        ("rotary_scaling_factor", serde_json::json!(2.0)),
        ("use_rms_norm", serde_json::json!(true)),
        ("parallel_block", serde_json::json!(true)),
        ("causal", serde_json::json!(true)),
    ] {
        let dir = temp_dir(&format!("nomic-{flag}"));
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
        config[flag] = value;
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::os::unix::fs::symlink(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        let err = load_transformer(&dir).err().expect("refused");
        assert!(err.to_string().contains(flag), "{err}");
        // The same config with the flag at its computed value loads.
        config[flag] = serde_json::Value::Null;
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        load_transformer(&dir).unwrap();
    }
}

#[test]
fn models_share_one_compute_pool() {
    let pool = openembed_engine::compute_pool(Some(2)).unwrap();
    let options = LoadOptions {
        pool: Some(pool),
        ..LoadOptions::default()
    };
    let a = Model::load(&minilm_dir(), &options).unwrap();
    let b = Model::load(&minilm_dir(), &options).unwrap();
    assert_eq!((a.threads(), b.threads()), (2, 2));
    let va = a
        .embed_texts(&["shared pool"], openembed_engine::Truncation::None)
        .unwrap();
    let vb = b
        .embed_texts(&["shared pool"], openembed_engine::Truncation::None)
        .unwrap();
    assert_eq!(va, vb);
}

/// A `torch.save` archive of `tensors` as PyTorch writes a state dict (protocol 2 pickle, one
/// uncompressed storage entry per tensor): float32 and int64 tensors, row-major, except that
/// `transposed` names one 2-D tensor saved as a transposed view of its storage.
fn write_torch(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)], transposed: Option<&str>) {
    let text = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: usize| {
        p.push(b'J');
        p.extend((v as i32).to_le_bytes());
    };
    let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    let mut storages = Vec::new();
    for (i, (name, dtype, shape, bytes)) in tensors.iter().enumerate() {
        let (kind, size) = match dtype {
            Dtype::F32 => ("FloatStorage", 4),
            Dtype::I64 => ("LongStorage", 8),
            other => panic!("write_torch: {other:?}"),
        };
        let mut shape = shape.clone();
        let mut stride: Vec<usize> = (0..shape.len()).map(|d| shape[d + 1..].iter().product()).collect();
        let mut data = bytes.clone();
        if transposed == Some(name.as_str()) {
            // The storage holds the transpose; the tensor is its (1, 0) view.
            let (r, c) = (shape[0], shape[1]);
            data = (0..c * r)
                .flat_map(|j| {
                    let (a, b) = (j / r, j % r);
                    bytes[(b * c + a) * size..(b * c + a + 1) * size].to_vec()
                })
                .collect();
            stride = vec![1, r];
            shape = vec![r, c];
        }
        text(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        text(&mut p, "storage");
        p.extend(format!("ctorch\n{kind}\n").as_bytes());
        text(&mut p, &i.to_string());
        text(&mut p, "cpu");
        int(&mut p, data.len() / size);
        p.extend(b"tQ");
        int(&mut p, 0);
        p.push(b'(');
        shape.iter().for_each(|&d| int(&mut p, d));
        p.extend(b"t(");
        stride.iter().for_each(|&s| int(&mut p, s));
        p.extend(b"t\x89ccollections\nOrderedDict\n)RtR");
        storages.push(data);
    }
    p.extend(b"u.");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    std::io::Write::write_all(&mut zip, &p).unwrap();
    for (i, data) in storages.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), stored).unwrap();
        std::io::Write::write_all(&mut zip, data).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn pytorch_checkpoints_load_the_same_model_in_place() {
    let want = hidden(&tiny_bert(), &IDS);
    let t = prefixed_with_position_ids();
    let dir = temp_dir("torch");
    copy_config(&dir);
    write_torch(&dir.join("pytorch_model.bin"), &t, None);
    assert!(max_abs_diff(&hidden(&dir, &IDS), &want) == 0.0);

    // A tensor that is a transposed view of its storage cannot be read in place: refused,
    // naming the file and the tensor.
    let dense = t
        .iter()
        .find(|(n, _, s, _)| s.len() == 2 && n.contains("attention.self.query.weight"));
    let name = dense.map(|d| d.0.clone()).expect("a 2-D weight");
    write_torch(&dir.join("pytorch_model.bin"), &t, Some(&name));
    let err = load_transformer(&dir).err().expect("refused").to_string();
    assert!(
        err.contains("pytorch_model.bin") && err.contains(&name) && err.contains("row-major"),
        "{err}"
    );

    // Safetensors win when both are there.
    write(&dir.join("model.safetensors"), &tensors());
    assert!(max_abs_diff(&hidden(&dir, &IDS), &want) == 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// BAAI/bge-m3 ships its encoder only as `pytorch_model.bin`: the bge-m3 fixture with its
/// encoder converted to that form gives the same dense, sparse and multi-vector outputs.
#[test]
fn bge_m3_with_its_encoder_in_pytorch_model_bin_gives_the_same_outputs() {
    use openembed_engine::{Output, Side};
    let fixture = shared_dir().join("fixtures/tiny/bge_m3");
    let dir = temp_dir("bge_m3_torch");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if name == "model.safetensors" {
            continue;
        }
        if path.is_dir() {
            std::fs::create_dir_all(dir.join(&name)).unwrap();
            for inner in std::fs::read_dir(&path).unwrap() {
                let inner = inner.unwrap().path();
                std::fs::copy(&inner, dir.join(&name).join(inner.file_name().unwrap())).unwrap();
            }
        } else {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    let bytes = std::fs::read(fixture.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    write_torch(&dir.join("pytorch_model.bin"), &tensors, None);
    let (a, b) = (
        Model::load(&fixture, &LoadOptions::default()).unwrap(),
        Model::load(&dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}")),
    );
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap()).unwrap();
    let texts: Vec<&str> = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["text"].as_str())
        .collect();
    let tokens = a.tokenize(&texts, None, Truncation::End).unwrap();
    let refs: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
    for output in [
        Output::Pooled,
        Output::Sparse,
        Output::MultiVector(Side::Document),
        Output::Retrieval(Side::Query),
    ] {
        let outputs = vec![output; refs.len()];
        let want = a.run_yielding(&refs, None, Some(&outputs), &mut || {}).unwrap();
        let got = b.run_yielding(&refs, None, Some(&outputs), &mut || {}).unwrap();
        assert!(want.iter().any(|row| !row.is_empty()), "{output:?}: outputs");
        assert_eq!(got, want, "{output:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
