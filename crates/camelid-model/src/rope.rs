//! Rotary position embeddings for tokens at arbitrary (per-token) positions.

use crate::config::{ModelConfig, RopeScaling};
use candle_core::{Device, Result, Tensor};

/// Inverse frequencies for one head, after any context-extension scaling: one table for
/// every position of every sequence.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
    /// Multiplies every cos and sin (YaRN's and LongRoPE's attention factor; 1 otherwise).
    attention_factor: f32,
}

fn base_inv_freq(theta: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / theta.powf(i as f32 / head_dim as f32))
        .collect()
}

/// YaRN's frequencies (HF's `_compute_yarn_parameters`): dimensions that turn fewer than
/// `beta_slow` times over the original context are interpolated (divided by `factor`), those
/// that turn more than `beta_fast` times kept, a linear ramp between.
fn yarn_inv_freq(
    extrapolated: &[f32],
    theta: f32,
    head_dim: usize,
    factor: f32,
    orig: usize,
    beta_fast: f32,
    beta_slow: f32,
) -> Vec<f32> {
    let (d, base) = (head_dim as f64, theta as f64);
    // The dimension that turns `rotations` times over the original context.
    let correction_dim = |rotations: f64| {
        d * (orig as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let low = correction_dim(beta_fast as f64).floor().max(0.0) as f32;
    let high = correction_dim(beta_slow as f64).ceil().min(d - 1.0) as f32;
    let high = if low == high { high + 0.001 } else { high };
    extrapolated
        .iter()
        .enumerate()
        .map(|(i, &f)| {
            let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            f / factor * (1.0 - keep) + f * keep
        })
        .collect()
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        let mut inv_freq = base_inv_freq(cfg.rope_theta, cfg.head_dim);
        match cfg.rope_scaling {
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: orig,
            } => {
                let low_wavelen = orig as f32 / low_freq_factor;
                let high_wavelen = orig as f32 / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2. * std::f32::consts::PI / *f;
                    *f = if wavelen < high_wavelen {
                        *f
                    } else if wavelen > low_wavelen {
                        *f / factor
                    } else {
                        let smooth = (orig as f32 / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1. - smooth) * *f / factor + smooth * *f
                    };
                }
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast,
                beta_slow,
                ..
            } => {
                inv_freq = yarn_inv_freq(
                    &inv_freq,
                    cfg.rope_theta,
                    cfg.head_dim,
                    factor,
                    orig,
                    beta_fast,
                    beta_slow,
                )
            }
            RopeScaling::Frequencies { ref factors } => {
                inv_freq = inv_freq.iter().zip(factors).map(|(f, s)| f / s).collect()
            }
            // The scalings HF computes per forward, by the length of the run (dynamic NTK past
            // the trained context, LongRoPE's short or long factors), take one table here:
            // the one for the longest context served, as vLLM fixes it. Chosen per run, a
            // sequence's cached keys would be rotated one way and its later queries another
            // once it grew past the limit (the engine runs a prompt in chunks), and a
            // position's bits would depend on its chunk.
            RopeScaling::LongRope {
                ref short_factor,
                ref long_factor,
                original_max_position_embeddings,
                ..
            } => {
                let factors = if cfg.served_context() > original_max_position_embeddings {
                    long_factor
                } else {
                    short_factor
                };
                inv_freq = inv_freq.iter().zip(factors).map(|(f, s)| f / s).collect()
            }
            RopeScaling::Dynamic { factor } => {
                let (d, max) = (cfg.head_dim as f32, cfg.max_position_embeddings as f32);
                let served = cfg.served_context().max(cfg.max_position_embeddings) as f32;
                let ratio = factor * served / max - (factor - 1.);
                let base = cfg.rope_theta * ratio.max(1.0).powf(d / (d - 2.));
                inv_freq = base_inv_freq(base, cfg.head_dim)
            }
            RopeScaling::None => {}
        }
        let attention_factor = match cfg.rope_scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            }
            | RopeScaling::LongRope {
                attention_factor, ..
            } => attention_factor,
            _ => 1.0,
        };
        Self {
            inv_freq,
            head_dim: cfg.head_dim,
            attention_factor,
        }
    }

    /// What multiplies every cos and sin (YaRN's and LongRoPE's attention factor, else 1).
    /// A kernel computing the tables takes [`Rope::inv_freq`] and this: the tables are
    /// `cos(p · f) · factor`, `sin(p · f) · factor`, the angle an f32 product.
    pub fn attention_factor(&self) -> f32 {
        self.attention_factor
    }

    /// The frequencies, one per pair of a head's dimensions.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// cos and sin tables of shape (tokens, head_dim / 2), one row per token; `spans` gives,
    /// for each run of tokens, its first position and its length.
    pub fn cos_sin(&self, spans: &[(usize, usize)], device: &Device) -> Result<(Tensor, Tensor)> {
        let n: usize = spans.iter().map(|s| s.1).sum();
        let (cos, sin) = self.cos_sin_rows(spans);
        let half = self.head_dim / 2;
        Ok((
            Tensor::from_vec(cos, (n, half), device)?,
            Tensor::from_vec(sin, (n, half), device)?,
        ))
    }

    /// [`Rope::cos_sin`] as plain row-major vectors.
    pub fn cos_sin_rows(&self, spans: &[(usize, usize)]) -> (Vec<f32>, Vec<f32>) {
        let half = self.head_dim / 2;
        let n: usize = spans.iter().map(|s| s.1).sum();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for &(start, len) in spans {
            for p in start..start + len {
                for &f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos() * self.attention_factor);
                    sin.push(a.sin() * self.attention_factor);
                }
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RopeStyle;

    fn cfg(scaling: RopeScaling) -> ModelConfig {
        ModelConfig {
            hidden_size: 32,
            intermediate_size: 64,
            vocab_size: 10,
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: scaling,
            rope_style: RopeStyle::Half,
            max_position_embeddings: 16,
            tie_word_embeddings: false,
            architecture: "llama".into(),
            features: Default::default(),
            norm_weight_offset: 0.0,
        }
    }

    fn table(r: &Rope, start: usize, len: usize) -> Vec<Vec<f32>> {
        r.cos_sin(&[(start, len)], &Device::Cpu)
            .unwrap()
            .0
            .to_vec2()
            .unwrap()
    }

    /// What the CUDA rope kernel computes from [`Rope::inv_freq`] and
    /// [`Rope::attention_factor`] (the f32 angle `p · f`, cos and sin times the factor) is
    /// these tables, bit for bit, for the scalings whose factor is not 1 or whose frequencies
    /// HF would choose by the run's length.
    #[test]
    fn tables_are_the_frequencies_times_the_attention_factor() {
        let factors = |k: f32| (0..4).map(|i| 1.0 + k * i as f32).collect::<Vec<_>>();
        for scaling in [
            RopeScaling::Dynamic { factor: 2.0 },
            RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 8,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: 1.2,
            },
            RopeScaling::LongRope {
                short_factor: factors(0.1),
                long_factor: factors(1.0),
                original_max_position_embeddings: 8,
                attention_factor: 1.1,
            },
        ] {
            let r = Rope::new(&cfg(scaling.clone()));
            // Runs within and past both the original and the maximum context.
            let spans = [(0, 5), (5, 7), (20, 1), (3, 2)];
            let (cos, sin) = r.cos_sin_rows(&spans);
            let mut at = 0;
            for &(start, len) in &spans {
                for p in start..start + len {
                    for &f in r.inv_freq() {
                        let a = p as f32 * f;
                        assert_eq!(cos[at], a.cos() * r.attention_factor(), "{scaling:?}");
                        assert_eq!(sin[at], a.sin() * r.attention_factor(), "{scaling:?}");
                        at += 1;
                    }
                }
            }
            assert_eq!(at, cos.len());
        }
    }

    #[test]
    fn linear_scaling_divides_positions() {
        let r = Rope::new(&cfg(RopeScaling::Linear { factor: 4.0 }));
        let cos = table(&r, 0, 9);
        for (p, row) in cos.iter().enumerate() {
            for (i, c) in row.iter().enumerate() {
                let want = (p as f32 / 4.0 * 10_000f32.powf(-((2 * i) as f32) / 8.0)).cos();
                assert!((c - want).abs() < 1e-5, "p {p} i {i}");
            }
        }
    }

    /// Dynamic NTK scaling takes, at every position, the base HF's
    /// `LlamaDynamicNTKScalingRotaryEmbedding` gives a run as long as the context served
    /// (trained 16 × factor 2 = 32), as vLLM's `DynamicNTKScalingRotaryEmbedding` fixes it:
    /// `θ · (2 · 32/16 − 1)^(d/(d−2))`.
    #[test]
    fn dynamic_scaling_takes_the_base_of_the_longest_context_served() {
        let r = Rope::new(&cfg(RopeScaling::Dynamic { factor: 2.0 }));
        let base = 10_000f64 * (2.0f64 * 32.0 / 16.0 - 1.0).powf(8.0 / 6.0);
        for (p, row) in table(&r, 0, 32).iter().enumerate() {
            for (i, &c) in row.iter().enumerate() {
                let want = (p as f64 * base.powf(-((2 * i) as f64) / 8.0)).cos();
                assert!((c as f64 - want).abs() < 1e-4, "p {p} i {i}");
            }
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies() {
        let mut c = cfg(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        c.rope_theta = 500_000.0;
        let r = Rope::new(&c);
        c.rope_scaling = RopeScaling::None;
        let plain = Rope::new(&c);
        assert_eq!(r.inv_freq[0], plain.inv_freq[0]);
        assert!((r.inv_freq[3] - plain.inv_freq[3] / 8.0).abs() < 1e-9);
    }

    /// Llama 3.1's own numbers (head 128, θ 500 000, factor 8, 1 / 4, 8192): every frequency
    /// against HF's `_compute_llama3_parameters` written out in f64 here, including those in
    /// the smooth band between the two wavelengths (which the test above never reaches).
    #[test]
    fn llama3_scaling_interpolates_between_the_two_wavelengths() {
        let (factor, low, high, orig) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
        let mut c = cfg(RopeScaling::Llama3 {
            factor: factor as f32,
            low_freq_factor: low as f32,
            high_freq_factor: high as f32,
            original_max_position_embeddings: orig as usize,
        });
        c.rope_theta = 500_000.0;
        c.head_dim = 128;
        let r = Rope::new(&c);
        let (mut kept, mut divided, mut smoothed) = (0, 0, 0);
        for (i, &got) in r.inv_freq.iter().enumerate() {
            let f = 1.0 / 500_000f64.powf((2 * i) as f64 / 128.0);
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let want = if wavelen < orig / high {
                kept += 1;
                f
            } else if wavelen > orig / low {
                divided += 1;
                f / factor
            } else {
                smoothed += 1;
                let s = (orig / wavelen - low) / (high - low);
                (1.0 - s) * f / factor + s * f
            };
            assert!(
                ((got as f64 - want) / want).abs() < 1e-5,
                "frequency {i}: {got} vs {want}"
            );
        }
        assert!(
            kept > 0 && divided > 0 && smoothed >= 3,
            "{kept} {divided} {smoothed}"
        );
    }

    /// Qwen2.5's YaRN (head 128, θ 10⁶, factor 4 over 32 768 positions) against HF's
    /// `_compute_yarn_parameters` written out here in f64: every frequency, the attention
    /// factor, and the cos/sin table at positions below and above the original context (the
    /// same static table at both, as HF and vLLM apply it).
    #[test]
    fn yarn_matches_hf_formula() {
        let (theta, dim, factor, orig) = (1_000_000f64, 128usize, 4f64, 32_768usize);
        let (beta_fast, beta_slow) = (32f64, 1f64);
        let mut c = cfg(RopeScaling::Yarn {
            factor: factor as f32,
            original_max_position_embeddings: orig,
            beta_fast: beta_fast as f32,
            beta_slow: beta_slow as f32,
            attention_factor: (0.1 * factor.ln() + 1.0) as f32,
        });
        c.rope_theta = theta as f32;
        c.head_dim = dim;
        c.max_position_embeddings = 4 * orig;
        let r = Rope::new(&c);
        // HF, line by line.
        let d = dim as f64;
        let find_correction_dim = |rot: f64| {
            (d * (orig as f64 / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * theta.ln())
        };
        let low = find_correction_dim(beta_fast).floor().max(0.0);
        let high = find_correction_dim(beta_slow).ceil().min(d - 1.0);
        let want: Vec<f64> = (0..dim / 2)
            .map(|i| {
                let pos_freq = theta.powf((2 * i) as f64 / d);
                let extrapolation = 1.0 / pos_freq;
                let interpolation = 1.0 / (factor * pos_freq);
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation_factor = 1.0 - ramp;
                interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
            })
            .collect();
        let attention = 0.1 * factor.ln() + 1.0;
        let (mut kept, mut divided, mut ramped) = (0, 0, 0);
        for (i, (&got, &w)) in r.inv_freq.iter().zip(&want).enumerate() {
            assert!(
                ((got as f64 - w) / w).abs() < 1e-5,
                "frequency {i}: {got} vs {w}"
            );
            let plain = 1.0 / theta.powf((2 * i) as f64 / d);
            if (w - plain).abs() < 1e-12 * plain {
                kept += 1;
            } else if (w - plain / factor).abs() < 1e-9 * plain {
                divided += 1;
            } else {
                ramped += 1;
            }
        }
        assert!(
            kept > 0 && divided > 0 && ramped >= 3,
            "{kept} {divided} {ramped}"
        );
        for p in [0usize, 1, 777, 30_000, orig - 1, orig, 40_000, 100_000] {
            let (cos, sin) = r.cos_sin_rows(&[(p, 1)]);
            for (i, &f) in want.iter().enumerate() {
                let a = p as f64 * f;
                // f32 angles: an error of a few ulps of the angle.
                let tol = 1e-5 + 4.0 * a * f32::EPSILON as f64;
                assert!(
                    (cos[i] as f64 - a.cos() * attention).abs() < tol,
                    "cos p {p} i {i}"
                );
                assert!(
                    (sin[i] as f64 - a.sin() * attention).abs() < tol,
                    "sin p {p} i {i}"
                );
            }
        }
        assert_eq!(
            r.attention_factor(),
            attention as f32,
            "the kernels' factor"
        );
    }

    /// Phi-3-mini-128k's LongRoPE shape (head 96, θ 10 000, 4 096 → 131 072 positions) with
    /// factors of its kind, against HF's `_compute_longrope_parameters` written out in f64:
    /// the long factors at every position, within the original context and past it (the table
    /// for the context served, as vLLM takes it; HF's `longrope_frequency_update` would take
    /// the short ones for a run ending within it), the attention factor
    /// sqrt(1 + ln(32) / ln(4096)); a model serving only its original context takes the short
    /// ones.
    #[test]
    fn longrope_matches_hf_formula() {
        let (theta, dim, orig, max) = (10_000f64, 96usize, 4096usize, 131_072usize);
        let short: Vec<f32> = (0..dim / 2).map(|i| 1.0 + 0.01 * i as f32).collect();
        let long: Vec<f32> = (0..dim / 2).map(|i| 1.0 + 1.5 * i as f32).collect();
        let j = serde_json::json!({"type": "longrope", "short_factor": short,
            "long_factor": long});
        for (served, factors) in [(max, &long), (orig, &short)] {
            let scaling =
                crate::config::parse_rope_scaling(Some(&j), served, Some(orig), "t").unwrap();
            let mut c = cfg(scaling);
            c.rope_theta = theta as f32;
            c.head_dim = dim;
            c.max_position_embeddings = served;
            let r = Rope::new(&c);
            let factor = served as f64 / orig as f64;
            let attention = if factor > 1.0 {
                (1.0 + factor.ln() / (orig as f64).ln()).sqrt()
            } else {
                1.0
            };
            for (start, len) in [(0, 3), (4000, 96), (4000, 97), (9000, 1), (100_000, 2)] {
                let (cos, sin) = r.cos_sin_rows(&[(start, len)]);
                for t in 0..len {
                    let p = (start + t) as f64;
                    for (i, &f) in factors.iter().enumerate() {
                        let inv = 1.0 / (f as f64 * theta.powf((2 * i) as f64 / dim as f64));
                        let a = p * inv;
                        let tol = 1e-5 + 4.0 * a * f32::EPSILON as f64;
                        let at = t * dim / 2 + i;
                        assert!(
                            (cos[at] as f64 - a.cos() * attention).abs() < tol,
                            "served {served}: cos {p} {i}"
                        );
                        assert!(
                            (sin[at] as f64 - a.sin() * attention).abs() < tol,
                            "served {served}: sin {p} {i}"
                        );
                    }
                }
            }
            assert_eq!(
                r.attention_factor(),
                attention as f32,
                "the kernels' factor"
            );
        }
    }
}
