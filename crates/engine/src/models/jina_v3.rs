//! jina-embeddings-v3 (`XLMRobertaLoRA`): XLM-RoBERTa with rotary positions instead of a
//! position table, a fused `Wqkv`, post-norm blocks, and LoRA task adapters on every dense layer
//! and on the word and token-type tables. The adapters are applied per sequence inside a packed
//! batch (tasks may be mixed), never merged: one copy of the weights serves every task.

use crate::attention::Mask;
use crate::config::{ConfigJson, Dims};
use crate::models::{has_class, model_type_in, Architecture, Tasks};
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::rotary::Rotary;
use crate::transformer::{
    EmbeddingLora, Embeddings, Layer, Linear, LoraAdapters, Mlp, Norm, NormPlacement, SelfAttention, Transformer,
};
use crate::weights::{Tensor, Weights};

/// The architecture this file declares: `xlm-roberta` folders of class `XLMRobertaLoRA`
/// (registered before RoBERTa).
pub const ARCHITECTURE: Architecture = Architecture::new("jina_v3", &["xlm-roberta"], load).claiming(|cfg| model_type_in(cfg, &["xlm-roberta"]) && has_class(cfg, |c| c == "XLMRobertaLoRA")).with_tasks(tasks).with_weight_prefixes(&["roberta.", "xlm_roberta.", "model."]);

/// The weight of a parametrized (LoRA) module, or its plain weight.
fn base_name(w: &Weights, prefix: &str) -> String {
    let parametrized = format!("{prefix}.parametrizations.weight.original");
    if w.contains(&parametrized) {
        parametrized
    } else {
        format!("{prefix}.weight")
    }
}

/// Per-task slices `[tasks × rows × cols]` of a LoRA tensor, or `None` without adapters.
fn task_slices(w: &Weights, name: &str, tasks: usize, rows: usize, cols: usize) -> Result<Option<Vec<Tensor>>> {
    let Some(all) = w.get_opt(name, &[tasks, rows, cols])? else {
        return Ok(None);
    };
    let per = rows * cols;
    Ok(Some(
        all.data()
            .chunks_exact(per)
            .map(|c| Tensor::from_vec(c.to_vec(), vec![rows, cols]))
            .collect(),
    ))
}

/// Per-task `A_t` (`[rows × rank]`) and `scale · B_t` (`[rank × hidden]`) of a table.
type TableAdapters = (Vec<Tensor>, Vec<Vec<f32>>);

/// LoRA adapter shapes shared by every module of the model.
#[derive(Clone, Copy)]
struct LoraShape {
    tasks: usize,
    rank: usize,
    scale: f32,
}

fn lora_linear(w: &Weights, prefix: &str, inf: usize, outf: usize, lora: LoraShape) -> Result<Linear> {
    let weight = w.get(&base_name(w, prefix), &[outf, inf])?;
    let bias = w.get_opt(&format!("{prefix}.bias"), &[outf])?;
    let linear = Linear::new(weight, bias, w.dtype());
    let a = task_slices(w, &format!("{prefix}.parametrizations.weight.0.lora_A"), lora.tasks, lora.rank, inf)?;
    let b = task_slices(w, &format!("{prefix}.parametrizations.weight.0.lora_B"), lora.tasks, outf, lora.rank)?;
    Ok(match (a, b) {
        (Some(a), Some(b)) => linear.with_lora(LoraAdapters::new(a, b, lora.scale)),
        _ => linear,
    })
}

/// Builds a jina-embeddings-v3 encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    let Dims { hidden, layers, heads, vocab, max_pos } = cfg.dims()?;
    let inter = cfg.usize(&["intermediate_size"])?;
    let eps = cfg.f64_opt(&["layer_norm_eps"]).unwrap_or(1e-5);
    match cfg.str_opt(&["position_embedding_type"]).unwrap_or("rotary") {
        "rotary" => {}
        other => {
            return Err(Error::Unsupported(format!(
                "{}: XLMRobertaLoRA with position_embedding_type `{other}`",
                cfg.path.display()
            )))
        }
    }
    let theta = cfg.f64_opt(&["rotary_emb_base"]).unwrap_or(10_000.0);
    let interleaved = cfg.bool_opt(&["rotary_emb_interleaved"]).unwrap_or(false);
    let act_name = cfg.str_opt(&["hidden_act"]).unwrap_or("gelu");
    let activation = Activation::from_name(act_name)
        .ok_or_else(|| cfg.invalid(&format!("unsupported hidden_act `{act_name}`")))?;
    let tasks = task_names(cfg).len();
    let rank = cfg.usize_opt(&["lora_rank"]).unwrap_or(4).max(1);
    let alpha = cfg.f64_opt(&["lora_alpha"]).unwrap_or(1.0);
    let lora = LoraShape {
        tasks,
        rank,
        scale: (alpha / rank as f64) as f32,
    };
    let layout = super::bert::head_layout(cfg, hidden, heads)?;
    let word = w.get(&base_name(w, "embeddings.word_embeddings"), &[vocab, hidden])?;
    let types = w
        .shape_of(&base_name(w, "embeddings.token_type_embeddings"))
        .and_then(|s| s.first().copied());
    let token_type = match types {
        Some(rows) => Some(w.get(&base_name(w, "embeddings.token_type_embeddings"), &[rows, hidden])?),
        None => None,
    };
    // Embedding adapters are stored the other way round: A is [rows × rank], B [rank × hidden].
    let emb_lora = |prefix: &str, rows: usize| -> Result<Option<TableAdapters>> {
        let a = task_slices(w, &format!("{prefix}.parametrizations.weight.0.lora_A"), tasks, rows, rank)?;
        let b = task_slices(w, &format!("{prefix}.parametrizations.weight.0.lora_B"), tasks, rank, hidden)?;
        Ok(a.zip(b).map(|(a, b)| {
            let b = b.iter().map(|b| b.data().iter().map(|v| v * lora.scale).collect()).collect();
            (a, b)
        }))
    };
    let word_lora = emb_lora("embeddings.word_embeddings", vocab)?;
    let type_lora = match types {
        Some(rows) => emb_lora("embeddings.token_type_embeddings", rows)?,
        None => None,
    };
    let lora_embeddings = word_lora.map(|(a, b)| {
        // Token type 0's change per task: A_t[0] · (scale · B_t).
        let token_type = type_lora
            .as_ref()
            .map(|(ta, tb)| {
                ta.iter()
                    .zip(tb)
                    .map(|(a, b)| {
                        let mut delta = vec![0.0f32; hidden];
                        for (r, &coef) in a.row(0).iter().enumerate() {
                            delta.iter_mut().zip(&b[r * hidden..(r + 1) * hidden]).for_each(|(d, v)| *d += coef * v);
                        }
                        delta
                    })
                    .collect()
            })
            .unwrap_or_default();
        EmbeddingLora { a, b, token_type }
    });
    let stack = (0..layers)
        .map(|i| {
            let p = |s: &str| format!("encoder.layers.{i}.{s}");
            Ok(Layer {
                attention: SelfAttention {
                    qkv: lora_linear(w, &p("mixer.Wqkv"), hidden, 3 * hidden, lora)?,
                    out: lora_linear(w, &p("mixer.out_proj"), hidden, hidden, lora)?,
                    layout,
                    mask: Mask::Bidirectional,
                    rotary: Some(Rotary::new(layout.head_dim, 1.0, theta, interleaved, max_pos)),
                    qk_norm: None,
                },
                attention_norm: Some(Norm::layer(w, &p("norm1"), hidden, eps)?),
                mlp: Mlp {
                    up: lora_linear(w, &p("mlp.fc1"), hidden, inter, lora)?,
                    down: lora_linear(w, &p("mlp.fc2"), inter, hidden, lora)?,
                    activation,
                    gated: None,
                },
                mlp_norm: Norm::layer(w, &p("norm2"), hidden, eps)?,
                post_norms: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        architecture: "jina_v3".into(),
        hidden,
        vocab_size: vocab,
        max_positions: max_pos,
        embeddings: Embeddings {
            word,
            position: None,
            position_offset: 0,
            token_type: token_type.map(|t| t.data().to_vec()),
            scale: None,
            lora: lora_embeddings,
            norm: Some(Norm::layer(w, "emb_ln", hidden, eps)?),
        },
        layers: stack,
        placement: NormPlacement::Post,
        final_norm: None,
        position_bias: None,
    })
}

/// jina-embeddings-v3's tasks: `lora_adaptations` with their `task_instructions`; its own
/// `encode` normalizes.
fn tasks(cfg: &ConfigJson) -> Tasks {
    let instructions = cfg
        .value
        .get("task_instructions")
        .and_then(|v| v.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Tasks {
        names: task_names(cfg),
        instructions,
        normalizes: true,
    }
}

/// The task names of a jina-embeddings-v3 config (`lora_adaptations`), in adapter order.
fn task_names(cfg: &ConfigJson) -> Vec<String> {
    cfg.value
        .get("lora_adaptations")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}
