// CPU kernels for decoding: a few rows (one new position per sequence) through a Transformer.
//
// Why: a decoding step multiplies 1-16 rows by every weight matrix once, so it is bound by reading the weights,
// and at small shapes by the per-op cost of running ~20 tensor ops per layer from Python. Here:
//  - small_gemm: y = x W^T + b for a few rows of x, on W packed into panels. MKL's sgemm at 8 rows runs its
//    compute and its memory reads one after the other (2-core Xeon: 18.4 ms for the 340 MB of a 12x768 model's
//    blocks at 8 rows, 12.9 ms at one row); this one streams each weight once, one contiguous prefetched stream
//    per thread, with all rows' products for a panel of P output columns in registers (the usual GEMM
//    micro-kernel, Goto & van de Geijn 2008, with the rows of x as the small dimension): 15.2 ms at 8 rows.
//  - gpt_blocks: a GPT decoding step through every pre-LN block (GPT-2: x += Attn(LN(x)); x += MLP(LN(x))) in
//    one call and one OpenMP parallel region: LayerNorm, the q/k/v projection, appending k and v to the KV cache,
//    attention of the one new query over the cached keys, the output projection and the MLP, with the bias,
//    GELU and residual sum applied as each matrix product stores its result. It computes what
//    layers.Block.forward computes for one new position (tests/test_decode_kernels.py checks it against that).
//
// Packed weight: W [N, K] padded with zero rows to a multiple of P, as panels [N_pad / P][K][P]: panel p holds
// output columns p*P .. p*P+P-1, k-major, so a panel is read front to back (kernels.pack builds it). In float32,
// or in float16 (half the bytes to read; widened to float32 in registers, all arithmetic in float32) for weights
// that are float16 values already (lmlab.generate.decoding_model(model, "fp16")), or in int8 (a quarter of the
// bytes): each panel's [K][P] int8 values followed by its P columns' float32 scales (weight = q * scale, one
// scale per output column, decoding_model(model, "int8")); the products are summed in float32 and scaled once
// as the panel's results are stored. Only the weights are quantized, not the activations: LLM activations have
// outlier channels that per-tensor activation quantization destroys (Dettmers et al. 2022, LLM.int8()).
// Compiled on first use for the CPU at hand (-march=native), see kernels.py; AVX-512 or 32-byte vectors.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
constexpr int VW = 16;  // floats per vector register
constexpr int MR = 8;   // rows per register block: MR x NB accumulators (24 of 32 zmm registers)
#else
constexpr int VW = 8;   // AVX2 (or any 32-byte vectors): 16 ymm registers
constexpr int MR = 4;
#endif
constexpr int NB = 3;           // vectors per panel row
constexpr int P = NB * VW;      // panel width (output columns)
constexpr int PREFETCH_K = 32;  // prefetch this many panel rows ahead (6 KB with AVX-512 in float32), and
// for int8 as far as for float16 (3 KB): 32 int8 rows (1.5 KB) left it at 22 GB/s of the 27 float16 gets

typedef float vec __attribute__((vector_size(VW * 4), aligned(4)));

static inline vec load(const float* p) { return *(const vec*)p; }

static inline vec load(const uint16_t* p) {  // VW float16 values, widened (F16C / AVX-512 vcvtph2ps)
#if defined(__AVX512F__)
  return (vec)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
#elif defined(__F16C__)
  return (vec)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
#else
  return vec{} * (float)p[0];  // never called: lmlab_half_weights() says 0, so nothing is packed in float16
#endif
}

static inline vec load(const int8_t* p) {  // VW int8 values, widened (vpmovsxbd + vcvtdq2ps)
#if defined(__AVX512F__)
  return (vec)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
#elif defined(__AVX2__)
  return (vec)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
#else
  vec v;
  for (int i = 0; i < VW; ++i) v[i] = p[i];
  return v;
#endif
}

// A packed panel's length in W elements: K rows of P weights, and for int8 the P float32 scales after them.
template <typename W>
static constexpr int64_t panel_length(int64_t K) {
  return std::is_same<W, int8_t>::value ? K * P + P * (int64_t)sizeof(float) : K * P;
}

static inline vec broadcast(float a) {  // (an initialiser list compiles to one vbroadcastss; a loop does not)
#if defined(__AVX512F__)
  return vec{a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a};
#else
  return vec{a, a, a, a, a, a, a, a};
#endif
}

// ------------------------------------------------------------------------------------------ element-wise

// e^x for each of v[0..n) in place: Cephes' expf (x = k ln2 + r, |r| <= ln2 / 2, e^r by a degree-7 polynomial,
// 2^k put in the exponent bits), about 1 ulp; plain arithmetic, so the loop vectorizes.
static void exp_inplace(float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float x = v[i];
    x = x < -87.3f ? -87.3f : x > 88.3f ? 88.3f : x;  // (past these e^x is 0 or inf in float)
    float k = std::floor(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    v[i] = p * __builtin_bit_cast(float, ((int32_t)k + 127) << 23);
  }
}

enum Store { STORE = 0, GELU_ERF = 1, GELU_TANH = 2, ADD = 3 };

// GELU of v[0..n) in place (Hendrycks & Gimpel 2016): x * Phi(x), exact (erf) or GPT-2's tanh form, through
// exp_inplace: tanh(u) = 1 - 2 / (e^{2u} + 1); erf(z) by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
static void gelu_inplace(float* v, int64_t n, int mode, float* tmp) {
  if (mode == GELU_TANH) {
    for (int64_t i = 0; i < n; ++i) tmp[i] = 2.0f * 0.7978845608028654f * (v[i] + 0.044715f * v[i] * v[i] * v[i]);
    exp_inplace(tmp, n);
    for (int64_t i = 0; i < n; ++i) v[i] = 0.5f * v[i] * (2.0f - 2.0f / (tmp[i] + 1.0f));
  } else {
    for (int64_t i = 0; i < n; ++i) tmp[i] = -0.5f * v[i] * v[i];
    exp_inplace(tmp, n);
    for (int64_t i = 0; i < n; ++i) {
      float z = std::fabs(v[i]) * 0.7071067811865476f, t = 1.0f / (1.0f + 0.3275911f * z);
      float poly = 1.061405429f;
      poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * poly))));
      float erf_abs = 1.0f - poly * tmp[i];
      v[i] = 0.5f * v[i] * (1.0f + (v[i] < 0 ? -erf_abs : erf_abs));
    }
  }
}

// ------------------------------------------------------------------------------------------ matrix product

// R rows of x (row stride K) times one panel; the first `cols` of the R x P results, plus bias, stored into y
// (row stride ldy) as `mode` says: y = r, y = GELU(r), or y += r.
template <int R, typename W>
static void panel_block(const float* x, int64_t K, const W* panel, const float* bias, float* y, int64_t ldy,
                        int cols, int mode) {
  vec acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = vec{};
  for (int64_t k = 0; k < K; ++k) {
    const W* w = panel + k * P;
    for (int line = 0; line < P * (int)sizeof(W); line += 64)
      __builtin_prefetch((const char*)w + PREFETCH_K * P * std::max<int>(sizeof(W), 2) + line, 0, 1);
    vec w0 = load(w), w1 = load(w + VW), w2 = load(w + 2 * VW);
    for (int r = 0; r < R; ++r) {
      vec xr = broadcast(x[r * K + k]);
      acc[r][0] += w0 * xr;
      acc[r][1] += w1 * xr;
      acc[r][2] += w2 * xr;
    }
  }
  alignas(64) float out[R][P];  // (indexing acc itself would keep the accumulators in memory, not registers)
  alignas(64) float tmp[R * P];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < NB; ++j) *(vec*)(out[r] + j * VW) = acc[r][j];
    if constexpr (std::is_same<W, int8_t>::value) {
      const float* scale = (const float*)(panel + K * P);
      for (int c = 0; c < P; ++c) out[r][c] *= scale[c];
    }
    if (bias)
      for (int c = 0; c < P; ++c) out[r][c] += c < cols ? bias[c] : 0.0f;
  }
  if (mode == GELU_ERF || mode == GELU_TANH) gelu_inplace(&out[0][0], R * P, mode, tmp);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < cols; ++c) y[r * ldy + c] = mode == ADD ? y[r * ldy + c] + out[r][c] : out[r][c];
}

template <int R, typename W>
static void rows_block(const float* x, int64_t K, const W* panel, const float* bias, float* y, int64_t ldy,
                       int cols, int rows, int mode) {
  if (rows == R) return panel_block<R, W>(x, K, panel, bias, y, ldy, cols, mode);
  if constexpr (R > 1) rows_block<R - 1, W>(x, K, panel, bias, y, ldy, cols, rows, mode);
}

// y [M, N] (=, GELU, +=) x [M, K] W^T + bias, the panels shared out among the threads of the enclosing
// parallel region (an orphaned `omp for`; its implicit barrier ends the step).
template <typename W>
static void gemm_for(const float* x, int64_t M, int64_t K, const W* packed, int64_t N, const float* bias, float* y,
                     int mode) {
  const int64_t panels = (N + P - 1) / P;
#pragma omp for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    const W* panel = packed + p * panel_length<W>(K);
    const int cols = (int)std::min<int64_t>(P, N - p * P);
    for (int64_t r0 = 0; r0 < M; r0 += MR)  // a panel's later row blocks read it from cache
      rows_block<MR, W>(x + r0 * K, K, panel, bias ? bias + p * P : nullptr, y + r0 * N + p * P, N, cols,
                        (int)std::min<int64_t>(MR, M - r0), mode);
  }
}

// ------------------------------------------------------------------------------------------ GPT blocks

// h = LayerNorm(x) row by row (biased variance, as torch).
static void layernorm_for(const float* x, float* h, int64_t B, int64_t C, const float* w, const float* b, float eps) {
#pragma omp for schedule(static)
  for (int64_t row = 0; row < B; ++row) {
    const float* xr = x + row * C;
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += xr[c];
    mean /= C;
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    const float m = (float)mean, inv = (float)(1.0 / std::sqrt(var / C + eps));
    for (int64_t c = 0; c < C; ++c) h[row * C + c] = (xr[c] - m) * inv * w[c] + (b ? b[c] : 0.0f);
  }
}

// s[j] = scale * q . k_j for the n keys k_j (rows of hs floats), four keys at a time.
static void scores_of(const float* q, const float* keys, int64_t n, int64_t hs, float scale, float* s) {
  const int64_t whole = hs / VW * VW;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* k = keys + j * hs;
    vec a0 = vec{}, a1 = vec{}, a2 = vec{}, a3 = vec{};
    for (int64_t d = 0; d < whole; d += VW) {
      vec qd = *(const vec*)(q + d);
      a0 += qd * *(const vec*)(k + d);
      a1 += qd * *(const vec*)(k + hs + d);
      a2 += qd * *(const vec*)(k + 2 * hs + d);
      a3 += qd * *(const vec*)(k + 3 * hs + d);
    }
    float t[4] = {0, 0, 0, 0};
    for (int i = 0; i < VW; ++i) t[0] += a0[i], t[1] += a1[i], t[2] += a2[i], t[3] += a3[i];
    for (int64_t d = whole; d < hs; ++d)
      for (int u = 0; u < 4; ++u) t[u] += q[d] * k[u * hs + d];
    for (int u = 0; u < 4; ++u) s[j + u] = t[u] * scale;
  }
  for (; j < n; ++j) {
    float t = 0;
    for (int64_t d = 0; d < hs; ++d) t += q[d] * keys[j * hs + d];
    s[j] = t * scale;
  }
}

// For each row and head: append the new key and value (from qkv [B, 3C]) to the cache at position `length`,
// then attend with the new query to the keys pad[row] .. length (softmax(q k / sqrt(hs)) v) into att [B, C].
static void attention_for(const float* qkv, float* keys, float* values, int64_t row_stride, float* att, int64_t B,
                          int64_t H, int64_t C, int64_t max_len, int64_t length, const int64_t* pad, float* scores) {
  const int64_t hs = C / H;
  const float scale = 1.0f / std::sqrt((float)hs);
#pragma omp for schedule(static)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t row = bh / H, head = bh % H;
    const float* q = qkv + row * 3 * C + head * hs;
    float* K = keys + row * row_stride + head * max_len * hs;
    float* V = values + row * row_stride + head * max_len * hs;
    std::memcpy(K + length * hs, q + C, hs * 4);
    std::memcpy(V + length * hs, q + 2 * C, hs * 4);
    const int64_t first = pad ? std::min(pad[row], length) : 0, n = length + 1 - first;
    float* s = scores + bh * max_len;
    scores_of(q, K + first * hs, n, hs, scale, s);
    float top = -INFINITY;
    for (int64_t j = 0; j < n; ++j) top = s[j] > top ? s[j] : top;
    for (int64_t j = 0; j < n; ++j) s[j] -= top;
    exp_inplace(s, n);
    float total = 0;
    for (int64_t j = 0; j < n; ++j) total += s[j];
    float* o = att + row * C + head * hs;
    for (int64_t d = 0; d < hs; ++d) o[d] = 0;
    for (int64_t j = 0; j < n; ++j) {
      const float* v = V + (first + j) * hs;
      for (int64_t d = 0; d < hs; ++d) o[d] += s[j] * v[d];
    }
    for (int64_t d = 0; d < hs; ++d) o[d] /= total;
  }
}

// Pointers to one block's parameters (null where the model has no bias); the Linear weights packed.
struct BlockWeights {
  const float *ln1_w, *ln1_b;
  const void* qkv;
  const float* qkv_b;
  const void* proj;
  const float *proj_b, *ln2_w, *ln2_b;
  const void* fc;
  const float* fc_b;
  const void* fc_proj;
  const float* fc_proj_b;
};

template <typename W>
static void run_blocks(const BlockWeights* blocks, int64_t n_layer, int64_t B, int64_t C, int64_t H, int64_t hidden,
                       float eps, int gelu, float* x, float* keys, float* values, int64_t max_len,
                       int64_t layer_stride, int64_t row_stride, int64_t length, const int64_t* pad, float* scratch,
                       int threads) {
  float *h = scratch, *qkv = h + B * C, *att = qkv + 3 * B * C, *m = att + B * C, *scores = m + B * hidden;
#pragma omp parallel num_threads(threads)
  for (int64_t l = 0; l < n_layer; ++l) {
    const BlockWeights& w = blocks[l];
    layernorm_for(x, h, B, C, w.ln1_w, w.ln1_b, eps);
    gemm_for(h, B, C, (const W*)w.qkv, 3 * C, w.qkv_b, qkv, STORE);
    attention_for(qkv, keys + l * layer_stride, values + l * layer_stride, row_stride, att, B, H, C, max_len, length,
                  pad, scores);
    gemm_for(att, B, C, (const W*)w.proj, C, w.proj_b, x, ADD);
    layernorm_for(x, h, B, C, w.ln2_w, w.ln2_b, eps);
    gemm_for(h, B, C, (const W*)w.fc, hidden, w.fc_b, m, gelu);
    gemm_for(m, B, hidden, (const W*)w.fc_proj, C, w.fc_proj_b, x, ADD);
  }
}

// ------------------------------------------------------------------------------------------ Llama blocks

// h = RMSNorm(x) row by row: x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019; no mean, no bias).
static void rmsnorm_for(const float* x, float* h, int64_t B, int64_t C, const float* w, float eps) {
#pragma omp for schedule(static)
  for (int64_t row = 0; row < B; ++row) {
    const float* xr = x + row * C;
    double squares = 0;
    for (int64_t c = 0; c < C; ++c) squares += (double)xr[c] * xr[c];
    const float inv = (float)(1.0 / std::sqrt(squares / C + eps));
    for (int64_t c = 0; c < C; ++c) h[row * C + c] = xr[c] * inv * w[c];
  }
}

// Rotary positions (Su et al. 2021) on one head's vector v [d] in place, Hugging Face's layout: the two halves
// rotate together, v * cos + rotate_half(v) * sin with rotate_half(v) = (-v2, v1); cos / sin [d] of the position.
static void rope_inplace(float* v, const float* cos, const float* sin, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = v[i], b = v[i + half];
    v[i] = a * cos[i] - b * sin[i];
    v[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

// qkv [B, (H + 2 Hkv) d]: the H query heads, then the Hkv key heads and the Hkv value heads of each row. Rotate
// queries and keys at each row's position pos[row], append keys and values to the cache at `length`, then each
// query head attends with its key/value head (grouped-query attention: head h uses h / (H / Hkv)) to that row's
// keys pad[row] .. length, softmax(q k / sqrt(d)) v, into att [B, H d].
static void gqa_attention_for(float* qkv, float* keys, float* values, int64_t row_stride, float* att, int64_t B,
                              int64_t H, int64_t Hkv, int64_t d, int64_t max_len, int64_t length, const int64_t* pad,
                              const float* cos, const float* sin, const int64_t* pos, float* scores) {
  const int64_t width = (H + 2 * Hkv) * d, group = H / Hkv;
  const float scale = 1.0f / std::sqrt((float)d);
#pragma omp for schedule(static)
  for (int64_t bh = 0; bh < B * (H + Hkv); ++bh) {
    const int64_t row = bh / (H + Hkv), head = bh % (H + Hkv);
    float* v = qkv + row * width + head * d;
    rope_inplace(v, cos + pos[row] * d, sin + pos[row] * d, d);
    if (head >= H) {
      const int64_t g = head - H, at = row * row_stride + g * max_len * d + length * d;
      std::memcpy(keys + at, v, d * 4);
      std::memcpy(values + at, v + Hkv * d, d * 4);
    }
  }
#pragma omp for schedule(static)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t row = bh / H, head = bh % H, g = head / group;
    const float* q = qkv + row * width + head * d;
    const float* K = keys + row * row_stride + g * max_len * d;
    const float* V = values + row * row_stride + g * max_len * d;
    const int64_t first = pad ? std::min(pad[row], length) : 0, n = length + 1 - first;
    float* s = scores + bh * max_len;
    scores_of(q, K + first * d, n, d, scale, s);
    float top = -INFINITY;
    for (int64_t j = 0; j < n; ++j) top = s[j] > top ? s[j] : top;
    for (int64_t j = 0; j < n; ++j) s[j] -= top;
    exp_inplace(s, n);
    float total = 0;
    for (int64_t j = 0; j < n; ++j) total += s[j];
    float* o = att + row * H * d + head * d;
    for (int64_t e = 0; e < d; ++e) o[e] = 0;
    for (int64_t j = 0; j < n; ++j) {
      const float* vj = V + (first + j) * d;
      for (int64_t e = 0; e < d; ++e) o[e] += s[j] * vj[e];
    }
    for (int64_t e = 0; e < d; ++e) o[e] /= total;
  }
}

// m [B, I] = silu(gate) * up (SwiGLU, Shazeer 2020) from gu [B, 2I] (gate columns, then up), silu(g) = g / (1 + e^-g).
static void swiglu_for(const float* gu, float* m, int64_t B, int64_t I) {
#pragma omp for schedule(static)
  for (int64_t row = 0; row < B; ++row) {
    const float *g = gu + row * 2 * I, *u = g + I;
    float* out = m + row * I;
    for (int64_t i = 0; i < I; ++i) out[i] = -g[i];
    exp_inplace(out, I);
    for (int64_t i = 0; i < I; ++i) out[i] = g[i] / (1.0f + out[i]) * u[i];
  }
}

// Pointers to one Llama block's parameters, the Linear weights packed: q, k and v as one matrix (with their
// biases, or null), gate and up as one.
struct LlamaWeights {
  const float* attn_norm;
  const void* qkv;
  const float* qkv_b;
  const void* o;
  const float* mlp_norm;
  const void* gate_up;
  const void* down;
};

template <typename W>
static void run_llama_blocks(const LlamaWeights* blocks, int64_t n_layer, int64_t B, int64_t C, int64_t H,
                             int64_t Hkv, int64_t d, int64_t I, float eps, float* x, float* keys, float* values,
                             int64_t max_len, int64_t layer_stride, int64_t row_stride, int64_t length,
                             const int64_t* pad, const float* cos, const float* sin, const int64_t* pos,
                             float* scratch, int threads) {
  const int64_t width = (H + 2 * Hkv) * d;
  float *h = scratch, *qkv = h + B * C, *att = qkv + B * width, *gu = att + B * H * d, *m = gu + 2 * B * I,
        *scores = m + B * I;
#pragma omp parallel num_threads(threads)
  for (int64_t l = 0; l < n_layer; ++l) {
    const LlamaWeights& w = blocks[l];
    rmsnorm_for(x, h, B, C, w.attn_norm, eps);
    gemm_for(h, B, C, (const W*)w.qkv, width, w.qkv_b, qkv, STORE);
    gqa_attention_for(qkv, keys + l * layer_stride, values + l * layer_stride, row_stride, att, B, H, Hkv, d,
                      max_len, length, pad, cos, sin, pos, scores);
    gemm_for(att, B, H * d, (const W*)w.o, C, nullptr, x, ADD);
    rmsnorm_for(x, h, B, C, w.mlp_norm, eps);
    gemm_for(h, B, C, (const W*)w.gate_up, 2 * I, nullptr, gu, STORE);
    swiglu_for(gu, m, B, I);
    gemm_for(m, B, I, (const W*)w.down, C, nullptr, x, ADD);
  }
}

extern "C" {

int lmlab_panel_width(void) { return P; }

// 1 where float16 weights can be read (F16C or AVX-512), else 0.
int lmlab_half_weights(void) {
#if defined(__AVX512F__) || defined(__F16C__)
  return 1;
#else
  return 0;
#endif
}

// The packed weights' format, as kernels.py passes it.
enum Format { FP32 = 0, FP16 = 1, INT8 = 2 };

// x [M, K] and the packed weight (in `format`) contiguous; y [M, N] written; bias [N] or null.
void lmlab_small_gemm(const float* x, int64_t M, int64_t K, const void* packed, int format, int64_t N,
                      const float* bias, float* y, int threads) {
#pragma omp parallel num_threads(threads)
  if (format == FP16)
    gemm_for(x, M, K, (const uint16_t*)packed, N, bias, y, STORE);
  else if (format == INT8)
    gemm_for(x, M, K, (const int8_t*)packed, N, bias, y, STORE);
  else
    gemm_for(x, M, K, (const float*)packed, N, bias, y, STORE);
}

// One decoding step of B rows through n_layer blocks. x [B, C]: the new positions' embeddings in, the last
// block's output out. keys/values: the KV cache [n_layer, B, H, max_len, C / H] holding `length` positions,
// each row's [H, max_len, C / H] contiguous, layers and rows `layer_stride` and `row_stride` floats apart;
// pad [B] or null: row b's first real position (left padding). scratch: B * (5C + hidden + H * max_len) floats.
// format: how the blocks' Linear weights are packed.
void lmlab_gpt_blocks(const BlockWeights* blocks, int64_t n_layer, int64_t B, int64_t C, int64_t H,
                      int64_t hidden, float eps, int gelu, float* x, float* keys, float* values, int64_t max_len,
                      int64_t layer_stride, int64_t row_stride, int64_t length, const int64_t* pad, float* scratch,
                      int format, int threads) {
  (format == FP16 ? run_blocks<uint16_t> : format == INT8 ? run_blocks<int8_t> : run_blocks<float>)(
      blocks, n_layer, B, C, H, hidden, eps, gelu, x, keys, values, max_len, layer_stride, row_stride, length, pad,
      scratch, threads);
}

// One decoding step of B rows through n_layer Llama blocks, as lmlab_gpt_blocks for a GPT. x [B, C] in and out;
// keys/values [n_layer, B, Hkv, max_len, d]; pos [B]: each row's rotary position; cos / sin [positions, d].
// scratch: B * (C + (H + 2 Hkv) d + H d + 3 I + H * max_len) floats.
void lmlab_llama_blocks(const LlamaWeights* blocks, int64_t n_layer, int64_t B, int64_t C, int64_t H, int64_t Hkv,
                        int64_t d, int64_t I, float eps, float* x, float* keys, float* values, int64_t max_len,
                        int64_t layer_stride, int64_t row_stride, int64_t length, const int64_t* pad,
                        const float* cos, const float* sin, const int64_t* pos, float* scratch, int format,
                        int threads) {
  (format == FP16 ? run_llama_blocks<uint16_t> : format == INT8 ? run_llama_blocks<int8_t> : run_llama_blocks<float>)(
      blocks, n_layer, B, C, H, Hkv, d, I, eps, x, keys, values, max_len, layer_stride, row_stride, length, pad, cos,
      sin, pos, scratch, threads);
}

}  // extern "C"
