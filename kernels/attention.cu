// camelid's paged attention and KV-cache write for CUDA.
//
// Cache layout (the same as the CPU's HostKvCache): per layer one K and one V buffer of
// `slots x kv_heads x head_dim`; sequence position p lives in slot
// `block_table[p / block_size] * block_size + p % block_size`.
//
// Attention is expressed over *query rows*: every row is one token of one sequence with its own
// context length (decode: one row per sequence; prefill and mixed batches: one row per prompt
// token, context = its position + 1). Each (row, head, split) thread block scores a partition of
// the context; `paged_attention_reduce` merges the partitions (split-K, flash-decoding style), so
// long contexts spread over many SMs. GQA reads the shared KV head directly (no repeated K/V).
// The CPU kernel's semantics (crates/camelid-kernels/src/attention): scores `scale * q.k`,
// soft-capped to `softcap * tanh(s / softcap)` when softcap > 0 (Gemma 2), and with a sliding
// window (window > 0) a row sees only its last `window` positions, ctx - window .. ctx - 1 (the
// CPU's `first_key`): the splits partition those positions, so keys before the window are
// never read (nor their block-table entries).
#include "common.cuh"

// cache[slot_mapping[t]] = src[t] for every token t (one row of kv_heads * head_dim values);
// slot_mapping[t] < 0 skips the token (padding). Called once for keys, once for values.
template <typename T>
__device__ void cache_write(const T* __restrict__ src, T* __restrict__ cache,
                            const int64_t* __restrict__ slot_mapping, int row_width) {
  const int t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;
  for (int i = threadIdx.x; i < row_width; i += blockDim.x)
    cache[slot * row_width + i] = src[(int64_t)t * row_width + i];
}

#define CACHE_WRITE(SUFFIX, T)                                                                 \
  extern "C" __global__ void cache_write_##SUFFIX(const T* src, T* cache,                      \
                                                  const int64_t* slot_mapping, int row_width) { \
    cache_write<T>(src, cache, slot_mapping, row_width);                                       \
  }
CACHE_WRITE(f32, float)
CACHE_WRITE(f16, __half)
CACHE_WRITE(bf16, __nv_bfloat16)

constexpr int ATTN_THREADS = 128;
constexpr int ATTN_WARPS = ATTN_THREADS / 32;
// The most context positions a split scores (shared memory holds one score per position);
// the caller picks each launch's `partition` up to it (cuda.rs, `partition_for`).
constexpr int PARTITION = 512;
constexpr int MAX_HEAD_DIM = 256;
// Keys a warp scores at once: independent loads in flight before the shuffle sums.
constexpr int KEYS_PER_WARP = 4;

// q:            rows x q_heads x head_dim
// row_seq:      rows            (index into block_tables)
// row_ctx:      rows            (positions visible to the row: its position + 1)
// block_tables: seqs x max_blocks
// part_out:     rows x q_heads x splits x head_dim  (f32, unnormalised)
// part_max/sum: rows x q_heads x splits
// window:       0, or the positions a row sees (its own included); softcap: 0 or the cap
// partition:    positions a split scores (<= PARTITION)
template <typename T>
__device__ void paged_attention(const T* __restrict__ q, const T* __restrict__ k_cache,
                                const T* __restrict__ v_cache, const int* __restrict__ row_seq,
                                const int* __restrict__ row_ctx,
                                const int* __restrict__ block_tables, float* __restrict__ part_out,
                                float* __restrict__ part_max, float* __restrict__ part_sum,
                                int q_heads, int kv_heads, int head_dim, int block_size,
                                int max_blocks, int splits, int partition, float scale,
                                int window, float softcap) {
  const int head = blockIdx.x, row = blockIdx.y, split = blockIdx.z;
  const int kv_head = head / (q_heads / kv_heads);
  const int ctx = row_ctx[row];
  const int first = window > 0 ? max(0, ctx - window) : 0;
  const int p0 = first + split * partition;
  const int p1 = min(ctx, p0 + partition);
  const int64_t part = ((int64_t)row * q_heads + head) * splits + split;
  if (p0 >= p1) {
    if (threadIdx.x == 0) {
      part_max[part] = -INFINITY;
      part_sum[part] = 0.f;
    }
    for (int d = threadIdx.x; d < head_dim; d += ATTN_THREADS) part_out[part * head_dim + d] = 0.f;
    return;
  }
  __shared__ float q_s[MAX_HEAD_DIM];
  // PARTITION scores, then ATTN_THREADS floats for the value groups' sums.
  __shared__ float scores[PARTITION + ATTN_THREADS];
  __shared__ int64_t slot_s[PARTITION];
  __shared__ float red[ATTN_WARPS];
  const T* qrow = q + ((int64_t)row * q_heads + head) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += ATTN_THREADS) q_s[d] = to_float(qrow[d]) * scale;
  const int* table = block_tables + (int64_t)row_seq[row] * max_blocks;
  for (int p = p0 + threadIdx.x; p < p1; p += ATTN_THREADS)
    slot_s[p - p0] = (int64_t)table[p / block_size] * block_size + p % block_size;
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_width = (int64_t)kv_heads * head_dim;
  // One warp per key: lanes split the head dimension, a shuffle tree sums. KEYS_PER_WARP
  // keys at a time (the same for the whole warp, so the shuffles stay convergent).
  for (int base = p0 + warp; base < p1; base += ATTN_WARPS * KEYS_PER_WARP) {
    float s[KEYS_PER_WARP];
#pragma unroll
    for (int u = 0; u < KEYS_PER_WARP; ++u) {
      const int p = base + u * ATTN_WARPS;
      s[u] = 0.f;
      if (p < p1) {
        const T* key = k_cache + slot_s[p - p0] * row_width + (int64_t)kv_head * head_dim;
        for (int d = lane; d < head_dim; d += 32) s[u] += q_s[d] * to_float(key[d]);
      }
    }
#pragma unroll
    for (int u = 0; u < KEYS_PER_WARP; ++u) {
      const int p = base + u * ATTN_WARPS;
      const float x = warp_sum(s[u]);
      if (lane == 0 && p < p1) scores[p - p0] = softcap > 0.f ? softcap * tanhf(x / softcap) : x;
    }
  }
  __syncthreads();

  float m = -INFINITY;
  for (int i = threadIdx.x; i < p1 - p0; i += ATTN_THREADS) m = fmaxf(m, scores[i]);
  m = block_max<ATTN_WARPS>(m, red);
  float sum = 0.f;
  for (int i = threadIdx.x; i < p1 - p0; i += ATTN_THREADS) {
    const float e = __expf(scores[i] - m);
    scores[i] = e;
    sum += e;
  }
  sum = block_sum<ATTN_WARPS>(sum, red);

  // Threads own output dimensions: reads of each value row are coalesced. Where the head is
  // at most half the block (head_dim 64: two groups of 64 threads), each group sums its share
  // of the positions and the groups' sums meet in shared memory after the scores.
  const int groups = head_dim * 2 <= ATTN_THREADS ? ATTN_THREADS / head_dim : 1;
  if (groups == 1) {
    for (int d = threadIdx.x; d < head_dim; d += ATTN_THREADS) {
      float acc = 0.f;
#pragma unroll 8
      for (int i = 0; i < p1 - p0; ++i)
        acc += scores[i] * to_float(v_cache[slot_s[i] * row_width + (int64_t)kv_head * head_dim + d]);
      part_out[part * head_dim + d] = acc;
    }
  } else {
    float* acc_s = scores + PARTITION;  // groups * head_dim <= ATTN_THREADS floats
    const int group = threadIdx.x / head_dim, d = threadIdx.x % head_dim;
    if (group < groups) {
      float acc = 0.f;
#pragma unroll 8
      for (int i = group; i < p1 - p0; i += groups)
        acc += scores[i] * to_float(v_cache[slot_s[i] * row_width + (int64_t)kv_head * head_dim + d]);
      acc_s[group * head_dim + d] = acc;
    }
    __syncthreads();
    if (threadIdx.x < head_dim) {
      float acc = 0.f;
      for (int g = 0; g < groups; ++g) acc += acc_s[g * head_dim + threadIdx.x];
      part_out[part * head_dim + threadIdx.x] = acc;
    }
  }
  if (threadIdx.x == 0) {
    part_max[part] = m;
    part_sum[part] = sum;
  }
}

// out: rows x q_heads x head_dim
template <typename T>
__device__ void paged_attention_reduce(const float* __restrict__ part_out,
                                       const float* __restrict__ part_max,
                                       const float* __restrict__ part_sum, T* __restrict__ out,
                                       int q_heads, int head_dim, int splits) {
  const int head = blockIdx.x, row = blockIdx.y;
  const int64_t base = ((int64_t)row * q_heads + head) * splits;
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, part_max[base + s]);
  float denom = 0.f;
  for (int s = 0; s < splits; ++s) denom += part_sum[base + s] * __expf(part_max[base + s] - m);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s)
      acc += part_out[(base + s) * head_dim + d] * __expf(part_max[base + s] - m);
    out[((int64_t)row * q_heads + head) * head_dim + d] = from_float<T>(acc / denom);
  }
}

#define ATTENTION(SUFFIX, T)                                                                   \
  extern "C" __global__ void __launch_bounds__(ATTN_THREADS) paged_attention_##SUFFIX(         \
      const T* q, const T* k_cache, const T* v_cache, const int* row_seq, const int* row_ctx,  \
      const int* block_tables, float* part_out, float* part_max, float* part_sum, int q_heads, \
      int kv_heads, int head_dim, int block_size, int max_blocks, int splits, int partition,  \
      float scale, int window, float softcap) {                                                \
    paged_attention<T>(q, k_cache, v_cache, row_seq, row_ctx, block_tables, part_out,          \
                       part_max, part_sum, q_heads, kv_heads, head_dim, block_size,            \
                       max_blocks, splits, partition, scale, window, softcap);                 \
  }                                                                                            \
  extern "C" __global__ void paged_attention_reduce_##SUFFIX(                                  \
      const float* part_out, const float* part_max, const float* part_sum, T* out,             \
      int q_heads, int head_dim, int splits) {                                                 \
    paged_attention_reduce<T>(part_out, part_max, part_sum, out, q_heads, head_dim, splits);   \
  }
ATTENTION(f32, float)
ATTENTION(f16, __half)
ATTENTION(bf16, __nv_bfloat16)
