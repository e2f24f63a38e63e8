// pair_bias_attention, CPU: logits = (q * scale) k^T + bias (written once, the next layer's bias),
// out = dropout(softmax(logits)) v, row LSE saved; backward from bias + LSE (the softmax is never stored):
//   p = exp(q k^T scale + bias - LSE) recomputed in fp32 (so a bf16 run's p matches its forward exactly),
//   dp = dO v^T (* dropout scale), ds = p (dp - rowsum(dO * O)), dlogits = ds + grad_logits,
//   dq = scale dlogits k, dk = dlogits^T (q scale), dv = (p * dropout scale)^T dO, dbias = dlogits.
// OpenMP over (molecule, head); one row at a time with the whole row in a thread-local buffer (N <= a few
// hundred); K and V held transposed [D][n] so every inner loop runs over contiguous keys and vectorises.
// Padded ([B, H, N, *] with strides) and packed (cu_seqlens, 1-D pair blocks) share one body: a Problem
// describes one (molecule, head). fp32/fp64/bf16 in; fp32 math (fp64 for fp64): the softmax uses the fp32 logits
// (bf16 only on the way out). Dropout: Philox (common.h), the same mask as Triton and the reference.
#include <cmath>
#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"
#include "simd_avx512.h"

namespace molm_fast {
namespace {

template <typename S> struct Io;
template <> struct Io<float> {
  static float load(float v) { return v; }
  static float load(uint16_t v) { return bf16_to_float(v); }
  static void store(float* p, float v) { *p = v; }
  static void store(uint16_t* p, float v) { *p = float_to_bf16(v); }
};
template <> struct Io<double> {
  static double load(double v) { return v; }
  static void store(double* p, double v) { *p = v; }
};

inline float exp_(float x) { return fast_exp(x); }
inline double exp_(double x) { return std::exp(x); }

// Token tensors ([B, H, N, D] padded, [T, H, D] packed; b-strides 0 when packed), in this order.
enum Tensor : int { kQ, kK, kV, kOut, kBias, kGradOut, kDq, kDk, kDv, kNumTensors };

// Sizes and strides (elements) of a call.
struct Layout {
  int64_t B, H, N, D, Dv;  // D: head dim of q and k; Dv: of v and out (they differ on the low-rank path)
  int64_t s[kNumTensors][4];
  const int32_t* cu;  // null when padded
  bool packed() const { return cu != nullptr; }
};

// One (molecule, head): element offset of row 0 and the row stride of each token tensor, and where its pair
// block lives (bias may be strided when padded; logits, grad_logits and dbias are always contiguous).
struct Problem {
  int64_t n;
  int64_t at[kNumTensors], row[kNumTensors];
  int64_t bias, bias_i, bias_j;
  int64_t pair;  // offset of [0, 0] in the contiguous logits (also the dropout counter base)
  int64_t lse, lse_i;
};

Problem problem(const Layout& L, const std::vector<int64_t>& pair_start, int64_t b, int64_t h) {
  Problem p;
  const int64_t t0 = L.packed() ? L.cu[b] : 0;
  p.n = L.packed() ? L.cu[b + 1] - L.cu[b] : L.N;
  for (int t = 0; t < kNumTensors; ++t) {
    p.at[t] = b * L.s[t][0] + h * L.s[t][1] + t0 * L.s[t][2];
    p.row[t] = L.s[t][2];
  }
  if (L.packed()) {
    p.pair = L.H * pair_start[b] + h * p.n * p.n;
    p.bias = p.pair, p.bias_i = p.n, p.bias_j = 1;
    p.lse = t0 * L.H + h, p.lse_i = L.H;
  } else {
    p.pair = (b * L.H + h) * L.N * L.N;
    p.bias = p.at[kBias], p.bias_i = L.s[kBias][2], p.bias_j = L.s[kBias][3];
    p.lse = (b * L.H + h) * L.N, p.lse_i = 1;
  }
  return p;
}

std::vector<int64_t> pair_starts(const Layout& L) {  // exclusive cumsum of n_b^2 (packed only)
  std::vector<int64_t> s(L.B + 1, 0);
  if (L.packed())
    for (int64_t b = 0; b < L.B; ++b) s[b + 1] = s[b] + int64_t(L.cu[b + 1] - L.cu[b]) * (L.cu[b + 1] - L.cu[b]);
  return s;
}

// row[j] = sum_d a[d] * mt[d * n + j]: with D known at compile time the d loop unrolls and the j loop vectorises.
template <typename S, int DC>
inline void rowdot(S* __restrict row, const S* __restrict a, const S* __restrict mt, int64_t n, int64_t Drt) {
  if constexpr (DC > 0) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      S acc = 0;
      for (int d = 0; d < DC; ++d) acc += a[d] * mt[d * n + j];
      row[j] = acc;
    }
  } else {
    for (int64_t j = 0; j < n; ++j) row[j] = 0;
    for (int64_t d = 0; d < Drt; ++d)
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) row[j] += a[d] * mt[d * n + j];
  }
}

// out[d] = sum_j x[j] * mt[d * n + j] (contiguous dot products over j).
template <typename S, int DC>
inline void coldot(S* __restrict out, const S* __restrict x, const S* __restrict mt, int64_t n, int64_t Drt) {
  const int64_t D = DC ? DC : Drt;
  for (int64_t d = 0; d < D; ++d) {
    S acc = 0;
    const S* md = mt + d * n;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) acc += x[j] * md[j];
    out[d] = acc;
  }
}

// mt[d * n + j] += x[j] * a[d] for every d and j.
template <typename S, int DC>
inline void rank1_update(S* __restrict mt, const S* __restrict x, const S* __restrict a, int64_t n, int64_t Drt) {
  const int64_t D = DC ? DC : Drt;
  for (int64_t d = 0; d < D; ++d) {
    const S ad = a[d];
    S* md = mt + d * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) md[j] += x[j] * ad;
  }
}

template <typename S>
struct Dropout {
  float p;
  uint64_t seed;
  S scale;  // 1 / (1 - p)
  S factor(uint64_t offset) const { return philox_uniform(seed, offset) >= p ? scale : S(0); }
};

// Reductions over a row of width w (a multiple of 16) with 16 independent partial results, so they vectorise
// (and pipeline) without relying on the compiler's permission to reassociate.
template <typename S>
inline S row_max(const S* __restrict row, int64_t w) {
  S part[16];
  for (int l = 0; l < 16; ++l) part[l] = row[l];
  for (int64_t j = 16; j < w; j += 16)
    for (int l = 0; l < 16; ++l) part[l] = row[j + l] > part[l] ? row[j + l] : part[l];
  S m = part[0];
  for (int l = 1; l < 16; ++l) m = part[l] > m ? part[l] : m;
  return m;
}

// row[j] = exp(row[j] - m) in place; returns the sum.
template <typename S>
inline S exp_and_sum(S* __restrict row, S m, int64_t w) {
  S part[16] = {};
  for (int64_t j = 0; j < w; j += 16)
    for (int l = 0; l < 16; ++l) {
      row[j + l] = exp_(row[j + l] - m);
      part[l] += row[j + l];
    }
  S sum = 0;
  for (int l = 0; l < 16; ++l) sum += part[l];
  return sum;
}

// Rows are processed at a width padded to whole 64-byte vectors (keys past n hold 0 in K and V and -inf in the
// logits), so the short rows of small molecules run without scalar tails.
inline int64_t padded_width(int64_t n) { return (n + 15) & ~int64_t(15); }

template <typename S>
S* scratch(std::vector<S>& buf, int64_t elements) {
  buf.resize(elements + 64 / sizeof(S));
  return reinterpret_cast<S*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63));
}

template <typename T, typename S, int DC>
MOLM_FAST_MULTIVERSION void forward_one(const Problem& P, int64_t Drt, int64_t Dvrt, const T* q, const T* k,
                                        const T* v, const T* bias, T* out, T* logits, S* lse, S scale,
                                        const Dropout<S>* drop, std::vector<S>& buf) {
  const int64_t D = DC ? DC : Drt, Dv = DC ? DC : Dvrt, n = P.n, w = padded_width(n);
  const S inf = std::numeric_limits<S>::infinity();
  S* kt = scratch(buf, (D + Dv + 1) * w + D + Dv);  // [D][w]
  S* vt = kt + D * w;      // [Dv][w]
  S* row = vt + Dv * w;    // [w]
  S* qs = row + w;         // [D]
  S* o = qs + D;           // [Dv]
  std::fill(kt, row, S(0));
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t d = 0; d < D; ++d) kt[d * w + j] = Io<S>::load(k[P.at[kK] + j * P.row[kK] + d]);
    for (int64_t d = 0; d < Dv; ++d) vt[d * w + j] = Io<S>::load(v[P.at[kV] + j * P.row[kV] + d]);
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < D; ++d) qs[d] = Io<S>::load(q[P.at[kQ] + i * P.row[kQ] + d]) * scale;
    const T* brow = bias + P.bias + i * P.bias_i;
    rowdot<S, DC>(row, qs, kt, w, D);
    if (P.bias_j == 1) {
      for (int64_t j = 0; j < n; ++j) row[j] += Io<S>::load(brow[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) row[j] += Io<S>::load(brow[j * P.bias_j]);
    }
    for (int64_t j = n; j < w; ++j) row[j] = -inf;
    if (logits)  // the low-rank path writes no pair tensor
      for (int64_t j = 0; j < n; ++j) Io<S>::store(logits + P.pair + i * n + j, row[j]);
    const S m = row_max(row, w);
    T* orow = out + P.at[kOut] + i * P.row[kOut];
    if (m == -inf) {  // no key: out 0, LSE -inf (never NaN)
      for (int64_t d = 0; d < Dv; ++d) Io<S>::store(orow + d, S(0));
      lse[P.lse + i * P.lse_i] = m;
      continue;
    }
    const S sum = exp_and_sum(row, m, w);
    lse[P.lse + i * P.lse_i] = m + std::log(sum);
    if (drop)
      for (int64_t j = 0; j < n; ++j) row[j] *= drop->factor(uint64_t(P.pair + i * n + j));
    coldot<S, DC>(o, row, vt, w, Dv);  // out row = (e v) / sum
    const S inv = S(1) / sum;
    for (int64_t d = 0; d < Dv; ++d) Io<S>::store(orow + d, o[d] * inv);
  }
}

#if MOLM_FAST_HAS_AVX512_PATH
// forward_one for D = Dv = 8, fp32 math, no dropout, contiguous bias rows, on AVX-512, 16 query rows at a time:
// pass 1 runs along the rows (16 keys per vector: q k^T + bias, the logits written) and transposes each 16 x 16
// tile in registers into S [keys][16 rows]; pass 2 runs down the keys with the 16 rows in the lanes (exp, row
// sums, p v as 8 FMAs against broadcast v), so no row ever needs a horizontal reduction.
template <typename T>
MOLM_AVX512 void forward_one_avx512(const Problem& P, const T* q, const T* k, const T* v, const T* bias, T* out,
                                    T* logits, float* lse, float scale, std::vector<float>& buf) {
  const int64_t n = P.n, w = padded_width(n);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  float* kt = scratch(buf, 41 * w + 144);  // [8][w] keys transposed
  float* vr = kt + 8 * w;    // [w][8] values, row-major
  float* qs = vr + 8 * w;    // [w][8] queries * scale
  float* st = qs + 8 * w;    // [w][16] logits of one row block, transposed
  float* ot = st + 16 * w;   // [8][16] out of one row block, transposed
  float* lt = ot + 128;      // [16] its LSE
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t j0 = 0; j0 < w; j0 += 16) {  // 16 keys at a time: rows of q and v copied, k transposed
    __m512 kr[16];
    for (int64_t jj = 0; jj < 16; ++jj) {
      const int64_t j = j0 + jj;
      const __mmask16 m = j < n ? __mmask16(0xff) : __mmask16(0);  // rows past n: zeros
      kr[jj] = avx512::load16(k + P.at[kK] + std::min(j, n - 1) * P.row[kK], m);
      _mm512_mask_storeu_ps(vr + j * 8, 0xff, avx512::load16(v + P.at[kV] + std::min(j, n - 1) * P.row[kV], m));
      _mm512_mask_storeu_ps(qs + j * 8, 0xff,
                            _mm512_mul_ps(avx512::load16(q + P.at[kQ] + std::min(j, n - 1) * P.row[kQ], m), sc));
    }
    avx512::transpose16(kr);
    for (int d = 0; d < 8; ++d) _mm512_store_ps(kt + d * w + j0, kr[d]);
  }
  const __mmask16 last = static_cast<__mmask16>(n % 16 == 0 ? 0xffff : (1u << (n % 16)) - 1);
  for (int64_t r0 = 0; r0 < n; r0 += 16) {
    const int64_t nr = std::min<int64_t>(16, n - r0);
    __m512 mx = ninf;  // row maxima, one row per lane
    for (int64_t j0 = 0; j0 < w; j0 += 16) {
      const __mmask16 m = j0 + 16 >= w ? last : __mmask16(0xffff);
      __m512 kv[8], s[16];
      for (int d = 0; d < 8; ++d) kv[d] = _mm512_load_ps(kt + d * w + j0);
      for (int r = 0; r < 16; ++r) {
        if (r >= nr) {  // rows past n: never stored; all -inf, they take the empty-row branch
          s[r] = ninf;
          continue;
        }
        const float* qr = qs + (r0 + r) * 8;
        __m512 acc = _mm512_mul_ps(_mm512_set1_ps(qr[0]), kv[0]);
        for (int d = 1; d < 8; ++d) acc = _mm512_fmadd_ps(_mm512_set1_ps(qr[d]), kv[d], acc);
        acc = _mm512_add_ps(acc, avx512::load16(bias + P.bias + (r0 + r) * P.bias_i + j0, m));
        if (logits) avx512::store16(logits + P.pair + (r0 + r) * n + j0, acc, m);
        s[r] = _mm512_mask_mov_ps(ninf, m, acc);  // keys past n: -inf
      }
      avx512::transpose16(s);
      for (int jj = 0; jj < 16; ++jj) {
        _mm512_store_ps(st + (j0 + jj) * 16, s[jj]);
        mx = _mm512_max_ps(mx, s[jj]);
      }
    }
    const __mmask16 empty = _mm512_cmp_ps_mask(mx, ninf, _CMP_EQ_OQ);  // rows with no key: out 0, LSE -inf
    const __m512 mxs = _mm512_mask_mov_ps(mx, empty, _mm512_setzero_ps());
    __m512 sum = _mm512_setzero_ps(), o[8];
    for (int d = 0; d < 8; ++d) o[d] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m512 e = avx512::exp16(_mm512_sub_ps(_mm512_load_ps(st + j * 16), mxs));
      sum = _mm512_add_ps(sum, e);
      for (int d = 0; d < 8; ++d) o[d] = _mm512_fmadd_ps(e, _mm512_set1_ps(vr[j * 8 + d]), o[d]);
    }
    const __m512 inv = _mm512_maskz_div_ps(static_cast<__mmask16>(~empty), _mm512_set1_ps(1.0f), sum);
    for (int d = 0; d < 8; ++d) _mm512_store_ps(ot + d * 16, _mm512_mul_ps(o[d], inv));
    _mm512_store_ps(lt, _mm512_mask_mov_ps(_mm512_add_ps(mx, avx512::log16(sum)), empty, ninf));
    for (int64_t r = 0; r < nr; ++r) {
      T* orow = out + P.at[kOut] + (r0 + r) * P.row[kOut];
      for (int d = 0; d < 8; ++d) Io<float>::store(orow + d, ot[d * 16 + r]);
      lse[P.lse + (r0 + r) * P.lse_i] = lt[r];
    }
  }
}
#endif

template <typename T, typename S, int DC>
MOLM_FAST_MULTIVERSION void backward_one(const Problem& P, int64_t Drt, const T* go, const T* gl, const T* q,
                                         const T* k, const T* v, const T* bias, const T* out, const S* lse, T* dq,
                                         T* dk, T* dv, T* dbias, S scale, const Dropout<S>* drop,
                                         std::vector<S>& buf) {
  const int64_t D = DC ? DC : Drt, n = P.n, w = padded_width(n);
  const S inf = std::numeric_limits<S>::infinity();
  S* kt = scratch(buf, (4 * D + 2) * w + 2 * D);  // [D][w]
  S* vt = kt + D * w;      // [D][w]
  S* dkt = vt + D * w;     // [D][w]
  S* dvt = dkt + D * w;    // [D][w]
  S* dl = dvt + D * w;     // [w]
  S* pd = dl + w;          // [w]
  S* qs = pd + w;          // [D]
  S* g = qs + D;           // [D]
  std::fill(kt, dl, S(0));  // kt, vt, dkt, dvt
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) {
      kt[d * w + j] = Io<S>::load(k[P.at[kK] + j * P.row[kK] + d]);
      vt[d * w + j] = Io<S>::load(v[P.at[kV] + j * P.row[kV] + d]);
    }
  for (int64_t i = 0; i < n; ++i) {
    const T* grow = go + P.at[kGradOut] + i * P.row[kGradOut];
    const T* orow = out + P.at[kOut] + i * P.row[kOut];
    S delta = 0;
    for (int64_t d = 0; d < D; ++d) {
      qs[d] = Io<S>::load(q[P.at[kQ] + i * P.row[kQ] + d]) * scale;
      g[d] = Io<S>::load(grow[d]);
      delta += g[d] * Io<S>::load(orow[d]);
    }
    rowdot<S, DC>(pd, qs, kt, w, D);  // the logits again, exactly as the forward made them
    rowdot<S, DC>(dl, g, vt, w, D);   // dp = dO v^T
    const S l = lse[P.lse + i * P.lse_i];
    const S lsafe = l == -inf ? inf : l;  // a row with no key: p = exp(-inf) = 0
    const T* brow_in = bias + P.bias + i * P.bias_i;
    if (P.bias_j == 1) {
      for (int64_t j = 0; j < n; ++j) pd[j] += Io<S>::load(brow_in[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) pd[j] += Io<S>::load(brow_in[j * P.bias_j]);
    }
    for (int64_t j = n; j < w; ++j) pd[j] = -inf;
    if (drop) {
      for (int64_t j = 0; j < w; ++j) {
        const S p = exp_(pd[j] - lsafe);
        const S f = j < n ? drop->factor(uint64_t(P.pair + i * n + j)) : S(0);
        pd[j] = p * f;
        dl[j] = p * (dl[j] * f - delta);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        const S p = exp_(pd[j] - lsafe);
        pd[j] = p;
        dl[j] = p * (dl[j] - delta);
      }
    }
    T* brow = dbias + P.pair + i * n;
    if (gl) {
      const T* glrow = gl + P.pair + i * n;
      for (int64_t j = 0; j < n; ++j) dl[j] += Io<S>::load(glrow[j]);
    }
    for (int64_t j = 0; j < n; ++j) Io<S>::store(brow + j, dl[j]);
    S acc[DC ? DC : 64];
    coldot<S, DC>(acc, dl, kt, w, D);  // dq row = scale dlogits k
    T* dqrow = dq + P.at[kDq] + i * P.row[kDq];
    for (int64_t d = 0; d < D; ++d) Io<S>::store(dqrow + d, acc[d] * scale);
    rank1_update<S, DC>(dkt, dl, qs, w, D);
    rank1_update<S, DC>(dvt, pd, g, w, D);
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) {
      Io<S>::store(dk + P.at[kDk] + j * P.row[kDk] + d, dkt[d * w + j]);
      Io<S>::store(dv + P.at[kDv] + j * P.row[kDv] + d, dvt[d * w + j]);
    }
}

// Runs fn(problem, scratch) for every (molecule, head), in parallel.
template <typename S, typename Fn>
void for_each_problem(const Layout& L, Fn fn) {
  const std::vector<int64_t> starts = pair_starts(L);
#if MOLM_FAST_HAS_OPENMP
#pragma omp parallel
#endif
  {
    std::vector<S> buf;
#if MOLM_FAST_HAS_OPENMP
#pragma omp for collapse(2) schedule(dynamic, 4)
#endif
    for (int64_t b = 0; b < L.B; ++b)
      for (int64_t h = 0; h < L.H; ++h) {
        const Problem P = problem(L, starts, b, h);
        if (P.n > 0) fn(P, buf);
      }
  }
}

// strides: 4 per token tensor in Tensor order; forward passes q, k, v, out, bias; backward all nine.
Layout make_layout(const char* op, uintptr_t cu, int64_t B, int64_t H, int64_t N, int64_t D, int64_t Dv,
                   const std::vector<int64_t>& strides, int tensors) {
  MOLM_CHECK_NONNEG(B, op, "B");
  MOLM_CHECK_NONNEG(H, op, "H");
  MOLM_CHECK_NONNEG(N, op, "N");
  MOLM_CHECK(D > 0 && D <= 1024 && Dv > 0 && Dv <= 1024, op, "head dims must be in [1, 1024], got ", D, ", ", Dv);
  MOLM_CHECK(strides.size() == size_t(4 * tensors), op, "strides must hold ", 4 * tensors, " values, got ",
             strides.size());
  Layout L{B, H, N, D, Dv, {}, reinterpret_cast<const int32_t*>(cu)};
  for (int t = 0; t < kNumTensors; ++t)
    for (int a = 0; a < 4; ++a) L.s[t][a] = t < tensors ? strides[4 * t + a] : 0;
  for (int t = 0; t < tensors; ++t)
    MOLM_CHECK(t == kBias || L.s[t][3] == 1, op, "q, k, v, out and the gradients need a contiguous last dim");
  if (L.packed())
    for (int64_t b = 0; b < B; ++b)
      MOLM_CHECK(L.cu[b] >= 0 && L.cu[b + 1] >= L.cu[b] && L.cu[b + 1] - L.cu[b] <= N, op,
                 "cu_seqlens must be non-decreasing with lengths <= max_seqlen ", N, ", got cu_seqlens[", b, ":",
                 b + 2, "] = ", L.cu[b], ", ", L.cu[b + 1]);
  return L;
}

template <typename T, typename S>
void forward_typed(const Layout& L, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t bias, uintptr_t out,
                   uintptr_t logits, uintptr_t lse, double scale, double dropout_p, uint64_t seed) {
  const Dropout<S> drop{float(dropout_p), seed, S(1.0 / (1.0 - dropout_p))};
  const Dropout<S>* dp = dropout_p > 0 ? &drop : nullptr;
  auto c = [](uintptr_t p) { return reinterpret_cast<const T*>(p); };
  auto w = [](uintptr_t p) { return reinterpret_cast<T*>(p); };
  S* lse_p = reinterpret_cast<S*>(lse);
#if MOLM_FAST_HAS_AVX512_PATH
  if constexpr (std::is_same_v<S, float>) {
    if (L.D == 8 && L.Dv == 8 && !dp && avx512_usable() && (L.packed() || L.s[kBias][3] == 1)) {
      for_each_problem<S>(L, [&](const Problem& P, std::vector<S>& buf) {
        forward_one_avx512<T>(P, c(q), c(k), c(v), c(bias), w(out), w(logits), lse_p, float(scale), buf);
      });
      return;
    }
  }
#endif
  for_each_problem<S>(L, [&](const Problem& P, std::vector<S>& buf) {
    if (L.D == 8 && L.Dv == 8)
      forward_one<T, S, 8>(P, 8, 8, c(q), c(k), c(v), c(bias), w(out), w(logits), lse_p, S(scale), dp, buf);
    else
      forward_one<T, S, 0>(P, L.D, L.Dv, c(q), c(k), c(v), c(bias), w(out), w(logits), lse_p, S(scale), dp, buf);
  });
}

template <typename T, typename S>
void backward_typed(const Layout& L, uintptr_t go, uintptr_t gl, uintptr_t q, uintptr_t k, uintptr_t v,
                    uintptr_t bias, uintptr_t out, uintptr_t lse, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                    uintptr_t dbias, double scale, double dropout_p, uint64_t seed) {
  const Dropout<S> drop{float(dropout_p), seed, S(1.0 / (1.0 - dropout_p))};
  const Dropout<S>* dp = dropout_p > 0 ? &drop : nullptr;
  auto c = [](uintptr_t p) { return reinterpret_cast<const T*>(p); };
  auto w = [](uintptr_t p) { return reinterpret_cast<T*>(p); };
  for_each_problem<S>(L, [&](const Problem& P, std::vector<S>& buf) {
    if (L.D == 8)
      backward_one<T, S, 8>(P, 8, c(go), c(gl), c(q), c(k), c(v), c(bias), c(out),
                            reinterpret_cast<const S*>(lse), w(dq), w(dk), w(dv), w(dbias), S(scale), dp, buf);
    else
      backward_one<T, S, 0>(P, L.D, c(go), c(gl), c(q), c(k), c(v), c(bias), c(out),
                            reinterpret_cast<const S*>(lse), w(dq), w(dk), w(dv), w(dbias), S(scale), dp, buf);
  });
}

// Calls fn(T{}, S{}) for the storage type T and compute type S of a dtype code.
template <typename Fn>
void by_dtype(int dtype, const char* op, Fn fn) {
  if (dtype == int(DType::Float32))
    fn(float{}, float{});
  else if (dtype == int(DType::Float64))
    fn(double{}, double{});
  else if (dtype == int(DType::BFloat16))
    fn(uint16_t{}, float{});
  else
    throw std::invalid_argument(concat(op, ": q must be float32, float64 or bfloat16, got ", dtype_name(dtype)));
}

}  // namespace

void pair_bias_attention_forward_cpu(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t bias, uintptr_t out,
                                     uintptr_t logits, uintptr_t lse, uintptr_t cu_seqlens, int64_t B, int64_t H,
                                     int64_t N, int64_t D, int64_t Dv, const std::vector<int64_t>& strides,
                                     double scale, double dropout_p, uint64_t seed, int dtype) {
  const char* op = "pair_bias_attention_forward_cpu";
  const Layout L = make_layout(op, cu_seqlens, B, H, N, D, Dv, strides, kGradOut);
  if (B == 0 || H == 0 || N == 0) return;
  for (auto [p, name] : {std::pair{q, "q"}, {k, "k"}, {v, "v"}, {bias, "bias"}, {out, "out"}, {lse, "lse"}})
    MOLM_CHECK_PTR(p, op, name);  // logits may be 0: the low-rank path writes none
  MOLM_CHECK(dropout_p >= 0 && dropout_p < 1, op, "dropout_p must be in [0, 1), got ", dropout_p);
  by_dtype(dtype, op, [&](auto t, auto c) {
    forward_typed<decltype(t), decltype(c)>(L, q, k, v, bias, out, logits, lse, scale, dropout_p, seed);
  });
}

void pair_bias_attention_backward_cpu(uintptr_t grad_out, uintptr_t grad_logits, uintptr_t q, uintptr_t k,
                                      uintptr_t v, uintptr_t bias, uintptr_t out, uintptr_t lse, uintptr_t dq,
                                      uintptr_t dk, uintptr_t dv, uintptr_t dbias, uintptr_t cu_seqlens, int64_t B,
                                      int64_t H, int64_t N, int64_t D, const std::vector<int64_t>& strides,
                                      double scale, double dropout_p, uint64_t seed, int dtype) {
  const char* op = "pair_bias_attention_backward_cpu";
  const Layout L = make_layout(op, cu_seqlens, B, H, N, D, D, strides, kNumTensors);
  if (B == 0 || H == 0 || N == 0) return;
  for (auto [p, name] : {std::pair{grad_out, "grad_out"}, {q, "q"}, {k, "k"}, {v, "v"}, {bias, "bias"},
                         {out, "out"}, {lse, "lse"}, {dq, "dq"}, {dk, "dk"}, {dv, "dv"}, {dbias, "dbias"}})
    MOLM_CHECK_PTR(p, op, name);
  MOLM_CHECK(dropout_p >= 0 && dropout_p < 1, op, "dropout_p must be in [0, 1), got ", dropout_p);
  by_dtype(dtype, op, [&](auto t, auto c) {
    backward_typed<decltype(t), decltype(c)>(L, grad_out, grad_logits, q, k, v, bias, out, lse, dq, dk, dv, dbias,
                                             scale, dropout_p, seed);
  });
}

}  // namespace molm_fast
