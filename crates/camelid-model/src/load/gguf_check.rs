//! What an untrusted GGUF file must satisfy before candle's reader (`gguf_file::Content`)
//! and tensor reads see it, where candle would panic or allocate what the file does not
//! hold: a `general.alignment` that is not a power of two (llama.cpp requires one; candle
//! divides by it, so 0 would panic), metadata arrays whose values take far more memory than
//! their bytes (a `Value` per one-byte element), and tensors whose element count overflows
//! or whose bytes lie past the end of the file. Used by load/gguf.rs.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::io::{Read, Seek};
use std::path::Path;

const GGUF_MAGIC: u32 = 0x4655_4747;
/// Nesting deeper than this is no real file (candle's own limit is 64).
const MAX_DEPTH: usize = 64;
/// GGUF's value type of a u32.
const GGUF_U32: u32 = 4;
/// Metadata may take this much more memory than the file's size (real files' metadata is a
/// small part of them: a vocabulary of 128k tokens is 4 MiB of values).
const METADATA_SLACK: u64 = 64 << 20;

/// Walks the header's metadata (skipping values) and checks `general.alignment` (an
/// integer that is a power of two, as llama.cpp requires) and the memory candle's values
/// will take. Leaves the reader where it was.
pub fn check_header<R: Read + Seek>(r: &mut R, path: &Path) -> Result<Header> {
    let start = r.stream_position().map_err(|e| Error::io(path, e))?;
    let size = r
        .seek(std::io::SeekFrom::End(0))
        .map_err(|e| Error::io(path, e))?;
    r.seek(std::io::SeekFrom::Start(start))
        .map_err(|e| Error::io(path, e))?;
    let mut w = Walker {
        r,
        size,
        long: true,
        values: 0,
    };
    let (tensors, found) = w.find_alignment().map_err(|m| {
        Error::BadWeights(format!("{}: not a readable GGUF file: {m}", path.display()))
    })?;
    w.r.seek(std::io::SeekFrom::Start(start))
        .map_err(|e| Error::io(path, e))?;
    let memory = w.values.saturating_mul(std::mem::size_of::<Value>() as u64);
    if memory > size.saturating_add(METADATA_SLACK) {
        return Err(Error::BadWeights(format!(
            "{}: metadata holds {} values, {memory} bytes in memory for a {size}-byte file",
            path.display(),
            w.values
        )));
    }
    if let Some(a) = found {
        if a <= 0 || (a as u64).count_ones() != 1 {
            return Err(Error::BadWeights(format!(
                "{}: metadata field general.alignment is {a}; it must be a power of two",
                path.display()
            )));
        }
    }
    Ok(Header {
        tensors,
        alignment: found.map_or(32, |a| a as u64),
    })
}

/// What [`check_header`] read that candle's reader does not keep.
pub struct Header {
    /// Tensors the header declares (candle's map keeps one of each name).
    pub tensors: u64,
    /// `general.alignment`, else GGUF's 32.
    pub alignment: u64,
}

/// Every tensor's element count fits in memory and its bytes lie inside the file.
pub fn check_tensors(
    content: &Content,
    header: &Header,
    file_size: u64,
    path: &Path,
) -> Result<()> {
    if (content.tensor_infos.len() as u64) < header.tensors {
        return Err(Error::BadWeights(format!(
            "{}: {} tensors declared, {} distinct names: a tensor name appears twice",
            path.display(),
            header.tensors,
            content.tensor_infos.len()
        )));
    }
    // Each tensor at an aligned offset, none overlapping the next (as llama.cpp requires):
    // weights that share bytes would load as each other.
    let mut spans: Vec<(u64, u64, &str)> = vec![];
    for (name, info) in &content.tensor_infos {
        let bad = |m: String| {
            Err(Error::BadWeights(format!(
                "{}: tensor {name}: {m}",
                path.display()
            )))
        };
        let dims = info.shape.dims();
        let Some(elems) = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
            return bad(format!(
                "shape {dims:?} has more elements than memory can hold"
            ));
        };
        let (block, type_size) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
        if !elems.is_multiple_of(block) {
            return bad(format!(
                "{elems} elements are not whole blocks of {block} ({:?})",
                info.ggml_dtype
            ));
        }
        let bytes = (elems / block)
            .checked_mul(type_size)
            .map(|b| b as u64)
            .filter(|&b| b <= file_size);
        let end = bytes.and_then(|b| {
            content
                .tensor_data_offset
                .checked_add(info.offset)?
                .checked_add(b)
        });
        if end.is_none_or(|e| e > file_size) {
            return bad(format!(
                "shape {dims:?} ({:?}) at data offset {} needs bytes past the end of the \
                 {file_size}-byte file",
                info.ggml_dtype, info.offset
            ));
        }
        if !info.offset.is_multiple_of(header.alignment) {
            return bad(format!(
                "data offset {} is not a multiple of the alignment {}",
                info.offset, header.alignment
            ));
        }
        let len = bytes.expect("checked with the end");
        spans.push((info.offset, info.offset + len, name));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[0].1 > w[1].0 {
            return Err(Error::BadWeights(format!(
                "{}: tensors {} and {} overlap (bytes {}..{} and {}..)",
                path.display(),
                w[0].2,
                w[1].2,
                w[0].0,
                w[0].1,
                w[1].0
            )));
        }
    }
    Ok(())
}

/// A forward-only reader of GGUF's header layout (spec: ggml/docs/gguf.md).
struct Walker<'a, R> {
    r: &'a mut R,
    size: u64,
    /// Lengths and counts are u64 from version 2 on, u32 in version 1.
    long: bool,
    /// Metadata values seen (each becomes a candle `Value`).
    values: u64,
}

type Step<T> = std::result::Result<T, String>;

impl<R: Read + Seek> Walker<'_, R> {
    fn bytes<const N: usize>(&mut self) -> Step<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("header ends early: {e}"))?;
        Ok(b)
    }
    fn u32(&mut self) -> Step<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn len(&mut self) -> Step<u64> {
        Ok(if self.long {
            u64::from_le_bytes(self.bytes()?)
        } else {
            self.u32()? as u64
        })
    }
    fn skip(&mut self, n: u64) -> Step<()> {
        let pos = self.r.stream_position().map_err(|e| e.to_string())?;
        if n > self.size.saturating_sub(pos) {
            return Err(format!(
                "a value of {n} bytes at offset {pos} passes the end"
            ));
        }
        self.r
            .seek(std::io::SeekFrom::Current(n as i64))
            .map_err(|e| e.to_string())?;
        Ok(())
    }
    fn string(&mut self) -> Step<Vec<u8>> {
        let n = self.len()?;
        let pos = self.r.stream_position().map_err(|e| e.to_string())?;
        if n > self.size.saturating_sub(pos) {
            return Err(format!(
                "a string of {n} bytes at offset {pos} passes the end"
            ));
        }
        let mut s = vec![0u8; n as usize];
        self.r.read_exact(&mut s).map_err(|e| e.to_string())?;
        Ok(s)
    }

    /// Reads magic, version and counts, then each key; returns `general.alignment` when it
    /// is an integer.
    /// The header's tensor count and `general.alignment`, if given.
    fn find_alignment(&mut self) -> Step<(u64, Option<i128>)> {
        if self.u32()? != GGUF_MAGIC {
            return Err("no GGUF magic".into());
        }
        let version = self.u32()?;
        if !(1..=3).contains(&version) {
            return Err(format!("GGUF version {version}"));
        }
        self.long = version > 1;
        let tensors = self.len()?;
        let kvs = self.len()?;
        let mut alignment = None;
        // candle keeps the last of a repeated key: a file with `block_count` twice would load
        // as whichever came last (llama.cpp refuses it too).
        let mut seen = std::collections::HashSet::new();
        for _ in 0..kvs {
            let key = self.string()?;
            let ty = self.u32()?;
            if key == b"general.alignment" {
                let value = self
                    .integer(ty)?
                    .ok_or("metadata field general.alignment is not an integer")?;
                // A u32, as llama.cpp reads it: candle's reader takes the 64-bit types as
                // the default 32 instead, and would read every tensor from the wrong place.
                if ty != GGUF_U32 {
                    return Err(format!(
                        "metadata field general.alignment ({value}) is not a u32 (type {ty})"
                    ));
                }
                alignment = Some(value);
            } else {
                self.skip_value(ty, 0)?;
            }
            if !seen.insert(key.clone()) {
                return Err(format!(
                    "metadata field {} appears twice",
                    String::from_utf8_lossy(&key)
                ));
            }
        }
        Ok((tensors, alignment))
    }

    fn integer(&mut self, ty: u32) -> Step<Option<i128>> {
        Ok(Some(match ty {
            0 => u8::from_le_bytes(self.bytes()?) as i128,
            1 => i8::from_le_bytes(self.bytes()?) as i128,
            2 => u16::from_le_bytes(self.bytes()?) as i128,
            3 => i16::from_le_bytes(self.bytes()?) as i128,
            4 => u32::from_le_bytes(self.bytes()?) as i128,
            5 => i32::from_le_bytes(self.bytes()?) as i128,
            10 => u64::from_le_bytes(self.bytes()?) as i128,
            11 => i64::from_le_bytes(self.bytes()?) as i128,
            other => {
                self.skip_value(other, 0)?;
                return Ok(None);
            }
        }))
    }

    fn skip_value(&mut self, ty: u32, depth: usize) -> Step<()> {
        if depth > MAX_DEPTH {
            return Err("arrays nested too deep".into());
        }
        self.values += 1;
        match ty {
            8 => {
                let n = self.len()?;
                self.skip(n)
            }
            9 => {
                let elem = self.u32()?;
                let n = self.len()?;
                match fixed_size(elem) {
                    Some(s) => {
                        self.values = self.values.saturating_add(n);
                        self.skip(n.checked_mul(s).ok_or("array size overflows")?)
                    }
                    None => {
                        // Strings or arrays: each element takes at least a length's bytes,
                        // so a lying count runs into the end of the file.
                        for _ in 0..n {
                            self.skip_value(elem, depth + 1)?;
                        }
                        Ok(())
                    }
                }
            }
            t => match fixed_size(t) {
                Some(s) => self.skip(s),
                None => Err(format!("unknown value type {t}")),
            },
        }
    }
}

fn fixed_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sizes_follow_the_spec() {
        // u8 i8 u16 i16 u32 i32 f32 bool string array u64 i64 f64
        let want = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];
        for (t, w) in want.iter().enumerate() {
            assert_eq!(fixed_size(t as u32).unwrap_or(0), *w, "type {t}");
        }
    }
}
