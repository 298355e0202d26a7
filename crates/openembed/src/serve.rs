//! `openembed serve`: the OpenAI-compatible HTTP server. Every flag also reads an `OPENEMBED_*`
//! environment variable.

use anyhow::{anyhow, Context, Result};
use openembed_engine::Truncation;
use openembed_pipeline::{Alias, Defaults, ModelSpec, SchedulerConfig};
use openembed_server::state::Limits;
use openembed_server::ServerConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Log output format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which side of an over-long input truncation removes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum TruncationSide {
    /// Keep the beginning.
    End,
    /// Keep the end.
    Start,
}

/// Options of `openembed serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to bind. Binding beyond loopback (e.g. 0.0.0.0) is an explicit choice.
    #[arg(long, env = "OPENEMBED_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 = any free port).
    #[arg(long, env = "OPENEMBED_PORT", default_value_t = 8080)]
    port: u16,
    /// A model to serve: a local folder or a Hugging Face hub id, optionally SPEC=NAME for the
    /// served name. Repeatable (env: comma-separated). Default: all-MiniLM-L6-v2 from ./models
    /// (or a folder above; `make run` fills it) or OPENEMBED_HOME/models (`openembed fetch`).
    #[arg(long = "model", env = "OPENEMBED_MODEL", value_delimiter = ',')]
    models: Vec<ModelSpec>,
    /// Another name for a served model, NAME=MODEL (e.g. text-embedding-3-small=all-MiniLM-L6-v2).
    /// Repeatable (env: comma-separated).
    #[arg(long = "alias", env = "OPENEMBED_ALIAS", value_delimiter = ',')]
    aliases: Vec<Alias>,
    /// What integer inputs mean: cl100k_base (tiktoken ids, OpenAI's meaning), o200k_base, or
    /// native (the model's own vocabulary). ENC for every model, or MODEL=ENC for one.
    /// Repeatable (env: comma-separated). Default: cl100k_base.
    #[arg(long = "token-ids", env = "OPENEMBED_TOKEN_IDS", value_delimiter = ',')]
    token_ids: Vec<String>,
    /// Precision of the dense layers: float32 (exact, the default), bfloat16 (half the weight
    /// memory, cosine ≥ 0.9995 to float32; fast on CPUs with AMX tiles or AMD's AVX512-BF16,
    /// elsewhere only a memory saving) or int8 (a quarter, fastest, cosine ≥ 0.995).
    /// DTYPE for every model, or MODEL=DTYPE for one. Repeatable (env: comma-separated).
    #[arg(long = "dtype", env = "OPENEMBED_DTYPE", value_delimiter = ',')]
    dtypes: Vec<String>,
    /// Task adapter for requests that name no `task`, on models that have tasks
    /// (jina-embeddings-v3: retrieval.query, retrieval.passage, text-matching, …). TASK for every
    /// model, or MODEL=TASK for one. Repeatable (env: comma-separated). Default: no adapter.
    #[arg(long = "default-task", env = "OPENEMBED_DEFAULT_TASK", value_delimiter = ',')]
    default_tasks: Vec<String>,
    /// An accepted API key (Authorization: Bearer KEY). Repeatable (env: comma-separated; keys
    /// given as flags replace the variable's). Keys in --api-key-file count too. With no key the
    /// server is open.
    #[arg(
        long = "api-key",
        env = "OPENEMBED_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// A file of API keys, one a line.
    #[arg(long, env = "OPENEMBED_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Compute threads shared by every served model and by tokenization (default: all cores).
    #[arg(long, env = "OPENEMBED_THREADS")]
    threads: Option<usize>,
    /// Most tokens per engine batch (within it, see --batch-time-ms). Batches are packed without
    /// padding, so throughput is flat across sizes.
    #[arg(long, env = "OPENEMBED_MAX_BATCH_TOKENS", default_value_t = 2048)]
    max_batch_tokens: usize,
    /// Milliseconds of engine time that make a request "short": new requests that fit in this
    /// much (at the engine's recent speed) run in a batch of their own, between the layers of a
    /// bulk batch in progress if need be; bulk batches take up to 4× as long. Larger trades
    /// latency for fewer, bigger batches.
    #[arg(long, env = "OPENEMBED_BATCH_TIME_MS", default_value_t = 100)]
    batch_time_ms: u64,
    /// Most tokens waiting per model; beyond it requests get 429 with Retry-After.
    #[arg(long, env = "OPENEMBED_MAX_QUEUED_TOKENS", default_value_t = 500_000)]
    max_queued_tokens: usize,
    /// Most tokens in one request (after truncation).
    #[arg(long, env = "OPENEMBED_MAX_REQUEST_TOKENS", default_value_t = 300_000)]
    max_request_tokens: usize,
    /// Most bytes in a request body (over it: 413).
    #[arg(long, env = "OPENEMBED_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most bytes all admitted requests may hold at once: bodies being read, decoded inputs and
    /// responses being built. Past it requests get 429 with Retry-After before their body is
    /// read. One request alone is always admitted.
    #[arg(long, env = "OPENEMBED_MAX_INFLIGHT_BYTES", default_value_t = 192 * 1024 * 1024)]
    max_inflight_bytes: usize,
    /// Seconds a client may leave a response unread before its connection is closed.
    #[arg(long, env = "OPENEMBED_WRITE_TIMEOUT", default_value_t = 30)]
    write_timeout: u64,
    /// Truncate over-long inputs at the model limit unless a request sets `truncate`.
    #[arg(long, env = "OPENEMBED_AUTO_TRUNCATE")]
    auto_truncate: bool,
    /// Which side truncation cuts.
    #[arg(long, env = "OPENEMBED_TRUNCATION_SIDE", value_enum, default_value = "end")]
    truncation_side: TruncationSide,
    /// Prompt (from the model's config_sentence_transformers.json, e.g. `query`) used when a
    /// request names none; the model's own default applies otherwise.
    #[arg(long, env = "OPENEMBED_DEFAULT_PROMPT_NAME")]
    default_prompt_name: Option<String>,
    /// Long-input mode: split inputs over the model limit into windows, embed them all, and
    /// return their token-weighted mean (normalized); usage counts every window token.
    #[arg(long, env = "OPENEMBED_LONG_INPUT_WINDOWS")]
    long_input_windows: bool,
    /// Tokens shared by consecutive windows in the long-input mode.
    #[arg(long, env = "OPENEMBED_WINDOW_OVERLAP", default_value_t = 32)]
    window_overlap: usize,
    /// Seconds shutdown waits for admitted requests to finish.
    #[arg(long, env = "OPENEMBED_DRAIN_TIMEOUT", default_value_t = 30)]
    drain_timeout: u64,
    /// An origin allowed by CORS (`*` for any). Repeatable (env: comma-separated). Default: CORS off.
    #[arg(long = "cors-origin", env = "OPENEMBED_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Most open connections; one more is answered 503 and closed.
    #[arg(long, env = "OPENEMBED_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a client has to send a request's headers (slow clients are cut off).
    #[arg(long, env = "OPENEMBED_HEADER_TIMEOUT", default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client has to send a request's body (over it: 408).
    #[arg(long, env = "OPENEMBED_BODY_TIMEOUT", default_value_t = 30)]
    body_timeout: u64,
    /// Log format.
    #[arg(long, env = "OPENEMBED_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// Applies `VALUE` (every model) or `MODEL=VALUE` (one) settings of a per-model flag.
fn per_model<T>(
    models: &mut [ModelSpec],
    settings: &[String],
    flag: &str,
    set: impl Fn(&mut ModelSpec, T),
) -> Result<()>
where
    T: std::str::FromStr + Clone,
    T::Err: std::fmt::Display,
{
    for setting in settings {
        let (target, value) = match setting.split_once('=') {
            Some((model, value)) => (Some(model.trim()), value),
            None => (None, setting.as_str()),
        };
        let value: T = value.parse().map_err(|e| anyhow!("{flag} {e}"))?;
        let mut matched = false;
        for m in models.iter_mut().filter(|m| target.is_none_or(|t| t == m.name)) {
            set(m, value.clone());
            matched = true;
        }
        if !matched {
            return Err(anyhow!("{flag} {setting}: no served model is named that"));
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

impl ServeArgs {
    /// The models to serve, each with its `--token-ids` and `--dtype` settings.
    fn models_with_token_ids(&self) -> Result<Vec<ModelSpec>> {
        let mut models = if self.models.is_empty() {
            vec![openembed_pipeline::home::default_model_spec().map_err(anyhow::Error::msg)?]
        } else {
            self.models.clone()
        };
        per_model(&mut models, &self.token_ids, "--token-ids", |m, v| m.token_ids = v)?;
        per_model(&mut models, &self.dtypes, "--dtype", |m, v| m.dtype = v)?;
        per_model(&mut models, &self.default_tasks, "--default-task", |m, v: String| {
            m.default_task = Some(v)
        })?;
        Ok(models)
    }

    fn config(&self) -> Result<ServerConfig> {
        let mut api_keys: Vec<String> = self
            .api_keys
            .iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        if let Some(path) = &self.api_key_file {
            api_keys.extend(
                openembed_server::auth::ApiKeys::read_file(path)
                    .with_context(|| format!("cannot read the API key file {}", path.display()))?,
            );
        }
        if self.max_batch_tokens == 0 || self.max_queued_tokens == 0 {
            return Err(anyhow!("--max-batch-tokens and --max-queued-tokens must be at least 1"));
        }
        Ok(ServerConfig {
            host: self.host.clone(),
            port: self.port,
            models: self.models_with_token_ids()?,
            aliases: self.aliases.clone(),
            api_keys,
            threads: self.threads,
            scheduler: SchedulerConfig {
                max_batch_tokens: self.max_batch_tokens,
                max_queued_tokens: self.max_queued_tokens,
                batch_time: Duration::from_millis(self.batch_time_ms.max(1)),
            },
            limits: Limits {
                max_request_tokens: self.max_request_tokens,
                max_body_bytes: self.max_body_bytes,
                body_timeout: Duration::from_secs(self.body_timeout.max(1)),
                max_inflight_bytes: self.max_inflight_bytes,
            },
            defaults: Defaults {
                auto_truncate: self.auto_truncate,
                truncation_side: match self.truncation_side {
                    TruncationSide::End => Truncation::End,
                    TruncationSide::Start => Truncation::Start,
                },
                default_prompt_name: self.default_prompt_name.clone(),
                long_input_windows: self.long_input_windows.then_some(self.window_overlap),
                ..Defaults::default()
            },
            drain_timeout: Duration::from_secs(self.drain_timeout),
            cors_origins: self.cors_origins.clone(),
            connections: openembed_server::listener::ConnectionLimits {
                max_connections: self.max_connections.max(1),
                header_timeout: Duration::from_secs(self.header_timeout.max(1)),
                close_timeout: Duration::from_secs(self.drain_timeout.max(1)),
                write_timeout: Duration::from_secs(self.write_timeout.max(1)),
            },
        })
    }
}

/// Entry point of `openembed serve`.
pub fn run(args: &ServeArgs) -> Result<()> {
    init_logging(args.log_format);
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("openembed-http")
        // Decoding, tokenization hand-off and serialization run on the blocking pool: a few
        // threads per core are plenty, and fewer threads keep fewer allocator heaps alive.
        .max_blocking_threads(4 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (state, listener) = openembed_server::bind(&config).await.map_err(|e| anyhow!(e))?;
        crate::return_freed_memory();
        let addr = listener.local_addr().context("cannot read the bound address")?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "listening beyond loopback: reachable from other machines");
        }
        let keys = if state.keys.enabled() { "required" } else { "off" };
        tracing::info!(%addr, api_keys = keys, "ready");
        // A plain line on stdout that scripts and tests can wait for.
        println!("openembed listening on http://{addr}");
        openembed_server::serve(state, listener, &config, openembed_server::shutdown_signal())
            .await
            .map_err(|e| anyhow!(e))
    })
}
