//! `openembed bench --workloads architectures`: every architecture on its tiny reference fixture
//! (correctness), then tokens/s of models at realistic sizes built with random weights at the
//! real shapes (speed does not depend on the values): BERT-base, nomic-embed-text-v1.5,
//! gte-modernbert-base, Qwen3-Embedding-0.6B, gte-base-en-v1.5, jina-embeddings-v2-base-en,
//! jina-embeddings-v3 (with a task adapter), EmbeddingGemma-300m and a potion-base-8M-sized
//! static table.

use anyhow::{Context, Result};
use openembed_engine::models::load_transformer;
use openembed_engine::transformer::{Scratch, Transformer};
use openembed_engine::{LoadOptions, Model, PackedBatch, Truncation};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Random weights for one tensor: uniform in ±1/sqrt(fan-in), or ones for norm scales.
fn values(name: &str, shape: &[usize], seed: &mut u64) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let is_norm = name.contains("norm") || name.contains("LayerNorm") || name.contains("emb_ln");
    if is_norm || name.ends_with(".bias") {
        let v = if is_norm && name.ends_with(".weight") {
            1.0f32
        } else {
            0.0
        };
        return std::iter::repeat_n(v.to_le_bytes(), n).flatten().collect();
    }
    let scale = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
    let mut out = Vec::with_capacity(n * 4);
    for _ in 0..n {
        // xorshift64*: fast and good enough for weights nobody reads.
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        let r = (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        out.extend_from_slice(&((r * 2.0 - 1.0) * scale).to_le_bytes());
    }
    out
}

/// Writes `config.json` and a random `model.safetensors` for the named tensors.
fn write_model(dir: &Path, config: &Value, tensors: &[(String, Vec<usize>)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(config)?)?;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape)| (name.clone(), shape.clone(), values(name, shape, &mut seed)))
        .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors"))?;
    Ok(())
}

/// One realistic-size architecture: its config and tensor list.
struct Synthetic {
    label: &'static str,
    config: Value,
    tensors: Vec<(String, Vec<usize>)>,
}

const VOCAB: usize = 1000; // The vocabulary size does not change the cost per token.

fn bert_base() -> Synthetic {
    let (h, i, n) = (768, 3072, 12);
    let mut t = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![VOCAB, h]),
        ("embeddings.position_embeddings.weight".into(), vec![512, h]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..n {
        let p = |s: &str| format!("encoder.layer.{l}.{s}");
        for (name, shape) in [
            ("attention.self.query", vec![h, h]),
            ("attention.self.key", vec![h, h]),
            ("attention.self.value", vec![h, h]),
            ("attention.output.dense", vec![h, h]),
            ("intermediate.dense", vec![i, h]),
            ("output.dense", vec![h, i]),
        ] {
            t.push((p(&format!("{name}.bias")), vec![shape[0]]));
            t.push((p(&format!("{name}.weight")), shape));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            t.push((p(&format!("{norm}.weight")), vec![h]));
            t.push((p(&format!("{norm}.bias")), vec![h]));
        }
    }
    let config = json!({"model_type": "bert", "hidden_size": h, "num_hidden_layers": n, "num_attention_heads": 12,
        "intermediate_size": i, "vocab_size": VOCAB, "max_position_embeddings": 512, "hidden_act": "gelu"});
    Synthetic {
        label: "BERT-base 768/12 (bge-base, e5-base)",
        config,
        tensors: t,
    }
}

fn nomic() -> Synthetic {
    let (h, i, n) = (768, 3072, 12);
    let mut t = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![VOCAB, h]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("emb_ln.weight".into(), vec![h]),
        ("emb_ln.bias".into(), vec![h]),
    ];
    for l in 0..n {
        let p = |s: &str| format!("encoder.layers.{l}.{s}");
        t.push((p("attn.Wqkv.weight"), vec![3 * h, h]));
        t.push((p("attn.out_proj.weight"), vec![h, h]));
        t.push((p("mlp.fc11.weight"), vec![i, h]));
        t.push((p("mlp.fc12.weight"), vec![i, h]));
        t.push((p("mlp.fc2.weight"), vec![h, i]));
        for norm in ["norm1", "norm2"] {
            t.push((p(&format!("{norm}.weight")), vec![h]));
            t.push((p(&format!("{norm}.bias")), vec![h]));
        }
    }
    let config = json!({"model_type": "nomic_bert", "n_embd": h, "n_layer": n, "n_head": 12, "n_inner": i,
        "vocab_size": VOCAB, "n_positions": 8192, "rotary_emb_base": 1000, "rotary_emb_fraction": 1.0,
        "activation_function": "swiglu", "prenorm": false});
    Synthetic {
        label: "nomic-embed-text-v1.5 768/12",
        config,
        tensors: t,
    }
}

fn modernbert() -> Synthetic {
    let (h, i, n) = (768, 1152, 22);
    let mut t = vec![
        ("embeddings.tok_embeddings.weight".to_string(), vec![VOCAB, h]),
        ("embeddings.norm.weight".into(), vec![h]),
        ("final_norm.weight".into(), vec![h]),
    ];
    for l in 0..n {
        let p = |s: &str| format!("layers.{l}.{s}");
        if l > 0 {
            t.push((p("attn_norm.weight"), vec![h]));
        }
        t.push((p("attn.Wqkv.weight"), vec![3 * h, h]));
        t.push((p("attn.Wo.weight"), vec![h, h]));
        t.push((p("mlp_norm.weight"), vec![h]));
        t.push((p("mlp.Wi.weight"), vec![2 * i, h]));
        t.push((p("mlp.Wo.weight"), vec![h, i]));
    }
    let config = json!({"model_type": "modernbert", "hidden_size": h, "num_hidden_layers": n,
        "num_attention_heads": 12, "intermediate_size": i, "vocab_size": VOCAB, "max_position_embeddings": 8192,
        "global_attn_every_n_layers": 3, "local_attention": 128, "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0, "hidden_activation": "gelu", "norm_eps": 1e-5});
    Synthetic {
        label: "gte-modernbert-base 768/22",
        config,
        tensors: t,
    }
}

fn qwen3() -> Synthetic {
    let (h, i, n, heads, kv, d) = (1024, 3072, 28, 16, 8, 128);
    let mut t = vec![
        ("embed_tokens.weight".to_string(), vec![VOCAB, h]),
        ("norm.weight".into(), vec![h]),
    ];
    for l in 0..n {
        let p = |s: &str| format!("layers.{l}.{s}");
        t.push((p("input_layernorm.weight"), vec![h]));
        t.push((p("post_attention_layernorm.weight"), vec![h]));
        t.push((p("self_attn.q_proj.weight"), vec![heads * d, h]));
        t.push((p("self_attn.k_proj.weight"), vec![kv * d, h]));
        t.push((p("self_attn.v_proj.weight"), vec![kv * d, h]));
        t.push((p("self_attn.o_proj.weight"), vec![h, heads * d]));
        t.push((p("self_attn.q_norm.weight"), vec![d]));
        t.push((p("self_attn.k_norm.weight"), vec![d]));
        t.push((p("mlp.gate_proj.weight"), vec![i, h]));
        t.push((p("mlp.up_proj.weight"), vec![i, h]));
        t.push((p("mlp.down_proj.weight"), vec![h, i]));
    }
    let config = json!({"model_type": "qwen3", "hidden_size": h, "num_hidden_layers": n, "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": d, "intermediate_size": i, "vocab_size": VOCAB,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu"});
    Synthetic {
        label: "Qwen3-Embedding-0.6B 1024/28",
        config,
        tensors: t,
    }
}

fn gte_base() -> Synthetic {
    let (h, i, n) = (768, 3072, 12);
    let mut t = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![VOCAB, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..n {
        let p = |s: &str| format!("encoder.layer.{l}.{s}");
        t.push((p("attention.qkv_proj.weight"), vec![3 * h, h]));
        t.push((p("attention.qkv_proj.bias"), vec![3 * h]));
        t.push((p("attention.o_proj.weight"), vec![h, h]));
        t.push((p("attention.o_proj.bias"), vec![h]));
        t.push((p("mlp.up_gate_proj.weight"), vec![2 * i, h]));
        t.push((p("mlp.down_proj.weight"), vec![h, i]));
        t.push((p("mlp.down_proj.bias"), vec![h]));
        for norm in ["attn_ln", "mlp_ln"] {
            t.push((p(&format!("{norm}.weight")), vec![h]));
            t.push((p(&format!("{norm}.bias")), vec![h]));
        }
    }
    let config = json!({"model_type": "new", "hidden_size": h, "num_hidden_layers": n, "num_attention_heads": 12,
        "intermediate_size": i, "vocab_size": VOCAB, "max_position_embeddings": 8192, "hidden_act": "gelu",
        "rope_theta": 500000.0, "rope_scaling": {"type": "ntk", "factor": 2.0}, "type_vocab_size": 0,
        "position_embedding_type": "rope", "layer_norm_type": "layer_norm", "pack_qkv": true});
    Synthetic {
        label: "gte-base-en-v1.5 768/12",
        config,
        tensors: t,
    }
}

fn jina_v2_base() -> Synthetic {
    let (h, i, n) = (768, 3072, 12);
    let mut t = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![VOCAB, h]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..n {
        let p = |s: &str| format!("encoder.layer.{l}.{s}");
        for (name, shape) in [
            ("attention.self.query", vec![h, h]),
            ("attention.self.key", vec![h, h]),
            ("attention.self.value", vec![h, h]),
            ("attention.output.dense", vec![h, h]),
            ("mlp.wo", vec![h, i]),
        ] {
            t.push((p(&format!("{name}.bias")), vec![shape[0]]));
            t.push((p(&format!("{name}.weight")), shape));
        }
        t.push((p("mlp.gated_layers.weight"), vec![2 * i, h]));
        for norm in ["attention.output.LayerNorm", "mlp.layernorm"] {
            t.push((p(&format!("{norm}.weight")), vec![h]));
            t.push((p(&format!("{norm}.bias")), vec![h]));
        }
    }
    let config = json!({"model_type": "bert", "architectures": ["JinaBertForMaskedLM"], "hidden_size": h,
        "num_hidden_layers": n, "num_attention_heads": 12, "intermediate_size": i, "vocab_size": VOCAB,
        "max_position_embeddings": 8192, "position_embedding_type": "alibi", "feed_forward_type": "geglu"});
    Synthetic {
        label: "jina-embeddings-v2-base-en 768/12",
        config,
        tensors: t,
    }
}

fn jina_v3() -> Synthetic {
    let (h, i, n, tasks, rank) = (1024, 4096, 24, 5, 4);
    let lora = |t: &mut Vec<(String, Vec<usize>)>, prefix: &str, out: usize, inp: usize| {
        t.push((format!("{prefix}.parametrizations.weight.original"), vec![out, inp]));
        t.push((
            format!("{prefix}.parametrizations.weight.0.lora_A"),
            vec![tasks, rank, inp],
        ));
        t.push((
            format!("{prefix}.parametrizations.weight.0.lora_B"),
            vec![tasks, out, rank],
        ));
        t.push((format!("{prefix}.bias"), vec![out]));
    };
    let mut t = vec![
        (
            "embeddings.word_embeddings.parametrizations.weight.original".to_string(),
            vec![VOCAB, h],
        ),
        (
            "embeddings.word_embeddings.parametrizations.weight.0.lora_A".into(),
            vec![tasks, VOCAB, rank],
        ),
        (
            "embeddings.word_embeddings.parametrizations.weight.0.lora_B".into(),
            vec![tasks, rank, h],
        ),
        ("emb_ln.weight".into(), vec![h]),
        ("emb_ln.bias".into(), vec![h]),
    ];
    for l in 0..n {
        let p = |s: &str| format!("encoder.layers.{l}.{s}");
        lora(&mut t, &p("mixer.Wqkv"), 3 * h, h);
        lora(&mut t, &p("mixer.out_proj"), h, h);
        lora(&mut t, &p("mlp.fc1"), i, h);
        lora(&mut t, &p("mlp.fc2"), h, i);
        for norm in ["norm1", "norm2"] {
            t.push((p(&format!("{norm}.weight")), vec![h]));
            t.push((p(&format!("{norm}.bias")), vec![h]));
        }
    }
    let config = json!({"model_type": "xlm-roberta", "architectures": ["XLMRobertaLoRA"], "hidden_size": h,
        "num_hidden_layers": n, "num_attention_heads": 16, "intermediate_size": i, "vocab_size": VOCAB,
        "max_position_embeddings": 8194, "position_embedding_type": "rotary", "rotary_emb_base": 20000.0,
        "lora_adaptations": ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"],
        "lora_rank": rank, "lora_alpha": 1, "layer_norm_eps": 1e-5});
    Synthetic {
        label: "jina-embeddings-v3 1024/24, task adapter",
        config,
        tensors: t,
    }
}

fn embeddinggemma() -> Synthetic {
    let (h, i, n, heads, kv, d) = (768, 1152, 24, 3, 1, 256);
    let mut t = vec![
        ("embed_tokens.weight".to_string(), vec![VOCAB, h]),
        ("norm.weight".into(), vec![h]),
    ];
    for l in 0..n {
        let p = |s: &str| format!("layers.{l}.{s}");
        for norm in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            t.push((p(&format!("{norm}.weight")), vec![h]));
        }
        t.push((p("self_attn.q_proj.weight"), vec![heads * d, h]));
        t.push((p("self_attn.k_proj.weight"), vec![kv * d, h]));
        t.push((p("self_attn.v_proj.weight"), vec![kv * d, h]));
        t.push((p("self_attn.o_proj.weight"), vec![h, heads * d]));
        t.push((p("self_attn.q_norm.weight"), vec![d]));
        t.push((p("self_attn.k_norm.weight"), vec![d]));
        t.push((p("mlp.gate_proj.weight"), vec![i, h]));
        t.push((p("mlp.up_proj.weight"), vec![i, h]));
        t.push((p("mlp.down_proj.weight"), vec![h, i]));
    }
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
        tensors: t,
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
        let dir = base.join(synthetic.config["model_type"].as_str().unwrap_or("model"));
        write_model(&dir, &synthetic.config, &synthetic.tensors)?;
        let model = load_transformer(&dir)?;
        let params: usize = synthetic.tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        // Models with task adapters run with one (the extra low-rank products are the cost).
        let task = synthetic.config.get("lora_adaptations").map(|_| 0);
        let speed = pool.install(|| tokens_per_second(&model, task, threads, repeat));
        drop(model);
        let _ = std::fs::remove_dir_all(&dir);
        let versus = *bert_speed.get_or_insert(speed);
        println!(
            "{:<40} {:>5.0}M params (no embeddings): {speed:>6.0} tokens/s ({:.2}x BERT-base), 8 x 128 tokens, {threads} threads",
            synthetic.label,
            params as f64 / 1e6,
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
