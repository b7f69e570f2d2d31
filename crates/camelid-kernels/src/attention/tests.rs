use super::*;
use rand::{Rng, SeedableRng};

/// Plain attention over one sequence's K/V history (already rotated), as the textbook
/// writes it: keys `pos + 1 - window ..= pos` with a sliding window, else all to `pos`;
/// scores scaled by `h.scale` (else `1 / sqrt(dim)`) and soft-capped as Gemma 2 does.
fn naive(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], pos: usize, h: Heads) -> Vec<f32> {
    let group = h.q / h.kv;
    let first = match h.window {
        Some(w) if pos + 1 > w => pos + 1 - w,
        _ => 0,
    };
    let mut out = vec![0f32; h.q * h.dim];
    for head in 0..h.q {
        let g = head / group;
        let qv = &q[head * h.dim..(head + 1) * h.dim];
        let s: Vec<f64> = (first..=pos)
            .map(|p| {
                let k = &keys[p][g * h.dim..(g + 1) * h.dim];
                qv.iter()
                    .zip(k)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    * h.scale.map_or(1.0 / (h.dim as f64).sqrt(), |s| s as f64)
            })
            .map(|s| match h.softcap {
                Some(cap) => cap as f64 * (s / cap as f64).tanh(),
                None => s,
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for d in 0..h.dim {
            out[head * h.dim + d] = (first..=pos)
                .map(|p| e[p - first] / z * values[p][g * h.dim + d] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

/// Every path of this CPU for prompt tasks: the widest vectors, AVX2's 8 lanes, and none
/// (every task in [`attend`]).
#[cfg(target_arch = "x86_64")]
const PATHS: [prefill::PrefillPath; 3] = [
    prefill::PrefillPath::Widest,
    prefill::PrefillPath::Avx2,
    prefill::PrefillPath::Off,
];

/// Runs `check` once per prompt-task path, then restores the default. The path is global:
/// tests that set it take turns.
fn on_every_path(mut check: impl FnMut()) {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    #[cfg(target_arch = "x86_64")]
    for path in PATHS {
        prefill::set_path(path);
        check();
    }
    #[cfg(target_arch = "x86_64")]
    prefill::set_path(prefill::PrefillPath::Widest);
    #[cfg(not(target_arch = "x86_64"))]
    check();
}

#[test]
fn ragged_batch_over_scattered_blocks_matches_naive_attention() {
    // Small heads (12: not a multiple of the SIMD width), SmolLM2's shape (9 query heads over
    // 3 KV heads of 64), and every head-grouping of the AVX-512 decode path (heads of 64
    // taken 4, 2 or 1 at a time; heads of 128, 2 or 1).
    let shapes = [
        (6, 2, 8),
        (4, 2, 12),
        (9, 3, 64),
        (8, 2, 64),
        (6, 3, 64),
        (4, 4, 64),
        (4, 2, 128),
        (3, 3, 128),
    ];
    on_every_path(|| {
        for rope in [RopeStyle::Half, RopeStyle::Interleaved] {
            for (q, kv, dim) in shapes {
                for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
                    // Small blocks (many boundaries inside every sequence) and larger ones.
                    for bs in [4, 24] {
                        check_ragged_batch(
                            Heads {
                                q,
                                kv,
                                dim,
                                rope,
                                window: None,
                                scale: None,
                                softcap: None,
                            },
                            dtype,
                            bs,
                            &UNIT,
                        );
                    }
                }
            }
        }
    });
}

/// Sliding windows (one key, shorter than a block, a block's worth, across several blocks,
/// longer than every sequence) against naive windowed attention, every cache type and path;
/// the blocks wholly before each chunk's first window are given back ([`FREED_BLOCK`]), so
/// a kernel that read them would panic.
#[test]
fn sliding_window_matches_naive_windowed_attention() {
    on_every_path(|| {
        for window in [1, 3, 24, 37, 1000] {
            for (q, kv, dim) in [(6, 2, 8), (9, 3, 64), (4, 4, 128)] {
                for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
                    for bs in [4, 24] {
                        let h = Heads {
                            q,
                            kv,
                            dim,
                            rope: RopeStyle::Half,
                            window: Some(window),
                            scale: None,
                            softcap: None,
                        };
                        check_ragged_batch(h, dtype, bs, &UNIT);
                    }
                }
            }
        }
    });
}

/// Gemma's attention: a scale of its own (`query_pre_attn_scalar^-1/2`) and Gemma 2's
/// soft-capping (a cap of 1.5 bends every score here), with and without a window, against the
/// naive reference, every cache type and path.
#[test]
fn scale_and_softcap_match_naive_attention() {
    on_every_path(|| {
        for (window, scale, softcap) in [
            (None, Some(0.3), None),
            (None, None, Some(1.5)),
            (Some(5), Some(0.2), Some(1.5)),
        ] {
            for (q, kv, dim) in [(6, 2, 8), (4, 4, 64)] {
                for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
                    let h = Heads {
                        q,
                        kv,
                        dim,
                        rope: RopeStyle::Half,
                        window,
                        scale,
                        softcap,
                    };
                    check_ragged_batch(h, dtype, 4, &UNIT);
                }
            }
        }
    });
}

/// A trained model's magnitudes, where a cache's precision shows: every score near +150
/// (f32's `exp` overflows past 88, so a softmax must subtract its maximum), spread over ±10
/// per query, and values with outlier channels. Against a reference in f64 over the same
/// stored keys and values, every cache type and path stays within f32's own rounding: an f16
/// cache may lose precision only where it stores a key or value, never in a query, a score,
/// a sum or the softmax.
#[test]
fn large_scores_match_f64_attention_over_the_stored_cache() {
    let shapes = [
        (9, 3, 64),
        (8, 2, 64),
        (6, 3, 64),
        (4, 4, 64),
        (4, 2, 128),
        (3, 3, 128),
    ];
    on_every_path(|| {
        for rope in [RopeStyle::Half, RopeStyle::Interleaved] {
            for (q, kv, dim) in shapes {
                for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
                    check_ragged_batch(
                        Heads {
                            q,
                            kv,
                            dim,
                            rope,
                            window: None,
                            scale: None,
                            softcap: None,
                        },
                        dtype,
                        16,
                        &LARGE,
                    );
                }
            }
        }
    });
}

/// Which part of a projected row a drawn number goes to.
#[derive(Clone, Copy)]
enum Role {
    Query,
    Key,
    Value,
}

/// How a test draws its queries, keys and values, and the error it allows.
struct Data {
    /// Channel `c` (within its head) of a query, key or value.
    draw: fn(&mut rand::rngs::StdRng, Role, usize, Heads) -> f32,
    /// Largest |kernel − reference| allowed, relative to the largest |value|.
    tol: f32,
}

/// Uniform in [−1, 1): small scores, every weight in play.
const UNIT: Data = Data {
    draw: |rng, _, _, _| rng.random_range(-1.0..1.0),
    tol: 1e-5,
};

/// See [`large_scores_match_f64_attention_over_the_stored_cache`]. The rotary pair of the
/// lowest frequency (nearly unrotated over these positions) carries large components in every
/// query and key: the shared part of the scores (2 · 20 · 30 / √dim); the others spread them.
const LARGE: Data = Data {
    draw: |rng, role, c, h| {
        let slow_pair = match h.rope {
            RopeStyle::Half => c == h.dim / 2 - 1 || c == h.dim - 1,
            RopeStyle::Interleaved => c >= h.dim - 2,
        };
        let u: f32 = rng.random_range(-1.0..1.0);
        match role {
            Role::Query if slow_pair => 20.0 + u,
            Role::Key if slow_pair => 30.0 + u,
            Role::Query => 2.5 * u,
            Role::Key => 3.5 * u,
            Role::Value if c % 9 == 0 => 20.0 * u,
            Role::Value => u,
        }
    },
    tol: 5e-5,
};

/// What storing a row of heads (each `dim` long) in the cache keeps of it: Q8_0 written out
/// here (groups of 32 where the head holds whole ones, scale `max |x| / 127`), not with the
/// cache's own `q8_group`/`q8_scale`, so a wrong scale there shows.
fn stored(x: &[f32], dtype: KvDtype, dim: usize) -> Vec<f32> {
    match dtype {
        KvDtype::F32 => x.to_vec(),
        KvDtype::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        KvDtype::Q8_0 => {
            let group = if dim.is_multiple_of(32) { 32 } else { dim };
            x.chunks(group)
                .flat_map(|g| {
                    let d = g.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    g.iter().map(move |&v| {
                        if d > 0.0 {
                            (v * (1.0 / d)).round() * d
                        } else {
                            0.0
                        }
                    })
                })
                .collect()
        }
    }
}

/// The rotary embedding written out here (pairs `(j, j + d/2)`, or `(2j, 2j + 1)`
/// interleaved, each turned by its angle), not the kernel's own `rope`.
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = x.len() / 2;
    for j in 0..half {
        let (a, b) = match style {
            RopeStyle::Half => (j, half + j),
            RopeStyle::Interleaved => (2 * j, 2 * j + 1),
        };
        let (re, im) = (x[a], x[b]);
        x[a] = re * cos[j] - im * sin[j];
        x[b] = im * cos[j] + re * sin[j];
    }
}

/// The kernel against [`naive`] attention over the same stored (for f16: rounded) keys
/// and values.
fn check_ragged_batch(h: Heads, dtype: KvDtype, bs: usize, data: &Data) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // Three sequences: one decoding at position 9 (9 tokens cached before), one prefilling
    // 37 tokens from position 70 (several query blocks, over more keys than one tile of
    // the prefill kernel), one decoding at position 150 (many blocks); blocks
    // deliberately out of order.
    let tables = vec![
        vec![5u32, 0, 7],
        [2u32, 6, 1, 3, 4, 8, 9, 10, 11, 12, 13]
            .into_iter()
            .chain(52..68)
            .collect(),
        (14u32..52).rev().collect(),
    ];
    let chunks = [
        SeqSpan::new(1, 9, 1),
        SeqSpan::new(2, 70, 37),
        SeqSpan::new(3, 150, 1),
    ];
    let kw = h.kv * h.dim;
    let mut cache = HostKvCache::new(1, 68, bs, h.kv, h.dim, dtype);
    // History (positions before start_pos), stored directly, already "rotated".
    type History = (Vec<Vec<f32>>, Vec<Vec<f32>>);
    let mut hist: Vec<History> = vec![];
    for (ci, c) in chunks.iter().enumerate() {
        let (mut ks, mut vs) = (vec![], vec![]);
        for p in 0..c.start_pos {
            let k: Vec<f32> = (0..kw)
                .map(|e| (data.draw)(&mut rng, Role::Key, e % h.dim, h))
                .collect();
            let v: Vec<f32> = (0..kw)
                .map(|e| (data.draw)(&mut rng, Role::Value, e % h.dim, h))
                .collect();
            let slot = tables[ci][p / bs] as usize * bs + p % bs;
            cache.write_slot(0, slot, &k, &v);
            ks.push(stored(&k, dtype, h.dim));
            vs.push(stored(&v, dtype, h.dim));
        }
        hist.push((ks, vs));
    }
    let n_tok = 39;
    let width = (h.q + 2 * h.kv) * h.dim;
    let projected: Vec<f32> = (0..n_tok * width)
        .map(|e| {
            let (at, c) = (e % width, e % h.dim);
            let role = if at < h.q * h.dim {
                Role::Query
            } else if at < (h.q + h.kv) * h.dim {
                Role::Key
            } else {
                Role::Value
            };
            (data.draw)(&mut rng, role, c, h)
        })
        .collect();
    let positions: Vec<usize> = std::iter::once(9).chain(70..107).chain([150]).collect();
    let half = h.dim / 2;
    let (mut cos, mut sin) = (vec![], vec![]);
    for &p in &positions {
        for j in 0..half {
            let a = p as f32 * 10000f32.powf(-(2.0 * j as f32) / h.dim as f32);
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let qkv = QkvRows {
        q: (&projected, width, 0),
        k: (&projected, width, h.q * h.dim),
        v: (&projected, width, (h.q + h.kv) * h.dim),
    };
    let mut out = vec![0f32; n_tok * h.q * h.dim];
    // With a window, the blocks no query of a chunk attends are given back.
    let mut live_tables = tables.clone();
    for (t, c) in live_tables.iter_mut().zip(&chunks) {
        let first_live = h.first_key(c.start_pos) / bs;
        t[..first_live].fill(FREED_BLOCK);
    }
    let mut paged = HostPaged {
        cache: &mut cache,
        block_size: bs,
        tables: live_tables,
    };
    paged
        .check(&chunks, |p| h.first_key(p))
        .expect("tables cover the batch");
    paged_attention(0, &chunks, &qkv, &cos, &sin, h, &mut paged, &mut out);

    // Reference: rotate this batch's q and k by hand, append k/v to each history.
    let v_max = hist
        .iter()
        .flat_map(|(_, vs)| vs.iter().flatten())
        .chain(projected.iter().skip((h.q + h.kv) * h.dim))
        .fold(0f32, |m, v| m.max(v.abs()));
    let tol = data.tol * v_max;
    let mut t = 0;
    for (ci, c) in chunks.iter().enumerate() {
        for i in 0..c.len {
            let cs = &cos[t * half..(t + 1) * half];
            let sn = &sin[t * half..(t + 1) * half];
            let mut qv = row(&qkv.q, t, h.q * h.dim).to_vec();
            qv.chunks_exact_mut(h.dim)
                .for_each(|x| rotate(x, cs, sn, h.rope));
            let mut kv_ = row(&qkv.k, t, kw).to_vec();
            kv_.chunks_exact_mut(h.dim)
                .for_each(|x| rotate(x, cs, sn, h.rope));
            hist[ci].0.push(stored(&kv_, dtype, h.dim));
            hist[ci].1.push(stored(row(&qkv.v, t, kw), dtype, h.dim));
            // Causal: this query sees history and the chunk's tokens up to itself only.
            let want = naive(&qv, &hist[ci].0, &hist[ci].1, c.start_pos + i, h);
            let got = &out[t * h.q * h.dim..(t + 1) * h.q * h.dim];
            for (a, b) in got.iter().zip(&want) {
                let ok = (a - b).abs() <= tol;
                assert!(ok, "{dtype:?} {h:?} chunk {ci} token {i}: {a} vs {b}");
            }
            t += 1;
        }
    }
    // The new keys landed in the right slots (rotated), e.g. sequence 2 position 96.
    let slot = tables[1][96 / bs] as usize * bs + 96 % bs;
    let (mut k, mut v) = (vec![0f32; kw], vec![0f32; kw]);
    cache.read_slot(0, slot, &mut k, &mut v);
    assert_eq!(k, hist[1].0[96]);
    assert_eq!(v, hist[1].1[96]);
}

/// Each position's output is the same to the bit however its sequence is cut into chunks:
/// prompt positions (even a lone one) always take the prompt kernel, generated ones the
/// decode kernel, also when a chunk recomputes them after a preemption; with a window and
/// soft-capping too. Prompt log-probabilities and greedy tokens must not depend on the load.
#[test]
fn a_position_rounds_by_its_role_not_its_chunk() {
    let plain = Heads {
        q: 9,
        kv: 3,
        dim: 64,
        rope: RopeStyle::Interleaved,
        window: None,
        scale: None,
        softcap: None,
    };
    // Gemma's: a window shorter than the prompt, a scale and a cap of their own.
    let gemma = Heads {
        window: Some(20),
        scale: Some(0.1),
        softcap: Some(3.0),
        ..plain
    };
    for h in [plain, gemma] {
        // 64 positions: a prompt of 40, then 24 generated tokens.
        let (n, prompt, bs) = (64, 40, 16);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let width = (h.q + 2 * h.kv) * h.dim;
        let data: Vec<f32> = (0..n * width)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let half = h.dim / 2;
        let (mut cos, mut sin) = (vec![], vec![]);
        for p in 0..n {
            for j in 0..half {
                let a = p as f32 * 10000f32.powf(-(2.0 * j as f32) / h.dim as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        // The outputs of every position, computed in chunks of these lengths.
        let run = |pieces: &[usize], dtype: KvDtype| -> Vec<f32> {
            let mut cache = HostKvCache::new(1, n / bs, bs, h.kv, h.dim, dtype);
            let mut out = vec![0f32; n * h.q * h.dim];
            let mut start = 0;
            for &len in pieces {
                let rows = &data[start * width..(start + len) * width];
                let qkv = QkvRows {
                    q: (rows, width, 0),
                    k: (rows, width, h.q * h.dim),
                    v: (rows, width, (h.q + h.kv) * h.dim),
                };
                let mut paged = HostPaged {
                    cache: &mut cache,
                    block_size: bs,
                    tables: vec![(0..(n / bs) as u32).rev().collect()],
                };
                let chunk = [SeqSpan {
                    seq: 0,
                    start_pos: start,
                    len,
                    generated_from: prompt,
                }];
                let at = start * half..(start + len) * half;
                let dst = &mut out[start * h.q * h.dim..(start + len) * h.q * h.dim];
                paged_attention(
                    0,
                    &chunk,
                    &qkv,
                    &cos[at.clone()],
                    &sin[at],
                    h,
                    &mut paged,
                    dst,
                );
                start += len;
            }
            assert_eq!(start, n);
            out
        };
        // The prompt whole, then one decode at a time.
        let decoded: Vec<usize> = std::iter::once(prompt).chain([1; 24]).collect();
        #[cfg(target_arch = "x86_64")]
        let paths = [prefill::PrefillPath::Widest, prefill::PrefillPath::Avx2];
        #[cfg(not(target_arch = "x86_64"))]
        let paths = [()];
        for path in paths {
            #[cfg(target_arch = "x86_64")]
            prefill::set_path(path);
            let _ = path;
            for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
                let want = run(&decoded, dtype);
                for pieces in [
                    &[64][..],           // recomputed whole after a preemption
                    &[22, 1, 17, 2, 22], // blocks of 21 queries would leave one alone
                    &[1, 1, 38, 1, 23],  // lone prompt positions
                    &[39, 25],           // a chunk of the prompt's end and the tokens
                    &[43, 21],
                ] {
                    let got = run(pieces, dtype);
                    let row = h.q * h.dim;
                    let differs =
                        |p: usize| got[p * row..(p + 1) * row] != want[p * row..(p + 1) * row];
                    if let Some(p) = (0..n).find(|&p| differs(p)) {
                        panic!("{h:?} {dtype:?}, pieces {pieces:?}: position {p} differs");
                    }
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    prefill::set_path(prefill::PrefillPath::Widest);
}

/// Tables the kernels would read outside the cache through (a freed block where keys are
/// attended, a block past the cache) stop the safe entry point, whoever calls it.
#[test]
fn paged_attention_refuses_tables_it_cannot_read_safely() {
    let h = Heads {
        q: 2,
        kv: 1,
        dim: 8,
        rope: RopeStyle::Half,
        window: None,
        scale: None,
        softcap: None,
    };
    let run = |table: Vec<u32>| {
        std::panic::catch_unwind(|| {
            let mut cache = HostKvCache::new(1, 4, 4, h.kv, h.dim, KvDtype::F32);
            let chunks = [SeqSpan::new(1, 4, 1)];
            let rows = vec![0.5f32; (h.q + 2 * h.kv) * h.dim];
            let width = rows.len();
            let qkv = QkvRows {
                q: (&rows, width, 0),
                k: (&rows, width, h.q * h.dim),
                v: (&rows, width, (h.q + h.kv) * h.dim),
            };
            let (cos, sin) = (vec![1f32; h.dim / 2], vec![0f32; h.dim / 2]);
            let mut paged = HostPaged {
                cache: &mut cache,
                block_size: 4,
                tables: vec![table],
            };
            let mut out = vec![0f32; h.q * h.dim];
            paged_attention(0, &chunks, &qkv, &cos, &sin, h, &mut paged, &mut out);
        })
        .map_err(|e| e.downcast_ref::<String>().cloned().unwrap_or_default())
    };
    assert!(run(vec![0, 1]).is_ok());
    // Refused up front, by the check (not by whichever kernel happens to bounds-check).
    let freed = run(vec![FREED_BLOCK, 1]).unwrap_err();
    assert!(
        freed.contains("paged_attention: ") && freed.contains("freed"),
        "{freed}"
    );
    let absent = run(vec![0, 9]).unwrap_err();
    assert!(absent.contains("paged_attention: "), "{absent}");
}
