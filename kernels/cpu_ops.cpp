// CPU kernels for the paged engine's forward pass (see cpu_ops.py).
//
// A decode step at batch 64 on a small model spends as long outside the matrix
// products as inside them: each eager op is a parallel region plus a pass over
// memory, and attention first gathered every row's KV blocks into a padded
// copy. These kernels read the paged pool in place and fuse the element-wise
// chains of a layer into single passes. Arithmetic is fp32 throughout, but
// for bf16 attention on CPUs with AVX512-BF16: scores multiply bf16 pairs,
// exactly, with its dot product, and the softmax weights are rounded to bf16
// for the values' products, as GPU flash attention rounds them; inputs and
// outputs are bf16 or fp32 (the model dtype).
//
// Every kernel computes a row (a token) with the same operations in the same
// order whatever else is in the call: element-wise kernels go row by row, and
// attention reads a token's keys in chunks of 16 starting at position 0, in
// decode and prefill alike. That is what makes the engine batch-invariant.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define TTSC_BF16_DOT 1
#endif

namespace {

// Widen n values to fp32. bf16 is the top half of an fp32, so the loop is a
// shift that the compiler vectorizes.
inline void load_row(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
inline void load_row(const at::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  uint32_t* d = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<uint32_t>(s[i]) << 16;
}

// Narrow n fp32 values to the output dtype. For bf16: round to nearest even,
// NaN stays NaN (as at::BFloat16 does), as integer ops that vectorize.
inline void store_row(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
inline void store_row(const float* src, at::BFloat16* dst, int64_t n) {
  const uint32_t* s = reinterpret_cast<const uint32_t*>(src);
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = s[i];
    const bool nan = (b & 0x7fffffffu) > 0x7f800000u;
    d[i] = nan ? static_cast<uint16_t>(0x7fc0) : static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
  }
}

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// ------------------------------------------------------------- attention

// 16 floats in one vector register (or two on AVX2, as the compiler lowers it).
typedef float v16 __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline v16 load16(const at::BFloat16* p) {
  v16h h;
  std::memcpy(&h, p, sizeof h);
  v16u u = __builtin_convertvector(h, v16u) << 16;
  v16 v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
// Narrow 16 lanes to the output dtype (bf16: round to nearest even, NaN kept).
inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
inline void store16(at::BFloat16* p, v16 v) {
  v16u b;
  std::memcpy(&b, &v, sizeof b);
  const v16u rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const v16u r = (b & 0x7fffffffu) > 0x7f800000u ? v16u{} + 0x7fc0u : rounded;
  const v16h h = __builtin_convertvector(r, v16h);
  std::memcpy(p, &h, sizeof h);
}

inline float hsum(v16 v) {
  v16 a = v + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  a += __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
  a += __builtin_shufflevector(a, a, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
  return a[0] + a[1];
}

inline float hmax(v16 v) {
  v16 a = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  a = v > a ? v : a;
  v16 b = __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
  a = a > b ? a : b;
  b = __builtin_shufflevector(a, a, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
  a = a > b ? a : b;
  return std::max(a[0], a[1]);
}

// Sums of 4 vectors at once, in lanes 0, 4, 8 and 12: two rounds of folding
// pairs of vectors into one, then two folds within each group of four lanes.
inline v16 sum4(const v16* x) {
  const v16 y0 = __builtin_shufflevector(x[0], x[1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                 __builtin_shufflevector(x[0], x[1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const v16 y1 = __builtin_shufflevector(x[2], x[3], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                 __builtin_shufflevector(x[2], x[3], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const v16 z = __builtin_shufflevector(y0, y1, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                __builtin_shufflevector(y0, y1, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  const v16 w = z + __builtin_shufflevector(z, z, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  return w + __builtin_shufflevector(w, w, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
}

// e^x for x <= 0, 16 lanes at once (libm's expf does not vectorize here):
// 2^(x log2 e) split into 2^i * 2^f with f in [-0.5, 0.5] and Cephes' exp2f
// polynomial, relative error ~2e-7. Below -87 the result is ~1e-38, not 0.
inline v16 exp16(v16 x) {
  const v16 lo = v16{} - 87.f;
  const v16 t = (x < lo ? lo : x) * 1.44269504088896341f;
  const v16i i = __builtin_convertvector(t - 0.5f, v16i);  // t <= 0: rounds to nearest
  const v16 f = t - __builtin_convertvector(i, v16);
  v16 p = f * 1.535336188319500e-4f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.f;
  return p * reinterpret_cast<const v16&>(static_cast<const v16i&>((i + 127) << 23));
}

// Ask for the K|V of tokens [start, start + 16) of a key list ahead of use:
// a sequence's blocks lie anywhere in the pool, so the hardware prefetcher,
// which follows runs of addresses, loses the stream at every block.
// One token's K|V (all KV heads), into L1 (Locality 3) or L2 only (1).
template <int Locality = 3, typename T>
inline void prefetch_token(const T* pool, const int64_t* table, int64_t pos, int64_t bs, int64_t tok_stride) {
  const char* p = reinterpret_cast<const char*>(pool + (table[pos / bs] * bs + pos % bs) * tok_stride);
  for (int64_t off = 0; off < tok_stride * static_cast<int64_t>(sizeof(T)); off += 64)
    __builtin_prefetch(p + off, 0, Locality);
}

template <typename T>
inline void prefetch_chunk(const T* pool, const int64_t* table, int64_t len, int64_t start, int64_t bs,
                           int64_t tok_stride) {
  for (int64_t pos = start; pos < std::min(len, start + 16); ++pos) prefetch_token(pool, table, pos, bs, tok_stride);
}

// Whether attend_keys<T, DC> takes the bf16 dot-product path below: bf16
// keys, a head dim of at least 32, and a CPU with AVX512-BF16 (-march=native).
// Its queries come unscaled (the scale multiplies the scores); the generic
// path's come pre-scaled.
template <typename T, int DC>
constexpr bool bf16_dot() {
#ifdef TTSC_BF16_DOT
  return std::is_same<T, at::BFloat16>::value && DC >= 2;
#else
  return false;
#endif
}

// A query as attend_keys<T, DC> takes it: fp32, pre-scaled unless bf16_dot.
template <typename T, int DC>
inline v16 query16(const T* p, float sc) {
  return bf16_dot<T, DC>() ? load16(p) : load16(p) * sc;
}

#ifdef TTSC_BF16_DOT
// In-place transpose of 16 rows of 16 dwords: r[j] lane t <- r[t] lane j.
inline void transpose16(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // r[4i + k], 128-bit lane L: column 4L + k of rows 4i..4i+3.
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 4; ++k) {
      t[8 * i + k] = _mm512_shuffle_i32x4(r[8 * i + k], r[8 * i + 4 + k], 0x88);
      t[8 * i + 4 + k] = _mm512_shuffle_i32x4(r[8 * i + k], r[8 * i + 4 + k], 0xdd);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0xdd);
  }
}

// Scores of QB queries against one chunk's transposed keys kt[j] (lane t:
// dims 2j, 2j+1 of key t): per query two fp32 accumulators (even and odd
// pairs) of vdpbf16ps, whose bf16 products are exact, then (a0 + a1) * sc.
// A query's operations do not depend on QB or on the other queries.
template <int QB, int PAIRS>
inline void score_block(const __m512i* kt, const uint32_t* qb, float sc, int64_t n, v16* out) {
  __m512 a[QB][2];
  for (int q = 0; q < QB; ++q) a[q][0] = a[q][1] = _mm512_setzero_ps();
  for (int j = 0; j < PAIRS; j += 2) {
    const __m512bh k0 = (__m512bh)kt[j], k1 = (__m512bh)kt[j + 1];
    for (int q = 0; q < QB; ++q) {
      a[q][0] = _mm512_dpbf16_ps(a[q][0], (__m512bh)_mm512_set1_epi32(qb[q * PAIRS + j]), k0);
      a[q][1] = _mm512_dpbf16_ps(a[q][1], (__m512bh)_mm512_set1_epi32(qb[q * PAIRS + j + 1]), k1);
    }
  }
  const __mmask16 live = static_cast<__mmask16>((1u << n) - 1u);
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int q = 0; q < QB; ++q) {
    const __m512 s = _mm512_mask_mov_ps(neg_inf, live, _mm512_mul_ps(_mm512_add_ps(a[q][0], a[q][1]),
                                                                     _mm512_set1_ps(sc)));
    std::memcpy(out + q, &s, sizeof s);
  }
}

// Maxima of 4 vectors at once, in lanes 0, 4, 8 and 12 (sum4's folds, with max).
inline v16 max4(const v16* x) {
  auto mx = [](v16 a, v16 b) { return a > b ? a : b; };
  const v16 y0 = mx(__builtin_shufflevector(x[0], x[1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                    __builtin_shufflevector(x[0], x[1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31));
  const v16 y1 = mx(__builtin_shufflevector(x[2], x[3], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                    __builtin_shufflevector(x[2], x[3], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31));
  const v16 z = mx(__builtin_shufflevector(y0, y1, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27),
                   __builtin_shufflevector(y0, y1, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31));
  const v16 w = mx(z, __builtin_shufflevector(z, z, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  return mx(w, __builtin_shufflevector(w, w, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
}

// The online-softmax step and the values of QB <= 4 queries over one chunk of
// n keys: the queries' maxima, corrections e^(m - m') and sums side by side
// in lanes 0, 4, 8, 12 of one vector (max4, exp16, sum4; sum4 adds a
// vector's lanes in hsum's order, and a block of fewer than 4 pads with a
// copy of its first query), weights p = e^(s - m') in fp32, summed in fp32
// into l, then acc = acc * corr + sum_t p[t] v[t]. The values' products take
// p rounded to bf16, as GPU flash attention does: one vdpbf16ps adds the
// products of two keys (bf16 x bf16, exact) per lane, over `vp`, the chunk's
// values as key pairs (value_pairs). A query's bits do not depend on QB.
template <int QB, int DC>
inline void softmax_values_block(const v16* s, const __m512i* vp, int64_t n, v16* acc, float* m, float* l) {
  v16 x[4];
  for (int q = 0; q < 4; ++q) x[q] = s[q < QB ? q : 0];
  const v16 mx = max4(x);
  v16 mv = mx, lv{};  // lanes other than 4q: placeholders, never read back
  for (int q = 0; q < QB; ++q) {
    mv[4 * q] = m[q];
    lv[4 * q] = l[q];
  }
  const v16 cm = mx > mv ? mx : mv;
  const v16 corr = exp16(mv - cm);  // ~1e-38, not 0, on the first chunk (m = -inf): acc and l are 0
  v16 p[QB];
  for (int q = 0; q < QB; ++q) p[q] = exp16(s[q] - cm[4 * q]);  // padding lanes ~1e-38; their values are 0
  for (int q = 0; q < 4; ++q) x[q] = p[q < QB ? q : 0];
  const v16 lnew = lv * corr + sum4(x);  // padding lanes add ~1e-37 to a sum >= 1
  __m512 a[QB][DC];
  __m512i pw[QB];  // dword i: the bf16 weights of keys 2i and 2i + 1
  for (int q = 0; q < QB; ++q) {
    m[q] = cm[4 * q];
    l[q] = lnew[4 * q];
    for (int c = 0; c < DC; ++c) {
      const v16 scaled = acc[q * DC + c] * corr[4 * q];
      std::memcpy(&a[q][c], &scaled, sizeof scaled);
    }
    __m512 pq;
    std::memcpy(&pq, &p[q], sizeof pq);
    pw[q] = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(pq));
  }
  for (int64_t i = 0; 2 * i < n; ++i) {
    const __m512i which = _mm512_set1_epi32(static_cast<int>(i));
    for (int q = 0; q < QB; ++q) {
      const __m512bh w = (__m512bh)_mm512_permutexvar_epi32(which, pw[q]);
      for (int c = 0; c < DC; ++c) a[q][c] = _mm512_dpbf16_ps(a[q][c], w, (__m512bh)vp[i * DC + c]);
    }
  }
  for (int q = 0; q < QB; ++q)
    for (int c = 0; c < DC; ++c) std::memcpy(acc + q * DC + c, &a[q][c], sizeof(v16));
}

// A chunk's values of one KV head as key pairs for softmax_values_block:
// vp[i * DC + c], lane k, holds the values of keys 2i and 2i + 1 (zeros past
// the n keys) at one dimension. unpack{lo,hi}_epi16 pair the keys within
// 128-bit lanes, so vector c = 2e (2e + 1) holds dimensions 32e + 8L + j
// (+ 4) in lane 4L + j: the outputs come out in that order, and
// finish_query puts them back.
template <int DC>
inline void value_pairs(const at::BFloat16* const* tok, int64_t n, int64_t offset, __m512i* vp) {
  for (int64_t i = 0; 2 * i < n; ++i)
    for (int e = 0; e < DC / 2; ++e) {
      const __m512i a = _mm512_loadu_si512(tok[2 * i] + offset + e * 32);
      const __m512i b = 2 * i + 1 < n ? _mm512_loadu_si512(tok[2 * i + 1] + offset + e * 32) : _mm512_setzero_si512();
      vp[i * DC + 2 * e] = _mm512_unpacklo_epi16(a, b);
      vp[i * DC + 2 * e + 1] = _mm512_unpackhi_epi16(a, b);
    }
}

// One block of the last k < QB queries of a head (k in 1..QB-1): score_block
// and softmax_values_block at QB = k.
template <int K, int DC, int PAIRS>
inline void rest_block(int64_t k, const __m512i* kt, const uint32_t* qb, float sc, int64_t n, v16* sv,
                       const __m512i* vp, v16* acc, float* m, float* l) {
  if constexpr (K >= 1) {
    if (k == K) {
      score_block<K, PAIRS>(kt, qb, sc, n, sv);
      softmax_values_block<K, DC>(sv, vp, n, acc, m, l);
    } else {
      rest_block<K - 1, DC, PAIRS>(k, kt, qb, sc, n, sv, vp, acc, m, l);
    }
  }
}

// attend_keys for bf16 keys with AVX512-BF16 (see the generic version below
// for the contract). Per chunk and KV head, the 16 keys are transposed once
// (16 x 16 dword transposes: lane t of kt[j] holds dims 2j, 2j+1 of key t),
// so each query's 16 scores come out of D/2 vdpbf16ps with no horizontal
// sums; the queries (unscaled here) are narrowed back to bf16 pairs, exactly.
// The values go in key pairs (value_pairs), `vb` holding them.
template <int DC>
void attend_keys_bf16(const at::BFloat16* pool, const int64_t* table, int64_t from, int64_t len, int64_t bs,
                      int64_t hkv, int64_t h0, int64_t h1, int64_t nq, const v16* qv, float sc, v16* acc, float* m,
                      float* l, v16* sv, v16* vb) {
  constexpr int64_t dim = DC * 16;
  constexpr int PAIRS = DC * 8, E = DC / 2;  // bf16 pairs per head; 32-bf16 vectors per head
  constexpr int QB = DC <= 4 ? 4 : (DC == 8 ? 2 : 1);  // queries per block: accumulators in registers
  const int64_t tok_stride = 2 * hkv * dim;
  thread_local std::vector<uint32_t> qbuf;
  qbuf.resize(hkv * nq * PAIRS);
  uint32_t* qb = qbuf.data();
  for (int64_t i = h0 * nq; i < h1 * nq; ++i)
    for (int e = 0; e < E; ++e) {
      __m512 lo, hi;
      std::memcpy(&lo, qv + i * DC + 2 * e, sizeof lo);
      std::memcpy(&hi, qv + i * DC + 2 * e + 1, sizeof hi);
      const __m512bh b = _mm512_cvtne2ps_pbh(hi, lo);  // exact: the queries are bf16 values
      std::memcpy(qb + i * PAIRS + e * 16, &b, sizeof b);
    }
  alignas(64) __m512i kt[PAIRS];
  __m512i* vp = reinterpret_cast<__m512i*>(vb);  // 8 * DC vectors; vb holds 16 * DC
  for (int64_t start = from; start < len; start += 16) {
    const int64_t n = std::min<int64_t>(16, len - start);
    const at::BFloat16* tok[16];
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = start + t;
      tok[t] = pool + (table[pos / bs] * bs + pos % bs) * tok_stride;
      if (start + 16 < len) {  // the next chunk's token, asked for while this one is scored
        prefetch_token(pool, table, std::min(pos + 16, len - 1), bs, tok_stride);
        // And the one after, into L2 only: more loads in flight without
        // crowding L1 (work A's own keys, cold: 6-7 % faster a layer).
        prefetch_token<1>(pool, table, std::min(pos + 32, len - 1), bs, tok_stride);
      }
    }
    for (int64_t h = h0; h < h1; ++h) {
      for (int e = 0; e < E; ++e) {
        __m512i r[16];
        for (int t = 0; t < 16; ++t)
          r[t] = t < n ? _mm512_loadu_si512(tok[t] + h * dim + e * 32) : _mm512_setzero_si512();
        transpose16(r);
        for (int j = 0; j < 16; ++j) kt[e * 16 + j] = r[j];
      }
      value_pairs<DC>(tok, n, (hkv + h) * dim, vp);
      const uint32_t* qh = qb + h * nq * PAIRS;
      const int64_t q0 = h * nq;
      int64_t i = 0;
      for (; i + QB <= nq; i += QB) {
        score_block<QB, PAIRS>(kt, qh + i * PAIRS, sc, n, sv);
        softmax_values_block<QB, DC>(sv, vp, n, acc + (q0 + i) * DC, m + q0 + i, l + q0 + i);
      }
      // The rest (a row's rep queries, 3 for SmolLM2, in one block where QB = 4): a block of its own size.
      if (i < nq) rest_block<QB - 1, DC, PAIRS>(nq - i, kt, qh + i * PAIRS, sc, n, sv, vp, acc + (q0 + i) * DC,
                                                 m + q0 + i, l + q0 + i);
    }
  }
}
#endif

// Queries attending to one list of keys: the keys of `len` tokens laid out
// by `table` (block ids) in the pool [NB, bs, 2, Hkv, D]. For each KV head h
// there are `nq` queries (fp32, pre-scaled) at qv[(h * nq + i) * DC], each
// with a running max m, sum l and unnormalized output acc (online softmax).
// Keys go 16 at a time: every key, widened once, is scored against all the
// queries of its head; the head's 16 values, widened once into `vb`, are
// then summed into each query's output. While a chunk is scored, the next
// one's tokens are prefetched, one token per key scored.
//
// Keys [from, len) are read, in chunks of 16 starting at `from`. A query's
// result depends only on its own scores and on where the chunks start and end,
// never on the other queries scored with it: keeping chunk boundaries at
// multiples of 16 of the key position (callers pass such a `from`) makes
// attention to a position the same bits whether it is computed in a decode
// step, in a group's shared-prefix pass followed by the row's own keys, or in
// any chunk of a prefill.
template <typename T, int DC>
void attend_keys(const T* pool, const int64_t* table, int64_t from, int64_t len, int64_t bs, int64_t hkv,
                 int64_t h0, int64_t h1, int64_t nq, const v16* qv, float sc, v16* acc, float* m, float* l, v16* sv,
                 v16* vb) {
#ifdef TTSC_BF16_DOT
  if constexpr (bf16_dot<T, DC>()) {
    attend_keys_bf16<DC>(pool, table, from, len, bs, hkv, h0, h1, nq, qv, sc, acc, m, l, sv, vb);
    return;
  }
#endif
  (void)sc;  // the generic path's queries come pre-scaled
  constexpr int64_t dim = DC * 16;
  const int64_t tok_stride = 2 * hkv * dim;  // one token's K and V, all KV heads
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t start = from; start < len; start += 16) {
    const int64_t n = std::min<int64_t>(16, len - start);
    const T* tok[16];
    const char* ahead[16];  // the next chunk's tokens, asked for while this one is scored
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = start + t;
      tok[t] = pool + (table[pos / bs] * bs + pos % bs) * tok_stride;
      const int64_t next = std::min(pos + 16, len - 1);
      ahead[t] = reinterpret_cast<const char*>(pool + (table[next / bs] * bs + next % bs) * tok_stride);
    }
    for (int64_t h = h0; h < h1; ++h) {
      v16* s = sv;  // scores of this chunk, one vector per query
      for (int64_t i = 0; i < nq; ++i) s[i] = v16{} + neg_inf;
      for (int64_t t0 = 0; t0 < n; t0 += 4) {  // four keys at a time: one reduction for four dots
        const int64_t m4 = std::min<int64_t>(4, n - t0);
        v16 k[4][DC];
        for (int u = 0; u < 4; ++u) {
          if (u < m4 && h == h0 && start + 16 < len)
            for (int64_t off = 0; off < tok_stride * static_cast<int64_t>(sizeof(T)); off += 64)
              __builtin_prefetch(ahead[t0 + u] + off);
          for (int c = 0; c < DC; ++c) k[u][c] = u < m4 ? load16(tok[t0 + u] + h * dim + c * 16) : v16{};
        }
        for (int64_t i = 0; i < nq; ++i) {
          const v16* qi = qv + (h * nq + i) * DC;
          v16 x[4];
          for (int u = 0; u < 4; ++u) {
            x[u] = qi[0] * k[u][0];
            for (int c = 1; c < DC; ++c) x[u] += qi[c] * k[u][c];
          }
          const v16 dots = sum4(x);
          for (int64_t u = 0; u < m4; ++u) s[i][t0 + u] = dots[4 * u];
        }
      }
      for (int64_t t = 0; t < n; ++t)
        for (int c = 0; c < DC; ++c) vb[t * DC + c] = load16(tok[t] + (hkv + h) * dim + c * 16);
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t qi = h * nq + i;
        const float cm = std::max(m[qi], hmax(s[i]));
        const float corr = std::exp(m[qi] - cm);  // 0 on the first chunk (m = -inf)
        const v16 p = exp16(s[i] - cm);  // padding lanes: ~1e-38, and not summed below
        l[qi] = l[qi] * corr + hsum(p);  // padding lanes add ~1e-37 to a sum >= 1
        m[qi] = cm;
        // Two accumulators (even and odd keys) halve the chain of dependent adds.
        v16 a[DC], b[DC];
        for (int c = 0; c < DC; ++c) {
          a[c] = acc[qi * DC + c] * corr;
          b[c] = v16{};
        }
        int64_t t = 0;
        for (; t + 2 <= n; t += 2)
          for (int c = 0; c < DC; ++c) {
            a[c] += p[t] * vb[t * DC + c];
            b[c] += p[t + 1] * vb[(t + 1) * DC + c];
          }
        if (t < n)
          for (int c = 0; c < DC; ++c) a[c] += p[t] * vb[t * DC + c];
        for (int c = 0; c < DC; ++c) acc[qi * DC + c] = a[c] + b[c];
      }
    }
  }
}

// Runs body(claim) once on each of up to n pool threads; claim() hands out
// the items 0..n-1 one at a time (then -1). A thread that loses its core to
// another process holds up only the item it is on, where a static split
// (at::parallel_for's) waits for its whole share. Items are independent, so
// the results do not depend on which thread takes which.
template <typename Body>
void parallel_items(int64_t n, const Body& body) {
  std::atomic<int64_t> next{0};
  auto claim = [&]() {
    const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
    return i < n ? i : int64_t{-1};
  };
  at::parallel_for(0, std::min<int64_t>(n, at::get_num_threads()), 1,
                   [&](int64_t, int64_t) { body(claim); });
}

// The output of one query from its online-softmax state: acc / l (zeros
// when it had no keys), in the output dtype.
template <typename T, int DC>
inline void finish_query(const v16* acc, float l, T* out) {
  constexpr int64_t dim = DC * 16;
  const float inv = l > 0.f ? 1.f / l : 0.f;
  float y[dim];
  for (int c = 0; c < DC; ++c) {
    const v16 v = acc[c] * inv;
    std::memcpy(y + c * 16, &v, sizeof v);
  }
#ifdef TTSC_BF16_DOT
  if constexpr (bf16_dot<T, DC>()) {  // value_pairs' order: 128-bit pieces [a0 b0 a1 b1] [a2 b2 a3 b3]
    for (int e = 0; e < DC / 2; ++e) {
      __m512 a, b;
      std::memcpy(&a, y + e * 32, sizeof a);
      std::memcpy(&b, y + e * 32 + 16, sizeof b);
      const __m512 lo = _mm512_shuffle_f32x4(a, b, 0x44), hi = _mm512_shuffle_f32x4(a, b, 0xee);
      const __m512 first = _mm512_shuffle_f32x4(lo, lo, 0xd8), second = _mm512_shuffle_f32x4(hi, hi, 0xd8);
      std::memcpy(y + e * 32, &first, sizeof first);
      std::memcpy(y + e * 32 + 16, &second, sizeof second);
    }
  }
#endif
  store_row(y, out, dim);
}

// Decode attention for rows of one new token each, cascade style (Hydragen,
// FlashInfer): a row's keys are, when it belongs to a group, the group's
// shared prefix blocks (group_tables/group_lens; group_rows lists the
// members, -1 pads), then its own blocks (own_tables/own_lens). A prefix is
// read once per chunk of up to 4 members, scored against all their queries;
// each member's online-softmax state then carries on over its own keys. With
// prefixes of a multiple of 16 tokens (the engine's groups are) a row's
// output is the same bits in a group or alone. Output [R, H, D] in q's dtype.
template <typename T, int DC>
torch::Tensor decode_attention_impl(const torch::Tensor& q, const torch::Tensor& blocks,
                                    const torch::Tensor& own_tables, const torch::Tensor& own_lens,
                                    const torch::Tensor& group_rows, const torch::Tensor& group_tables,
                                    const torch::Tensor& group_lens, double scale) {
  constexpr int64_t dim = DC * 16;
  constexpr int64_t kChunk = 8;  // members per prefix pass: reuse of each key vs. parallel work
  constexpr int64_t kRowsAhead = 2;  // rows whose first keys are asked for ahead of use
  const int64_t rows = q.size(0), heads = q.size(1);
  const int64_t bs = blocks.size(1), hkv = blocks.size(3), rep = heads / hkv;
  const int64_t own_width = own_tables.size(1);
  const int64_t groups = group_rows.size(0), gmax = group_rows.size(1);
  const int64_t group_width = group_tables.size(1);
  const T* qp = q.data_ptr<T>();
  const T* pool = blocks.data_ptr<T>();
  const int64_t* own_tp = own_tables.data_ptr<int64_t>();
  const int64_t* own_lp = own_lens.data_ptr<int64_t>();
  const int64_t* grp = group_rows.data_ptr<int64_t>();
  const int64_t* group_tp = group_tables.data_ptr<int64_t>();
  const int64_t* group_lp = group_lens.data_ptr<int64_t>();
  const float sc = static_cast<float>(scale);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  auto out = torch::empty({rows, heads, dim}, q.options());
  T* op = out.data_ptr<T>();
  // Each grouped row's state after its prefix: running max, sum and output, per head.
  std::vector<char> grouped(rows, 0);
  for (int64_t i = 0; i < groups * gmax; ++i)
    if (grp[i] >= 0) grouped[grp[i]] = 1;
  std::vector<float> pre_m(groups ? rows * heads : 0), pre_l(groups ? rows * heads : 0);
  std::vector<v16> pre_acc(groups ? rows * heads * DC : 0);

  // One parallel region, two passes: first the prefix items (group, chunk of
  // up to kChunk members, KV head), then, once every prefix item is done, the
  // rows. Each pass hands its items out one at a time; a thread out of prefix
  // items waits for the ones others hold (a second region would wake the
  // pool's threads again, which under OMP_WAIT_POLICY=PASSIVE costs about as
  // much as the pass). Every claimed item is being worked on by a running
  // thread, so the wait ends whatever the number of threads.
  const int64_t chunks = (gmax + kChunk - 1) / kChunk;
  const int64_t items = groups * chunks * hkv;
  std::atomic<int64_t> next_item{0}, done_items{0}, next_row{0};
  auto prefix_claim = [&]() {
    const int64_t i = next_item.fetch_add(1, std::memory_order_relaxed);
    return i < items ? i : int64_t{-1};
  };
  auto row_claim = [&]() {
    const int64_t i = next_row.fetch_add(1, std::memory_order_relaxed);
    return i < rows ? i : int64_t{-1};
  };
  auto prefix_pass = [&](const auto& claim) {
    // Queries of up to kChunk members, ordered [KV head][member][rep]; one head's are used.
    std::vector<v16> qv(kChunk * heads * DC), acc(kChunk * heads * DC), vb(16 * DC);
    std::vector<v16> sv(std::max<int64_t>(kChunk * rep, 4));
    std::vector<float> m(kChunk * heads), l(kChunk * heads);
    std::vector<int64_t> members;
    for (int64_t item; (item = claim()) >= 0;) {
      const int64_t h = item % hkv, g = item / hkv / chunks, chunk = item / hkv % chunks;
      members.clear();
      for (int64_t i = chunk * kChunk; i < std::min(gmax, (chunk + 1) * kChunk); ++i)
        if (grp[g * gmax + i] >= 0) members.push_back(grp[g * gmax + i]);
      const int64_t nm = members.size(), nq = nm * rep;
      if (nm == 0) {
        done_items.fetch_add(1, std::memory_order_release);
        continue;
      }
      for (int64_t i = 0; i < nm; ++i)
        for (int64_t j = 0; j < rep; ++j)
          for (int c = 0; c < DC; ++c)
            qv[((h * nm + i) * rep + j) * DC + c] =
                query16<T, DC>(qp + (members[i] * heads + h * rep + j) * dim + c * 16, sc);
      std::fill(acc.begin() + h * nq * DC, acc.begin() + (h + 1) * nq * DC, v16{});
      std::fill(m.begin() + h * nq, m.begin() + (h + 1) * nq, neg_inf);
      std::fill(l.begin() + h * nq, l.begin() + (h + 1) * nq, 0.f);
      attend_keys<T, DC>(pool, group_tp + g * group_width, 0, group_lp[g], bs, hkv, h, h + 1, nq, qv.data(),
                         sc, acc.data(), m.data(), l.data(), sv.data(), vb.data());
      for (int64_t i = 0; i < nm; ++i)
        for (int64_t j = 0; j < rep; ++j) {
          const int64_t qi = (h * nm + i) * rep + j, s = members[i] * heads + h * rep + j;
          pre_m[s] = m[qi];
          pre_l[s] = l[qi];
          for (int c = 0; c < DC; ++c) pre_acc[s * DC + c] = acc[qi * DC + c];
        }
      done_items.fetch_add(1, std::memory_order_release);  // publishes pre_m, pre_l, pre_acc
    }
  };
  auto row_pass = [&](const auto& claim) {
    std::vector<v16> qv(heads * DC), acc(heads * DC), sv(std::max<int64_t>(rep, 4)), vb(16 * DC);
    std::vector<float> m(heads), l(heads);
    for (int64_t r; (r = claim()) >= 0;) {
      // This row's first keys, and the next rows' (whichever thread takes
      // them: the last-level cache is shared), so a row's start does not wait
      // on memory; attend_keys asks for each further chunk ahead of use.
      for (int64_t ahead = r; ahead < std::min(rows, r + 1 + kRowsAhead); ++ahead)
        prefetch_chunk(pool, own_tp + ahead * own_width, own_lp[ahead], 0, bs, 2 * hkv * dim);
      for (int64_t i = 0; i < heads * DC; ++i) qv[i] = query16<T, DC>(qp + r * heads * dim + i * 16, sc);
      if (grouped[r]) {
        std::copy(pre_acc.begin() + r * heads * DC, pre_acc.begin() + (r + 1) * heads * DC, acc.begin());
        std::copy(pre_m.begin() + r * heads, pre_m.begin() + (r + 1) * heads, m.begin());
        std::copy(pre_l.begin() + r * heads, pre_l.begin() + (r + 1) * heads, l.begin());
      } else {
        std::fill(acc.begin(), acc.end(), v16{});
        std::fill(m.begin(), m.end(), neg_inf);
        std::fill(l.begin(), l.end(), 0.f);
      }
      attend_keys<T, DC>(pool, own_tp + r * own_width, 0, own_lp[r], bs, hkv, 0, hkv, rep, qv.data(), sc,
                         acc.data(), m.data(), l.data(), sv.data(), vb.data());
      for (int64_t j = 0; j < heads; ++j)
        finish_query<T, DC>(acc.data() + j * DC, l[j], op + (r * heads + j) * dim);
    }
  };
  at::parallel_for(0, std::min<int64_t>(std::max(items, rows), at::get_num_threads()), 1,
                   [&](int64_t, int64_t) {
    prefix_pass(prefix_claim);
    for (uint32_t spins = 0; done_items.load(std::memory_order_acquire) < items; ++spins) {
      if (spins % 64 == 63) std::this_thread::yield();  // the holder may have lost its core
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    row_pass(row_claim);
  });
  return out;
}

// Prefill attention: S sequences, sequence s with q_lens[s] new tokens at
// positions starts[s]... (their K|V already in the pool), rows in that order.
// The query at position p attends to keys [0, p] of its sequence's blocks.
// Queries are taken 16 positions at a time (positions 16j..16j+15): together
// over the keys before 16j, then each over its last, partial chunk. Chunk
// boundaries sit at multiples of 16 of the key position, so a token's
// attention is the same bits as in a decode step at that position, however
// the prompt was split into prefill chunks or served from the prefix cache.
template <typename T, int DC>
torch::Tensor prefill_attention_impl(const torch::Tensor& q, const torch::Tensor& blocks,
                                     const torch::Tensor& tables, const torch::Tensor& starts,
                                     const torch::Tensor& q_lens, double scale) {
  constexpr int64_t dim = DC * 16;
  const int64_t heads = q.size(1), seqs = tables.size(0), width = tables.size(1);
  const int64_t bs = blocks.size(1), hkv = blocks.size(3), rep = heads / hkv;
  const T* qp = q.data_ptr<T>();
  const T* pool = blocks.data_ptr<T>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* sp = starts.data_ptr<int64_t>();
  const int64_t* lp = q_lens.data_ptr<int64_t>();
  const float sc = static_cast<float>(scale);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  auto out = torch::empty_like(q);
  T* op = out.data_ptr<T>();

  // Work items: (sequence, first row, first position, count) per 16-position tile.
  struct Tile { int64_t seq, row, pos, count; };
  std::vector<Tile> tiles;
  int64_t row = 0;
  for (int64_t s = 0; s < seqs; ++s) {
    for (int64_t pos = sp[s]; pos < sp[s] + lp[s];) {
      const int64_t count = std::min(sp[s] + lp[s], (pos / 16 + 1) * 16) - pos;
      tiles.push_back({s, row, pos, count});
      row += count;
      pos += count;
    }
  }
  TORCH_CHECK(row == q.size(0), "prefill_attention: q has ", q.size(0), " rows, q_lens sum to ", row);

  parallel_items(static_cast<int64_t>(tiles.size()), [&](const auto& claim) {
    std::vector<v16> qv(16 * heads * DC), acc(16 * heads * DC), vb(16 * DC), sv(std::max<int64_t>(16 * rep, 4));
    std::vector<v16> one_q(heads * DC), one_acc(heads * DC);
    std::vector<float> m(16 * heads), l(16 * heads), one_m(heads), one_l(heads);
    for (int64_t item; (item = claim()) >= 0;) {
      const Tile t = tiles[item];
      const int64_t* table = tp + t.seq * width;
      const int64_t common = t.pos / 16 * 16, nq = t.count * rep;
      // Together: every query of the tile over the keys before the tile, ordered [KV head][query][rep].
      for (int64_t h = 0; h < hkv; ++h)
        for (int64_t i = 0; i < t.count; ++i)
          for (int64_t j = 0; j < rep; ++j)
            for (int c = 0; c < DC; ++c)
              qv[((h * t.count + i) * rep + j) * DC + c] =
                  query16<T, DC>(qp + ((t.row + i) * heads + h * rep + j) * dim + c * 16, sc);
      std::fill(acc.begin(), acc.begin() + hkv * nq * DC, v16{});
      std::fill(m.begin(), m.begin() + hkv * nq, neg_inf);
      std::fill(l.begin(), l.begin() + hkv * nq, 0.f);
      attend_keys<T, DC>(pool, table, 0, common, bs, hkv, 0, hkv, nq, qv.data(), sc, acc.data(), m.data(), l.data(),
                         sv.data(), vb.data());
      // Then each query alone over its last chunk, [common, position].
      for (int64_t i = 0; i < t.count; ++i) {
        for (int64_t h = 0; h < hkv; ++h)
          for (int64_t j = 0; j < rep; ++j) {
            const int64_t qi = (h * t.count + i) * rep + j, head = h * rep + j;
            for (int c = 0; c < DC; ++c) {
              one_q[head * DC + c] = qv[qi * DC + c];
              one_acc[head * DC + c] = acc[qi * DC + c];
            }
            one_m[head] = m[qi];
            one_l[head] = l[qi];
          }
        attend_keys<T, DC>(pool, table, common, t.pos + i + 1, bs, hkv, 0, hkv, rep, one_q.data(), sc, one_acc.data(),
                           one_m.data(), one_l.data(), sv.data(), vb.data());
        for (int64_t j = 0; j < heads; ++j)
          finish_query<T, DC>(one_acc.data() + j * DC, one_l[j], op + ((t.row + i) * heads + j) * dim);
      }
    }
  });
  return out;
}

template <typename T>
torch::Tensor decode_attention_dispatch(const torch::Tensor& q, const torch::Tensor& blocks,
                                        const torch::Tensor& own_tables, const torch::Tensor& own_lens,
                                        const torch::Tensor& group_rows, const torch::Tensor& group_tables,
                                        const torch::Tensor& group_lens, double scale) {
  switch (q.size(2)) {
#define TTSC_CASE(D)                                                                                  \
  case D:                                                                                             \
    return decode_attention_impl<T, D / 16>(q, blocks, own_tables, own_lens, group_rows, group_tables, \
                                            group_lens, scale);
    TTSC_CASE(16)
    TTSC_CASE(32)
    TTSC_CASE(64)
    TTSC_CASE(128)
    TTSC_CASE(256)
#undef TTSC_CASE
    default:
      TORCH_CHECK(false, "decode_attention: head dim must be 16, 32, 64, 128 or 256");
  }
}

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor blocks, torch::Tensor own_tables,
                               torch::Tensor own_lens, torch::Tensor group_rows, torch::Tensor group_tables,
                               torch::Tensor group_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && blocks.dim() == 5 && own_tables.dim() == 2 && own_lens.dim() == 1);
  TORCH_CHECK(group_rows.dim() == 2 && group_tables.dim() == 2 && group_lens.dim() == 1);
  TORCH_CHECK(q.scalar_type() == blocks.scalar_type(), "q and the KV pool must share a dtype");
  TORCH_CHECK(q.size(1) % blocks.size(3) == 0 && q.size(2) == blocks.size(4));
  TORCH_CHECK(own_tables.size(0) == q.size(0) && own_lens.size(0) == q.size(0));
  TORCH_CHECK(group_tables.size(0) == group_rows.size(0) && group_lens.size(0) == group_rows.size(0));
  TORCH_CHECK(blocks.is_contiguous(), "the KV pool layer must be contiguous");
  q = q.contiguous();
  auto as_long = [](const torch::Tensor& t) { return t.to(torch::kLong).contiguous(); };
  if (q.scalar_type() == torch::kBFloat16)
    return decode_attention_dispatch<at::BFloat16>(q, blocks, as_long(own_tables), as_long(own_lens),
                                                   as_long(group_rows), as_long(group_tables),
                                                   as_long(group_lens), scale);
  TORCH_CHECK(q.scalar_type() == torch::kFloat, "bf16 or fp32 only");
  return decode_attention_dispatch<float>(q, blocks, as_long(own_tables), as_long(own_lens),
                                          as_long(group_rows), as_long(group_tables), as_long(group_lens),
                                          scale);
}

template <typename T>
torch::Tensor prefill_attention_dispatch(const torch::Tensor& q, const torch::Tensor& blocks,
                                         const torch::Tensor& tables, const torch::Tensor& starts,
                                         const torch::Tensor& q_lens, double scale) {
  switch (q.size(2)) {
#define TTSC_CASE(D) \
  case D:            \
    return prefill_attention_impl<T, D / 16>(q, blocks, tables, starts, q_lens, scale);
    TTSC_CASE(16)
    TTSC_CASE(32)
    TTSC_CASE(64)
    TTSC_CASE(128)
    TTSC_CASE(256)
#undef TTSC_CASE
    default:
      TORCH_CHECK(false, "prefill_attention: head dim must be 16, 32, 64, 128 or 256");
  }
}

torch::Tensor prefill_attention(torch::Tensor q, torch::Tensor blocks, torch::Tensor tables,
                                torch::Tensor starts, torch::Tensor q_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && blocks.dim() == 5 && tables.dim() == 2 && starts.dim() == 1 && q_lens.dim() == 1);
  TORCH_CHECK(q.scalar_type() == blocks.scalar_type(), "q and the KV pool must share a dtype");
  TORCH_CHECK(q.size(1) % blocks.size(3) == 0 && q.size(2) == blocks.size(4));
  TORCH_CHECK(starts.size(0) == tables.size(0) && q_lens.size(0) == tables.size(0));
  TORCH_CHECK(blocks.is_contiguous(), "the KV pool layer must be contiguous");
  q = q.contiguous();
  auto as_long = [](const torch::Tensor& t) { return t.to(torch::kLong).contiguous(); };
  if (q.scalar_type() == torch::kBFloat16)
    return prefill_attention_dispatch<at::BFloat16>(q, blocks, as_long(tables), as_long(starts),
                                                    as_long(q_lens), scale);
  TORCH_CHECK(q.scalar_type() == torch::kFloat, "bf16 or fp32 only");
  return prefill_attention_dispatch<float>(q, blocks, as_long(tables), as_long(starts), as_long(q_lens),
                                           scale);
}

// ---------------------------------------------------------- element-wise

// Rows per thread for the element-wise kernels: a decode step's calls (up to
// ~256K values) run on the calling thread. Split over 2 threads they gain
// ~10-30 us on an idle machine, but each parallel region must wake and wait
// for the other threads, and on a shared machine (other processes on the
// cores, OMP_WAIT_POLICY=PASSIVE) that costs more than the work: medians of
// 29 vs 17 us (RMSNorm) and 76 vs 65 us (SiLU-mul) at 128 rows. Prefill
// chunks, hundreds of rows, still split.
constexpr int64_t kSerialValues = 1 << 18;
inline int64_t rows_per_task(int64_t values_per_row) {
  return std::max<int64_t>(1, kSerialValues / std::max<int64_t>(1, values_per_row));
}

// y = x * rsqrt(mean(x^2) + eps) * w in fp32, written in out's dtype. With
// `add`, the residual update x += add comes first, in place, in the same pass.
template <typename T, typename A>
void rms_norm_impl(torch::Tensor& x, const torch::Tensor& w, double eps, const A* add, torch::Tensor& out) {
  const int64_t rows = x.size(0), n = x.size(1);
  float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  T* op = out.data_ptr<T>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, rows, rows_per_task(n), [&](int64_t begin, int64_t end) {
    std::vector<float> buf(n);
    float* __restrict y = buf.data();
    for (int64_t r = begin; r < end; ++r) {
      float* __restrict row = xp + r * n;
      if (add != nullptr) {
        load_row(add + r * n, y, n);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) row[i] += y[i];
      }
      const float inv = 1.f / std::sqrt(dot(row, row, n) / n + e);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) y[i] = row[i] * inv * wp[i];
      store_row(y, op + r * n, n);
    }
  });
}

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps, torch::ScalarType dtype,
                       c10::optional<torch::Tensor> add) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && w.scalar_type() == torch::kFloat);
  TORCH_CHECK(x.is_contiguous(), "rms_norm: x must be contiguous (it is updated in place)");
  TORCH_CHECK(dtype == torch::kBFloat16 || dtype == torch::kFloat, "rms_norm: bf16 or fp32 output");
  w = w.contiguous();
  auto out = torch::empty(x.sizes(), x.options().dtype(dtype));
  if (!add.has_value()) {
    if (dtype == torch::kBFloat16) rms_norm_impl<at::BFloat16, at::BFloat16>(x, w, eps, nullptr, out);
    else rms_norm_impl<float, float>(x, w, eps, nullptr, out);
    return out;
  }
  auto a = add->contiguous();
  TORCH_CHECK(a.sizes() == x.sizes(), "rms_norm: add must match x");
  if (a.scalar_type() == torch::kBFloat16) {
    const auto* ap = a.data_ptr<at::BFloat16>();
    if (dtype == torch::kBFloat16) rms_norm_impl<at::BFloat16>(x, w, eps, ap, out);
    else rms_norm_impl<float>(x, w, eps, ap, out);
  } else {
    TORCH_CHECK(a.scalar_type() == torch::kFloat, "rms_norm: add must be bf16 or fp32");
    const auto* ap = a.data_ptr<float>();
    if (dtype == torch::kBFloat16) rms_norm_impl<at::BFloat16>(x, w, eps, ap, out);
    else rms_norm_impl<float>(x, w, eps, ap, out);
  }
  return out;
}

// gate_up [T, 2I] -> silu(gate) * up [T, I], computed in fp32.
template <typename T>
void silu_mul_impl(const torch::Tensor& gu, torch::Tensor& out) {
  const int64_t rows = gu.size(0), n = gu.size(1) / 2;
  const T* gp = gu.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, rows, rows_per_task(3 * n), [&](int64_t begin, int64_t end) {
    std::vector<float> g(n), u(n);
    for (int64_t r = begin; r < end; ++r) {
      load_row(gp + r * 2 * n, g.data(), n);
      load_row(gp + r * 2 * n + n, u.data(), n);
      int64_t i = 0;
      for (; i + 16 <= n; i += 16) {  // sigmoid from e^-|x|, which never overflows
        const v16 x = load16(g.data() + i);
        const v16 e = exp16(x < 0.f ? x : -x);
        const v16 y = x * ((x >= 0.f ? v16{} + 1.f : e) / (1.f + e)) * load16(u.data() + i);
        std::memcpy(g.data() + i, &y, sizeof y);
      }
      for (; i < n; ++i) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
      store_row(g.data(), op + r * n, n);
    }
  });
}

torch::Tensor silu_mul(torch::Tensor gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0);
  gate_up = gate_up.contiguous();
  auto out = torch::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
  if (gate_up.scalar_type() == torch::kBFloat16) silu_mul_impl<at::BFloat16>(gate_up, out);
  else silu_mul_impl<float>(gate_up, out);
  return out;
}

// RoPE on the q and k heads of qkv [T, (H + 2 Hkv) D] in place (rotation
// pairs adjacent), then K|V of each token into the pool [NB*bs, 2, Hkv, D]
// at its slot.
template <typename T>
void rope_store_impl(torch::Tensor& qkv, const torch::Tensor& positions, const torch::Tensor& cos,
                     const torch::Tensor& sin, torch::Tensor& slots_pool, const torch::Tensor& slots,
                     int64_t heads, int64_t hkv) {
  const int64_t tokens = qkv.size(0), half = cos.size(1), dim = 2 * half;
  const int64_t width = qkv.size(1);
  T* xp = qkv.data_ptr<T>();
  const int64_t* pp = positions.data_ptr<int64_t>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  T* pool = slots_pool.data_ptr<T>();
  const int64_t* slp = slots.data_ptr<int64_t>();
  const int64_t kv_len = 2 * hkv * dim;
  TORCH_CHECK(dim % 16 == 0 && dim <= 256, "rope_store: head dim must be a multiple of 16, at most 256");
  at::parallel_for(0, tokens, rows_per_task(width), [&](int64_t begin, int64_t end) {
    // Per token, cos and sin laid out per lane: x' = x * cos2 + swap(x) * sin2,
    // where swap exchanges each pair (a, b) -> (b, a) and sin2 = (-s, s).
    v16 c2[16], s2[16];
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cp + pp[t] * half;
      const float* s = sp + pp[t] * half;
      for (int64_t k = 0; k < dim / 16; ++k)
        for (int i = 0; i < 8; ++i) {
          c2[k][2 * i] = c2[k][2 * i + 1] = c[k * 8 + i];
          s2[k][2 * i] = -s[k * 8 + i];
          s2[k][2 * i + 1] = s[k * 8 + i];
        }
      for (int64_t h = 0; h < heads + hkv; ++h) {
        T* head = xp + t * width + h * dim;
        for (int64_t k = 0; k < dim / 16; ++k) {
          const v16 v = load16(head + k * 16);
          const v16 sw = __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
          store16(head + k * 16, v * c2[k] + sw * s2[k]);
        }
      }
      std::memcpy(pool + slp[t] * kv_len, xp + t * width + heads * dim, kv_len * sizeof(T));
    }
  });
}

void rope_store(torch::Tensor qkv, torch::Tensor positions, torch::Tensor cos, torch::Tensor sin,
                torch::Tensor pool_layer, torch::Tensor slots, int64_t heads, int64_t hkv) {
  TORCH_CHECK(qkv.is_contiguous() && pool_layer.is_contiguous(), "qkv and the pool must be contiguous");
  TORCH_CHECK(qkv.scalar_type() == pool_layer.scalar_type());
  TORCH_CHECK(cos.scalar_type() == torch::kFloat && sin.scalar_type() == torch::kFloat);
  TORCH_CHECK(qkv.size(1) == (heads + 2 * hkv) * 2 * cos.size(1));
  positions = positions.to(torch::kLong).contiguous();
  slots = slots.to(torch::kLong).contiguous();
  if (qkv.scalar_type() == torch::kBFloat16)
    rope_store_impl<at::BFloat16>(qkv, positions, cos, sin, pool_layer, slots, heads, hkv);
  else
    rope_store_impl<float>(qkv, positions, cos, sin, pool_layer, slots, heads, hkv);
}

// ---------------------------------------------------------------- sampling

// One token per row of logits [R, V] by inverting the CDF of
// softmax(logits * inv_temp[r]) at uniforms[r]; greedy rows take the argmax
// (first of ties). Returns the tokens and their log-probabilities (under the
// tempered distribution; greedy rows: the raw one). Three passes over a row:
// maximum, weights with sums per 256-token chunk, then the chunk and the
// token where the cumulative weight passes u * total.
// The largest of a row's v logits (16 lanes at a time, then the tail).
template <typename T>
float row_max(const T* x, int64_t v) {
  v16 vm = v16{} - std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + 16 <= v; i += 16) {
    const v16 y = load16(x + i);
    vm = y > vm ? y : vm;
  }
  float mx = hmax(vm);
  for (; i < v; ++i) mx = std::max(mx, static_cast<float>(x[i]));
  return mx;
}

template <typename T>
void sample_impl(const torch::Tensor& logits, const float* inv_temp, const float* uniforms,
                 const bool* greedy, int64_t* tokens, float* logprobs) {
  constexpr int64_t kChunk = 256;
  const int64_t rows = logits.size(0), v = logits.size(1);
  const T* lp = logits.data_ptr<T>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> w(v), chunk((v + kChunk - 1) / kChunk);
    for (int64_t r = begin; r < end; ++r) {
      const T* x = lp + r * v;
      const float it = greedy[r] ? 1.f : inv_temp[r];  // > 0, so the max of x * it is it * max(x)
      const float mx = row_max(x, v);
      int64_t arg = 0;
      while (arg + 1 < v && static_cast<float>(x[arg]) != mx) ++arg;  // the first maximum
      const float m = mx * it;
      float total = 0.f;
      for (int64_t c = 0; c * kChunk < v; ++c) {
        const int64_t lo = c * kChunk, hi = std::min(v, lo + kChunk);
        int64_t i = lo;
        v16 acc{};
        for (; i + 16 <= hi; i += 16) {
          const v16 e = exp16(load16(x + i) * it - m);
          std::memcpy(w.data() + i, &e, sizeof e);
          acc += e;
        }
        float sum = hsum(acc);
        for (; i < hi; ++i) sum += (w[i] = std::exp(static_cast<float>(x[i]) * it - m));
        chunk[c] = sum;
        total += sum;
      }
      int64_t tok = arg;
      if (!greedy[r]) {
        const float target = uniforms[r] * total;
        float cum = 0.f;
        int64_t c = 0;
        const int64_t nc = static_cast<int64_t>(chunk.size());
        while (c + 1 < nc && cum + chunk[c] <= target) cum += chunk[c++];
        tok = -1;
        for (int64_t i = c * kChunk; i < std::min(v, (c + 1) * kChunk); ++i) {
          if (w[i] > 0.f) tok = i;  // rounding past the end falls back to the last positive weight
          cum += w[i];
          if (cum > target && w[i] > 0.f) break;
        }
        if (tok < 0) tok = arg;
      }
      tokens[r] = tok;
      logprobs[r] = std::log(w[tok] / total);
    }
  });
}

std::vector<torch::Tensor> sample(torch::Tensor logits, torch::Tensor inv_temp, torch::Tensor uniforms,
                                  torch::Tensor greedy) {
  TORCH_CHECK(logits.dim() == 2, "sample: logits must be [R, V]");
  const int64_t rows = logits.size(0);
  logits = logits.contiguous();
  inv_temp = inv_temp.to(torch::kFloat).contiguous();
  uniforms = uniforms.to(torch::kFloat).contiguous();
  greedy = greedy.to(torch::kBool).contiguous();
  TORCH_CHECK(inv_temp.numel() == rows && uniforms.numel() == rows && greedy.numel() == rows);
  auto tokens = torch::empty({rows}, logits.options().dtype(torch::kLong));
  auto logprobs = torch::empty({rows}, logits.options().dtype(torch::kFloat));
  if (logits.scalar_type() == torch::kBFloat16)
    sample_impl<at::BFloat16>(logits, inv_temp.data_ptr<float>(), uniforms.data_ptr<float>(),
                              greedy.data_ptr<bool>(), tokens.data_ptr<int64_t>(), logprobs.data_ptr<float>());
  else {
    TORCH_CHECK(logits.scalar_type() == torch::kFloat, "sample: bf16 or fp32 logits");
    sample_impl<float>(logits, inv_temp.data_ptr<float>(), uniforms.data_ptr<float>(),
                       greedy.data_ptr<bool>(), tokens.data_ptr<int64_t>(), logprobs.data_ptr<float>());
  }
  return {tokens, logprobs};
}

// Top-k / top-p sampling per row, at a cost that grows with the vocabulary
// only through streaming passes: the maximum, the softmax's sum, then one
// selection pass; only the selected candidates are sorted. Top-k: a heap
// keeps the row's k likeliest tokens. Top-p alone: the weights are binned by
// their binary exponent (bin b holds weights in [2^-b-1, 2^-b)), the first bin
// where the mass of the bins before it reaches top_p is found, and the tokens
// of that bin and those before it are the candidates: they hold the nucleus,
// which is all that is sorted.
//
// The draw follows transformers' warpers as the torch sampler does: top-k,
// then top-p over the renormalized top-k (a token is kept while the mass
// before it is below top_p; the likeliest always), then the inverse CDF of
// the kept weights at u. Candidates are ranked by logit, ties by token id.
// The log-probability is the token's under softmax(logits * inv_temp),
// before truncation.
template <typename T>
void sample_top_impl(const torch::Tensor& logits, const float* inv_temp, const int64_t* top_k,
                     const float* top_p, const float* uniforms, int64_t* tokens, float* logprobs) {
  constexpr int kBins = 64;  // weights below 2^-63 (of the largest, 1) share the last bin
  const int64_t rows = logits.size(0), v = logits.size(1);
  const T* lp = logits.data_ptr<T>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<float, int64_t>> cand;
    std::vector<float> w(v), kept;
    // Best first: the higher logit, of equal ones the lower id.
    auto better = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    auto bin_of = [](float x) {  // x in (0, 1]: minus its binary exponent, capped
      uint32_t bits;
      std::memcpy(&bits, &x, sizeof bits);
      const int e = 127 - static_cast<int>(bits >> 23);  // 1.0 -> 0, [0.5, 1) -> 1, ...
      return std::min(std::max(e, 0), kBins - 1);
    };
    for (int64_t r = begin; r < end; ++r) {
      const T* x = lp + r * v;
      const float it = inv_temp[r];
      const float mx = row_max(x, v);
      const float m = mx * it;
      float total = 0.f;
      {
        v16 acc{};
        int64_t i = 0;
        for (; i + 16 <= v; i += 16) {
          const v16 e = exp16(load16(x + i) * it - m);
          std::memcpy(w.data() + i, &e, sizeof e);
          acc += e;
        }
        total = hsum(acc);
        for (; i < v; ++i) total += (w[i] = std::exp(static_cast<float>(x[i]) * it - m));
      }
      const bool has_k = top_k[r] > 0 && top_k[r] < v;
      const float p = top_p[r];
      cand.clear();
      if (has_k) {
        const int64_t k = top_k[r];
        float floor = -std::numeric_limits<float>::infinity();  // a token must beat it to enter
        auto offer = [&](int64_t j) {
          const float y = static_cast<float>(x[j]);
          if (static_cast<int64_t>(cand.size()) < k) {
            cand.emplace_back(y, j);
            std::push_heap(cand.begin(), cand.end(), better);  // the top is the worst kept
            if (static_cast<int64_t>(cand.size()) == k) floor = cand.front().first;
          } else if (y > floor) {  // an equal logit keeps the lower id, already in
            std::pop_heap(cand.begin(), cand.end(), better);
            cand.back() = {y, j};
            std::push_heap(cand.begin(), cand.end(), better);
            floor = cand.front().first;
          }
        };
        int64_t i = 0;
        for (; i + 16 <= v; i += 16) {
          const v16 y = load16(x + i);
          bool any = static_cast<int64_t>(cand.size()) < k;
          for (int u = 0; u < 16; ++u) any |= y[u] > floor;
          if (any)
            for (int u = 0; u < 16; ++u) offer(i + u);
        }
        for (; i < v; ++i) offer(i);
      } else {
        float mass[kBins] = {};
        for (int64_t j = 0; j < v; ++j) mass[bin_of(w[j])] += w[j];
        int last = kBins - 1;
        float before = 0.f;
        for (int b = 0; b < kBins; ++b) {
          before += mass[b];
          if (before >= p * total) {
            last = b;
            break;
          }
        }
        for (int64_t j = 0; j < v; ++j)
          if (w[j] > 0.f && bin_of(w[j]) <= last) cand.emplace_back(static_cast<float>(x[j]), j);
        if (cand.empty()) cand.emplace_back(mx, 0);  // not reached: the maximum's weight is 1
      }
      std::sort(cand.begin(), cand.end(), better);
      const int64_t nc = static_cast<int64_t>(cand.size());
      kept.resize(nc);
      float mass_k = 0.f;
      for (int64_t j = 0; j < nc; ++j) mass_k += (kept[j] = w[cand[j].second] / total);
      const float cover = p * (has_k ? mass_k : 1.f);
      // Keep tokens while the mass before them is below top_p (the first always).
      int64_t n = 1;
      float before = kept[0];
      while (n < nc && before < cover) before += kept[n++];
      float kept_total = 0.f;
      for (int64_t j = 0; j < n; ++j) kept_total += kept[j];
      const float target = uniforms[r] * kept_total;
      float cum = 0.f;
      int64_t pick = -1;
      for (int64_t j = 0; j < n; ++j) {
        if (kept[j] > 0.f) pick = j;  // rounding past the end falls back to the last positive weight
        cum += kept[j];
        if (cum > target && kept[j] > 0.f) break;
      }
      if (pick < 0) pick = 0;
      tokens[r] = cand[pick].second;
      logprobs[r] = std::log(kept[pick]);
    }
  });
}

std::vector<torch::Tensor> sample_top(torch::Tensor logits, torch::Tensor inv_temp, torch::Tensor top_k,
                                      torch::Tensor top_p, torch::Tensor uniforms) {
  TORCH_CHECK(logits.dim() == 2, "sample_top: logits must be [R, V]");
  const int64_t rows = logits.size(0);
  logits = logits.contiguous();
  inv_temp = inv_temp.to(torch::kFloat).contiguous();
  top_k = top_k.to(torch::kLong).contiguous();
  top_p = top_p.to(torch::kFloat).contiguous();
  uniforms = uniforms.to(torch::kFloat).contiguous();
  TORCH_CHECK(inv_temp.numel() == rows && top_k.numel() == rows && top_p.numel() == rows &&
              uniforms.numel() == rows, "sample_top: one setting per row");
  TORCH_CHECK(logits.size(1) > 0, "sample_top: empty vocabulary");
  auto tokens = torch::empty({rows}, logits.options().dtype(torch::kLong));
  auto logprobs = torch::empty({rows}, logits.options().dtype(torch::kFloat));
  if (logits.scalar_type() == torch::kBFloat16)
    sample_top_impl<at::BFloat16>(logits, inv_temp.data_ptr<float>(), top_k.data_ptr<int64_t>(),
                                  top_p.data_ptr<float>(), uniforms.data_ptr<float>(),
                                  tokens.data_ptr<int64_t>(), logprobs.data_ptr<float>());
  else {
    TORCH_CHECK(logits.scalar_type() == torch::kFloat, "sample_top: bf16 or fp32 logits");
    sample_top_impl<float>(logits, inv_temp.data_ptr<float>(), top_k.data_ptr<int64_t>(),
                           top_p.data_ptr<float>(), uniforms.data_ptr<float>(), tokens.data_ptr<int64_t>(),
                           logprobs.data_ptr<float>());
  }
  return {tokens, logprobs};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "paged cascade decode attention");
  m.def("prefill_attention", &prefill_attention, "paged causal prefill attention, 16-key chunks");
  m.def("rms_norm", &rms_norm, "fp32 rows (+= add, in place) -> normalized, scaled, in dtype",
        py::arg("x"), py::arg("w"), py::arg("eps"), py::arg("dtype"), py::arg("add") = py::none());
  m.def("sample", &sample, "inverse-CDF sampling per row -> (tokens, logprobs)");
  m.def("sample_top", &sample_top, "top-k / top-p sampling per row over its likeliest tokens only");
  m.def("silu_mul", &silu_mul, "silu(gate) * up");
  m.def("rope_store", &rope_store, "RoPE on q/k in place, K|V into the pool");
}
