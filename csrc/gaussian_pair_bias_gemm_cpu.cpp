// gaussian_pair_bias for bf16 parameters on the CPU, as two passes around the CPU's own bf16 GEMMs (oneDNN, AMX
// where the CPU has it; molm_fast/ops/gaussian_pair_bias.py runs them between these entries):
//   basis:   rows [t0, t1) of query atoms -> G [pairs, K] bf16, the Gaussians of every pair of those rows in pair
//            order (row-major within each molecule's [n, n] block), computed in fp32 and rounded to bf16 where the
//            reference rounds them (before gbf_proj); pairs touching a pad take distance 0 and edge type 0;
//   scatter: y [pairs, H] bf16 (gbf_proj's output for the same rows) -> out[h, i, j] of each molecule's [H, n, n]
//            block, -inf on pad key columns.
// A row's pairs are contiguous in both G and y, so the Python side splits a batch into row chunks that fit in
// cache. Rows are parallel (OpenMP); the AVX-512 loops are runtime-dispatched, with a generic loop elsewhere.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"
#include "simd_avx512.h"

namespace molm_fast {
namespace {

struct Row {
  int64_t start, n, i, block;  // molecule's first token, its length, the row's atom index, its pair block offset
};

struct Rows {
  const int32_t* cu;        // null when padded
  const int64_t* cu_pairs;  // null when padded
  int64_t B, N;
  Row operator()(int64_t t) const {
    if (cu == nullptr) return Row{t / N * N, N, t % N, t / N * N * N};
    const int64_t b = std::upper_bound(cu, cu + B + 1, static_cast<int32_t>(t)) - cu - 1;
    return Row{cu[b], cu[b + 1] - cu[b], t - cu[b], cu_pairs[b]};
  }
  int64_t pair(int64_t t) const {  // index of row t's first pair
    const Row r = (*this)(t);
    return r.block + r.i * r.n;
  }
};

// G row of one pair: g[k] = bf16(exp(-((x - mean_k) / s_k)^2 / 2) / (sqrt(2 pi) s_k)).
MOLM_FAST_MULTIVERSION void basis_generic(float x, const float* mean, const float* inv_std, const float* coef,
                                          int64_t K, uint16_t* g) {
  for (int64_t k = 0; k < K; ++k) {
    const float u = (x - mean[k]) * inv_std[k];
    g[k] = float_to_bf16(fast_exp(-0.5f * u * u) * coef[k]);
  }
}

#if MOLM_FAST_HAS_AVX512_PATH
MOLM_AVX512 void basis_avx512(float x, const float* mean, const float* inv_std, const float* coef, int64_t K,
                              uint16_t* g) {
  const __m512 xv = _mm512_set1_ps(x);
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 u = _mm512_mul_ps(_mm512_sub_ps(xv, _mm512_maskz_loadu_ps(m, mean + k)),
                                   _mm512_maskz_loadu_ps(m, inv_std + k));
    const __m512 e = avx512::exp16(_mm512_mul_ps(_mm512_set1_ps(-0.5f), _mm512_mul_ps(u, u)));
    avx512::store16(g + k, _mm512_mul_ps(e, _mm512_maskz_loadu_ps(m, coef + k)), m);
  }
}

// out[h * nn + j] = y[j * H + h] for 16 keys x 16 heads at a time (bf16 moved through fp32 lanes: exact).
MOLM_AVX512 void scatter_row_avx512(const uint16_t* y, int64_t H, int64_t n, int64_t nn, const int64_t* tok,
                                    int64_t pad_idx, uint16_t* out) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t nj = std::min<int64_t>(16, n - j0);
    const __mmask16 m = static_cast<__mmask16>(nj == 16 ? 0xffff : (1u << nj) - 1);
    __mmask16 pad = 0;
    for (int64_t j = 0; j < nj; ++j) pad |= static_cast<__mmask16>(tok[j0 + j] == pad_idx) << j;
    for (int64_t h0 = 0; h0 < H; h0 += 16) {
      const __mmask16 mh = H - h0 >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (H - h0)) - 1);
      __m512 r[16];
      for (int64_t j = 0; j < 16; ++j)
        r[j] = j < nj ? avx512::load16(y + (j0 + j) * H + h0, mh) : _mm512_setzero_ps();
      avx512::transpose16(r);
      for (int64_t h = 0; h < std::min<int64_t>(16, H - h0); ++h)
        avx512::store16(out + (h0 + h) * nn + j0, _mm512_mask_mov_ps(r[h], pad, ninf), m);
    }
  }
}
#endif

void check_rows(const char* op, uintptr_t cu, uintptr_t cu_pairs, int64_t B, int64_t N, int64_t T, int64_t t0,
                int64_t t1) {
  MOLM_CHECK((cu == 0) == (cu_pairs == 0), op, "cu_seqlens and cu_pairs must be given together");
  MOLM_CHECK(B >= 0 && N >= 0 && T >= 0, op, "B, N and T must be >= 0, got ", B, ", ", N, ", ", T);
  if (cu == 0) MOLM_CHECK(T == B * N, op, "T must be B * N for a padded batch, got ", T);
  MOLM_CHECK(0 <= t0 && t0 <= t1 && t1 <= T, op, "rows must satisfy 0 <= t0 <= t1 <= T = ", T, ", got ", t0, ", ", t1);
  const auto* c = reinterpret_cast<const int32_t*>(cu);
  if (c != nullptr) {
    MOLM_CHECK(c[0] == 0 && c[B] == T, op, "cu_seqlens must run from 0 to T = ", T);
    for (int64_t b = 0; b < B; ++b) MOLM_CHECK(c[b + 1] >= c[b], op, "cu_seqlens must not decrease");
  }
}

}  // namespace

void gaussian_pair_bias_basis_cpu(uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                  uintptr_t mul, uintptr_t bias, uintptr_t means, uintptr_t stds, uintptr_t g,
                                  int64_t B, int64_t N, int64_t T, int64_t t0, int64_t t1, int64_t K,
                                  int64_t num_types, int64_t pad_idx) {
  const char* op = "gaussian_pair_bias_basis_cpu";
  check_rows(op, cu_seqlens, cu_pairs, B, N, T, t0, t1);
  if (t0 == t1) return;
  for (uintptr_t p : {coords, tokens, mul, bias, means, stds, g}) MOLM_CHECK_PTR(p, op, "a tensor");
  MOLM_CHECK(K > 0, op, "K must be > 0, got ", K);
  const Rows rows{reinterpret_cast<const int32_t*>(cu_seqlens), reinterpret_cast<const int64_t*>(cu_pairs), B, N};
  const auto* c = reinterpret_cast<const float*>(coords);
  const auto* tok = reinterpret_cast<const int64_t*>(tokens);
  const auto *mw = reinterpret_cast<const float*>(mul), *bw = reinterpret_cast<const float*>(bias);
  for (int64_t t = 0; t < T; ++t)
    MOLM_CHECK(tok[t] >= 0 && tok[t] < num_types, op, "tokens must be in [0, ", num_types, "), got ", tok[t], " at ", t);
  std::vector<float> mean(K), inv_std(K), coef(K);
  const float root = std::sqrt(2.0f * 3.14159f);  // upstream's literal pi (spec 3d-molm.md §8.3)
  for (int64_t k = 0; k < K; ++k) {
    const float s = std::abs(reinterpret_cast<const float*>(stds)[k]) + 1e-5f;
    mean[k] = reinterpret_cast<const float*>(means)[k], inv_std[k] = 1.0f / s, coef[k] = 1.0f / (root * s);
  }
  const bool wide = avx512_usable();
  const int64_t p0 = rows.pair(t0);
  auto* gout = reinterpret_cast<uint16_t*>(g);
#if MOLM_FAST_HAS_OPENMP
#pragma omp parallel for schedule(dynamic, 4)
#endif
  for (int64_t t = t0; t < t1; ++t) {
    const Row r = rows(t);
    const float* ci = c + 3 * (r.start + r.i);
    const int64_t ti = tok[r.start + r.i];
    uint16_t* grow = gout + (r.block + r.i * r.n - p0) * K;
    for (int64_t j = 0; j < r.n; ++j) {
      const int64_t tj = tok[r.start + j];
      float x = bw[0];  // a pair touching a pad: distance 0, edge type 0
      if (ti != pad_idx && tj != pad_idx) {
        const float* cj = c + 3 * (r.start + j);
        const float d0 = ci[0] - cj[0], d1 = ci[1] - cj[1], d2 = ci[2] - cj[2];
        const int64_t e = ti * num_types + tj;
        x = mw[e] * std::sqrt(d0 * d0 + d1 * d1 + d2 * d2) + bw[e];
      }
#if MOLM_FAST_HAS_AVX512_PATH
      if (wide) {
        basis_avx512(x, mean.data(), inv_std.data(), coef.data(), K, grow + j * K);
        continue;
      }
#endif
      basis_generic(x, mean.data(), inv_std.data(), coef.data(), K, grow + j * K);
    }
  }
}

void gaussian_pair_bias_scatter_cpu(uintptr_t y, uintptr_t tokens, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                    uintptr_t out, int64_t B, int64_t N, int64_t T, int64_t t0, int64_t t1, int64_t H,
                                    int64_t pad_idx) {
  const char* op = "gaussian_pair_bias_scatter_cpu";
  check_rows(op, cu_seqlens, cu_pairs, B, N, T, t0, t1);
  if (t0 == t1) return;
  for (uintptr_t p : {y, tokens, out}) MOLM_CHECK_PTR(p, op, "a tensor");
  const Rows rows{reinterpret_cast<const int32_t*>(cu_seqlens), reinterpret_cast<const int64_t*>(cu_pairs), B, N};
  const auto* tok = reinterpret_cast<const int64_t*>(tokens);
  const auto* yin = reinterpret_cast<const uint16_t*>(y);
  auto* o = reinterpret_cast<uint16_t*>(out);
  const bool wide = avx512_usable();
  const int64_t p0 = rows.pair(t0);
  const uint16_t ninf = float_to_bf16(-std::numeric_limits<float>::infinity());
#if MOLM_FAST_HAS_OPENMP
#pragma omp parallel for schedule(dynamic, 4)
#endif
  for (int64_t t = t0; t < t1; ++t) {
    const Row r = rows(t);
    const uint16_t* yrow = yin + (r.block + r.i * r.n - p0) * H;
    uint16_t* orow = o + H * r.block + r.i * r.n;  // out[h, i, j] = orow[h * n * n + j]
    const int64_t* mt = tok + r.start;
#if MOLM_FAST_HAS_AVX512_PATH
    if (wide) {
      scatter_row_avx512(yrow, H, r.n, r.n * r.n, mt, pad_idx, orow);
      continue;
    }
#endif
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < r.n; ++j) orow[h * r.n * r.n + j] = mt[j] == pad_idx ? ninf : yrow[j * H + h];
  }
}

}  // namespace molm_fast
