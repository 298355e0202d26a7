//! `openembed bench --workloads architectures`: every architecture on its tiny reference fixture
//! (correctness), then tokens/s of models at realistic sizes built with random weights at the
//! real shapes (speed does not depend on the values): BERT-base, nomic-embed-text-v1.5,
//! gte-modernbert-base and Qwen3-Embedding-0.6B.

use anyhow::{Context, Result};
use openembed_engine::models::load_transformer;
use openembed_engine::transformer::{Scratch, Transformer};
use openembed_engine::PackedBatch;
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

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs every tiny fixture and reports the largest difference from its reference.
fn tiny_fixtures(fixtures: &Path, results: &mut Vec<Value>) -> Result<()> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures)
        .with_context(|| format!("cannot read {}", fixtures.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("reference.json").exists())
        .collect();
    names.sort();
    for dir in names {
        let model = load_transformer(&dir)?;
        let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
        let mut worst = 0.0f32;
        for case in reference["cases"].as_array().into_iter().flatten() {
            let ids: Vec<u32> = case["input_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect();
            let want: Vec<f32> = case["last_hidden_state"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|row| {
                    row.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_f64())
                        .map(|v| v as f32)
                })
                .collect();
            let mut scratch = Scratch::default();
            model.forward(&PackedBatch::new(&[ids.as_slice()]), &mut scratch, 2);
            worst = worst.max(max_abs_diff(&scratch.hidden[..want.len()], &want));
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let verdict = if worst <= 1e-4 { "ok" } else { "MISMATCH" };
        println!("tiny {name:<12} max abs diff {worst:.2e} ({verdict})");
        results.push(json!({"workload": format!("tiny {name}"), "max_abs_diff": worst}));
    }
    Ok(())
}

fn tokens_per_second(model: &Transformer, threads: usize, repeat: usize) -> f64 {
    // 8 inputs of 128 tokens: a realistic mid-size batch.
    let inputs: Vec<Vec<u32>> = (0..8)
        .map(|s| (0..128).map(|t| ((s * 131 + t * 7) % VOCAB) as u32).collect())
        .collect();
    let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    let batch = PackedBatch::new(&refs);
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
    for synthetic in [bert_base(), nomic(), modernbert(), qwen3()] {
        let dir = base.join(synthetic.config["model_type"].as_str().unwrap_or("model"));
        write_model(&dir, &synthetic.config, &synthetic.tensors)?;
        let model = load_transformer(&dir)?;
        let params: usize = synthetic.tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let speed = pool.install(|| tokens_per_second(&model, threads, repeat));
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
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
