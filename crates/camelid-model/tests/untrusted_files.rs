//! Model files from untrusted sources: each malformed file below, written by hand into a
//! temporary folder, must give an error naming the problem — no panic (none is caught
//! here, so a panic fails the test), no allocation beyond what the file holds. Messages are
//! matched as phrases: candle errors carry a backtrace, which names these tests.

use camelid_model::load::gguf::GgufFile;
use camelid_model::load::hf_folder::{find_weight_files, HfWeights, WeightFiles};
use candle_core::Device;
use std::io::Write;
use std::path::{Path, PathBuf};

// ---- GGUF, written by hand (spec: ggml/docs/gguf.md, version 3) ----

fn gguf_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A tensor info: name, dims, ggml type, data offset.
type TensorInfo<'a> = (&'a str, Vec<u64>, u32, u64);

/// A GGUF file: metadata `(key, value type, value bytes)` and tensor infos, then `data` after
/// 32-byte alignment.
fn gguf(kvs: &[(&str, u32, Vec<u8>)], tensors: &[TensorInfo], data: &[u8]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, ty, v) in kvs {
        gguf_string(&mut out, k);
        out.extend(ty.to_le_bytes());
        out.extend(v);
    }
    for (name, dims, ty, offset) in tensors {
        gguf_string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    out.extend(data);
    out
}

const U32: u32 = 4;
const ARRAY: u32 = 9;
const F32_TENSOR: u32 = 0;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn open_err(path: &Path) -> String {
    match GgufFile::open(path, &Device::Cpu) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gguf_with_a_good_tensor_opens_and_reads() {
    // The writer above makes files candle reads: the bad cases differ in one field only.
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = [1f32, 2., 3., 4.]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let p = write(
        dir.path(),
        "ok.gguf",
        &gguf(
            &[("general.alignment", U32, 32u32.to_le_bytes().to_vec())],
            &[("t", vec![2, 2], F32_TENSOR, 0)],
            &data,
        ),
    );
    let mut g = GgufFile::open(&p, &Device::Cpu).unwrap();
    let t = g
        .read_qtensor("t")
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap();
    assert_eq!(t.to_vec2::<f32>().unwrap(), [[1., 2.], [3., 4.]]);
}

#[test]
fn gguf_alignment_zero_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in [("zero", 0u32), ("three", 3)] {
        let p = write(
            dir.path(),
            &format!("{name}.gguf"),
            &gguf(
                &[("general.alignment", U32, value.to_le_bytes().to_vec())],
                &[],
                &[],
            ),
        );
        let e = open_err(&p);
        assert!(
            e.contains("general.alignment") && e.contains("power of two"),
            "{e}"
        );
    }
}

/// A metadata key written twice (candle kept the last: a second `block_count` of 1 loaded
/// 1 layer of 30) and a `general.alignment` that is not an integer are refused by name.
#[test]
fn gguf_repeated_keys_and_a_non_integer_alignment_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let count = |n: u32| ("llama.block_count", U32, n.to_le_bytes().to_vec());
    let p = write(
        dir.path(),
        "twice.gguf",
        &gguf(&[count(30), count(1)], &[], &[]),
    );
    let e = open_err(&p);
    assert!(
        e.contains("llama.block_count") && e.contains("twice"),
        "{e}"
    );
    const F32_VALUE: u32 = 6;
    let p = write(
        dir.path(),
        "float.gguf",
        &gguf(
            &[("general.alignment", F32_VALUE, 32f32.to_le_bytes().to_vec())],
            &[],
            &[],
        ),
    );
    let e = open_err(&p);
    assert!(
        e.contains("general.alignment") && e.contains("not an integer"),
        "{e}"
    );
    // A 64-bit alignment: candle's reader would take 32 and read the tensors from the wrong
    // place (llama.cpp reads only a u32).
    const U64_VALUE: u32 = 10;
    let p = write(
        dir.path(),
        "u64.gguf",
        &gguf(
            &[("general.alignment", U64_VALUE, 64u64.to_le_bytes().to_vec())],
            &[],
            &[],
        ),
    );
    let e = open_err(&p);
    assert!(
        e.contains("general.alignment") && e.contains("not a u32"),
        "{e}"
    );
}

/// Tensors that share bytes, sit at an offset off the alignment, or share a name (candle's
/// map kept one) are refused, naming them.
#[test]
fn gguf_overlapping_misaligned_or_repeated_tensors_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0u8; 128];
    let cases: [(&str, Vec<TensorInfo>, &[&str]); 3] = [
        (
            "overlap",
            vec![("a", vec![8], F32_TENSOR, 0), ("b", vec![8], F32_TENSOR, 0)],
            &["overlap"],
        ),
        (
            "misaligned",
            vec![("a", vec![4], F32_TENSOR, 4)],
            &["a", "alignment"],
        ),
        (
            "repeated",
            vec![
                ("a", vec![4], F32_TENSOR, 0),
                ("a", vec![4], F32_TENSOR, 32),
            ],
            &["appears twice"],
        ),
    ];
    for (name, tensors, says) in cases {
        let p = write(
            dir.path(),
            &format!("{name}.gguf"),
            &gguf(&[], &tensors, &data),
        );
        let e = open_err(&p);
        assert!(says.iter().all(|w| e.contains(w)), "{name}: {e}");
    }
    // Back to back at aligned offsets: fine.
    let p = write(
        dir.path(),
        "fine.gguf",
        &gguf(
            &[],
            &[
                ("a", vec![8], F32_TENSOR, 0),
                ("b", vec![8], F32_TENSOR, 32),
            ],
            &data,
        ),
    );
    GgufFile::open(&p, &Device::Cpu).unwrap();
}

#[test]
fn gguf_metadata_that_takes_more_memory_than_the_file_is_an_error() {
    // 3 MB of one-byte array elements: candle keeps a 32-byte value for each, ~100 MB.
    let n: u64 = 3 << 20;
    let mut array = 0u32.to_le_bytes().to_vec(); // element type u8
    array.extend(n.to_le_bytes());
    array.extend(vec![7u8; n as usize]);
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "array.gguf",
        &gguf(&[("general.filler", ARRAY, array)], &[], &[]),
    );
    let e = open_err(&p);
    assert!(e.contains("metadata holds 3145729 values"), "{e}");
}

#[test]
fn gguf_tensor_dims_that_overflow_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "overflow.gguf",
        &gguf(
            &[],
            &[(
                "token_embd.weight",
                vec![1 << 32, 1 << 32, 1 << 32],
                F32_TENSOR,
                0,
            )],
            &[0; 64],
        ),
    );
    let e = open_err(&p);
    assert!(
        e.contains("tensor token_embd.weight: shape")
            && e.contains("more elements than memory can hold"),
        "{e}"
    );
}

#[test]
fn gguf_tensor_past_the_end_of_the_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (name, dims, offset) in [
        ("big", vec![1 << 20, 1 << 20], 0u64),
        ("late", vec![4], u64::MAX - 8),
    ] {
        let p = write(
            dir.path(),
            &format!("{name}.gguf"),
            &gguf(&[], &[("t", dims, F32_TENSOR, offset)], &[0; 16]),
        );
        let e = open_err(&p);
        assert!(
            e.contains("tensor t: shape") && e.contains("needs bytes past the end"),
            "{e}"
        );
    }
}

// ---- PyTorch checkpoints: a zip of archive/data.pkl and archive/data/<storage> ----

/// Pickle opcodes (pickletools' names).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const EMPTY_LIST: u8 = b']';
    pub const MARK: u8 = b'(';
    pub const GLOBAL: u8 = b'c';
    pub const BININT1: u8 = b'K';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINUNICODE: u8 = b'X';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const REDUCE: u8 = b'R';
    pub const SETITEMS: u8 = b'u';
    pub const BINPUT: u8 = b'q';
    pub const BINGET: u8 = b'h';
    pub const STOP: u8 = b'.';
}

#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, o: u8) -> &mut Self {
        self.0.push(o);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(op::BINUNICODE);
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(op::GLOBAL);
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
    /// An int as pickle protocol 2 writes it: BININT1, BININT, or LONG1 beyond 32 bits.
    fn int(&mut self, v: i64) -> &mut Self {
        if (0..256).contains(&v) {
            self.0.extend([op::BININT1, v as u8]);
        } else if let Ok(v) = i32::try_from(v) {
            self.0.push(op::BININT);
            self.0.extend(v.to_le_bytes());
        } else {
            self.0.extend([op::LONG1, 8]);
            self.0.extend(v.to_le_bytes());
        }
        self
    }
    fn ints(&mut self, v: &[i64]) -> &mut Self {
        self.op(op::MARK);
        for &x in v {
            self.int(x);
        }
        self.op(op::TUPLE)
    }
}

/// `{"weight": _rebuild_tensor_v2(storage "0" of 4 floats, offset, size, stride, False,
/// OrderedDict())}` as torch.save writes it; `args` limits how many of the six arguments
/// are written.
fn state_dict(offset: i64, size: &[i64], stride: &[i64], args: usize) -> Vec<u8> {
    let mut p = Pickle::default();
    p.op(op::PROTO)
        .op(2)
        .op(op::EMPTY_DICT)
        .op(op::MARK)
        .str("weight");
    p.global("torch._utils", "_rebuild_tensor_v2").op(op::MARK);
    let parts: [&dyn Fn(&mut Pickle); 6] = [
        &|p| {
            p.op(op::MARK)
                .str("storage")
                .global("torch", "FloatStorage");
            p.str("0").str("cpu").int(4).op(op::TUPLE).op(op::BINPERSID);
        },
        &|p| {
            p.int(offset);
        },
        &|p| {
            p.ints(size);
        },
        &|p| {
            p.ints(stride);
        },
        &|p| {
            p.op(op::NEWFALSE);
        },
        &|p| {
            p.global("collections", "OrderedDict")
                .op(op::EMPTY_TUPLE)
                .op(op::REDUCE);
        },
    ];
    for part in &parts[..args] {
        part(&mut p);
    }
    p.op(op::TUPLE).op(op::REDUCE).op(op::SETITEMS).op(op::STOP);
    p.0
}

/// A checkpoint with `pkl` as its pickle and four floats (1, 2, 3, 4) as storage "0".
fn checkpoint(dir: &Path, name: &str, pkl: &[u8]) -> PathBuf {
    checkpoint_with(dir, name, pkl, &[1., 2., 3., 4.])
}

/// A checkpoint with `pkl` as its pickle and `storage` as storage "0".
fn checkpoint_with(dir: &Path, name: &str, pkl: &[u8], storage: &[f32]) -> PathBuf {
    let path = dir.join(name);
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", stored).unwrap();
    z.write_all(pkl).unwrap();
    z.start_file("archive/data/0", stored).unwrap();
    for x in storage {
        z.write_all(&x.to_le_bytes()).unwrap();
    }
    z.finish().unwrap();
    path
}

/// `{name: _rebuild_tensor_v2(storage "0" of `len` floats, 0, (len,), (1,), False,
/// OrderedDict()) for each name}`: every tensor the whole storage.
fn shared_storage_dict(names: &[String], len: i64) -> Vec<u8> {
    let mut p = Pickle::default();
    p.op(op::PROTO).op(2).op(op::EMPTY_DICT).op(op::MARK);
    for name in names {
        p.str(name);
        p.global("torch._utils", "_rebuild_tensor_v2").op(op::MARK);
        p.op(op::MARK)
            .str("storage")
            .global("torch", "FloatStorage");
        p.str("0")
            .str("cpu")
            .int(len)
            .op(op::TUPLE)
            .op(op::BINPERSID);
        p.int(0).ints(&[len]).ints(&[1]).op(op::NEWFALSE);
        p.global("collections", "OrderedDict")
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE);
        p.op(op::TUPLE).op(op::REDUCE);
    }
    p.op(op::SETITEMS).op(op::STOP);
    p.0
}

/// Tensors may share a storage (tied weights: two names, one storage), but not without
/// bound: 64 names over one 1 MB storage would load as 64 MB from a 1 MB file.
#[test]
fn pytorch_tensors_sharing_one_storage_past_the_files_size_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let len = 1 << 18;
    let storage: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let names = |n: usize| (0..n).map(|i| format!("w{i}")).collect::<Vec<_>>();
    let tied = checkpoint_with(
        dir.path(),
        "tied.bin",
        &shared_storage_dict(&names(2), len as i64),
        &storage,
    );
    let w = HfWeights::open(&WeightFiles::PyTorch(vec![tied]), &Device::Cpu).unwrap();
    assert_eq!(w.load("w1").unwrap().dims(), [len]);
    let many = checkpoint_with(
        dir.path(),
        "many.bin",
        &shared_storage_dict(&names(64), len as i64),
        &storage,
    );
    let e = match HfWeights::open(&WeightFiles::PyTorch(vec![many]), &Device::Cpu) {
        Ok(_) => panic!("64 copies of one storage opened"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("64 tensors") && e.contains("file"), "{e}");
}

/// Opens the checkpoint and reads its tensor `weight`.
fn read_weight(path: &Path) -> camelid_model::Result<candle_core::Tensor> {
    HfWeights::open(
        &WeightFiles::PyTorch(vec![path.to_path_buf()]),
        &Device::Cpu,
    )?
    .load("weight")
}

fn pth_err(dir: &Path, name: &str, pkl: &[u8]) -> String {
    let p = checkpoint(dir, name, pkl);
    match read_weight(&p) {
        Ok(t) => panic!("{name}: read a tensor of shape {:?}", t.dims()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn pytorch_checkpoint_written_by_hand_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = checkpoint(dir.path(), "ok.bin", &state_dict(0, &[2, 2], &[2, 1], 6));
    let t = read_weight(&p).unwrap();
    assert_eq!(t.to_vec2::<f32>().unwrap(), [[1., 2.], [3., 4.]]);
}

#[test]
fn pytorch_tensor_larger_than_the_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = pth_err(
        dir.path(),
        "big.bin",
        &state_dict(0, &[1_000_000, 1_000_000], &[1_000_000, 1], 6),
    );
    assert!(
        e.contains("tensor weight: shape") && e.contains("needs bytes past"),
        "{e}"
    );
    let e = pth_err(
        dir.path(),
        "offset.bin",
        &state_dict(3, &[2, 2], &[2, 1], 6),
    );
    assert!(
        e.contains("tensor weight: shape") && e.contains("needs bytes past"),
        "{e}"
    );
}

#[test]
fn pytorch_shape_that_overflows_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let big = i32::MAX as i64;
    let e = pth_err(
        dir.path(),
        "overflow.bin",
        &state_dict(0, &[big, big, big], &[1, 1, 1], 6),
    );
    assert!(
        e.contains("tensor weight: shape") && e.contains("overflows the size of memory"),
        "{e}"
    );
}

#[test]
fn pytorch_negative_offset_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = pth_err(
        dir.path(),
        "negative.bin",
        &state_dict(-1, &[2, 2], &[2, 1], 6),
    );
    assert!(e.contains("tensor weight: storage offset -1"), "{e}");
}

#[test]
fn pytorch_rebuild_with_too_few_arguments_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // Fewer arguments than the indices candle takes from them.
    let e = pth_err(dir.path(), "args.bin", &state_dict(0, &[2, 2], &[2, 1], 2));
    assert!(e.contains("_rebuild_tensor_v2 with 2 arguments"), "{e}");
}

#[test]
fn pytorch_string_longer_than_the_pickle_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A string that declares 4 GB in a file of a few hundred bytes.
    let mut pkl = vec![op::PROTO, 2, op::BINUNICODE];
    pkl.extend(0xFFFF_FFF0u32.to_le_bytes());
    pkl.extend(b"abc.");
    let e = pth_err(dir.path(), "string.bin", &pkl);
    assert!(e.contains("string of 4294967280 bytes"), "{e}");
}

#[test]
fn pytorch_memo_copies_that_multiply_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A memo entry replaced by a tuple of two copies of itself, 60 times: 2^60 objects.
    let mut p = Pickle::default();
    p.op(op::PROTO)
        .op(2)
        .op(op::EMPTY_LIST)
        .op(op::BINPUT)
        .op(0);
    for _ in 0..60 {
        p.op(op::BINGET).op(0).op(op::BINGET).op(0).op(op::TUPLE2);
        p.op(op::BINPUT).op(0);
    }
    p.op(op::STOP);
    let e = pth_err(dir.path(), "memo.bin", &p.0);
    assert!(e.contains("memo copies"), "{e}");
}

#[test]
fn pytorch_nesting_deep_enough_to_overflow_the_stack_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // Tuples in tuples, a million deep: dropping or copying it recurses a million times.
    let mut p = Pickle::default();
    p.op(op::PROTO).op(2).op(op::EMPTY_TUPLE);
    for _ in 0..1_000_000 {
        p.op(op::TUPLE1);
    }
    p.op(op::STOP);
    let e = pth_err(dir.path(), "deep.bin", &p.0);
    assert!(e.contains("nested more than"), "{e}");
}

// ---- safetensors shard indexes ----

#[test]
fn shard_names_outside_the_folder_are_errors() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    // A real safetensors file next to the folder, which `../x.safetensors` would reach.
    let t = candle_core::Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("w".to_string(), t)]),
        root.path().join("x.safetensors"),
    )
    .unwrap();
    for shard in [
        "../x.safetensors",
        "/etc/passwd",
        "a/../../x.safetensors",
        "",
    ] {
        let index = serde_json::json!({"weight_map": {"w": shard}});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let e = find_weight_files(&dir).expect_err(shard).to_string();
        assert!(
            e.contains("shard name") && e.contains("inside the model folder"),
            "{e}"
        );
    }
    // An index that names no shard (loading it indexed `paths[0]` of none: a panic).
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {}}"#,
    )
    .unwrap();
    let e = find_weight_files(&dir).unwrap_err().to_string();
    assert!(e.contains("names no shard"), "{e}");
    // A shard in a subfolder of the model's folder is still a shard.
    let index = serde_json::json!({"weight_map": {"w": "part/model-1.safetensors"}});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(
        find_weight_files(&dir).unwrap(),
        WeightFiles::Safetensors(vec![dir.join("part/model-1.safetensors")])
    );
}

/// A SentencePiece vocabulary whose pieces `a`, `aa`, … split into each other every way
/// (2 MB of pieces, a `tokenizer.model` or a GGUF's `llama` vocabulary) would make merges of
/// about 2.7 GB: refused instead, naming the bound.
#[test]
fn a_sentencepiece_vocabulary_of_runaway_merges_is_an_error() {
    use camelid_model::text::tokenizer::{spm_bpe_json, PieceType};
    let pieces: Vec<(String, f32, PieceType)> = (1..=2000)
        .map(|n| ("a".repeat(n), -(n as f32), PieceType::Normal))
        .collect();
    let e = spm_bpe_json(&pieces, true).unwrap_err().to_string();
    assert!(e.contains("merges pass"), "{e}");
    // A vocabulary of the usual shape is read.
    let words: Vec<(String, f32, PieceType)> = (0..4000)
        .map(|i| (format!("▁w{i}"), -(i as f32), PieceType::Normal))
        .collect();
    assert!(spm_bpe_json(&words, true).is_ok());
}
