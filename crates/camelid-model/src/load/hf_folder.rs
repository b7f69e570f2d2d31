//! HF model folders: `config.json` plus safetensors (single or sharded) or PyTorch `.bin`
//! checkpoints (single or sharded). Safetensors win when a folder has both.

use crate::error::{Error, Result};
use crate::linear::Linear;
use crate::load::pth_check::check_pth;
use crate::load::weights::TensorSource;
use candle_core::pickle::PthTensors;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The weight files of a folder, in the format it will be read as.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightFiles {
    Safetensors(Vec<PathBuf>),
    PyTorch(Vec<PathBuf>),
}

/// Shard file names listed in an HF `*.index.json` (`weight_map` values), in order.
pub fn shards_from_index(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::BadWeights(format!("{}: {e}", index.display())))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            Error::BadWeights(format!("{}: field weight_map is missing", index.display()))
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::BadWeights(format!(
            "{}: weight_map names no shard",
            index.display()
        )));
    }
    // Shards are files of the model's folder: an index must not reach elsewhere.
    for f in &files {
        let p = Path::new(f);
        let plain = !f.is_empty()
            && p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(Error::BadWeights(format!(
                "{}: shard name {f:?} is not a file name inside the model folder",
                index.display()
            )));
        }
    }
    Ok(files)
}

/// Finds the weights of a folder: safetensors first, then PyTorch checkpoints.
pub fn find_weight_files(dir: &Path) -> Result<WeightFiles> {
    let st_index = dir.join("model.safetensors.index.json");
    if st_index.exists() {
        let files = shards_from_index(&st_index)?;
        return Ok(WeightFiles::Safetensors(
            files.into_iter().map(|f| dir.join(f)).collect(),
        ));
    }
    if dir.join("model.safetensors").exists() {
        return Ok(WeightFiles::Safetensors(
            vec![dir.join("model.safetensors")],
        ));
    }
    let pt_index = dir.join("pytorch_model.bin.index.json");
    if pt_index.exists() {
        let files = shards_from_index(&pt_index)?;
        return Ok(WeightFiles::PyTorch(
            files.into_iter().map(|f| dir.join(f)).collect(),
        ));
    }
    if dir.join("pytorch_model.bin").exists() {
        return Ok(WeightFiles::PyTorch(vec![dir.join("pytorch_model.bin")]));
    }
    // Any other *.safetensors files (some repos name them differently).
    let mut others: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    others.sort();
    if !others.is_empty() {
        return Ok(WeightFiles::Safetensors(others));
    }
    Err(Error::BadWeights(format!(
        "{}: no model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json",
        dir.display()
    )))
}

enum Backing {
    Safetensors(MmapedSafetensors),
    /// One reader per shard and which shard holds each tensor.
    PyTorch(Vec<PthTensors>, HashMap<String, usize>),
}

pub struct HfWeights {
    origin: String,
    backing: Backing,
    shapes: HashMap<String, Vec<usize>>,
    /// The stored name of a tensor read under another (see [`HfWeights::read_under`]).
    stored_names: HashMap<String, String>,
    device: Device,
    /// Matrices stored in f16/bf16 stay 16-bit when f32 is asked for on the CPU (the own
    /// 16-bit kernels run them; vectors still become f32).
    pub keep_16bit: bool,
    /// Matrices quantized to this format as they are read (quantize-at-load), where their
    /// width is whole blocks of it; vectors and the embedding table are not.
    pub quantize: Option<GgmlDType>,
    /// Names read so far (see [`HfWeights::unread`]).
    read: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl HfWeights {
    pub fn open(files: &WeightFiles, device: &Device) -> Result<Self> {
        let mut shapes = HashMap::new();
        let (origin, backing) = match files {
            WeightFiles::Safetensors(paths) => {
                for p in paths {
                    if !p.exists() {
                        return Err(Error::BadWeights(format!(
                            "{}: shard is missing",
                            p.display()
                        )));
                    }
                }
                // SAFETY: the files are memory-mapped read-only; camelid never writes to them
                // while they are loaded.
                let folder = paths[0].parent().unwrap_or(Path::new("."));
                // candle's error names the shard it could not read.
                let st = unsafe { MmapedSafetensors::multi(paths) }
                    .map_err(|e| Error::BadWeights(format!("{}: {e}", folder.display())))?;
                for (name, view) in st.tensors() {
                    // Two shards with one name: which is read would depend on the order.
                    if shapes.insert(name.clone(), view.shape().to_vec()).is_some() {
                        return Err(Error::BadWeights(format!(
                            "{}: tensor {name} is stored in two shards",
                            folder.display()
                        )));
                    }
                }
                (
                    paths[0]
                        .parent()
                        .unwrap_or(Path::new("."))
                        .display()
                        .to_string(),
                    Backing::Safetensors(st),
                )
            }
            WeightFiles::PyTorch(paths) => {
                let mut readers = Vec::new();
                let mut route = HashMap::new();
                for (i, p) in paths.iter().enumerate() {
                    check_pth(p)?;
                    let r = PthTensors::new(p, None).map_err(|e| {
                        Error::BadWeights(format!(
                            "{}: not a readable PyTorch checkpoint: {e}",
                            p.display()
                        ))
                    })?;
                    for (name, info) in r.tensor_infos() {
                        shapes.insert(name.clone(), info.layout.shape().dims().to_vec());
                        if route.insert(name.clone(), i).is_some() {
                            return Err(Error::BadWeights(format!(
                                "{}: tensor {name} is stored in two shards",
                                p.display()
                            )));
                        }
                    }
                    readers.push(r);
                }
                (
                    paths[0]
                        .parent()
                        .unwrap_or(Path::new("."))
                        .display()
                        .to_string(),
                    Backing::PyTorch(readers, route),
                )
            }
        };
        Ok(Self {
            origin,
            backing,
            shapes,
            stored_names: HashMap::new(),
            device: device.clone(),
            keep_16bit: false,
            quantize: None,
            read: Default::default(),
        })
    }

    /// Stored tensors no read asked for (by their names as read), sorted.
    pub fn unread(&self) -> Vec<String> {
        let read = self.read.borrow();
        let mut n: Vec<String> = self
            .shapes
            .keys()
            .filter(|k| !read.contains(*k) && !self.stored_names.values().any(|s| s == *k))
            .cloned()
            .collect();
        n.sort();
        n
    }

    /// Tensors stored under `from…` are read as `to…` too (`(from, to)` pairs): a multimodal
    /// checkpoint's language model (`language_model.model.` → `model.`).
    pub fn read_under(&mut self, prefixes: &[(&str, &str)]) {
        let renamed: Vec<(String, String)> = self
            .shapes
            .keys()
            .filter_map(|name| {
                prefixes.iter().find_map(|(from, to)| {
                    name.strip_prefix(from)
                        .map(|rest| (format!("{to}{rest}"), name.clone()))
                })
            })
            .collect();
        for (canonical, stored) in renamed {
            let shape = self.shapes[&stored].clone();
            self.shapes.insert(canonical.clone(), shape);
            self.stored_names.insert(canonical, stored);
        }
    }

    /// A bare base model's checkpoint (`LlamaModel`, `MistralModel`, `Qwen2Model`: how
    /// sentence-transformers saves an embedding model such as e5-mistral) stores the
    /// decoder's tensors without the `model.` prefix: they are read under it. Whether it was
    /// one.
    pub fn read_bare_base_model(&mut self) -> bool {
        let bare = self.shapes.contains_key("embed_tokens.weight")
            && !self.shapes.keys().any(|k| k.starts_with("model."));
        if bare {
            self.read_under(&[
                ("embed_tokens.", "model.embed_tokens."),
                ("layers.", "model.layers."),
                ("norm.", "model.norm."),
            ]);
        }
        bare
    }

    /// The values the files hold, every stored tensor's (each once, under its stored name).
    pub fn stored_elements(&self) -> u64 {
        self.shapes
            .iter()
            .filter(|(name, _)| !self.stored_names.contains_key(*name))
            .map(|(_, s)| s.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64)))
            .fold(0u64, u64::saturating_add)
    }

    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<_> = self.shapes.keys().cloned().collect();
        n.sort();
        n
    }

    /// The tensor as stored (its own dtype), on the device.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        self.read.borrow_mut().insert(name.to_string());
        let name = self.stored_names.get(name).map_or(name, String::as_str);
        let t = match &self.backing {
            Backing::Safetensors(st) => st.load(name, &self.device).inspect(|_| {
                // The tensor is copied out: its pages of the mapping are no longer needed.
                if let Ok(view) = st.get(name) {
                    release_mapped_pages(view.data());
                }
            }),
            Backing::PyTorch(readers, route) => {
                let i = *route.get(name).ok_or_else(|| self.missing(name))?;
                readers[i]
                    .get(name)
                    .and_then(|t| {
                        t.ok_or_else(|| candle_core::Error::Msg(format!("tensor {name} vanished")))
                    })
                    .and_then(|t| t.to_device(&self.device))
            }
        };
        let t = t.map_err(|e| Error::BadWeights(format!("{}: tensor {name}: {e}", self.origin)))?;
        // Integer (or 8-bit float) tensors are packed or quantized weights that need their
        // own unpacking; cast to floats they would load and answer garbage.
        if !matches!(
            t.dtype(),
            DType::F16 | DType::BF16 | DType::F32 | DType::F64
        ) {
            return Err(Error::BadWeights(format!(
                "{}: tensor {name} is stored as {:?}, not as floating-point weights (a \
                 quantized or packed checkpoint?): give the model's F16/BF16/F32 weights",
                self.origin,
                t.dtype()
            )));
        }
        Ok(t)
    }

    /// A 16-bit safetensors matrix kept 16-bit (see `keep_16bit`), laid out for the kernels
    /// straight from the file's mapping: candle would copy it into a tensor first, and the
    /// tensor into a vector. `None` for everything else.
    fn half_linear(&self, name: &str, dtype: DType) -> Result<Option<Linear>> {
        use camelid_kernels::f16gemm::HalfKind;
        let Backing::Safetensors(st) = &self.backing else {
            return Ok(None);
        };
        if !self.keep_16bit
            || !self.device.is_cpu()
            || dtype != DType::F32
            || self.quantize.is_some()
        {
            return Ok(None);
        }
        let stored = self.stored_names.get(name).map_or(name, String::as_str);
        let Ok(view) = st.get(stored) else {
            return Ok(None);
        };
        self.read.borrow_mut().insert(name.to_string());
        let kind = match DType::try_from(view.dtype()) {
            Ok(DType::F16) => HalfKind::F16,
            Ok(DType::BF16) => HalfKind::Bf16,
            _ => return Ok(None),
        };
        let &[rows, cols] = view.shape() else {
            return Ok(None);
        };
        let bytes = view.data();
        if rows.checked_mul(cols).and_then(|n| n.checked_mul(2)) != Some(bytes.len()) {
            return Err(Error::BadWeights(format!(
                "{}: tensor {name}: {} bytes for {rows} × {cols}",
                self.origin,
                bytes.len()
            )));
        }
        let l = Linear::half_from_le_bytes(kind, rows, cols, bytes);
        release_mapped_pages(bytes);
        Ok(Some(l))
    }

    /// Whether `t`, asked for in `dtype`, stays in its own 16-bit type (see `keep_16bit`).
    fn keeps_16bit(&self, t: &Tensor, dtype: DType) -> bool {
        self.keep_16bit
            && self.device.is_cpu()
            && dtype == DType::F32
            && matches!(t.dtype(), DType::F16 | DType::BF16)
    }

    fn missing(&self, name: &str) -> Error {
        Error::BadWeights(format!("{}: tensor {name} is missing", self.origin))
    }
}

/// The bytes of `t` (a matrix) quantized to `q`, a few rows at a time: blocks run along rows, so
/// they are those of quantizing it whole, without its f32 copy (the embedding table's, when tied
/// to the output, would be the largest allocation of the load).
fn quantize_by_rows(t: &Tensor, q: GgmlDType) -> candle_core::Result<Vec<u8>> {
    let (rows, cols) = t.dims2()?;
    let step = ((8 << 20) / (4 * cols.max(1))).max(1);
    let mut bytes = Vec::with_capacity(rows * cols / q.block_size() * q.type_size());
    for start in (0..rows).step_by(step) {
        let part = t.narrow(0, start, step.min(rows - start))?;
        // An f32 matrix's rows are a view into its whole storage (`to_dtype` copies nothing),
        // and candle's quantizer reads the storage, not the view: every part would be the
        // first rows. Other types are converted into a storage of their own.
        let whole = part.elem_count() == t.elem_count();
        let part = match t.dtype() {
            DType::F32 if !whole => part.force_contiguous()?,
            _ => part.to_dtype(DType::F32)?,
        };
        let part = QTensor::quantize(&part, q)?;
        bytes.extend_from_slice(&part.data()?);
    }
    Ok(bytes)
}

/// Drops the pages of `bytes`, a part of a read-only file mapping, from this process's resident
/// set (the kernel reads them from the file or page cache again if they are touched). Without
/// it every page read while loading stays counted until the whole mapping goes: a 16-bit 7B
/// folder would hold its 13 GiB of file pages beside the converted or quantized model.
fn release_mapped_pages(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let start = bytes.as_ptr() as usize / page * page;
    let end = (bytes.as_ptr() as usize + bytes.len()).div_ceil(page) * page;
    // SAFETY: the range lies in a read-only file mapping that camelid never writes: dropping its
    // pages loses nothing (pages shared with a neighbouring tensor are read again on their next
    // touch), and `bytes` keeps reading what the file holds.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
    }
}

impl TensorSource for HfWeights {
    /// The embedding table itself where [`Self::linear`] would give the same dense matrix (no
    /// quantizing, no 16-bit CPU kernel): one copy of it, not two (a GPU's bf16 table of
    /// Gemma-2-9B is 1.7 GiB, Llama-3.2-1B's 0.5 GiB; an f32 checkpoint's on the CPU, whose
    /// head no 16-bit kernel takes, SmolLM2-1.7B's 0.4 GiB).
    fn tied_head(
        &mut self,
        name: &str,
        dtype: DType,
        embed: &crate::embedding::Embeddings,
    ) -> Result<Linear> {
        if self.quantize.is_none() {
            if let Some(t) = embed.dense().filter(|t| t.dtype() == dtype) {
                // A 16-bit table on the CPU: its own 16-bit copy for the half kernel (a
                // decode step reads half the bytes); any other table is shared.
                if let Some(half) = self.half_linear(name, dtype)? {
                    return Ok(half);
                }
                return Ok(Linear::from_dense(t.clone())?);
            }
        }
        self.linear(name, dtype)
    }

    fn origin(&self) -> String {
        self.origin.clone()
    }
    fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.shapes
            .get(name)
            .cloned()
            .ok_or_else(|| self.missing(name))
    }
    fn linear(&mut self, name: &str, dtype: DType) -> Result<Linear> {
        if let Some(l) = self.half_linear(name, dtype)? {
            return Ok(l);
        }
        let t = self.load(name)?;
        if let Some(q) = self.quantize {
            let cols = t.dims().last().copied().unwrap_or(0);
            if t.rank() == 2 && cols % q.block_size() == 0 {
                let (rows, cols) = t.dims2()?;
                let bytes = quantize_by_rows(&t, q).map_err(|e| {
                    Error::BadWeights(format!("{}: tensor {name}: quantizing: {e}", self.origin))
                })?;
                drop(t);
                return Ok(Linear::from_ggml_bytes(q, rows, cols, bytes, &self.device)?);
            }
            // As llama-quantize does with such tensors, keep it in a format that fits.
            tracing::warn!(
                "{}: tensor {name} ({cols} wide) is not whole {q:?} blocks: kept unquantized",
                self.origin
            );
        }
        if self.keeps_16bit(&t, dtype) {
            return Ok(Linear::from_dense_16bit(t)?);
        }
        Ok(Linear::from_dense(t.to_dtype(dtype)?)?)
    }
    fn dense(&mut self, name: &str, dtype: DType) -> Result<Tensor> {
        let t = self.load(name)?;
        // The embedding table: gathered by row and widened per token by the runtimes.
        if self.keeps_16bit(&t, dtype) && t.rank() == 2 {
            return Ok(t);
        }
        Ok(t.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident kB of the mapping of this process that holds `addr` (`/proc/self/smaps`).
    fn resident_kb_of_mapping(addr: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("Rss:") {
                    return kb.trim().trim_end_matches("kB").trim().parse().unwrap();
                }
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    /// A tied head shares an f32 checkpoint's embedding table on the CPU (no 16-bit kernel
    /// takes it: a second f32 copy was made), and a 16-bit one gets its own 16-bit copy for
    /// the half kernel.
    #[test]
    fn a_tied_head_shares_a_table_no_half_kernel_takes() {
        let dir = tempfile::tempdir().unwrap();
        let name = "model.embed_tokens.weight";
        for stored in [DType::F32, DType::BF16] {
            let path = dir.path().join(format!("{stored:?}.safetensors"));
            let w = Tensor::randn(0f32, 1.0, (64, 32), &Device::Cpu)
                .unwrap()
                .to_dtype(stored)
                .unwrap();
            candle_core::safetensors::save(&HashMap::from([(name.to_string(), w)]), &path).unwrap();
            let mut weights =
                HfWeights::open(&WeightFiles::Safetensors(vec![path]), &Device::Cpu).unwrap();
            weights.keep_16bit = true;
            let table = weights.load(name).unwrap().to_dtype(DType::F32).unwrap();
            let embed = crate::embedding::Embeddings::Dense(table.clone());
            let head = weights.tied_head(name, DType::F32, &embed).unwrap();
            let shared = head.dense_weight().is_some_and(|t| t.id() == table.id());
            assert_eq!(shared, stored == DType::F32, "{stored:?}: {head:?}");
        }
    }

    #[test]
    fn quantizing_by_rows_gives_the_bytes_of_quantizing_whole() {
        // 1100 rows of 2048: the 8 MiB steps (1024 rows) end inside the matrix.
        let t32 = Tensor::randn(0f32, 1.0, (1100, 2048), &Device::Cpu).unwrap();
        let t16 = t32.to_dtype(DType::F16).unwrap();
        // An f32 source too: its row parts are views into one storage, not copies.
        for (t, q) in [GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::Q4K]
            .into_iter()
            .flat_map(|q| [(&t16, q), (&t32, q)])
        {
            let whole = QTensor::quantize(&t.to_dtype(DType::F32).unwrap(), q).unwrap();
            let rows = quantize_by_rows(t, q).unwrap();
            assert!(
                whole.data().unwrap() == rows.as_slice(),
                "{q:?} {:?}",
                t.dtype()
            );
        }
    }

    #[test]
    fn loading_a_tensor_gives_its_mapped_pages_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        // 16 MiB of f16: a tensor far larger than the pages it may share with the header.
        let w = Tensor::ones((4096, 2048), DType::F16, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), w)]), &path).unwrap();
        let weights = HfWeights::open(&WeightFiles::Safetensors(vec![path]), &Device::Cpu).unwrap();
        let t = weights.load("w").unwrap();
        let total = t.to_dtype(DType::F32).unwrap().sum_all().unwrap();
        assert_eq!(total.to_scalar::<f32>().unwrap(), 4096.0 * 2048.0);
        let Backing::Safetensors(st) = &weights.backing else {
            unreachable!()
        };
        let addr = st.get("w").unwrap().data().as_ptr() as usize;
        let kb = resident_kb_of_mapping(addr);
        assert!(
            kb < 1024,
            "{kb} kB of the 16 MiB tensor's mapping are still resident"
        );
    }
}
