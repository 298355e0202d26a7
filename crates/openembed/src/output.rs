//! Vector output for `openembed embed`: JSON lines, CSV/TSV, plain text, or a numpy `.npy`
//! matrix written as it streams (the header's row count is filled in at the end): float32, or
//! int8 / uint8 for compressed codes.

use crate::UsageError;
use anyhow::{Context, Result};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// How vectors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// `{"index", "tokens", "embedding"}` per line.
    JsonLines,
    /// Space-separated floats, one vector a line.
    Text,
    /// numpy format 1.0, float32 little-endian, shape `[n, dim]`.
    Npy,
    /// A header row (`index`, `tokens`, `e0` … `e{dim-1}`), then one row per input; the
    /// separator is `,` (CSV) or a tab (TSV).
    Delimited(u8),
}

impl OutputFormat {
    /// The format a file name asks for: `.jsonl`/`.ndjson`, `.csv`, `.tsv`, `.txt` or `.npy`;
    /// any other name is a usage error (exit 2) rather than a file in a format it does not say.
    pub fn from_path(path: &Path) -> Result<Self> {
        Ok(
            match path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("jsonl" | "ndjson") => Self::JsonLines,
                Some("npy") => Self::Npy,
                Some("txt") => Self::Text,
                Some("csv") => Self::Delimited(b','),
                Some("tsv") => Self::Delimited(b'\t'),
                _ => {
                    return Err(UsageError(format!(
                        "cannot tell the output format of {}: name the file .jsonl, .csv, .tsv, .txt or .npy",
                        path.display()
                    ))
                    .into())
                }
            },
        )
    }
}

/// The size of the `.npy` preamble we write (magic, version, header length, padded header).
const NPY_PREAMBLE: usize = 128;

/// One row to write: float values or integer codes.
#[derive(Debug, Clone, Copy)]
pub enum Row<'a> {
    /// float32 values.
    Float(&'a [f32]),
    /// Signed byte codes (`int8`, `binary`).
    Signed(&'a [i8]),
    /// Unsigned byte codes (`uint8`, `ubinary`).
    Unsigned(&'a [u8]),
    /// A sparse output row (`[id, weight, …]`, see `openembed_engine::sparse_pairs`): JSON lines
    /// only, as `"sparse": {"indices", "values"}` (the shape Qdrant and Milvus take).
    Sparse(&'a [f32]),
    /// Token vectors of this width, flat: JSON lines only, as `"vectors": [[…], …]` (a
    /// multivector as Qdrant takes it).
    Multi(&'a [f32], usize),
}

impl Row<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Float(v) | Self::Sparse(v) | Self::Multi(v, _) => v.len(),
            Self::Signed(v) => v.len(),
            Self::Unsigned(v) => v.len(),
        }
    }

    /// Whether the row is one fixed-width vector (every format takes it).
    fn dense(&self) -> bool {
        !matches!(self, Self::Sparse(_) | Self::Multi(..))
    }

    /// The values as text.
    fn texts(&self) -> Vec<String> {
        match self {
            Self::Float(v) | Self::Sparse(v) | Self::Multi(v, _) => v.iter().map(|x| x.to_string()).collect(),
            Self::Signed(v) => v.iter().map(|x| x.to_string()).collect(),
            Self::Unsigned(v) => v.iter().map(|x| x.to_string()).collect(),
        }
    }

    /// The JSON field and value of the row.
    fn json(&self) -> (&'static str, serde_json::Value) {
        match self {
            Self::Float(v) => ("embedding", serde_json::json!(v)),
            Self::Signed(v) => ("embedding", serde_json::json!(v)),
            Self::Unsigned(v) => ("embedding", serde_json::json!(v)),
            Self::Sparse(row) => {
                let (indices, values): (Vec<u32>, Vec<f32>) = openembed_engine::sparse_pairs(row).unzip();
                ("sparse", serde_json::json!({"indices": indices, "values": values}))
            }
            Self::Multi(v, dim) => {
                let rows: Vec<&[f32]> = v.chunks((*dim).max(1)).collect();
                ("vectors", serde_json::json!(rows))
            }
        }
    }
}

/// The numpy type of the values a writer takes: `<f4`, `|i1` or `|u1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// float32.
    Float32,
    /// int8.
    Int8,
    /// uint8.
    Uint8,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Self::Float32 => "<f4",
            Self::Int8 => "|i1",
            Self::Uint8 => "|u1",
        }
    }
}

/// The `.npy` 1.0 preamble for a `[rows, dim]` matrix of `dtype`, padded to [`NPY_PREAMBLE`]
/// bytes.
pub fn npy_header(rows: usize, dim: usize, dtype: Dtype) -> Vec<u8> {
    let descr = dtype.descr();
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut header = dict.into_bytes();
    // magic (6) + version (2) + length (2) + header, ending in '\n', total a multiple of 64.
    let total = NPY_PREAMBLE.max((10 + header.len() + 1).div_ceil(64) * 64);
    header.resize(total - 10 - 1, b' ');
    header.push(b'\n');
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out
}

enum Sink {
    Stdout(std::io::StdoutLock<'static>),
    File(BufWriter<std::fs::File>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Stdout(s) => s.write(buf),
            Self::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout(s) => s.flush(),
            Self::File(f) => f.flush(),
        }
    }
}

/// Writes vectors one at a time in the chosen format.
pub struct VectorWriter {
    sink: Sink,
    format: OutputFormat,
    dim: usize,
    dtype: Dtype,
    rows: usize,
}

impl VectorWriter {
    /// Opens `path` (or stdout when `None`) for vectors of `dim` values of `dtype`.
    pub fn create(path: Option<&Path>, format: OutputFormat, dim: usize, dtype: Dtype) -> Result<Self> {
        let mut sink = match path {
            Some(p) => Sink::File(BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => Sink::Stdout(std::io::stdout().lock()),
        };
        if format == OutputFormat::Npy {
            if matches!(sink, Sink::Stdout(_)) {
                anyhow::bail!(".npy output needs --output FILE");
            }
            sink.write_all(&npy_header(0, dim, dtype))?;
        }
        if let OutputFormat::Delimited(sep) = format {
            let sep = sep as char;
            let mut header = format!("index{sep}tokens");
            for i in 0..dim {
                header.push_str(&format!("{sep}e{i}"));
            }
            writeln!(sink, "{header}")?;
        }
        Ok(Self {
            sink,
            format,
            dim,
            dtype,
            rows: 0,
        })
    }

    /// Writes input `index` (with its token count) and its vector (of the writer's dtype).
    pub fn write(&mut self, index: usize, tokens: usize, row: Row<'_>) -> Result<()> {
        debug_assert!(!row.dense() || row.len() == self.dim);
        anyhow::ensure!(
            row.dense() || self.format == OutputFormat::JsonLines,
            "sparse weights and token vectors are written as JSON lines only (name the file .jsonl)"
        );
        match self.format {
            OutputFormat::JsonLines => {
                let (field, value) = row.json();
                let line = serde_json::json!({"index": index, "tokens": tokens, field: value});
                writeln!(self.sink, "{line}")?;
            }
            OutputFormat::Text => writeln!(self.sink, "{}", row.texts().join(" "))?,
            OutputFormat::Delimited(sep) => {
                let sep = sep as char;
                let mut line = format!("{index}{sep}{tokens}");
                for x in row.texts() {
                    line.push(sep);
                    line.push_str(&x);
                }
                writeln!(self.sink, "{line}")?;
            }
            OutputFormat::Npy => match row {
                Row::Float(v) | Row::Sparse(v) | Row::Multi(v, _) => {
                    for x in v {
                        self.sink.write_all(&x.to_le_bytes())?;
                    }
                }
                Row::Signed(v) => {
                    let bytes: Vec<u8> = v.iter().map(|&x| x as u8).collect();
                    self.sink.write_all(&bytes)?;
                }
                Row::Unsigned(v) => self.sink.write_all(v)?,
            },
        }
        self.rows += 1;
        Ok(())
    }

    /// Flushes, and for `.npy` writes the final row count into the header.
    pub fn finish(mut self) -> Result<()> {
        self.sink.flush()?;
        if let (OutputFormat::Npy, Sink::File(f)) = (self.format, &mut self.sink) {
            let header = npy_header(self.rows, self.dim, self.dtype);
            anyhow::ensure!(
                header.len() == NPY_PREAMBLE,
                "{} rows do not fit the .npy header",
                self.rows
            );
            let file = f.get_mut();
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header)?;
            file.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_fixed_size() {
        for rows in [0, 7, 1_000_000_000_000] {
            let h = npy_header(rows, 384, Dtype::Float32);
            assert_eq!(h.len(), NPY_PREAMBLE);
            assert_eq!(&h[..6], b"\x93NUMPY");
            assert_eq!(*h.last().unwrap(), b'\n');
            let text = String::from_utf8_lossy(&h[10..]);
            assert!(text.contains(&format!("'shape': ({rows}, 384)")));
        }
    }

    #[test]
    fn formats_follow_the_extension() {
        let format = |name: &str| OutputFormat::from_path(Path::new(name)).ok();
        assert_eq!(format("a.npy"), Some(OutputFormat::Npy));
        assert_eq!(format("a.txt"), Some(OutputFormat::Text));
        assert_eq!(format("a.jsonl"), Some(OutputFormat::JsonLines));
        assert_eq!(format("a.CSV"), Some(OutputFormat::Delimited(b',')));
        assert_eq!(format("a.tsv"), Some(OutputFormat::Delimited(b'\t')));
        for refused in ["a.json", "a.parquet", "vectors"] {
            let error = OutputFormat::from_path(Path::new(refused)).unwrap_err();
            assert!(error.downcast_ref::<UsageError>().is_some(), "{refused}");
        }
    }
}
