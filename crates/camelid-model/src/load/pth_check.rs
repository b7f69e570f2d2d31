//! What an untrusted PyTorch checkpoint (a zip of `…/data.pkl` and storage files) must
//! satisfy before candle's reader (`candle_core::pickle`) sees it, where that reader would
//! panic or allocate what the file does not hold: strings and `LONG1` integers longer than
//! the pickle, memo copies that multiply the pickle's size, nesting deep enough to overflow
//! the stack, argument tuples shorter than the indices it takes, negative offsets, and
//! tensors whose shape overflows or whose bytes lie past their storage or the file. The
//! pickle is parsed with candle's own `Stack`, one opcode at a time. Used by load/hf_folder.rs.

use crate::error::{Error, Result};
use candle_core::pickle::{Object, Stack};
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

/// No real checkpoint nests objects more than a few levels deep.
const MAX_DEPTH: u32 = 256;

type Step<T> = std::result::Result<T, String>;

/// Checks every `data.pkl` of the checkpoint at `path` and the tensors it declares.
pub fn check_pth(path: &Path) -> Result<()> {
    let bad = |m: String| Error::BadWeights(format!("{}: {m}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| bad(format!("not a PyTorch zip checkpoint: {e}")))?;
    let mut names = Vec::with_capacity(zip.len());
    let mut sizes = HashMap::new();
    for i in 0..zip.len() {
        let f = zip
            .by_index(i)
            .map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        let name = f
            .name()
            .map_err(|e| bad(format!("zip entry {i}: {e}")))?
            .into_owned();
        sizes.insert(name.clone(), f.size());
        names.push(name);
    }
    for name in names.iter().filter(|n| n.ends_with("data.pkl")) {
        let size = sizes[name];
        if size > file_size {
            return Err(bad(format!(
                "{name} declares {size} bytes, more than the {file_size}-byte file"
            )));
        }
        let mut pkl = Vec::with_capacity(size as usize);
        zip.by_name(name)
            .map_err(|e| bad(format!("{name}: {e}")))?
            .take(size)
            .read_to_end(&mut pkl)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let root = parse(&pkl).map_err(|m| bad(format!("{name}: {m}")))?;
        let dir = name.strip_suffix(".pkl").unwrap_or(name);
        // Tensors may share a storage's bytes (tied weights), and each is read into memory of
        // its own: bounded by twice the file, so a few megabytes cannot declare gigabytes.
        let (mut count, mut total) = (0usize, 0u64);
        for (tensor, t) in tensors(root) {
            let t = t.map_err(|m| bad(format!("{name}: tensor {tensor}: {m}")))?;
            let entry = format!("{dir}/{}", t.storage);
            let have = *sizes
                .get(&entry)
                .ok_or_else(|| bad(format!("tensor {tensor}: storage {entry} is missing")))?;
            let end = t.start.checked_add(t.bytes);
            if !end.is_some_and(|e| e <= have && e <= file_size) {
                return Err(bad(format!(
                    "tensor {tensor}: shape {:?} at byte {} of storage {entry} needs bytes past \
                     its {have} bytes (the file has {file_size})",
                    t.shape, t.start
                )));
            }
            count += 1;
            total = total.saturating_add(t.bytes);
        }
        if total > file_size.saturating_mul(2) {
            return Err(bad(format!(
                "{name}: its {count} tensors take {total} bytes, more than twice the \
                 {file_size}-byte file (tensors sharing a storage's bytes)"
            )));
        }
    }
    Ok(())
}

/// Runs the pickle through candle's `Stack`, refusing before each opcode what would make
/// it over-allocate, and tracking each stack slot's nesting depth and the bytes memo copies
/// take (candle copies a memoised object on every get and put).
fn parse(pkl: &[u8]) -> Step<Object> {
    let mut cur = std::io::Cursor::new(pkl);
    let mut stack = Stack::empty();
    let mut shadow = Shadow::default();
    let budget = 16 * pkl.len() + (1 << 20);
    let mut copied = 0usize;
    loop {
        let pos = cur.position() as usize;
        let op = *pkl.get(pos).ok_or("the pickle ends without STOP")?;
        let arg = &pkl[pos + 1..];
        let le32 = |b: &[u8]| {
            b.get(..4)
                .map(|x| u32::from_le_bytes(x.try_into().unwrap()))
        };
        match op {
            b'X' => {
                if let Some(n) = le32(arg) {
                    if n as usize > arg.len() - 4 {
                        return Err(format!(
                            "a string of {n} bytes at byte {pos} passes the end"
                        ));
                    }
                }
            }
            0x8a => {
                if let Some(&n) = arg.first() {
                    if n > 8 {
                        return Err(format!("a LONG1 integer of {n} bytes at byte {pos}"));
                    }
                }
            }
            _ => {}
        }
        let memo_id = match op {
            b'h' | b'q' => arg.first().map(|&b| b as u32),
            b'j' | b'r' => le32(arg),
            _ => None,
        };
        let done = stack.read(&mut cur).map_err(|e| e.to_string())?;
        shadow
            .apply(op, memo_id)
            .map_err(|m| format!("{m} (opcode at byte {pos})"))?;
        if matches!(op, b'h' | b'j' | b'q' | b'r') {
            copied += stack.stack().last().map_or(0, weight);
            if copied > budget {
                return Err(format!(
                    "memo copies take more than {budget} bytes for a {}-byte pickle",
                    pkl.len()
                ));
            }
        }
        if done {
            return stack.finalize().map_err(|e| e.to_string());
        }
    }
}

/// Roughly the bytes an object occupies (what copying it allocates).
fn weight(o: &Object) -> usize {
    let own = std::mem::size_of::<Object>();
    own + match o {
        Object::Class {
            module_name,
            class_name,
        } => module_name.len() + class_name.len(),
        Object::Unicode(s) => s.len(),
        Object::Tuple(v) | Object::List(v) => v.iter().map(weight).sum(),
        Object::Dict(v) => v.iter().map(|(k, x)| weight(k) + weight(x)).sum(),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            weight(callable) + weight(args)
        }
        Object::PersistentLoad(b) => weight(b),
        _ => 0,
    }
}

/// The nesting depth of each slot of candle's stack (`None`: a MARK) and of each memo entry,
/// by the stack effect of each opcode candle reads.
#[derive(Default)]
struct Shadow {
    slots: Vec<Option<u32>>,
    memo: HashMap<u32, u32>,
}

impl Shadow {
    fn pop(&mut self) -> Step<u32> {
        Ok(self.slots.pop().ok_or("stack underflow")?.unwrap_or(1))
    }
    fn pop_n(&mut self, n: usize) -> Step<u32> {
        (0..n).try_fold(0, |m, _| Ok(m.max(self.pop()?)))
    }
    fn pop_to_mark(&mut self) -> Step<u32> {
        let mark = self
            .slots
            .iter()
            .rposition(|s| s.is_none())
            .ok_or("no MARK")?;
        let deepest = self.slots[mark + 1..].iter().flatten().copied().max();
        self.slots.truncate(mark);
        Ok(deepest.unwrap_or(0))
    }
    fn push(&mut self, d: u32) -> Step<()> {
        if d > MAX_DEPTH {
            return Err(format!("objects nested more than {MAX_DEPTH} deep"));
        }
        self.slots.push(Some(d));
        Ok(())
    }
    /// Puts `inner` (an element's depth) into the container on top of the stack.
    fn add_to_top(&mut self, inner: u32) -> Step<()> {
        let top = self.pop()?;
        self.push(top.max(inner + 1))
    }
    fn apply(&mut self, op: u8, memo_id: Option<u32>) -> Step<()> {
        match op {
            0x80 | b'.' => Ok(()),
            b'(' => {
                self.slots.push(None);
                Ok(())
            }
            b'Q' => {
                let d = self.pop()?;
                self.push(d + 1)
            }
            b't' => {
                let d = self.pop_to_mark()?;
                self.push(d + 1)
            }
            0x85..=0x87 => {
                let d = self.pop_n((op - 0x84) as usize)?;
                self.push(d + 1)
            }
            b'a' => {
                let d = self.pop()?;
                self.add_to_top(d)
            }
            b's' => {
                let d = self.pop_n(2)?;
                self.add_to_top(d)
            }
            b'e' | b'u' => {
                let d = self.pop_to_mark()?;
                self.add_to_top(d)
            }
            b'b' | b'R' | 0x81 => {
                let d = self.pop_n(2)?;
                self.push(d + 1)
            }
            b'h' | b'j' => {
                let d = *self
                    .memo
                    .get(&memo_id.ok_or("no memo id")?)
                    .ok_or("missing memo entry")?;
                self.push(d)
            }
            b'q' | b'r' => {
                let d = self.slots.last().ok_or("stack underflow")?.unwrap_or(1);
                self.memo.insert(memo_id.ok_or("no memo id")?, d);
                Ok(())
            }
            // Everything else candle reads pushes one flat object (DICT `d` too: candle
            // 0.11 reads it as EMPTY_DICT and leaves the MARK).
            _ => self.push(1),
        }
    }
}

/// A tensor as candle will read it: `bytes` bytes from byte `start` of storage file
/// `storage`.
struct TensorBytes {
    storage: String,
    shape: Vec<usize>,
    start: u64,
    bytes: u64,
}

/// The state dict's tensors, found the way candle's `read_pth_tensor_info` finds them.
fn tensors(root: Object) -> Vec<(String, Step<TensorBytes>)> {
    let obj = match root {
        Object::Build { callable, args } => match *callable {
            Object::Reduce { callable, .. } => match *callable {
                Object::Class {
                    module_name,
                    class_name,
                } if module_name == "__torch__" && class_name == "Module" => *args,
                _ => return vec![],
            },
            _ => return vec![],
        },
        obj => obj,
    };
    let Object::Dict(entries) = obj else {
        return vec![];
    };
    entries
        .into_iter()
        .filter_map(|(name, value)| {
            let Object::Unicode(name) = name else {
                return None;
            };
            tensor_bytes(value).transpose().map(|t| (name, t))
        })
        .collect()
}

fn int(o: &Object) -> Option<i64> {
    match o {
        Object::Int(i) => Some(*i as i64),
        Object::Long(i) => Some(*i),
        _ => None,
    }
}

/// Mirrors candle's `Object::into_tensor_info` and `rebuild_args`: `Ok(None)` where candle
/// skips the entry with an error of its own, `Err` where it would panic or over-allocate.
fn tensor_bytes(value: Object) -> Step<Option<TensorBytes>> {
    let class = |o: &Object, module: &str, name: &str| {
        matches!(o, Object::Class { module_name, class_name }
            if module_name == module && class_name == name)
    };
    let Object::Reduce { callable, args } = value else {
        return Ok(None);
    };
    let (callable, args) = if class(&callable, "torch._tensor", "_rebuild_from_type_v2") {
        let Object::Tuple(mut a) = *args else {
            return Ok(None);
        };
        if a.len() < 3 {
            return Err(format!("_rebuild_from_type_v2 with {} arguments", a.len()));
        }
        let args = a.swap_remove(2);
        (a.swap_remove(0), args)
    } else if class(&callable, "torch._utils", "_rebuild_parameter") {
        let Object::Tuple(mut a) = *args else {
            return Ok(None);
        };
        if a.is_empty() {
            return Err("_rebuild_parameter without arguments".into());
        }
        match a.swap_remove(0) {
            Object::Reduce { callable, args } => (*callable, *args),
            _ => return Ok(None),
        }
    } else {
        (*callable, *args)
    };
    if !class(&callable, "torch._utils", "_rebuild_tensor_v2") {
        return Ok(None);
    }
    let Object::Tuple(a) = args else {
        return Ok(None);
    };
    if a.len() < 4 {
        return Err(format!("_rebuild_tensor_v2 with {} arguments", a.len()));
    }
    let dims = |o: &Object| -> Option<Vec<usize>> {
        match o {
            Object::Tuple(v) => v
                .iter()
                .map(|x| match x {
                    Object::Int(i) if *i >= 0 => Some(*i as usize),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    };
    let (Some(_stride), Some(shape), Some(offset)) = (dims(&a[3]), dims(&a[2]), int(&a[1])) else {
        return Ok(None);
    };
    let Object::PersistentLoad(storage) = &a[0] else {
        return Ok(None);
    };
    let Object::Tuple(storage) = storage.as_ref() else {
        return Ok(None);
    };
    if storage.len() < 5 {
        return Err(format!("a storage of {} fields", storage.len()));
    }
    let (Some(_size), Object::Unicode(file), Object::Class { class_name, .. }) =
        (int(&storage[4]), &storage[2], &storage[1])
    else {
        return Ok(None);
    };
    let elem: u64 = match class_name.as_str() {
        "FloatStorage" => 4,
        "DoubleStorage" | "LongStorage" => 8,
        "HalfStorage" | "BFloat16Storage" => 2,
        "ByteStorage" => 1,
        _ => return Ok(None),
    };
    if offset < 0 {
        return Err(format!("storage offset {offset}"));
    }
    // candle multiplies the dimensions in both orders; a zero dimension does not stop an
    // overflow on the way to it.
    let nonzero = shape
        .iter()
        .filter(|&&d| d > 0)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let elems = if shape.contains(&0) { Some(0) } else { nonzero };
    let bytes = nonzero.and(elems).and_then(|n| n.checked_mul(elem));
    let start = (offset as u64).checked_mul(elem);
    match (bytes, start) {
        (Some(bytes), Some(start)) if usize::try_from(bytes).is_ok() => Ok(Some(TensorBytes {
            storage: file.clone(),
            shape,
            start,
            bytes,
        })),
        _ => Err(format!(
            "shape {shape:?} at offset {offset} overflows the size of memory"
        )),
    }
}
