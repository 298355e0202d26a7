//! Tensors of a PyTorch `torch.save` file (a zip archive holding `data.pkl` and one raw file
//! per storage), read without running pickle code: the pickle program is interpreted by a small
//! machine that knows only the opcodes a plain state dict uses and only three callables
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and the typed storages). Any
//! other global, opcode or structure is refused with an error naming the file, so a malicious
//! file cannot execute anything. bge-m3 ships its heads this way (`colbert_linear.pt`,
//! `sparse_linear.pt`).

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// One tensor of a state dict, as float32.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub values: Vec<f32>,
}

/// Element types of the storages we read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StorageType {
    F32,
    F16,
    Bf16,
    F64,
    /// Integer buffers a checkpoint may hold beside its weights (`position_ids`).
    I64,
    I32,
}

impl StorageType {
    fn from_global(name: &str) -> Option<Self> {
        Some(match name {
            "torch.FloatStorage" => Self::F32,
            "torch.HalfStorage" => Self::F16,
            "torch.BFloat16Storage" => Self::Bf16,
            "torch.DoubleStorage" => Self::F64,
            "torch.LongStorage" => Self::I64,
            "torch.IntStorage" => Self::I32,
            _ => return None,
        })
    }

    /// The safetensors name of the element type.
    fn dtype(self) -> safetensors::Dtype {
        match self {
            Self::F32 => safetensors::Dtype::F32,
            Self::F16 => safetensors::Dtype::F16,
            Self::Bf16 => safetensors::Dtype::BF16,
            Self::F64 => safetensors::Dtype::F64,
            Self::I64 => safetensors::Dtype::I64,
            Self::I32 => safetensors::Dtype::I32,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::F64 | Self::I64 => 8,
        }
    }
}

/// The values the interpreter builds.
#[derive(Debug, Clone)]
enum Value {
    /// `None`, a bool or a float: accepted where a state dict has them, never read.
    Scalar,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An allowed callable, by `module.name`.
    Global(String),
    /// A storage reference (`persistent_load` of `('storage', type, key, location, numel)`).
    Storage {
        kind: StorageType,
        key: String,
    },
    Tensor {
        storage: Box<Value>,
        offset: usize,
        shape: Vec<usize>,
        stride: Vec<usize>,
    },
}

/// One tensor of a state dict as its pickle describes it.
struct Described {
    key: String,
    kind: StorageType,
    /// The archive entry of its storage.
    entry: String,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// Opens the archive at `path` and runs its pickle: every tensor of the state dict, described.
fn describe(path: &Path) -> Result<(zip::ZipArchive<std::fs::File>, Vec<Described>)> {
    let invalid = |message: String| Error::InvalidFile {
        path: path.to_owned(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| {
        invalid(format!(
            "not a PyTorch zip archive ({e}); only files written by torch.save in its zip format (PyTorch ≥ 1.6) are read"
        ))
    })?;
    let names: Vec<String> = archive
        .file_names()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("archive listing: {e}")))?
        .into_iter()
        .map(|n| n.into_owned())
        .collect();
    let pickle_name = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .cloned()
        .ok_or_else(|| invalid("no data.pkl in the archive".into()))?;
    let root = pickle_name.trim_end_matches("data.pkl").to_owned();
    let program = read_entry(&mut archive, &pickle_name, path)?;
    let value = Machine::default().run(&program).map_err(&invalid)?;
    let Value::Dict(items) = value else {
        return Err(invalid("the pickle is not a state dict (a dict of tensors)".into()));
    };
    let mut out = Vec::with_capacity(items.len());
    for (key, tensor) in items {
        let Value::Str(key) = key else {
            return Err(invalid("a state-dict key is not a string".into()));
        };
        let Value::Tensor {
            storage,
            offset,
            shape,
            stride,
        } = tensor
        else {
            return Err(invalid(format!("`{key}` is not a tensor")));
        };
        let Value::Storage { kind, key: storage_key } = *storage else {
            return Err(invalid(format!("`{key}`: its storage is not a storage reference")));
        };
        if shape.len() != stride.len() {
            return Err(invalid(format!("`{key}`: shape and stride differ in rank")));
        }
        out.push(Described {
            key,
            kind,
            entry: format!("{root}data/{storage_key}"),
            offset,
            shape,
            stride,
        });
    }
    Ok((archive, out))
}

/// The bytes of archive entry `name`.
fn read_entry(archive: &mut zip::ZipArchive<std::fs::File>, name: &str, path: &Path) -> Result<Vec<u8>> {
    let invalid = |message: String| Error::InvalidFile {
        path: path.to_owned(),
        message,
    };
    let mut entry = archive
        .by_name(name)
        .map_err(|e| invalid(format!("archive entry `{name}`: {e}")))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(format!("archive entry `{name}`: {e}")))?;
    Ok(bytes)
}

/// The number of elements of `shape` and the last storage index that `stride` from `offset`
/// reads, or `None` when they overflow.
fn extent(offset: usize, shape: &[usize], stride: &[usize]) -> Option<(usize, usize)> {
    let numel = shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n))?;
    let last = shape.iter().zip(stride).try_fold(offset, |a, (&n, &s)| {
        n.saturating_sub(1).checked_mul(s).and_then(|x| a.checked_add(x))
    })?;
    Some((numel, last))
}

/// Reads every tensor of the state dict saved in `path` (keys as saved), as float32.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, TorchTensor>> {
    let invalid = |message: String| Error::InvalidFile {
        path: path.to_owned(),
        message,
    };
    let (mut archive, tensors) = describe(path)?;
    let mut out = HashMap::new();
    for Described {
        key,
        kind,
        entry,
        offset,
        shape,
        stride,
    } in tensors
    {
        let bytes = read_entry(&mut archive, &entry, path)?;
        let size = kind.size();
        let count = bytes.len() / size;
        let element = |i: usize| -> f32 {
            let b = &bytes[i * size..(i + 1) * size];
            let b8 = |b: &[u8]| [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
            match kind {
                StorageType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                StorageType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                StorageType::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                StorageType::F64 => f64::from_le_bytes(b8(b)) as f32,
                StorageType::I64 => i64::from_le_bytes(b8(b)) as f32,
                StorageType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            }
        };
        // The last element read must lie inside the storage (sizes that overflow do not).
        let Some((numel, last)) = extent(offset, &shape, &stride) else {
            return Err(invalid(format!(
                "`{key}`: shape {shape:?} with stride {stride:?} is too large"
            )));
        };
        if numel > 0 && last >= count {
            return Err(invalid(format!(
                "`{key}`: shape {shape:?} with stride {stride:?} reads past its storage of {count} values"
            )));
        }
        let mut values = Vec::with_capacity(numel);
        let mut index = vec![0usize; shape.len()];
        for _ in 0..numel {
            let at = offset + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
            values.push(element(at));
            for d in (0..shape.len()).rev() {
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        out.insert(key, TorchTensor { shape, values });
    }
    Ok(out)
}

/// Where one tensor of a `torch.save` file lies in the file itself: its element type, shape
/// and byte range, for reading it in place from a memory map.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// Every tensor of the state dict in `path` (a checkpoint such as `pytorch_model.bin`) by its
/// place in the file, without reading the values: `torch.save` stores each storage
/// uncompressed, so a row-major tensor is a byte range of the file. A compressed entry, or a
/// tensor that is not row-major over its storage (a transposed view), is refused with the file
/// and tensor named.
pub fn index_state_dict(path: &Path) -> Result<Vec<StoredTensor>> {
    let invalid = |message: String| Error::InvalidFile {
        path: path.to_owned(),
        message,
    };
    let (mut archive, tensors) = describe(path)?;
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let entry = archive
            .by_name(&t.entry)
            .map_err(|e| invalid(format!("archive entry `{}`: {e}", t.entry)))?;
        let start = entry.data_start();
        let (Some(start), zip::CompressionMethod::Stored) = (start, entry.compression()) else {
            return Err(invalid(format!(
                "`{}`: its storage is compressed in the archive (torch.save stores it plain)",
                t.key
            )));
        };
        let size = t.kind.size();
        let count = entry.size() as usize / size;
        let contiguous =
            (0..t.shape.len()).all(|d| t.shape[d] <= 1 || t.stride[d] == t.shape[d + 1..].iter().product::<usize>());
        let Some((numel, _)) = extent(t.offset, &t.shape, &t.stride) else {
            return Err(invalid(format!("`{}`: shape {:?} is too large", t.key, t.shape)));
        };
        if !contiguous {
            return Err(invalid(format!(
                "`{}`: shape {:?} with stride {:?} is not row-major over its storage (save the state dict \
                 with contiguous tensors, or as safetensors)",
                t.key, t.shape, t.stride
            )));
        }
        if t.offset + numel > count {
            return Err(invalid(format!(
                "`{}`: {} values from {} read past its storage of {count}",
                t.key, numel, t.offset
            )));
        }
        let begin = start as usize + t.offset * size;
        out.push(StoredTensor {
            name: t.key,
            dtype: t.kind.dtype(),
            shape: t.shape,
            start: begin,
            end: begin + numel * size,
        });
    }
    Ok(out)
}

/// The pickle interpreter: a stack, marks and a memo.
#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

/// The pickle program and the read position.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let s = self
            .data
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(|| "the pickle ends inside an opcode".to_owned())?;
        self.at += n;
        Ok(s)
    }

    fn line(&mut self) -> std::result::Result<&'a str, String> {
        let rest = self.data.get(self.at..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| "unterminated GLOBAL".to_owned())?;
        self.at += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| "GLOBAL is not UTF-8".to_owned())
    }
}

/// Most values the machine builds (a state dict holds a few per tensor).
const MAX_VALUES: usize = 1 << 22;

impl Machine {
    fn pop(&mut self) -> std::result::Result<Value, String> {
        self.stack.pop().ok_or_else(|| "pickle stack underflow".to_owned())
    }

    fn pop_mark(&mut self) -> std::result::Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or_else(|| "pickle mark missing".to_owned())?;
        if mark > self.stack.len() {
            return Err("pickle mark past the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> std::result::Result<&mut Value, String> {
        self.stack.last_mut().ok_or_else(|| "pickle stack underflow".to_owned())
    }

    fn run(mut self, program: &[u8]) -> std::result::Result<Value, String> {
        let mut r = Reader { data: program, at: 0 };
        let mut steps = 0usize;
        loop {
            steps += 1;
            if steps > MAX_VALUES || self.stack.len() > MAX_VALUES {
                return Err("the pickle is larger than a state dict".into());
            }
            let op = r.take(1)?[0];
            match op {
                0x80 => {
                    r.take(1)?; // PROTO
                }
                0x95 => {
                    r.take(8)?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'N' | 0x88 | 0x89 => self.stack.push(Value::Scalar),
                b'K' => {
                    let v = r.take(1)?[0];
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let b = r.take(2)?;
                    self.stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))
                }
                b'J' => {
                    let b = r.take(4)?;
                    self.stack
                        .push(Value::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64))
                }
                0x8a => {
                    // LONG1: a little-endian two's-complement integer of n bytes.
                    let n = r.take(1)?[0] as usize;
                    let b = r.take(n)?;
                    if n > 8 {
                        return Err("integer too large".into());
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    r.take(8)?; // BINFLOAT
                    self.stack.push(Value::Scalar)
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => {
                            let b = r.take(4)?;
                            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                        }
                        0x8c => r.take(1)?[0] as usize,
                        _ => {
                            let b = r.take(8)?;
                            let mut a = [0u8; 8];
                            a.copy_from_slice(b);
                            usize::try_from(u64::from_le_bytes(a)).map_err(|_| "string too long".to_owned())?
                        }
                    };
                    let s = std::str::from_utf8(r.take(n)?).map_err(|_| "a string is not UTF-8".to_owned())?;
                    self.stack.push(Value::Str(s.to_owned()))
                }
                b'c' => {
                    // GLOBAL: "module\nname\n".
                    let (module, name) = (r.line()?, r.line()?);
                    self.stack.push(global(module, name)?);
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(global(&m, &n)?),
                        _ => return Err("STACK_GLOBAL of non-strings".into()),
                    }
                }
                b'q' => {
                    let i = r.take(1)?[0] as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let b = r.take(4)?;
                    let i = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    // MEMOIZE
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        r.take(1)?[0] as u32
                    } else {
                        let b = r.take(4)?;
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                    };
                    let v = self.memo.get(&i).cloned().ok_or_else(|| format!("memo {i} unset"))?;
                    self.stack.push(v)
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err("APPEND to a non-list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err("APPENDS to a non-list".into()),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd count".into());
                    }
                    let mut it = items.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top()? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return Err("SETITEMS on a non-dict".into()),
                    }
                }
                b'Q' => {
                    // BINPERSID: ('storage', type, key, location, numel).
                    let pid = self.pop()?;
                    let Value::Tuple(parts) = pid else {
                        return Err("a persistent id that is not a tuple".into());
                    };
                    match parts.as_slice() {
                        [Value::Str(tag), Value::Global(kind), Value::Str(key), _, _] if tag == "storage" => {
                            let kind = StorageType::from_global(kind).ok_or_else(|| {
                                format!("storage type `{kind}` (float32, float16, bfloat16 or float64 only)")
                            })?;
                            self.stack.push(Value::Storage { kind, key: key.clone() })
                        }
                        _ => return Err("a persistent id that is not a storage".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Value::Tuple(args) = args else {
                        return Err("REDUCE arguments are not a tuple".into());
                    };
                    let Value::Global(name) = callable else {
                        return Err("REDUCE of something not callable".into());
                    };
                    self.stack.push(call(&name, args)?)
                }
                b'b' => {
                    // BUILD: state for the object below (an OrderedDict's `_metadata`): ignored.
                    self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor { .. } => {}
                        _ => return Err("BUILD on an unexpected object".into()),
                    }
                }
                other => return Err(format!("pickle opcode 0x{other:02x} is not part of a plain state dict")),
            }
        }
    }
}

/// The callables a state dict may name; anything else is refused.
fn global(module: &str, name: &str) -> std::result::Result<Value, String> {
    let full = format!("{module}.{name}");
    let allowed = matches!(
        full.as_str(),
        "collections.OrderedDict" | "torch._utils._rebuild_tensor_v2"
    ) || StorageType::from_global(&full).is_some();
    if allowed {
        Ok(Value::Global(full))
    } else {
        Err(format!(
            "the pickle names `{full}`, which a plain state dict of tensors does not (refused: pickle code is never run)"
        ))
    }
}

fn call(name: &str, args: Vec<Value>) -> std::result::Result<Value, String> {
    match name {
        "collections.OrderedDict" if args.is_empty() => Ok(Value::Dict(Vec::new())),
        "torch._utils._rebuild_tensor_v2" => {
            let mut it = args.into_iter();
            let storage = it.next().ok_or("tensor without storage")?;
            let offset = match it.next() {
                Some(Value::Int(o)) if o >= 0 => o as usize,
                _ => return Err("tensor offset is not a count".into()),
            };
            let dims = |v: Option<Value>| -> std::result::Result<Vec<usize>, String> {
                match v {
                    Some(Value::Tuple(items)) => items
                        .into_iter()
                        .map(|i| match i {
                            Value::Int(n) if n >= 0 => Ok(n as usize),
                            _ => Err("tensor dimension is not a count".to_owned()),
                        })
                        .collect(),
                    _ => Err("tensor shape is not a tuple".to_owned()),
                }
            };
            let shape = dims(it.next())?;
            let stride = dims(it.next())?;
            Ok(Value::Tensor {
                storage: Box::new(storage),
                offset,
                shape,
                stride,
            })
        }
        other => Err(format!("`{other}` cannot be called here")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/tiny/bge_m3")
            .join(name)
    }

    #[test]
    fn reads_bge_m3_heads_as_saved_by_torch() {
        let sparse = read_state_dict(&fixture("sparse_linear.pt")).unwrap();
        assert_eq!(sparse["weight"].shape, vec![1, 32]);
        assert_eq!(sparse["bias"].shape, vec![1]);
        let colbert = read_state_dict(&fixture("colbert_linear.pt")).unwrap();
        assert_eq!(colbert["weight"].shape, vec![32, 32]);
        assert_eq!(colbert["weight"].values.len(), 32 * 32);
        assert!(
            colbert["weight"].values.iter().all(|v| v.is_finite())
                && colbert["weight"].values.iter().any(|v| *v != 0.0)
        );
    }

    /// A pickle that calls `os.system` is refused before anything runs, with the file named.
    #[test]
    fn refuses_pickles_that_name_other_callables() {
        let dir = std::env::temp_dir().join(format!("openembed-pickle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("evil.pt");
        let program: &[u8] = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.";
        let file = std::fs::File::create(&path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        zip.start_file("evil/data.pkl", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, program).unwrap();
        zip.finish().unwrap();
        let err = read_state_dict(&path).unwrap_err().to_string();
        assert!(err.contains("os.system") && err.contains("evil.pt"), "{err}");
        let not_zip = dir.join("legacy.pt");
        std::fs::write(&not_zip, b"\x80\x02}q\x00.").unwrap();
        let err = read_state_dict(&not_zip).unwrap_err().to_string();
        assert!(err.contains("zip") && err.contains("legacy.pt"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reads_strided_and_half_precision_storages() {
        // A 2×2 view with stride (1, 2) of a 4-value float16 storage at offset 0: the transpose.
        let dir = std::env::temp_dir().join(format!("openembed-pickle-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pt");
        let program: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n\
((X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\x02K\x02\x86K\x01K\x02\x86\x89ccollections\nOrderedDict\n)Rtq\x01Ru.";
        let file = std::fs::File::create(&path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("t/data.pkl", opts).unwrap();
        std::io::Write::write_all(&mut zip, program).unwrap();
        zip.start_file("t/data/0", opts).unwrap();
        let values: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        std::io::Write::write_all(&mut zip, &values).unwrap();
        zip.finish().unwrap();
        let dict = read_state_dict(&path).unwrap();
        assert_eq!(dict["w"].shape, vec![2, 2]);
        assert_eq!(dict["w"].values, vec![1.0, 3.0, 2.0, 4.0]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
