// Fused element-wise layers of the LLaMA block for CUDA: residual add + RMSNorm, rotary
// embedding in place, SiLU(gate) * up and GELU(gate) * up (Gemma's GeGLU). One launch each
// instead of several candle ops.
#include "common.cuh"

constexpr int NORM_THREADS = 256;

// sum = x + residual, out = sum / rms(sum) * weight: the residual add and the next norm of a
// LLaMA block in one pass. out holds 2 x rows x hidden: the sums, then the normalised rows.
// One block per row.
template <typename T>
__device__ void add_rms_norm(const T* __restrict__ x, const T* __restrict__ residual,
                             const T* __restrict__ weight, T* __restrict__ out, int64_t rows,
                             int hidden, float eps) {
  __shared__ float red[NORM_THREADS / 32];
  const int64_t base = (int64_t)blockIdx.x * hidden;
  T* sum = out + base;
  T* normed = out + rows * hidden + base;
  float ss = 0.f;
  for (int i = threadIdx.x; i < hidden; i += NORM_THREADS) {
    const T r = from_float<T>(to_float(x[base + i]) + to_float(residual[base + i]));
    sum[i] = r;
    const float rf = to_float(r);
    ss += rf * rf;
  }
  ss = block_sum<NORM_THREADS / 32>(ss, red);
  const float inv = rsqrtf(ss / hidden + eps);
  for (int i = threadIdx.x; i < hidden; i += NORM_THREADS)
    normed[i] = from_float<T>(to_float(sum[i]) * inv * to_float(weight[i]));
}

// x: tokens x heads x head_dim, rotated in place at positions[t]. interleaved != 0 pairs
// (2j, 2j+1) (GGUF), else (j, j + head_dim/2) (HF). inv_freq: rows of head_dim/2 frequencies,
// token t takes row freq_row[t] (one row per chunk: dynamic NTK and LongRoPE choose a chunk's
// frequencies by its length). cos and sin are multiplied by mscale (YaRN's and LongRoPE's
// attention factor, else 1), as camelid-model's rope tables are.
template <typename T>
__device__ void rope_inplace(T* __restrict__ x, const int* __restrict__ positions,
                             const int* __restrict__ freq_row, const float* __restrict__ inv_freq,
                             int heads, int head_dim, int interleaved, float mscale) {
  const int t = blockIdx.x;
  const int half = head_dim / 2;
  const float pos = (float)positions[t];
  const float* freqs = inv_freq + (int64_t)freq_row[t] * half;
  for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
    const int h = i / half, j = i % half;
    float s, c;
    sincosf(pos * freqs[j], &s, &c);
    c *= mscale;
    s *= mscale;
    const int64_t base = ((int64_t)t * heads + h) * head_dim;
    const int64_t a = base + (interleaved ? 2 * j : j);
    const int64_t b = base + (interleaved ? 2 * j + 1 : j + half);
    const float x0 = to_float(x[a]), x1 = to_float(x[b]);
    x[a] = from_float<T>(x0 * c - x1 * s);
    x[b] = from_float<T>(x0 * s + x1 * c);
  }
}

// gate_up: rows x (2 * inter) (gate then up, as the fused projection writes them); out: rows x inter.
// GELU: the tanh approximation (gelu_pytorch_tanh), else SiLU.
template <typename T, bool GELU>
__device__ void act_mul(const T* __restrict__ gate_up, T* __restrict__ out, int64_t rows,
                        int inter) {
  const int64_t n = rows * inter;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / inter, j = i % inter;
    const float g = to_float(gate_up[r * 2 * inter + j]);
    const float u = to_float(gate_up[r * 2 * inter + inter + j]);
    const float a = GELU ? 0.5f * g * (1.f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g)))
                         : g / (1.f + __expf(-g));
    out[i] = from_float<T>(a * u);
  }
}

#define LAYERS(SUFFIX, T)                                                                      \
  extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                    \
      add_rms_norm_##SUFFIX(const T* x, const T* residual, const T* weight, T* out,            \
                            int64_t rows, int hidden, float eps) {                             \
    add_rms_norm<T>(x, residual, weight, out, rows, hidden, eps);                              \
  }                                                                                            \
  extern "C" __global__ void rope_inplace_##SUFFIX(T* x, const int* positions,                 \
                                                   const int* freq_row, const float* inv_freq, \
                                                   int heads, int head_dim, int interleaved,   \
                                                   float mscale) {                             \
    rope_inplace<T>(x, positions, freq_row, inv_freq, heads, head_dim, interleaved, mscale);   \
  }                                                                                            \
  extern "C" __global__ void silu_mul_##SUFFIX(const T* gate_up, T* out, int64_t rows,         \
                                               int inter) {                                    \
    act_mul<T, false>(gate_up, out, rows, inter);                                              \
  }                                                                                            \
  extern "C" __global__ void gelu_tanh_mul_##SUFFIX(const T* gate_up, T* out, int64_t rows,    \
                                                    int inter) {                               \
    act_mul<T, true>(gate_up, out, rows, inter);                                               \
  }
LAYERS(f32, float)
LAYERS(f16, __half)
LAYERS(bf16, __nv_bfloat16)
