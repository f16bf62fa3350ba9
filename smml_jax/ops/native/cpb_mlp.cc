// The continuous relative-position bias (CPB) of deformable attention as two XLA FFI CPU kernels:
//
//   bias[r, q, k] = w3 . relu(relu(t W1 + b1) W2 + b2) + b3,  t = sign(d) log(1 + |d|),
//   d = pos_q[q] - pos_k[r, k]                                 (D = 1 or 2 coordinates)
//
// smml_cpb_bias_fwd: pos_q (T, D), pos_k (R, M, D), weights -> bias (R, T, M) and bits (R, T, M)
//   uint32, bit j = [unit j of the second hidden layer > 0].
// smml_cpb_bias_bwd: the same inputs, bits and g = d loss / d bias -> d pos_q, d pos_k and the
//   gradients of the six weight arrays.
//
// Why: per (query, key) pair the MLP is one W x W matrix-vector product forward and two backward,
// ~5.8 M pairs per branch per step at the paper's shape. XLA's CPU backend runs these small matmuls
// at a fraction of the machine's FMA peak and spends as long again on elementwise passes over
// (pairs, W) tensors. Here the forward pass evaluates layer 2 as an affine map of t per
// first-layer activation region (see RegionCache; register-tiled FMA products when a work item
// meets too many regions), and the backward pass needs no W x W products at all (see
// BackwardAccumulator): it only keeps the bits, recomputing the distances and the first layer.
//
// Activation boundaries: a ReLU whose input is within rounding of zero may take either side in
// float32 (the region cache's reassociated sums round differently again), and the gradient jumps
// there by a whole unit's contribution: ~1e-4 of a weight gradient's largest entry for a single
// pair at the paper's shape. Units whose float32 pre-activation is within kNear of their scale
// (rare: ~1e-3 of the pairs) are therefore decided by a float64 evaluation of the pair
// (ExactPreActivations), so the bits and masks are those of the float64 function.
//
// Determinism: work items (row, block of queries) are fixed by the shapes, not the thread count;
// each item sums its weight gradients in float for at most kFlush pairs and then in double, into
// its own slot; slots are reduced in item order, so results do not depend on scheduling.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SMML_AVX2 1
#else
#define SMML_AVX2 0
#endif

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using smml_native::ParallelFor;

constexpr int64_t kChunk = 16384;  // pairs per work item, about (fixed: independent of threads)
constexpr int64_t kFlush = 1024;   // pairs summed in float before the double partial sums
constexpr int kRows = 6;           // pairs per matrix-product micro-kernel call
constexpr int kBlock = 60;         // pairs whose hidden vectors are kept in L1 at once (kRows | kBlock)
// A unit is decided in float64 when |float32 pre-activation| < kNear * (a bound on its terms'
// magnitudes), well above float32 rounding (a few epsilons of those magnitudes, the log1p and
// the 32-term sums included); a wider band costs speed (1e-5 made the forward ~1.5x slower).
constexpr float kNear = 2e-6f;

// Weights in the layouts the micro-kernels read, 32-byte aligned.
template <int W>
struct Weights {
  alignas(32) float w1[4][W];     // (D <= 4, W)
  alignas(32) float b1[W];
  alignas(32) float w2[W][W];     // (in, out)
  alignas(32) float b2[W];
  alignas(32) float w3[W];
  alignas(32) float w2w3t[W][W];  // [j][i] = W2[i][j] * w3[j]: d h1 = u (W2 * w3)^T
  // lookup[q][n] = sum of the rows w2w3t[4 q + b] over the set bits b of the nibble n, so
  // d h1 = g * sum_q lookup[q][nibble q of the pair's bits]: W / 4 row loads, not W FMAs.
  alignas(32) float lookup[W / 4][16][W];
  // kNear times a bound on the sum of the magnitudes of each pre-activation's terms for inputs
  // |t_k| <= t_max: layer 1 |b1| + t_max sum_k |W1[k]|, layer 2 |b2| + sum_i |W2[i]| scale1_i.
  alignas(32) float near1[W];
  alignas(32) float near2[W];
  float b3;
  int d;

  Weights(int d_, const float* w1_, const float* b1_, const float* w2_, const float* b2_,
          const float* w3_, const float* b3_, float t_max) : d(d_) {
    std::memset(w1, 0, sizeof(w1));
    std::memcpy(w1, w1_, sizeof(float) * d * W);
    std::memcpy(b1, b1_, sizeof(b1));
    std::memcpy(w2, w2_, sizeof(w2));
    std::memcpy(b2, b2_, sizeof(b2));
    std::memcpy(w3, w3_, sizeof(w3));
    b3 = *b3_;
    for (int i = 0; i < W; ++i)
      for (int j = 0; j < W; ++j) w2w3t[j][i] = w2[i][j] * w3[j];
    for (int q = 0; q < W / 4; ++q)
      for (int n = 0; n < 16; ++n)
        for (int i = 0; i < W; ++i) {
          float sum = 0.f;
          for (int b = 0; b < 4; ++b)
            if ((n >> b) & 1) sum += w2w3t[4 * q + b][i];
          lookup[q][n][i] = sum;
        }
    double scale1[W];
    for (int i = 0; i < W; ++i) {
      scale1[i] = std::fabs(b1[i]);
      for (int k = 0; k < d; ++k) scale1[i] += t_max * std::fabs(w1[k][i]);
      near1[i] = kNear * static_cast<float>(scale1[i]);
    }
    for (int j = 0; j < W; ++j) {
      double scale2 = std::fabs(b2[j]);
      for (int i = 0; i < W; ++i) scale2 += std::fabs(w2[i][j]) * scale1[i];
      near2[j] = kNear * static_cast<float>(scale2);
    }
  }
};

// Layer 1's (z1) and, for the units set in `units2`, layer 2's (z2) pre-activations of one pair
// in float64, from the float32 positions: the float64 function the bits and masks of near-zero
// units follow. Only the units asked for (usually one) cost a W-term sum.
template <int W, int D>
void ExactPreActivations(const Weights<W>& w, const float* query, const float* key, double* z1,
                         double* z2, uint32_t units2) {
  double t[D];
  for (int k = 0; k < D; ++k) {
    const double delta = static_cast<double>(query[k]) - static_cast<double>(key[k]);
    t[k] = std::copysign(std::log1p(std::fabs(delta)), delta);
  }
  for (int i = 0; i < W; ++i) {
    z1[i] = w.b1[i];
    for (int k = 0; k < D; ++k) z1[i] += t[k] * static_cast<double>(w.w1[k][i]);
  }
  for (int j = 0; j < W; ++j) {
    if (!((units2 >> j) & 1u)) continue;
    z2[j] = w.b2[j];
    for (int i = 0; i < W; ++i)
      if (z1[i] > 0.0) z2[j] += z1[i] * static_cast<double>(w.w2[i][j]);
  }
}

// Replaces the bits of the units in `near` (layer 2) by the float64 function's.
template <int W, int D>
__attribute__((noinline)) uint32_t ExactBits(const Weights<W>& w, const float* query, const float* key, uint32_t word,
                   uint32_t near) {
  double z1[W], z2[W];
  ExactPreActivations<W, D>(w, query, key, z1, z2, near);
  for (int j = 0; j < W; ++j)
    if ((near >> j) & 1u) word = z2[j] > 0.0 ? word | (1u << j) : word & ~(1u << j);
  return word;
}

// Layer 1's activation mask of one pair (bit i = unit i active), units in `near` by float64.
template <int W, int D>
__attribute__((noinline)) uint32_t ExactMask1(const Weights<W>& w, const float* query, const float* key, uint32_t word,
                    uint32_t near) {
  double z1[W];
  ExactPreActivations<W, D>(w, query, key, z1, nullptr, 0u);
  for (int i = 0; i < W; ++i)
    if ((near >> i) & 1u) word = z1[i] > 0.0 ? word | (1u << i) : word & ~(1u << i);
  return word;
}

// The largest |t| over all pairs: log1p of max_k (max |pos_q[:, k]| + max |pos_k[..., k]|).
inline float MaxInput(const float* pos_q, int64_t nq, const float* pos_k, int64_t nk, int d) {
  float largest = 0.f;
  for (int k = 0; k < d; ++k) {
    float mq = 0.f, mk = 0.f;
    for (int64_t e = k; e < nq * d; e += d) mq = std::max(mq, std::fabs(pos_q[e]));
    for (int64_t e = k; e < nk * d; e += d) mk = std::max(mk, std::fabs(pos_k[e]));
    largest = std::max(largest, mq + mk);
  }
  return std::log1p(largest) * 1.0001f;
}

#if SMML_AVX2
constexpr int kLanes = 8;

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Layer 1's pre-activations t W1 + b1 (NV vectors) for one pair, tk its D inputs broadcast.
template <int W, int D>
inline void PreActivation(const Weights<W>& w, const __m256* tk, __m256* a) {
  for (int v = 0; v < W / kLanes; ++v) {
    a[v] = _mm256_load_ps(w.b1 + v * kLanes);
    for (int k = 0; k < D; ++k) a[v] = _mm256_fmadd_ps(tk[k], _mm256_load_ps(&w.w1[k][v * kLanes]), a[v]);
  }
}

// h1 (n, W) = relu(t W1 + b1) for n pairs.
template <int W, int D>
inline void Layer1(const Weights<W>& w, const float* t, int n, float (*h1)[W]) {
  constexpr int NV = W / kLanes;
  for (int p = 0; p < n; ++p) {
    __m256 tk[D], a[NV];
    for (int k = 0; k < D; ++k) tk[k] = _mm256_set1_ps(t[p * D + k]);
    PreActivation<W, D>(w, tk, a);
    for (int v = 0; v < NV; ++v)
      _mm256_store_ps(&h1[p][v * kLanes], _mm256_max_ps(a[v], _mm256_setzero_ps()));
  }
}

// out (kRows, W) = bias + x m for kRows rows of x (W columns each); m is (W, W). Register tiles of
// kRows rows x 2 vectors: per k, 2 loads of m and kRows broadcasts feed 2 kRows FMAs.
template <int W>
inline void RowsProduct(const float (*x)[W], const float (*m)[W], const float* bias,
                        float (*out)[W]) {
  constexpr int NV = W / kLanes;
  for (int v0 = 0; v0 < NV; v0 += 2) {
    const int nv = NV - v0 >= 2 ? 2 : 1;
    __m256 a[kRows][2];
    for (int q = 0; q < 2; ++q) {
      const __m256 b = bias && q < nv ? _mm256_load_ps(bias + (v0 + q) * kLanes)
                                      : _mm256_setzero_ps();
      for (int r = 0; r < kRows; ++r) a[r][q] = b;
    }
    if (nv == 2) {
      for (int k = 0; k < W; ++k) {
        const __m256 m0 = _mm256_load_ps(&m[k][v0 * kLanes]);
        const __m256 m1 = _mm256_load_ps(&m[k][(v0 + 1) * kLanes]);
        for (int r = 0; r < kRows; ++r) {
          const __m256 s = _mm256_broadcast_ss(&x[r][k]);
          a[r][0] = _mm256_fmadd_ps(s, m0, a[r][0]);
          a[r][1] = _mm256_fmadd_ps(s, m1, a[r][1]);
        }
      }
    } else {
      for (int k = 0; k < W; ++k) {
        const __m256 m0 = _mm256_load_ps(&m[k][v0 * kLanes]);
        for (int r = 0; r < kRows; ++r)
          a[r][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(&x[r][k]), m0, a[r][0]);
      }
    }
    for (int r = 0; r < kRows; ++r)
      for (int q = 0; q < nv; ++q) _mm256_store_ps(&out[r][(v0 + q) * kLanes], a[r][q]);
  }
}


// log1p(x) for x >= 0, 8 lanes: log(1 + x) by Cephes' logf polynomial (range [sqrt(1/2), sqrt(2)))
// plus the rounding correction (x - ((1 + x) - 1)) / (1 + x); about 2 ulp.
inline __m256 Log1p(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 u = _mm256_add_ps(one, x);
  const __m256i bits = _mm256_castps_si256(u);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
  __m256 m = _mm256_or_ps(_mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff))), one);
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356237f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_add_ps(e, _mm256_and_ps(big, one));
  const __m256 f = _mm256_sub_ps(m, one);
  const __m256 z = _mm256_mul_ps(f, f);
  __m256 y = _mm256_set1_ps(7.0376836292e-2f);
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.1514610310e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.1676998740e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.2420140846e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.4249322787e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.6668057665e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(2.0000714765e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-2.4999993993e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(3.3333331174e-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, f), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), z, y);
  __m256 r = _mm256_add_ps(f, y);
  r = _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), r);
  const __m256 correction = _mm256_div_ps(_mm256_sub_ps(x, _mm256_sub_ps(u, one)), u);
  r = _mm256_add_ps(r, correction);
  // 1 + x rounds to 1: log1p(x) = x to float precision.
  return _mm256_blendv_ps(r, x, _mm256_cmp_ps(u, one, _CMP_EQ_OQ));
}
#endif  // SMML_AVX2

// t = sign(d) log(1 + |d|) and slope = d == 0 ? 0 : 1 / (1 + |d|) for d = query - key, for the
// m keys (m, D) of one row; keys is padded to a multiple of 8 floats, as are t and slope.
template <int D>
inline void PairInputs(const float* query, const float* keys, int m, float* t, float* slope) {
  const int n = m * D;
#if SMML_AVX2
  alignas(32) float pattern[8 * D];  // query[e % D] for 8 D consecutive elements e
  for (int e = 0; e < 8 * D; ++e) pattern[e] = query[e % D];
  const __m256 sign_bit = _mm256_set1_ps(-0.f);
  const __m256 one = _mm256_set1_ps(1.f);
  for (int e = 0, i = 0; e < n; e += kLanes, ++i) {
    const __m256 d = _mm256_sub_ps(_mm256_load_ps(pattern + (i % D) * kLanes), _mm256_load_ps(keys + e));
    const __m256 a = _mm256_andnot_ps(sign_bit, d);
    _mm256_store_ps(t + e, _mm256_or_ps(Log1p(a), _mm256_and_ps(sign_bit, d)));
    if (slope != nullptr) {
      const __m256 nonzero = _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_OQ);
      _mm256_store_ps(slope + e, _mm256_and_ps(nonzero, _mm256_div_ps(one, _mm256_add_ps(one, a))));
    }
  }
#else
  for (int e = 0; e < n; ++e) {
    const float d = query[e % D] - keys[e];
    t[e] = std::copysign(std::log1p(std::fabs(d)), d);
    if (slope != nullptr) slope[e] = d == 0.f ? 0.f : 1.f / (1.f + std::fabs(d));
  }
#endif
}

#if SMML_AVX2
// The second layer as an affine map of t within each activation region of the first.
//
// Layer 1 is affine in t (D inputs), so its ReLU pattern S (a W-bit mask) cuts t-space into
// regions, at most 1 + W + W (W - 1) / 2 = 529 of them for D = 2, W = 32, and within one
//   z2 = W2^T (S * (t W1 + b1)) + b2 = sum_k t_k (W2^T (S * W1[k])) + (W2^T (S * b1) + b2).
// The cache keeps these D + 1 vectors per pattern met, so a pair costs D + 1 FMAs per 8 units of
// layer 2 instead of W: the same function, rounded differently (reassociated sums).
template <int W, int D>
class RegionCache {
 public:
  static constexpr int kSlots = 2048;  // open addressing, power of two
  static constexpr int kCapacity = 1536;

  RegionCache() { Clear(); }
  void Clear() {
    std::memset(used_, 0, sizeof(used_));
    size_ = 0;
  }

  // The (D + 1, W) coefficients of pattern `mask`, or nullptr when the cache is full.
  const float (*Find(const Weights<W>& w, uint32_t mask))[W] {
    uint32_t slot = (mask * 0x9E3779B1u) >> (32 - 11);
    for (;; slot = (slot + 1) & (kSlots - 1)) {
      if (!used_[slot]) break;
      if (keys_[slot] == mask) return coef_[index_[slot]];
    }
    if (size_ == kCapacity) return nullptr;
    used_[slot] = 1;
    keys_[slot] = mask;
    index_[slot] = size_;
    Fill(w, mask, coef_[size_]);
    return coef_[size_++];
  }

 private:
  static void Fill(const Weights<W>& w, uint32_t mask, float (*coef)[W]) {
    constexpr int NV = W / kLanes;
    __m256 acc[D + 1][NV];
    for (int v = 0; v < NV; ++v) {
      for (int k = 0; k < D; ++k) acc[k][v] = _mm256_setzero_ps();
      acc[D][v] = _mm256_load_ps(w.b2 + v * kLanes);
    }
    for (int i = 0; i < W; ++i) {
      if (!((mask >> i) & 1u)) continue;
      for (int v = 0; v < NV; ++v) {
        const __m256 row = _mm256_load_ps(&w.w2[i][v * kLanes]);
        for (int k = 0; k < D; ++k)
          acc[k][v] = _mm256_fmadd_ps(_mm256_set1_ps(w.w1[k][i]), row, acc[k][v]);
        acc[D][v] = _mm256_fmadd_ps(_mm256_set1_ps(w.b1[i]), row, acc[D][v]);
      }
    }
    for (int k = 0; k <= D; ++k)
      for (int v = 0; v < NV; ++v) _mm256_store_ps(&coef[k][v * kLanes], acc[k][v]);
  }

  alignas(32) float coef_[kCapacity][D + 1][W];
  uint32_t keys_[kSlots];
  uint16_t index_[kSlots];
  uint8_t used_[kSlots];
  int size_ = 0;
};

// Layer 2's activation bits and w3 . relu(z) + b3 for one pair with z (NV vectors); returns the
// units within the float64 decision band (not |z| > near2: NaN and near2 = 0 units included).
//
// The bits are z's sign bits inverted (z >= +0 active) instead of a z > 0 compare: the two differ
// only at z = +0 and NaN, which are in the band, so ExactBits decides them anyway; the hot loop
// saves a compare and an and per vector (the band check had made the forward ~15 % slower).
template <int W>
inline uint32_t Output(const Weights<W>& w, const __m256* z, float* bias, uint32_t* bits) {
  constexpr int NV = W / kLanes;
  constexpr uint32_t kAll = W == 32 ? ~0u : (1u << W) - 1u;
  const __m256 sign_bit = _mm256_set1_ps(-0.f);
  __m256 acc = _mm256_setzero_ps(), any_near = _mm256_setzero_ps();
  uint32_t negative = 0;
  for (int v = 0; v < NV; ++v) {
    negative |= static_cast<uint32_t>(_mm256_movemask_ps(z[v])) << (8 * v);
    any_near = _mm256_or_ps(any_near, _mm256_cmp_ps(_mm256_andnot_ps(sign_bit, z[v]),
                                                    _mm256_load_ps(w.near2 + v * kLanes),
                                                    _CMP_NGT_UQ));
    // max(NaN, 0) is 0, as the masked z of a z > 0 compare was.
    acc = _mm256_fmadd_ps(_mm256_max_ps(z[v], _mm256_setzero_ps()), _mm256_load_ps(w.w3 + v * kLanes), acc);
  }
  *bias = HorizontalSum(acc) + w.b3;
  *bits = ~negative & kAll;
  if (_mm256_testz_ps(any_near, any_near)) [[likely]] return 0;
  uint32_t near = 0;  // rare: which units
  for (int v = 0; v < NV; ++v)
    near |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(
                _mm256_andnot_ps(sign_bit, z[v]), _mm256_load_ps(w.near2 + v * kLanes),
                _CMP_NGT_UQ))) << (8 * v);
  return near;
}
#else
template <int W, int D>
class RegionCache {  // the portable path computes every pair's products
 public:
  void Clear() {}
};
#endif  // SMML_AVX2

// bias[k] and bits[k] for the m keys of one (row, query), t (m, D) its MLP inputs, formed from
// the query's position and the keys' (m, D).
template <int W, int D>
void ForwardQuery(const Weights<W>& w, const float* t, int m, float* bias, uint32_t* bits,
                  RegionCache<W, D>* cache, const float* query, const float* keys) {
#if SMML_AVX2
  constexpr int NV = W / kLanes;
  alignas(32) float h1[kBlock][W];
  for (int start = 0; start < m; start += kBlock) {
    const int nb = std::min(kBlock, m - start);
    bool all_cached = true;
    for (int p = start; p < start + nb && all_cached; ++p) {
      __m256 tk[D];
      for (int k = 0; k < D; ++k) tk[k] = _mm256_set1_ps(t[p * D + k]);
      __m256 a[NV];
      PreActivation<W, D>(w, tk, a);
      uint32_t mask = 0;
      for (int v = 0; v < NV; ++v)
        mask |= static_cast<uint32_t>(
                    _mm256_movemask_ps(_mm256_cmp_ps(a[v], _mm256_setzero_ps(), _CMP_GT_OQ)))
                << (8 * v);
      const float (*coef)[W] = cache->Find(w, mask);
      if (coef == nullptr) {
        all_cached = false;
        break;
      }
      __m256 z[NV];
      for (int v = 0; v < NV; ++v) {
        z[v] = _mm256_load_ps(&coef[D][v * kLanes]);
        for (int k = 0; k < D; ++k) z[v] = _mm256_fmadd_ps(tk[k], _mm256_load_ps(&coef[k][v * kLanes]), z[v]);
      }
      if (const uint32_t near = Output<W>(w, z, bias + p, bits + p)) [[unlikely]]
        bits[p] = ExactBits<W, D>(w, query, keys + p * D, bits[p], near);
    }
    if (all_cached) continue;
    // Cache full (more regions than kCapacity): the block by register-tiled products.
    Layer1<W, D>(w, t + start * D, nb, h1);
    for (int p = nb; p < kBlock && p < nb + kRows; ++p) std::memset(h1[p], 0, sizeof(h1[p]));
    for (int p = 0; p < nb; p += kRows) {
      alignas(32) float z[kRows][W];
      RowsProduct<W>(h1 + p, w.w2, w.b2, z);
      for (int r = 0; r < kRows && p + r < nb; ++r) {
        __m256 zv[NV];
        for (int v = 0; v < NV; ++v) zv[v] = _mm256_load_ps(&z[r][v * kLanes]);
        const int64_t k = start + p + r;
        if (const uint32_t near = Output<W>(w, zv, bias + k, bits + k)) [[unlikely]]
          bits[k] = ExactBits<W, D>(w, query, keys + k * D, bits[k], near);
      }
    }
  }
#else
  for (int p = 0; p < m; ++p) {
    float h1[W];
    for (int i = 0; i < W; ++i) {
      float z = w.b1[i];
      for (int k = 0; k < D; ++k) z += t[p * D + k] * w.w1[k][i];
      h1[i] = z > 0.f ? z : 0.f;
    }
    float acc = 0.f;
    uint32_t word = 0, near = 0;
    for (int j = 0; j < W; ++j) {
      float z = w.b2[j];
      for (int i = 0; i < W; ++i) z += h1[i] * w.w2[i][j];
      if (!(std::fabs(z) > w.near2[j])) near |= 1u << j;
      if (z > 0.f) {
        word |= 1u << j;
        acc += z * w.w3[j];
      }
    }
    bias[p] = acc + w.b3;
    bits[p] = near ? ExactBits<W, D>(w, query, keys + p * D, word, near) : word;
  }
#endif
}

// Weight-gradient partial sums of one work item, in double.
template <int W>
struct Partial {
  double ct[W][W];  // [j][i] = sum_p h1_pi u_pj, u_p = bits_p * g_p
  double u_sum[W];  // sum_p u_pj
  double g_b1[W];
  double g_w1[4][W];
  double g_sum;     // sum_p g_p = d b3
};

// Accumulators of the backward pass that are summed in float for up to kFlush pairs.
//
// u_p = bits_p * g_p is binary up to the scale g_p, so both of its products are table operations on
// the 4-bit nibbles of bits_p instead of W x W FMAs:
//   d h1_p = g_p * sum_q lookup[q][nibble_q]                     (W / 4 row loads)
//   C[:, j] = sum_p g_p h1_p bit_pj: g_p h1_p is added to one bucket per nibble position, and
//             C[:, 4 q + b] is the sum of position q's buckets whose nibble has bit b set.
template <int W, int D>
struct BackwardAccumulator {
  static constexpr int NQ = W / 4;  // nibble positions
  alignas(32) float bucket[NQ][16][W];
  float bucket_g[NQ][16];
  alignas(32) float g_b1[W];
  alignas(32) float g_w1[D][W];
  int64_t pairs = 0;

  BackwardAccumulator() { Clear(); }
  void Clear() {
    std::memset(bucket, 0, sizeof(bucket));
    std::memset(bucket_g, 0, sizeof(bucket_g));
    std::memset(g_b1, 0, sizeof(g_b1));
    std::memset(g_w1, 0, sizeof(g_w1));
    pairs = 0;
  }
  void FlushInto(Partial<W>* out) {
    for (int q = 0; q < NQ; ++q)
      for (int b = 0; b < 4; ++b) {
        double* col = out->ct[4 * q + b];
        for (int nibble = 0; nibble < 16; ++nibble) {
          if (!((nibble >> b) & 1)) continue;
          for (int i = 0; i < W; ++i) col[i] += bucket[q][nibble][i];
          out->u_sum[4 * q + b] += bucket_g[q][nibble];
        }
      }
    for (int i = 0; i < W; ++i) {
      out->g_b1[i] += g_b1[i];
      for (int k = 0; k < D; ++k) out->g_w1[k][i] += g_w1[k][i];
    }
    Clear();
  }
};

// Backward pass for the m keys of one (row, query): accumulates the weight gradients and writes
// d loss / d t (m, D) to g_t.
template <int W, int D>
void BackwardQuery(const Weights<W>& w, const float* t, const uint32_t* bits, const float* g,
                   int m, float* g_t, BackwardAccumulator<W, D>* acc, Partial<W>* out,
                   const float* query, const float* keys) {
  constexpr int NQ = W / 4;
#if SMML_AVX2
  constexpr int NV = W / kLanes;
  __m256 gb1[NV], gw1[D][NV];
  for (int v = 0; v < NV; ++v) {
    gb1[v] = _mm256_load_ps(acc->g_b1 + v * kLanes);
    for (int k = 0; k < D; ++k) gw1[k][v] = _mm256_load_ps(&acc->g_w1[k][v * kLanes]);
  }
  for (int p = 0; p < m; ++p) {
    __m256 tk[D];
    for (int k = 0; k < D; ++k) tk[k] = _mm256_set1_ps(t[p * D + k]);
    const float gp = g[p];
    const __m256 gv = _mm256_set1_ps(gp);
    const uint32_t word = bits[p];
    __m256 h[NV], gh[NV];
    PreActivation<W, D>(w, tk, h);
    // From here a unit is active iff h's sign bit is clear: outside the float64 band (not
    // |h| > near1, so +0, NaN and near1 = 0 units are in it) h is nonzero; in it, the float64
    // decision below writes h >= the smallest normal float (active) or -0 (inactive).
    const __m256 sign_bit = _mm256_set1_ps(-0.f);
    __m256 any_near = _mm256_setzero_ps();
    for (int v = 0; v < NV; ++v)
      any_near = _mm256_or_ps(any_near, _mm256_cmp_ps(_mm256_andnot_ps(sign_bit, h[v]),
                                                      _mm256_load_ps(w.near1 + v * kLanes),
                                                      _CMP_NGT_UQ));
    if (!_mm256_testz_ps(any_near, any_near)) [[unlikely]] {
      uint32_t near = 0;
      for (int v = 0; v < NV; ++v)
        near |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(
                    _mm256_andnot_ps(sign_bit, h[v]), _mm256_load_ps(w.near1 + v * kLanes),
                    _CMP_NGT_UQ))) << (8 * v);
      uint32_t mask = 0;
      for (int v = 0; v < NV; ++v)
        mask |= static_cast<uint32_t>(_mm256_movemask_ps(
                    _mm256_cmp_ps(h[v], _mm256_setzero_ps(), _CMP_GT_OQ))) << (8 * v);
      mask = ExactMask1<W, D>(w, query, keys + p * D, mask, near);
      const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
      for (int v = 0; v < NV; ++v) {
        const __m256i byte = _mm256_set1_epi32(static_cast<int>((mask >> (8 * v)) & 255u));
        const __m256 active = _mm256_castsi256_ps(
            _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane_bit), lane_bit));
        h[v] = _mm256_blendv_ps(sign_bit, _mm256_max_ps(h[v], _mm256_set1_ps(1.17549435e-38f)), active);
      }
    }
    __m256 relu[NV];
    for (int v = 0; v < NV; ++v) {
      relu[v] = _mm256_max_ps(h[v], _mm256_setzero_ps());
      gh[v] = _mm256_setzero_ps();
    }
    for (int q = 0; q < NQ; ++q) {
      const uint32_t nibble = (word >> (4 * q)) & 15u;
      float* dst = acc->bucket[q][nibble];
      const float* row = w.lookup[q][nibble];
      for (int v = 0; v < NV; ++v) {
        _mm256_store_ps(dst + v * kLanes, _mm256_fmadd_ps(relu[v], gv, _mm256_load_ps(dst + v * kLanes)));
        gh[v] = _mm256_add_ps(gh[v], _mm256_load_ps(row + v * kLanes));
      }
      acc->bucket_g[q][nibble] += gp;
    }
    __m256 gt[D];
    for (int k = 0; k < D; ++k) gt[k] = _mm256_setzero_ps();
    for (int v = 0; v < NV; ++v) {
      const __m256 gz = _mm256_blendv_ps(_mm256_mul_ps(gh[v], gv), _mm256_setzero_ps(), h[v]);
      gb1[v] = _mm256_add_ps(gb1[v], gz);
      for (int k = 0; k < D; ++k) {
        gw1[k][v] = _mm256_fmadd_ps(tk[k], gz, gw1[k][v]);
        gt[k] = _mm256_fmadd_ps(gz, _mm256_load_ps(&w.w1[k][v * kLanes]), gt[k]);
      }
    }
    for (int k = 0; k < D; ++k) g_t[p * D + k] = HorizontalSum(gt[k]);
    out->g_sum += gp;
  }
  for (int v = 0; v < NV; ++v) {
    _mm256_store_ps(acc->g_b1 + v * kLanes, gb1[v]);
    for (int k = 0; k < D; ++k) _mm256_store_ps(&acc->g_w1[k][v * kLanes], gw1[k][v]);
  }
#else
  for (int p = 0; p < m; ++p) {
    float h1[W];
    uint32_t mask = 0, near = 0;
    for (int i = 0; i < W; ++i) {
      float z = w.b1[i];
      for (int k = 0; k < D; ++k) z += t[p * D + k] * w.w1[k][i];
      h1[i] = z > 0.f ? z : 0.f;
      if (z > 0.f) mask |= 1u << i;
      if (!(std::fabs(z) > w.near1[i])) near |= 1u << i;
    }
    if (near) {
      mask = ExactMask1<W, D>(w, query, keys + p * D, mask, near);
      for (int i = 0; i < W; ++i)
        if (!((mask >> i) & 1u)) h1[i] = 0.f;
    }
    float gh[W] = {};
    for (int q = 0; q < NQ; ++q) {
      const uint32_t nibble = (bits[p] >> (4 * q)) & 15u;
      for (int i = 0; i < W; ++i) {
        acc->bucket[q][nibble][i] += h1[i] * g[p];
        gh[i] += w.lookup[q][nibble][i];
      }
      acc->bucket_g[q][nibble] += g[p];
    }
    float gt[D] = {};
    for (int i = 0; i < W; ++i) {
      const float gz = (mask >> i) & 1u ? gh[i] * g[p] : 0.f;
      acc->g_b1[i] += gz;
      for (int k = 0; k < D; ++k) {
        acc->g_w1[k][i] += t[p * D + k] * gz;
        gt[k] += gz * w.w1[k][i];
      }
    }
    for (int k = 0; k < D; ++k) g_t[p * D + k] = gt[k];
    out->g_sum += g[p];
  }
#endif
  acc->pairs += m;
  if (acc->pairs >= kFlush) acc->FlushInto(out);
}

// pos_q (T, D), pos_k (R, M, D), w1 (D, W), b1 (W,), w2 (W, W), b2 (W,), w3 (W, 1), b3 (1,).
struct Shapes {
  int64_t rows, queries, keys;
  int d, width;
};

ffi::Error CheckShapes(const ffi::Buffer<ffi::F32>& pos_q, const ffi::Buffer<ffi::F32>& pos_k,
                       const ffi::Buffer<ffi::F32>& w1, const ffi::Buffer<ffi::F32>& b1,
                       const ffi::Buffer<ffi::F32>& w2, const ffi::Buffer<ffi::F32>& b2,
                       const ffi::Buffer<ffi::F32>& w3, const ffi::Buffer<ffi::F32>& b3,
                       Shapes* shapes) {
  const auto qd = pos_q.dimensions();
  const auto kd = pos_k.dimensions();
  const auto w1d = w1.dimensions();
  if (qd.size() != 2 || kd.size() != 3 || w1d.size() != 2 || qd[1] != kd[2] ||
      qd[1] != w1d[0] || qd[1] < 1 || qd[1] > 4)
    return ffi::Error::InvalidArgument(
        "smml_cpb_bias: expected pos_q (T, D), pos_k (R, M, D) and w1 (D, W), 1 <= D <= 4");
  const int64_t width = w1d[1];
  if (width != 8 && width != 16 && width != 24 && width != 32)
    return ffi::Error::InvalidArgument("smml_cpb_bias: hidden width must be 8, 16, 24 or 32");
  const auto w2d = w2.dimensions();
  const auto w3d = w3.dimensions();
  if (b1.element_count() != static_cast<size_t>(width) || w2d.size() != 2 ||
      w2d[0] != width || w2d[1] != width || b2.element_count() != static_cast<size_t>(width) ||
      w3d.size() != 2 || w3d[0] != width || w3d[1] != 1 || b3.element_count() != 1)
    return ffi::Error::InvalidArgument(
        "smml_cpb_bias: expected b1 (W,), w2 (W, W), b2 (W,), w3 (W, 1), b3 (1,)");
  *shapes = Shapes{kd[0], qd[0], kd[1], static_cast<int>(qd[1]), static_cast<int>(width)};
  return ffi::Error::Success();
}

// Work items: (row, block of queries) with about kChunk pairs, fixed by the shapes alone.
struct Items {
  int64_t queries_per_item, per_row, count;
  explicit Items(const Shapes& s)
      : queries_per_item(std::max<int64_t>(1, kChunk / std::max<int64_t>(1, s.keys))),
        per_row((s.queries + queries_per_item - 1) / queries_per_item),
        count(s.rows * per_row) {}
};

// A zeroed, 32-byte aligned float buffer with room for n floats rounded up to a multiple of 8.
class AlignedFloats {
 public:
  explicit AlignedFloats(int64_t n)
      : bytes_((n + 7) / 8 * 32), data_(static_cast<float*>(std::aligned_alloc(32, bytes_))) {
    std::memset(data_, 0, bytes_);
  }
  ~AlignedFloats() { std::free(data_); }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  float* data() const { return data_; }

 private:
  size_t bytes_;
  float* data_;
};

template <int W, int D>
void Forward(ffi::ThreadPool* pool, const Shapes& s, const float* pos_q, const float* pos_k,
             const Weights<W>& w, float* bias, uint32_t* bits) {
  const Items items(s);
  ParallelFor(pool, items.count, [&](int64_t item) {
    const int64_t row = item / items.per_row;
    const int64_t q0 = (item % items.per_row) * items.queries_per_item;
    const int64_t q1 = std::min(s.queries, q0 + items.queries_per_item);
    const int64_t nk = s.keys * D;
    AlignedFloats keys(nk), t(nk);
    std::memcpy(keys.data(), pos_k + row * nk, sizeof(float) * nk);
    auto cache = std::make_unique<RegionCache<W, D>>();
    for (int64_t q = q0; q < q1; ++q) {
      PairInputs<D>(pos_q + q * D, keys.data(), static_cast<int>(s.keys), t.data(), nullptr);
      const int64_t base = (row * s.queries + q) * s.keys;
      ForwardQuery<W, D>(w, t.data(), static_cast<int>(s.keys), bias + base, bits + base,
                         cache.get(), pos_q + q * D, keys.data());
    }
  });
}

template <int W, int D>
void Backward(ffi::ThreadPool* pool, const Shapes& s, const float* pos_q, const float* pos_k,
              const Weights<W>& w, const uint32_t* bits, const float* g, float* g_pos_q,
              float* g_pos_k, float* g_w1, float* g_b1, float* g_w2, float* g_b2, float* g_w3,
              float* g_b3) {
  const Items items(s);
  const int64_t nk = s.keys * D;
  std::vector<Partial<W>> partials(std::max<int64_t>(items.count, 1));
  std::memset(partials.data(), 0, sizeof(Partial<W>) * partials.size());
  std::vector<double> g_keys(items.count * nk, 0.0);             // per item, (M, D)
  std::vector<float> g_queries(s.rows * s.queries * s.d, 0.f);   // per row, (T, D)
  ParallelFor(pool, items.count, [&](int64_t item) {
    const int64_t row = item / items.per_row;
    const int64_t q0 = (item % items.per_row) * items.queries_per_item;
    const int64_t q1 = std::min(s.queries, q0 + items.queries_per_item);
    AlignedFloats keys(nk), t(nk), slope(nk), g_t(nk);
    std::memcpy(keys.data(), pos_k + row * nk, sizeof(float) * nk);
    std::vector<float> g_keys_f(nk, 0.f);
    auto acc = std::make_unique<BackwardAccumulator<W, D>>();
    Partial<W>* out = &partials[item];
    for (int64_t q = q0; q < q1; ++q) {
      PairInputs<D>(pos_q + q * D, keys.data(), static_cast<int>(s.keys), t.data(), slope.data());
      const int64_t base = (row * s.queries + q) * s.keys;
      BackwardQuery<W, D>(w, t.data(), bits + base, g + base, static_cast<int>(s.keys), g_t.data(),
                          acc.get(), out, pos_q + q * D, keys.data());
      float g_query[D] = {};
      for (int64_t e = 0; e < nk; ++e) {
        const float g_delta = g_t.data()[e] * slope.data()[e];  // d = query - key
        g_query[e % D] += g_delta;
        g_keys_f[e] -= g_delta;
      }
      for (int k = 0; k < D; ++k) g_queries[(row * s.queries + q) * D + k] = g_query[k];
    }
    acc->FlushInto(out);
    for (int64_t e = 0; e < nk; ++e) g_keys[item * nk + e] = g_keys_f[e];
  });

  Partial<W>& total = partials[0];
  for (size_t item = 1; item < partials.size(); ++item) {
    const double* src = reinterpret_cast<const double*>(&partials[item]);
    double* dst = reinterpret_cast<double*>(&total);
    for (size_t k = 0; k < sizeof(Partial<W>) / sizeof(double); ++k) dst[k] += src[k];
  }
  for (int64_t row = 0; row < s.rows; ++row)
    for (int64_t e = 0; e < nk; ++e) {
      double sum = 0.0;
      for (int64_t i = 0; i < items.per_row; ++i) sum += g_keys[(row * items.per_row + i) * nk + e];
      g_pos_k[row * nk + e] = static_cast<float>(sum);
    }
  for (int64_t e = 0; e < s.queries * s.d; ++e) {
    double sum = 0.0;
    for (int64_t row = 0; row < s.rows; ++row) sum += g_queries[row * s.queries * s.d + e];
    g_pos_q[e] = static_cast<float>(sum);
  }
  for (int i = 0; i < W; ++i) {
    for (int j = 0; j < W; ++j) g_w2[i * W + j] = static_cast<float>(total.ct[j][i] * w.w3[j]);
    g_b1[i] = static_cast<float>(total.g_b1[i]);
    for (int k = 0; k < D; ++k) g_w1[k * W + i] = static_cast<float>(total.g_w1[k][i]);
  }
  for (int j = 0; j < W; ++j) {
    double dw3 = w.b2[j] * total.u_sum[j];
    for (int i = 0; i < W; ++i) dw3 += static_cast<double>(w.w2[i][j]) * total.ct[j][i];
    g_w3[j] = static_cast<float>(dw3);
    g_b2[j] = static_cast<float>(w.w3[j] * total.u_sum[j]);
  }
  *g_b3 = static_cast<float>(total.g_sum);
}

// Calls f(width, inputs) with both as compile-time constants.
template <int W, typename F>
void DispatchInputs(int d, F&& f) {
  switch (d) {
    case 1: f(std::integral_constant<int, W>{}, std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, W>{}, std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, W>{}, std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, W>{}, std::integral_constant<int, 4>{}); break;
  }
}

template <typename F>
void Dispatch(const Shapes& s, F&& f) {
  switch (s.width) {
    case 8: DispatchInputs<8>(s.d, f); break;
    case 16: DispatchInputs<16>(s.d, f); break;
    case 24: DispatchInputs<24>(s.d, f); break;
    default: DispatchInputs<32>(s.d, f); break;
  }
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> pos_q,
                       ffi::Buffer<ffi::F32> pos_k, ffi::Buffer<ffi::F32> w1,
                       ffi::Buffer<ffi::F32> b1, ffi::Buffer<ffi::F32> w2,
                       ffi::Buffer<ffi::F32> b2, ffi::Buffer<ffi::F32> w3,
                       ffi::Buffer<ffi::F32> b3, ffi::ResultBuffer<ffi::F32> bias,
                       ffi::ResultBuffer<ffi::U32> bits) {
  Shapes s;
  if (ffi::Error e = CheckShapes(pos_q, pos_k, w1, b1, w2, b2, w3, b3, &s); !e.success()) return e;
  const size_t pairs = static_cast<size_t>(s.rows * s.queries * s.keys);
  if (bias->element_count() != pairs || bits->element_count() != pairs)
    return ffi::Error::InvalidArgument("smml_cpb_bias_fwd: outputs must be (R, T, M)");
  Dispatch(s, [&](auto width, auto inputs) {
    constexpr int W = decltype(width)::value, D = decltype(inputs)::value;
    const float t_max = MaxInput(pos_q.typed_data(), s.queries, pos_k.typed_data(),
                                 s.rows * s.keys, D);
    const auto weights = std::make_unique<Weights<W>>(D, w1.typed_data(), b1.typed_data(),
                                                      w2.typed_data(), b2.typed_data(),
                                                      w3.typed_data(), b3.typed_data(), t_max);
    Forward<W, D>(&pool, s, pos_q.typed_data(), pos_k.typed_data(), *weights,
                  bias->typed_data(), bits->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> pos_q,
                        ffi::Buffer<ffi::F32> pos_k, ffi::Buffer<ffi::F32> w1,
                        ffi::Buffer<ffi::F32> b1, ffi::Buffer<ffi::F32> w2,
                        ffi::Buffer<ffi::F32> b2, ffi::Buffer<ffi::F32> w3,
                        ffi::Buffer<ffi::F32> b3, ffi::Buffer<ffi::U32> bits,
                        ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> g_pos_q,
                        ffi::ResultBuffer<ffi::F32> g_pos_k, ffi::ResultBuffer<ffi::F32> g_w1,
                        ffi::ResultBuffer<ffi::F32> g_b1, ffi::ResultBuffer<ffi::F32> g_w2,
                        ffi::ResultBuffer<ffi::F32> g_b2, ffi::ResultBuffer<ffi::F32> g_w3,
                        ffi::ResultBuffer<ffi::F32> g_b3) {
  Shapes s;
  if (ffi::Error e = CheckShapes(pos_q, pos_k, w1, b1, w2, b2, w3, b3, &s); !e.success()) return e;
  const size_t pairs = static_cast<size_t>(s.rows * s.queries * s.keys);
  if (bits.element_count() != pairs || g.element_count() != pairs)
    return ffi::Error::InvalidArgument("smml_cpb_bias_bwd: bits and g must be (R, T, M)");
  Dispatch(s, [&](auto width, auto inputs) {
    constexpr int W = decltype(width)::value, D = decltype(inputs)::value;
    const float t_max = MaxInput(pos_q.typed_data(), s.queries, pos_k.typed_data(),
                                 s.rows * s.keys, D);
    const auto weights = std::make_unique<Weights<W>>(D, w1.typed_data(), b1.typed_data(),
                                                      w2.typed_data(), b2.typed_data(),
                                                      w3.typed_data(), b3.typed_data(), t_max);
    Backward<W, D>(&pool, s, pos_q.typed_data(), pos_k.typed_data(), *weights, bits.typed_data(),
                   g.typed_data(), g_pos_q->typed_data(), g_pos_k->typed_data(),
                   g_w1->typed_data(), g_b1->typed_data(), g_w2->typed_data(),
                   g_b2->typed_data(), g_w3->typed_data(), g_b3->typed_data());
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SmmlCpbBiasForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pos_q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pos_k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w2
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b2
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w3
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b3
                                  .Ret<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::U32>>());  // bits

XLA_FFI_DEFINE_HANDLER_SYMBOL(SmmlCpbBiasBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pos_q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pos_k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w2
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b2
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w3
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b3
                                  .Arg<ffi::Buffer<ffi::U32>>()  // bits
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g_pos_q
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g_pos_k
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g_w1
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g_b1
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g_w2
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g_b2
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g_w3
                                  .Ret<ffi::Buffer<ffi::F32>>());  // g_b3
