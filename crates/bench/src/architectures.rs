//! `openembed-bench --workloads architectures`: every architecture on its tiny reference fixture
//! (correctness), then tokens/s of models at realistic sizes built with random weights at the
//! real shapes (speed does not depend on the values): BERT-base, nomic-embed-text-v1.5,
//! gte-modernbert-base, Qwen3-Embedding-0.6B, gte-base-en-v1.5, jina-embeddings-v2-base-en,
//! jina-embeddings-v3 (with a task adapter), EmbeddingGemma-300m and a potion-base-8M-sized
//! static table.

use anyhow::{Context, Result};
use openembed_engine::models::{load_transformer, random_transformer};
use openembed_engine::transformer::{Scratch, Transformer};
use openembed_engine::{DType, LoadOptions, Model, PackedBatch, Truncation};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Writes `config.json` and a `model.safetensors` of uniform random values in ±0.5.
fn write_model(dir: &Path, config: &Value, tensors: &[(String, Vec<usize>)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(config)?)?;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_le_bytes()
                })
                .collect();
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors"))?;
    Ok(())
}

/// One realistic-size architecture: its config (the weights are random, at the shapes the
/// architecture's own loader asks for: see `models::random_transformer`).
struct Synthetic {
    label: &'static str,
    config: Value,
}

const VOCAB: usize = 1000; // The vocabulary size does not change the cost per token.

fn bert_base() -> Synthetic {
    let (h, i, n) = (768, 3072, 12);
    let config = json!({"model_type": "bert", "hidden_size": h, "num_hidden_layers": n, "num_attention_heads": 12,
        "intermediate_size": i, "vocab_size": VOCAB, "max_position_embeddings": 512, "hidden_act": "gelu"});
    Synthetic {
        label: "BERT-base 768/12 (bge-base, e5-base)",
        config,
    }
}

fn nomic() -> Synthetic {
    let (h, i, n) = (768, 3072, 12);
    let config = json!({"model_type": "nomic_bert", "n_embd": h, "n_layer": n, "n_head": 12, "n_inner": i,
        "vocab_size": VOCAB, "n_positions": 8192, "rotary_emb_base": 1000, "rotary_emb_fraction": 1.0,
        "activation_function": "swiglu", "prenorm": false});
    Synthetic {
        label: "nomic-embed-text-v1.5 768/12",
        config,
    }
}

fn modernbert() -> Synthetic {
    let (h, i, n) = (768, 1152, 22);
    let config = json!({"model_type": "modernbert", "hidden_size": h, "num_hidden_layers": n,
        "num_attention_heads": 12, "intermediate_size": i, "vocab_size": VOCAB, "max_position_embeddings": 8192,
        "global_attn_every_n_layers": 3, "local_attention": 128, "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0, "hidden_activation": "gelu", "norm_eps": 1e-5});
    Synthetic {
        label: "gte-modernbert-base 768/22",
        config,
    }
}

fn qwen3() -> Synthetic {
    let (h, i, n, heads, kv, d) = (1024, 3072, 28, 16, 8, 128);
    let config = json!({"model_type": "qwen3", "hidden_size": h, "num_hidden_layers": n, "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": d, "intermediate_size": i, "vocab_size": VOCAB,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu"});
    Synthetic {
        label: "Qwen3-Embedding-0.6B 1024/28",
        config,
    }
}

fn gte_base() -> Synthetic {
    let (h, i, n) = (768, 3072, 12);
    let config = json!({"model_type": "new", "hidden_size": h, "num_hidden_layers": n, "num_attention_heads": 12,
        "intermediate_size": i, "vocab_size": VOCAB, "max_position_embeddings": 8192, "hidden_act": "gelu",
        "rope_theta": 500000.0, "rope_scaling": {"type": "ntk", "factor": 2.0}, "type_vocab_size": 0,
        "position_embedding_type": "rope", "layer_norm_type": "layer_norm", "pack_qkv": true});
    Synthetic {
        label: "gte-base-en-v1.5 768/12",
        config,
    }
}

fn jina_v2_base() -> Synthetic {
    let (h, i, n) = (768, 3072, 12);
    let config = json!({"model_type": "bert", "architectures": ["JinaBertForMaskedLM"], "hidden_size": h,
        "num_hidden_layers": n, "num_attention_heads": 12, "intermediate_size": i, "vocab_size": VOCAB,
        "max_position_embeddings": 8192, "position_embedding_type": "alibi", "feed_forward_type": "geglu"});
    Synthetic {
        label: "jina-embeddings-v2-base-en 768/12",
        config,
    }
}

fn jina_v3() -> Synthetic {
    let (h, i, n, rank) = (1024, 4096, 24, 4);
    let config = json!({"model_type": "xlm-roberta", "architectures": ["XLMRobertaLoRA"], "hidden_size": h,
        "num_hidden_layers": n, "num_attention_heads": 16, "intermediate_size": i, "vocab_size": VOCAB,
        "max_position_embeddings": 8194, "position_embedding_type": "rotary", "rotary_emb_base": 20000.0,
        "lora_adaptations": ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"],
        "lora_rank": rank, "lora_alpha": 1, "layer_norm_eps": 1e-5});
    Synthetic {
        label: "jina-embeddings-v3 1024/24, task adapter",
        config,
    }
}

fn embeddinggemma() -> Synthetic {
    let (h, i, n, heads, kv, d) = (768, 1152, 24, 3, 1, 256);
    let layer_types: Vec<&str> = (0..n)
        .map(|l| {
            if (l + 1) % 6 == 0 {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect();
    let config = json!({"model_type": "gemma3_text", "hidden_size": h, "num_hidden_layers": n,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": d, "intermediate_size": i,
        "vocab_size": VOCAB, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 256, "sliding_window": 512,
        "layer_types": layer_types, "use_bidirectional_attention": true, "hidden_activation": "gelu_pytorch_tanh"});
    Synthetic {
        label: "EmbeddingGemma-300m 768/24",
        config,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_f64())
        .map(|v| v as f32)
        .collect()
}

fn rows(v: &Value) -> Vec<f32> {
    v.as_array().into_iter().flatten().flat_map(floats).collect()
}

/// Hidden states of raw-id cases (`cases`, or jina-v3's `task_cases`) against the reference.
fn hidden_state_diff(dir: &Path, reference: &Value) -> Result<f32> {
    let model = load_transformer(dir)?;
    let mut worst = 0.0f32;
    let mut run = |case: &Value, task: Option<usize>| {
        let ids: Vec<u32> = case["input_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect();
        let want = rows(&case["last_hidden_state"]);
        let mut scratch = Scratch::default();
        model.forward(
            &PackedBatch::new(&[ids.as_slice()]).with_tasks(&[task]),
            &mut scratch,
            2,
        );
        worst = worst.max(max_abs_diff(&scratch.hidden[..want.len()], &want));
    };
    for case in reference["cases"].as_array().into_iter().flatten() {
        run(case, None);
    }
    let tasks: Vec<&str> = reference["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .collect();
    for (name, cases) in reference["task_cases"].as_object().into_iter().flatten() {
        let task = tasks.iter().position(|t| t == name);
        for case in cases.as_array().into_iter().flatten() {
            run(case, task);
        }
    }
    Ok(worst)
}

/// Embeddings from text of whole-pipeline fixtures (static models) against the reference.
fn text_embedding_diff(dir: &Path, reference: &Value) -> Result<f32> {
    let model = Model::load(dir, &LoadOptions::default())?;
    let mut worst = 0.0f32;
    for case in reference["text_cases"].as_array().into_iter().flatten() {
        let text = case["text"].as_str().unwrap_or_default();
        let want = floats(case.get("st_embedding").unwrap_or(&case["embedding"]));
        let got = model.embed_texts(&[text], Truncation::None)?;
        worst = worst.max(max_abs_diff(got.first().map_or(&[][..], Vec::as_slice), &want));
    }
    Ok(worst)
}

/// Runs every tiny fixture and reports the largest difference from its reference; fixtures
/// that are not embedding models (rerankers) are listed as skipped.
fn tiny_fixtures(fixtures: &Path, results: &mut Vec<Value>) -> Result<()> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures)
        .with_context(|| format!("cannot read {}", fixtures.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("reference.json").exists())
        .collect();
    names.sort();
    for dir in names {
        let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let has = |key: &str| reference.get(key).is_some();
        let diff = if has("cases") || has("task_cases") {
            hidden_state_diff(&dir, &reference)
        } else if has("text_cases") {
            text_embedding_diff(&dir, &reference)
        } else {
            println!("tiny {name:<22} skipped: not an embedding model");
            continue;
        };
        let worst = match diff {
            Ok(worst) => worst,
            Err(e) => {
                println!("tiny {name:<22} skipped: {e}");
                continue;
            }
        };
        let verdict = if worst <= 1e-4 { "ok" } else { "MISMATCH" };
        println!("tiny {name:<22} max abs diff {worst:.2e} ({verdict})");
        results.push(json!({"workload": format!("tiny {name}"), "max_abs_diff": worst}));
    }
    Ok(())
}

fn tokens_per_second(model: &Transformer, task: Option<usize>, threads: usize, repeat: usize) -> f64 {
    // 8 inputs of 128 tokens: a realistic mid-size batch.
    let inputs: Vec<Vec<u32>> = (0..8)
        .map(|s| (0..128).map(|t| ((s * 131 + t * 7) % VOCAB) as u32).collect())
        .collect();
    let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    let batch = PackedBatch::new(&refs).with_tasks(&vec![task; refs.len()]);
    let mut scratch = Scratch::default();
    model.forward(&batch, &mut scratch, threads);
    let mut times: Vec<f64> = (0..repeat.max(1))
        .map(|_| {
            let t = Instant::now();
            model.forward(&batch, &mut scratch, threads);
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    batch.total_tokens() as f64 / times[times.len() / 2]
}

/// The architectures workload.
pub fn run(fixtures: &Path, threads: usize, repeat: usize, results: &mut Vec<Value>) -> Result<()> {
    tiny_fixtures(fixtures, results)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let base = std::env::temp_dir().join(format!("openembed-bench-arch-{}", std::process::id()));
    let mut bert_speed = None;
    for synthetic in [
        bert_base(),
        nomic(),
        modernbert(),
        qwen3(),
        gte_base(),
        jina_v2_base(),
        jina_v3(),
        embeddinggemma(),
    ] {
        // Models with task adapters run with one (the extra low-rank products are the cost).
        let task = synthetic.config.get("lora_adaptations").map(|_| 0);
        let model = pool.install(|| random_transformer(synthetic.config, DType::Float32))?;
        let speed = pool.install(|| tokens_per_second(&model, task, threads, repeat));
        drop(model);
        let versus = *bert_speed.get_or_insert(speed);
        println!(
            "{:<40} {speed:>6.0} tokens/s ({:.2}x BERT-base), 8 x 128 tokens, {threads} threads",
            synthetic.label,
            speed / versus
        );
        results.push(
            json!({"workload": synthetic.label, "threads": threads, "tokens_per_s": speed.round(),
                            "vs_bert_base": speed / versus}),
        );
    }
    let dir = base.join("static");
    let speed = pool.install(|| static_tokens_per_second(&dir, repeat))?;
    let versus = bert_speed.unwrap_or(speed);
    println!(
        "{:<40} {:>5.1}M params: {speed:>6.0} tokens/s ({:.0}x BERT-base), 8 x 128 tokens, {threads} threads",
        "potion-base-8M-sized static 29528x256",
        (STATIC_VOCAB * STATIC_DIM) as f64 / 1e6,
        speed / versus
    );
    results.push(
        json!({"workload": "potion-base-8M-sized static", "threads": threads, "tokens_per_s": speed.round(),
                        "vs_bert_base": speed / versus}),
    );
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

const STATIC_VOCAB: usize = 29_528;
const STATIC_DIM: usize = 256;

/// Tokens/s of a model2vec table the size of potion-base-8M (gather + mean; tokenization is
/// measured by `bench --model` on a real folder).
fn static_tokens_per_second(dir: &Path, repeat: usize) -> Result<f64> {
    use openembed_engine::static_embedding::{StaticEmbedding, StaticFormat};
    let tensors = vec![("embeddings".to_string(), vec![STATIC_VOCAB, STATIC_DIM])];
    write_model(dir, &json!({"model_type": "model2vec", "normalize": true}), &tensors)?;
    let table = StaticEmbedding::load(dir, StaticFormat::Model2Vec, Some(100))?;
    let inputs: Vec<Vec<u32>> = (0..8)
        .map(|s| {
            (0..128)
                .map(|t| ((s * 7919 + t * 104_729) % STATIC_VOCAB) as u32)
                .collect()
        })
        .collect();
    let mut out = vec![0.0f32; STATIC_DIM];
    let mut times: Vec<f64> = (0..repeat.max(1) * 50)
        .map(|_| {
            let t = Instant::now();
            for ids in &inputs {
                table.mean(ids, &mut out);
            }
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    Ok((8 * 128) as f64 / times[times.len() / 2].max(1e-9))
}
