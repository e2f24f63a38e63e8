// gaussian_pair_bias, CPU: coordinates + atom types -> Uni-Mol's layer-0 pair bias, forward and backward.
//
// Per pair (i, j): d = |c_i - c_j|, x = mul[e] d + bias[e], G_k = exp(-u_k^2 / 2) / (sqrt(2 * 3.14159) s_k) with
// u_k = (x - mu_k) / s_k, then y = W2 gelu(W1 G + b1) + b2 written to out[h, i, j] of the molecule's [H, n, n]
// block (padded batches are packed batches with every n = N). Pairs are processed a row tile of P at a time,
// so G [P, K], the hidden [P, C] and y [P, H] stay in L1/L2 and [B, N, N, K] never exists. The two linears are
// small register-blocked GEMMs; exp and erf are branch-free polynomials that vectorise (fp32; fp64 uses libm).
// Pairs touching a pad all share one value (d = 0, e = 0), computed once; pad key columns get -inf.
// Backward recomputes the tile and gives d coords, d mul/bias rows, d means, d stds, d W1, b1, W2, b2; each
// thread accumulates privately and the sums are reduced in thread order (deterministic for a fixed thread count).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

#if MOLM_FAST_HAS_OPENMP
#include <omp.h>
#endif

namespace molm_fast {
namespace {

constexpr int kTile = 32;                // pairs per tile
constexpr int64_t kParallelPairs = 2048;  // fewer pairs run on one thread: a parallel region costs more

// Flush denormals to zero inside the kernels' parallel regions (x86: MXCSR FTZ|DAZ), restored on exit.
struct FlushDenormals {
#if defined(__x86_64__)
  unsigned saved = __builtin_ia32_stmxcsr();
  FlushDenormals() { __builtin_ia32_ldmxcsr(saved | 0x8040u); }
  ~FlushDenormals() { __builtin_ia32_ldmxcsr(saved); }
#endif
};

inline int thread_count() {
#if MOLM_FAST_HAS_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#if MOLM_FAST_HAS_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// exp in the compute dtype: fp32 takes common.h's vectorisable fast_exp (the far Gaussian tails it returns as
// tiny normals or 0; the kernels flush denormals), fp64 (gradcheck) takes libm.
inline float exp_s(float x) { return fast_exp(x); }
inline double exp_s(double x) { return std::exp(x); }

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), the form ATen's vectorised erf uses.
inline float erf_s(float x) {
  const float a = x < 0 ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float p = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  const float y = 1.0f - p * exp_s(-a * a);
  return x < 0 ? -y : y;
}
inline double erf_s(double x) { return std::erf(x); }

template <typename S>
struct Params {  // the parameters in the compute dtype, laid out for the kernels
  const S *mul, *bias, *w1, *b1, *w2, *b2;
  std::vector<S> mean, inv_std, coef, w1t, w2t;  // w1t [K, C], w2t [C, H]
  int64_t K, C, H, E;
};

template <typename S>
Params<S> prepare(const S* mul, const S* bias, const S* means, const S* stds, const S* w1, const S* b1, const S* w2,
                  const S* b2, int64_t K, int64_t C, int64_t H, int64_t E) {
  Params<S> p{mul, bias, w1, b1, w2, b2, {}, {}, {}, {}, {}, K, C, H, E};
  const S root = std::sqrt(S(2) * S(3.14159));  // upstream's literal pi (spec 3d-molm.md §8.3)
  for (int64_t k = 0; k < K; ++k) {
    const S s = std::abs(stds[k]) + S(1e-5);
    p.mean.push_back(means[k]);
    p.inv_std.push_back(S(1) / s);
    p.coef.push_back(S(1) / (root * s));
  }
  p.w1t.resize(K * C);
  p.w2t.resize(C * H);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < K; ++k) p.w1t[k * C + c] = w1[c * K + k];
  for (int64_t h = 0; h < H; ++h)
    for (int64_t c = 0; c < C; ++c) p.w2t[c * H + h] = w2[h * C + c];
  return p;
}

// out[r, m] += sum_k a[r * ars + k * aks] * b[k * ldb + m], for r < R, m < M, k < Kd. Register-blocked 4 x 2 vectors.
template <typename S>
MOLM_FAST_MULTIVERSION void gemm_acc(int64_t R, int64_t M, int64_t Kd, const S* a, int64_t ars, int64_t aks,
                                     const S* b, int64_t ldb, S* out, int64_t ldo) {
  constexpr int L = 64 / sizeof(S);
  typedef S vec __attribute__((vector_size(64), aligned(sizeof(S))));
  constexpr int RB = 4, MB = 2 * L;
  int64_t r0 = 0;
  for (; r0 + RB <= R; r0 += RB) {
    int64_t m0 = 0;
    for (; m0 + MB <= M; m0 += MB) {
      vec acc[RB][2];
      for (int r = 0; r < RB; ++r)
        for (int v = 0; v < 2; ++v) acc[r][v] = *reinterpret_cast<const vec*>(out + (r0 + r) * ldo + m0 + v * L);
      for (int64_t k = 0; k < Kd; ++k) {
        const vec b0 = *reinterpret_cast<const vec*>(b + k * ldb + m0);
        const vec b1 = *reinterpret_cast<const vec*>(b + k * ldb + m0 + L);
        for (int r = 0; r < RB; ++r) {
          const S av = a[(r0 + r) * ars + k * aks];
          acc[r][0] += av * b0;
          acc[r][1] += av * b1;
        }
      }
      for (int r = 0; r < RB; ++r)
        for (int v = 0; v < 2; ++v) *reinterpret_cast<vec*>(out + (r0 + r) * ldo + m0 + v * L) = acc[r][v];
    }
    for (int64_t r = r0; r < r0 + RB; ++r)  // column tail
      for (int64_t k = 0; k < Kd; ++k)
        for (int64_t m = m0; m < M; ++m) out[r * ldo + m] += a[r * ars + k * aks] * b[k * ldb + m];
  }
  for (int64_t r = r0; r < R; ++r)  // row tail
    for (int64_t k = 0; k < Kd; ++k) {
      const S av = a[r * ars + k * aks];
      for (int64_t m = 0; m < M; ++m) out[r * ldo + m] += av * b[k * ldb + m];
    }
}

template <typename S>
struct Scratch {  // one per thread: a tile of pairs
  std::vector<S> x, d, g, hid, act, y, dy, dact, dg;
  std::vector<int64_t> j, e;
  Scratch(int64_t K, int64_t C, int64_t H)
      : x(kTile), d(kTile), g(kTile * K), hid(kTile * C), act(kTile * C), y(kTile * H), dy(kTile * H),
        dact(kTile * C), dg(kTile * K), j(kTile), e(kTile) {}
};

// The forward of P pairs whose x is in s.x: fills s.g [P, K], s.hid (pre-GELU) and s.act [P, C], s.y [P, H].
template <typename S>
MOLM_FAST_MULTIVERSION void tile_forward(const Params<S>& p, Scratch<S>& s, int64_t P) {
  const int64_t K = p.K, C = p.C, H = p.H;
  for (int64_t q = 0; q < P; ++q) {
    const S x = s.x[q];
    S* g = s.g.data() + q * K;
    for (int64_t k = 0; k < K; ++k) {
      const S u = (x - p.mean[k]) * p.inv_std[k];
      g[k] = exp_s(S(-0.5) * u * u) * p.coef[k];
    }
    std::copy(p.b1, p.b1 + C, s.hid.data() + q * C);
    std::copy(p.b2, p.b2 + H, s.y.data() + q * H);
  }
  gemm_acc<S>(P, C, K, s.g.data(), K, 1, p.w1t.data(), C, s.hid.data(), C);
  for (int64_t i = 0; i < P * C; ++i) {
    const S h = s.hid[i];
    s.act[i] = S(0.5) * h * (S(1) + erf_s(h * S(0.70710678118654752)));
  }
  gemm_acc<S>(P, H, C, s.act.data(), C, 1, p.w2t.data(), H, s.y.data(), H);
}

// Work items are rows (molecule b, query atom i); padded batches have cu_seqlens == nullptr and n = N.
struct Layout {
  const int32_t* cu_seqlens;
  const int64_t* cu_pairs;
  int64_t B, N, T;
  int64_t pairs() const { return cu_seqlens == nullptr ? B * N * N : cu_pairs[B]; }
  void row(int64_t t, int64_t& start, int64_t& n, int64_t& i, int64_t& block) const {
    if (cu_seqlens == nullptr) {
      const int64_t b = t / N;
      start = b * N, n = N, i = t - start, block = b * N * N;
      return;
    }
    const int64_t b = std::upper_bound(cu_seqlens, cu_seqlens + B + 1, static_cast<int32_t>(t)) - cu_seqlens - 1;
    start = cu_seqlens[b], n = cu_seqlens[b + 1] - start, i = t - start, block = cu_pairs[b];
  }
};

// Fills s.x/s.d/s.e for the real keys s.j[0:P] of real row i (coordinates c, tokens tok of the molecule).
template <typename S>
void tile_inputs(const Params<S>& p, Scratch<S>& s, int64_t P, const S* c, const int64_t* tok, int64_t i,
                 int64_t num_types) {
  for (int64_t q = 0; q < P; ++q) {
    const int64_t j = s.j[q];
    const S d0 = c[3 * i] - c[3 * j], d1 = c[3 * i + 1] - c[3 * j + 1], d2 = c[3 * i + 2] - c[3 * j + 2];
    const int64_t e = tok[i] * num_types + tok[j];
    s.d[q] = std::sqrt(d0 * d0 + d1 * d1 + d2 * d2);
    s.e[q] = e;
    s.x[q] = p.mul[e] * s.d[q] + p.bias[e];
  }
}

inline void store(float* o, float v) { *o = v; }
inline void store(double* o, double v) { *o = v; }
inline void store(uint16_t* o, float v) { *o = float_to_bf16(v); }

template <typename S, typename O>
void forward(const Params<S>& p, const S* coords, const int64_t* tokens, const Layout& lay, O* out, int64_t num_types,
             int64_t pad_idx) {
  const FlushDenormals ftz;
  const int64_t H = p.H;
  std::vector<S> y0(H);  // the value of every pair touching a pad: d = 0, e = 0
  {
    Scratch<S> s(p.K, p.C, H);
    s.x[0] = p.bias[0];
    tile_forward(p, s, 1);
    std::copy(s.y.begin(), s.y.begin() + H, y0.begin());
  }
  const S ninf = -std::numeric_limits<S>::infinity();
#if MOLM_FAST_HAS_OPENMP
#pragma omp parallel if (lay.pairs() >= kParallelPairs)
#endif
  {
    const FlushDenormals ftz;
    Scratch<S> s(p.K, p.C, H);
#if MOLM_FAST_HAS_OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
    for (int64_t t = 0; t < lay.T; ++t) {
      int64_t start, n, i, block;
      lay.row(t, start, n, i, block);
      const int64_t* tok = tokens + start;
      O* orow = out + H * block + i * n;  // out[h, i, j] = orow[h * n * n + j]
      const bool pad_row = tok[i] == pad_idx;
      int64_t P = 0;
      for (int64_t j = 0; j <= n; ++j) {
        if (j < n && (pad_row || tok[j] == pad_idx)) {
          for (int64_t h = 0; h < H; ++h) store(orow + h * n * n + j, tok[j] == pad_idx ? ninf : y0[h]);
          continue;
        }
        if (j < n) s.j[P++] = j;
        if (P == kTile || (j == n && P > 0)) {
          tile_inputs(p, s, P, coords + 3 * start, tok, i, num_types);
          tile_forward(p, s, P);
          for (int64_t h = 0; h < H; ++h)
            for (int64_t q = 0; q < P; ++q) store(orow + h * n * n + s.j[q], s.y[q * H + h]);
          P = 0;
        }
      }
    }
  }
}

template <typename S>
struct Grads {  // one per thread
  std::vector<S> coords, mul, bias, mean, std, w1, b1, w2, b2, dy0;
  Grads(int64_t T, int64_t K, int64_t C, int64_t H, int64_t E)
      : coords(3 * T), mul(E), bias(E), mean(K), std(K), w1(C * K), b1(C), w2(H * C), b2(H), dy0(H) {}
};

// Backward of P pairs: s.dy holds dL/dy transposed, [H, P] (row stride kTile); x, d, e, j are the tile inputs.
// Adds to everything in gr except coords; returns dL/dx per pair in s.x (overwritten).
template <typename S>
MOLM_FAST_MULTIVERSION void tile_backward(const Params<S>& p, Scratch<S>& s, Grads<S>& gr, int64_t P) {
  const int64_t K = p.K, C = p.C, H = p.H;
  tile_forward(p, s, P);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t q = 0; q < P; ++q) gr.b2[h] += s.dy[h * kTile + q];
  gemm_acc<S>(H, C, P, s.dy.data(), kTile, 1, s.act.data(), C, gr.w2.data(), C);  // dW2 += dy^T act
  std::fill(s.dact.begin(), s.dact.begin() + P * C, S(0));
  gemm_acc<S>(P, C, H, s.dy.data(), 1, kTile, p.w2, C, s.dact.data(), C);  // dact = dy W2
  for (int64_t q = 0; q < P * C; ++q) {  // exact GELU': Phi(h) + h phi(h)
    const S h = s.hid[q];
    const S cdf = S(0.5) * (S(1) + erf_s(h * S(0.70710678118654752)));
    s.dact[q] *= cdf + h * exp_s(S(-0.5) * h * h) * S(0.39894228040143268);
  }
  for (int64_t q = 0; q < P; ++q)
    for (int64_t c = 0; c < C; ++c) gr.b1[c] += s.dact[q * C + c];
  gemm_acc<S>(C, K, P, s.dact.data(), 1, C, s.g.data(), K, gr.w1.data(), K);  // dW1 += dhid^T G
  std::fill(s.dg.begin(), s.dg.begin() + P * K, S(0));
  gemm_acc<S>(P, K, C, s.dact.data(), C, 1, p.w1, K, s.dg.data(), K);  // dG = dhid W1
  for (int64_t q = 0; q < P; ++q) {
    const S x = s.x[q];
    S dx = 0;
    for (int64_t k = 0; k < K; ++k) {
      const S u = (x - p.mean[k]) * p.inv_std[k];
      const S t = s.dg[q * K + k] * s.g[q * K + k] * p.inv_std[k];  // dL/dG * G / s
      dx -= t * u;
      gr.mean[k] += t * u;
      gr.std[k] += t * (u * u - S(1));
    }
    s.x[q] = dx;
  }
}

template <typename S>
void backward(const Params<S>& p, const S* grad, const S* coords, const int64_t* tokens, const Layout& lay,
              const S* stds, S* const* outs, int64_t num_types, int64_t pad_idx) {
  const FlushDenormals ftz;
  const int64_t K = p.K, C = p.C, H = p.H, E = p.E;
  const int nt = thread_count();
  std::vector<Grads<S>> grads;
  for (int t = 0; t < nt; ++t) grads.emplace_back(lay.T, K, C, H, E);
#if MOLM_FAST_HAS_OPENMP
#pragma omp parallel num_threads(nt) if (lay.pairs() >= kParallelPairs)
#endif
  {
    const FlushDenormals ftz;
    Scratch<S> s(K, C, H);
    Grads<S>& gr = grads[thread_id()];
#if MOLM_FAST_HAS_OPENMP
#pragma omp for schedule(static, 1)  // fixed row -> thread map: deterministic sums
#endif
    for (int64_t t = 0; t < lay.T; ++t) {
      int64_t start, n, i, block;
      lay.row(t, start, n, i, block);
      const int64_t* tok = tokens + start;
      const S* c = coords + 3 * start;
      const S* grow = grad + H * block + i * n;
      const bool pad_row = tok[i] == pad_idx;
      int64_t P = 0;
      for (int64_t j = 0; j <= n; ++j) {
        if (j < n && tok[j] == pad_idx) continue;  // -inf: no gradient
        if (j < n && pad_row) {
          for (int64_t h = 0; h < H; ++h) gr.dy0[h] += grow[h * n * n + j];
          continue;
        }
        if (j < n) s.j[P++] = j;
        if (P == kTile || (j == n && P > 0)) {
          tile_inputs(p, s, P, c, tok, i, num_types);
          for (int64_t h = 0; h < H; ++h)
            for (int64_t q = 0; q < P; ++q) s.dy[h * kTile + q] = grow[h * n * n + s.j[q]];
          tile_backward(p, s, gr, P);
          for (int64_t q = 0; q < P; ++q) {
            const S dx = s.x[q], dist = s.d[q];
            const int64_t e = s.e[q], j2 = s.j[q];
            gr.mul[e] += dx * dist;
            gr.bias[e] += dx;
            if (dist > 0) {
              const S w = dx * p.mul[e] / dist;
              for (int a = 0; a < 3; ++a) {
                const S diff = w * (c[3 * i + a] - c[3 * j2 + a]);
                gr.coords[3 * (start + i) + a] += diff;
                gr.coords[3 * (start + j2) + a] -= diff;
              }
            }
          }
          P = 0;
        }
      }
    }
  }
  Grads<S>& total = grads[0];  // reduce in thread order
  for (int t = 1; t < nt; ++t) {
    auto add = [](std::vector<S>& a, const std::vector<S>& b) {
      for (size_t q = 0; q < a.size(); ++q) a[q] += b[q];
    };
    Grads<S>& g = grads[t];
    for (auto [a, b] : {std::pair{&total.coords, &g.coords}, {&total.mul, &g.mul}, {&total.bias, &g.bias},
                        {&total.mean, &g.mean}, {&total.std, &g.std}, {&total.w1, &g.w1}, {&total.b1, &g.b1},
                        {&total.w2, &g.w2}, {&total.b2, &g.b2}, {&total.dy0, &g.dy0}})
      add(*a, *b);
  }
  {  // the pairs touching a pad: one backward of their shared pair with the summed gradient
    Scratch<S> s(K, C, H);
    s.x[0] = p.bias[0];
    for (int64_t h = 0; h < H; ++h) s.dy[h * kTile] = total.dy0[h];
    tile_backward(p, s, total, 1);
    total.bias[0] += s.x[0];
  }
  for (int64_t k = 0; k < K; ++k) total.std[k] *= stds[k] > 0 ? S(1) : (stds[k] < 0 ? S(-1) : S(0));  // d|std|
  std::copy(total.coords.begin(), total.coords.end(), outs[0]);
  const std::vector<S>* parts[] = {&total.mul, &total.bias, &total.mean, &total.std, &total.w1,
                                   &total.b1,  &total.w2,   &total.b2};
  for (int q = 0; q < 8; ++q) std::copy(parts[q]->begin(), parts[q]->end(), outs[q + 1]);
}

void check_tokens(const int64_t* tokens, int64_t T, int64_t num_types, const char* op) {
  for (int64_t t = 0; t < T; ++t)
    MOLM_CHECK(tokens[t] >= 0 && tokens[t] < num_types, op, "tokens must be in [0, ", num_types, "), got ", tokens[t],
               " at ", t);
}

Layout make_layout(uintptr_t cu_seqlens, uintptr_t cu_pairs, int64_t B, int64_t N, int64_t T, const char* op) {
  MOLM_CHECK_NONNEG(B, op, "B");
  MOLM_CHECK_NONNEG(N, op, "N");
  MOLM_CHECK((cu_seqlens == 0) == (cu_pairs == 0), op, "cu_seqlens and cu_pairs must be given together");
  if (cu_seqlens == 0) MOLM_CHECK(T == B * N, op, "T must be B * N for a padded batch, got ", T);
  const auto* cu = reinterpret_cast<const int32_t*>(cu_seqlens);
  if (cu != nullptr) {
    MOLM_CHECK(cu[0] == 0 && cu[B] == T, op, "cu_seqlens must run from 0 to T = ", T);
    for (int64_t b = 0; b < B; ++b) MOLM_CHECK(cu[b + 1] >= cu[b], op, "cu_seqlens must not decrease");
  }
  return Layout{cu, reinterpret_cast<const int64_t*>(cu_pairs), B, N, T};
}

}  // namespace

void gaussian_pair_bias_forward_cpu(uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                    uintptr_t mul, uintptr_t bias, uintptr_t means, uintptr_t stds, uintptr_t w1,
                                    uintptr_t b1, uintptr_t w2, uintptr_t b2, uintptr_t out, int64_t B, int64_t N,
                                    int64_t T, int64_t K, int64_t C, int64_t H, int64_t num_types, int64_t pad_idx,
                                    int dtype, int out_dtype) {
  const char* op = "gaussian_pair_bias_forward_cpu";
  const Layout lay = make_layout(cu_seqlens, cu_pairs, B, N, T, op);
  if (T == 0) return;
  for (uintptr_t ptr : {coords, tokens, mul, bias, means, stds, w1, b1, w2, b2, out}) MOLM_CHECK_PTR(ptr, op, "a tensor");
  check_tokens(reinterpret_cast<const int64_t*>(tokens), T, num_types, op);
  const auto* tok = reinterpret_cast<const int64_t*>(tokens);
  const int64_t E = num_types * num_types;
  if (dtype == static_cast<int>(DType::Float32)) {
    using S = float;
    const auto p = prepare<S>((const S*)mul, (const S*)bias, (const S*)means, (const S*)stds, (const S*)w1,
                              (const S*)b1, (const S*)w2, (const S*)b2, K, C, H, E);
    if (out_dtype == static_cast<int>(DType::BFloat16))
      forward(p, (const S*)coords, tok, lay, reinterpret_cast<uint16_t*>(out), num_types, pad_idx);
    else if (out_dtype == static_cast<int>(DType::Float32))
      forward(p, (const S*)coords, tok, lay, reinterpret_cast<float*>(out), num_types, pad_idx);
    else
      throw std::invalid_argument(concat(op, ": out must be float32 or bfloat16 for float32 compute, got ",
                                         dtype_name(out_dtype)));
  } else if (dtype == static_cast<int>(DType::Float64)) {
    using S = double;
    MOLM_CHECK(out_dtype == dtype, op, "out must be float64 for float64 compute, got ", dtype_name(out_dtype));
    const auto p = prepare<S>((const S*)mul, (const S*)bias, (const S*)means, (const S*)stds, (const S*)w1,
                              (const S*)b1, (const S*)w2, (const S*)b2, K, C, H, E);
    forward(p, (const S*)coords, tok, lay, reinterpret_cast<double*>(out), num_types, pad_idx);
  } else {
    throw std::invalid_argument(concat(op, ": compute dtype must be float32 or float64, got ", dtype_name(dtype)));
  }
}

void gaussian_pair_bias_backward_cpu(uintptr_t grad, uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens,
                                     uintptr_t cu_pairs, uintptr_t mul, uintptr_t bias, uintptr_t means,
                                     uintptr_t stds, uintptr_t w1, uintptr_t b1, uintptr_t w2, uintptr_t b2,
                                     uintptr_t d_coords, uintptr_t d_mul, uintptr_t d_bias, uintptr_t d_means,
                                     uintptr_t d_stds, uintptr_t d_w1, uintptr_t d_b1, uintptr_t d_w2, uintptr_t d_b2,
                                     int64_t B, int64_t N, int64_t T, int64_t K, int64_t C, int64_t H,
                                     int64_t num_types, int64_t pad_idx, int dtype) {
  const char* op = "gaussian_pair_bias_backward_cpu";
  const Layout lay = make_layout(cu_seqlens, cu_pairs, B, N, T, op);
  const uintptr_t outs[] = {d_coords, d_mul, d_bias, d_means, d_stds, d_w1, d_b1, d_w2, d_b2};
  for (uintptr_t ptr : {grad, coords, tokens, mul, bias, means, stds, w1, b1, w2, b2}) MOLM_CHECK_PTR(ptr, op, "a tensor");
  for (uintptr_t ptr : outs) MOLM_CHECK_PTR(ptr, op, "a gradient");
  check_tokens(reinterpret_cast<const int64_t*>(tokens), T, num_types, op);
  const auto* tok = reinterpret_cast<const int64_t*>(tokens);
  const int64_t E = num_types * num_types;
  auto run = [&](auto zero) {
    using S = decltype(zero);
    const auto p = prepare<S>((const S*)mul, (const S*)bias, (const S*)means, (const S*)stds, (const S*)w1,
                              (const S*)b1, (const S*)w2, (const S*)b2, K, C, H, E);
    S* o[9];
    for (int q = 0; q < 9; ++q) o[q] = reinterpret_cast<S*>(outs[q]);
    backward(p, (const S*)grad, (const S*)coords, tok, lay, (const S*)stds, o, num_types, pad_idx);
  };
  if (dtype == static_cast<int>(DType::Float32))
    run(0.0f);
  else if (dtype == static_cast<int>(DType::Float64))
    run(0.0);
  else
    throw std::invalid_argument(concat(op, ": compute dtype must be float32 or float64, got ", dtype_name(dtype)));
}

}  // namespace molm_fast
