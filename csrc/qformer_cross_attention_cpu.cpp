// qformer_cross_attention, CPU: each molecule's Q queries attend to that molecule's keys only.
// q [B, H, Q, D]; k, v padded [B, H, N, D] (+ optional uint8 mask [B, N], 1 = attend) or packed [T, H, D] with
// cu_seqlens [B + 1] int32 (strides passed as (batch, head, token); batch stride 0 when packed). out [B, H, Q, D]
// and lse [B, H, Q] fp32 are contiguous. A masked molecule with no attended key is "uniform": scores taken as 0
// over all N keys (upstream's +finfo.min, spec 3d-molm.md §1.3). OpenMP over (molecule, head); exact two-pass
// softmax per query row; accumulation in fp32 (fp64 for fp64 inputs). No -ffast-math: the fp32 bar is 1e-5.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace molm_fast {
namespace {

struct KeyStrides {
  int64_t b, h, n;
};

struct Problem {
  int64_t B, H, Q, N, D;
  double scale;
  bool varlen;
  const uint8_t* mask;
  const int32_t* cu;
  KeyStrides sq, sk, sv;
};

template <typename T>
inline T load_value(const T* p) { return *p; }
inline float load_value(const uint16_t* p) { return bf16_to_float(*p); }  // bf16
template <typename T>
inline void store_from(T* p, double x) { *p = static_cast<T>(x); }
template <>
inline void store_from<uint16_t>(uint16_t* p, double x) { *p = float_to_bf16(static_cast<float>(x)); }

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// The molecule's first key row, key count and uniform flag.
inline void molecule_keys(const Problem& P, int64_t b, int64_t& start, int64_t& n, bool& uniform) {
  start = P.varlen ? P.cu[b] : 0;
  n = P.varlen ? P.cu[b + 1] - P.cu[b] : P.N;
  uniform = false;
  if (P.mask != nullptr) {
    uniform = true;
    for (int64_t j = 0; j < P.N; ++j) uniform = uniform && P.mask[b * P.N + j] == 0;
  }
}

// Scores of query row i against all n keys into s (-inf for excluded keys); returns the row max.
template <typename T, typename A>
A row_scores(const Problem& P, const T* q, const T* k, int64_t b, int64_t n, bool uniform, A* s) {
  A m = -std::numeric_limits<A>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const bool keep = P.mask == nullptr || uniform || P.mask[b * P.N + j] != 0;
    A dot = 0;
    if (keep && !uniform) {
      const T* kj = k + j * P.sk.n;
      for (int64_t d = 0; d < P.D; ++d) dot += static_cast<A>(load_value(q + d)) * static_cast<A>(load_value(kj + d));
    }
    s[j] = keep ? dot * static_cast<A>(P.scale) : -std::numeric_limits<A>::infinity();
    m = std::max(m, s[j]);
  }
  return m;
}

// Small problems run on one thread: waking an OpenMP team costs more than the work (and far more on a busy host).
inline bool parallel_worth_it(const Problem& P) { return P.B * P.H * P.Q * P.N * P.D >= (int64_t(1) << 18); }

template <typename T>
MOLM_FAST_MULTIVERSION void forward_impl(const Problem& P, const T* q, const T* k, const T* v, T* out, float* lse) {
  using A = typename Acc<T>::type;
#if MOLM_FAST_HAS_OPENMP
#pragma omp parallel for collapse(2) schedule(dynamic) if (parallel_worth_it(P))
#endif
  for (int64_t b = 0; b < P.B; ++b) {
    for (int64_t h = 0; h < P.H; ++h) {
      int64_t start, n;
      bool uniform;
      molecule_keys(P, b, start, n, uniform);
      const T* kb = k + b * P.sk.b + h * P.sk.h + start * P.sk.n;
      const T* vb = v + b * P.sv.b + h * P.sv.h + start * P.sv.n;
      std::vector<A> s(static_cast<size_t>(std::max<int64_t>(n, 1))), acc(static_cast<size_t>(P.D));
      for (int64_t i = 0; i < P.Q; ++i) {
        const T* qi = q + b * P.sq.b + h * P.sq.h + i * P.sq.n;
        const int64_t row = (b * P.H + h) * P.Q + i;
        const A m = row_scores(P, qi, kb, b, n, uniform, s.data());
        std::fill(acc.begin(), acc.end(), A(0));
        A l = 0;
        if (n > 0 && std::isfinite(static_cast<double>(m))) {
          for (int64_t j = 0; j < n; ++j) {
            const A p = std::exp(s[j] - m);
            if (p == A(0)) continue;
            l += p;
            const T* vj = vb + j * P.sv.n;
            for (int64_t d = 0; d < P.D; ++d) acc[d] += p * static_cast<A>(load_value(vj + d));
          }
        }
        for (int64_t d = 0; d < P.D; ++d) store_from(out + row * P.D + d, l > 0 ? acc[d] / l : A(0));
        lse[row] = l > 0 ? static_cast<float>(m + std::log(l)) : -std::numeric_limits<float>::infinity();
      }
    }
  }
}

template <typename T>
MOLM_FAST_MULTIVERSION void backward_impl(const Problem& P, const T* q, const T* k, const T* v, const float* lse,
                                          const T* dout, T* dq, T* dk, T* dv, KeyStrides sdk) {
  using A = typename Acc<T>::type;
#if MOLM_FAST_HAS_OPENMP
#pragma omp parallel for collapse(2) schedule(dynamic) if (parallel_worth_it(P))
#endif
  for (int64_t b = 0; b < P.B; ++b) {
    for (int64_t h = 0; h < P.H; ++h) {
      int64_t start, n;
      bool uniform;
      molecule_keys(P, b, start, n, uniform);
      const T* kb = k + b * P.sk.b + h * P.sk.h + start * P.sk.n;
      const T* vb = v + b * P.sv.b + h * P.sv.h + start * P.sv.n;
      const size_t nn = static_cast<size_t>(std::max<int64_t>(n, 1)), DD = static_cast<size_t>(P.D);
      std::vector<A> s(nn), dp(nn), dk_acc(nn * DD, A(0)), dv_acc(nn * DD, A(0)), dq_acc(DD);
      for (int64_t i = 0; i < P.Q; ++i) {
        const T* qi = q + b * P.sq.b + h * P.sq.h + i * P.sq.n;
        const int64_t row = (b * P.H + h) * P.Q + i;
        const T* doi = dout + row * P.D;
        row_scores(P, qi, kb, b, n, uniform, s.data());
        const A L = std::isfinite(lse[row]) ? static_cast<A>(lse[row]) : A(0);
        A delta = 0;  // sum_j p_j dp_j, as autograd's softmax backward: one key gives ds = 0 exactly
        for (int64_t j = 0; j < n; ++j) {
          s[j] = std::exp(s[j] - L);  // p
          dp[j] = 0;
          if (s[j] == A(0)) continue;
          const T* vj = vb + j * P.sv.n;
          for (int64_t d = 0; d < P.D; ++d) dp[j] += static_cast<A>(load_value(doi + d)) * static_cast<A>(load_value(vj + d));
          delta += s[j] * dp[j];
        }
        std::fill(dq_acc.begin(), dq_acc.end(), A(0));
        for (int64_t j = 0; j < n; ++j) {
          const A p = s[j];
          if (p == A(0)) continue;
          const T* kj = kb + j * P.sk.n;
          const A ds = p * (dp[j] - delta) * static_cast<A>(P.scale);
          for (int64_t d = 0; d < P.D; ++d) {
            dv_acc[j * DD + d] += p * static_cast<A>(load_value(doi + d));
            dq_acc[d] += ds * static_cast<A>(load_value(kj + d));
            dk_acc[j * DD + d] += ds * static_cast<A>(load_value(qi + d));
          }
        }
        for (int64_t d = 0; d < P.D; ++d) store_from(dq + row * P.D + d, dq_acc[d]);
      }
      T* dkb = dk + b * sdk.b + h * sdk.h + start * sdk.n;
      T* dvb = dv + b * sdk.b + h * sdk.h + start * sdk.n;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t d = 0; d < P.D; ++d) {
          store_from(dkb + j * sdk.n + d, dk_acc[j * DD + d]);
          store_from(dvb + j * sdk.n + d, dv_acc[j * DD + d]);
        }
    }
  }
}

Problem make_problem(const char* op, uintptr_t mask, uintptr_t cu_seqlens, int64_t B, int64_t H, int64_t Q, int64_t N,
                     int64_t D, double scale, int varlen, KeyStrides sq, KeyStrides sk, KeyStrides sv) {
  MOLM_CHECK_NONNEG(B, op, "B");
  MOLM_CHECK_NONNEG(H, op, "H");
  MOLM_CHECK_NONNEG(Q, op, "Q");
  MOLM_CHECK_NONNEG(N, op, "N");
  MOLM_CHECK(D > 0, op, "D must be > 0, got ", D);
  MOLM_CHECK(!varlen || cu_seqlens != 0, op, "cu_seqlens must be given for packed keys");
  MOLM_CHECK(!(varlen && mask != 0), op, "a key mask is only for padded keys");
  const auto* cu = reinterpret_cast<const int32_t*>(cu_seqlens);
  if (varlen)
    for (int64_t b = 0; b < B; ++b)
      MOLM_CHECK(cu[b + 1] >= cu[b] && cu[b + 1] - cu[b] <= N, op, "cu_seqlens must rise by at most max_seqlen = ", N,
                 ", got ", cu[b], " -> ", cu[b + 1], " at molecule ", b);
  return Problem{B, H, Q, N, D, scale, varlen != 0, reinterpret_cast<const uint8_t*>(mask), cu, sq, sk, sv};
}

}  // namespace

void qformer_cross_attention_forward_cpu(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t cu_seqlens,
                                         uintptr_t out, uintptr_t lse, int64_t B, int64_t H, int64_t Q, int64_t N,
                                         int64_t D, double scale, int varlen, int64_t sqb, int64_t sqh, int64_t sqq,
                                         int64_t skb, int64_t skh, int64_t skn, int64_t svb, int64_t svh, int64_t svn,
                                         int dtype) {
  const char* op = "qformer_cross_attention_forward_cpu";
  const Problem P = make_problem(op, mask, cu_seqlens, B, H, Q, N, D, scale, varlen, {sqb, sqh, sqq}, {skb, skh, skn},
                                 {svb, svh, svn});
  if (B == 0 || H == 0 || Q == 0) return;
  for (uintptr_t p : {q, k, v, out, lse}) MOLM_CHECK_PTR(p, op, "q, k, v, out and lse");
  auto* l = reinterpret_cast<float*>(lse);
  if (dtype == static_cast<int>(DType::Float32)) {
    forward_impl(P, reinterpret_cast<const float*>(q), reinterpret_cast<const float*>(k),
                 reinterpret_cast<const float*>(v), reinterpret_cast<float*>(out), l);
  } else if (dtype == static_cast<int>(DType::Float64)) {
    forward_impl(P, reinterpret_cast<const double*>(q), reinterpret_cast<const double*>(k),
                 reinterpret_cast<const double*>(v), reinterpret_cast<double*>(out), l);
  } else if (dtype == static_cast<int>(DType::BFloat16)) {
    forward_impl(P, reinterpret_cast<const uint16_t*>(q), reinterpret_cast<const uint16_t*>(k),
                 reinterpret_cast<const uint16_t*>(v), reinterpret_cast<uint16_t*>(out), l);
  } else {
    throw std::invalid_argument(concat(op, ": q must be float32, float64 or bfloat16, got ", dtype_name(dtype)));
  }
}

void qformer_cross_attention_backward_cpu(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t cu_seqlens,
                                          uintptr_t lse, uintptr_t dout, uintptr_t dq, uintptr_t dk,
                                          uintptr_t dv, int64_t B, int64_t H, int64_t Q, int64_t N, int64_t D,
                                          double scale, int varlen, int64_t sqb, int64_t sqh, int64_t sqq, int64_t skb,
                                          int64_t skh, int64_t skn, int64_t svb, int64_t svh, int64_t svn,
                                          int64_t sdkb, int64_t sdkh, int64_t sdkn, int dtype) {
  const char* op = "qformer_cross_attention_backward_cpu";
  const Problem P = make_problem(op, mask, cu_seqlens, B, H, Q, N, D, scale, varlen, {sqb, sqh, sqq}, {skb, skh, skn},
                                 {svb, svh, svn});
  if (B == 0 || H == 0 || Q == 0) return;
  for (uintptr_t p : {q, k, v, lse, dout, dq, dk, dv}) MOLM_CHECK_PTR(p, op, "every tensor");
  const KeyStrides sdk{sdkb, sdkh, sdkn};
  const auto* l = reinterpret_cast<const float*>(lse);
#define MOLM_QFCA_BACKWARD(T)                                                                                       \
  backward_impl(P, reinterpret_cast<const T*>(q), reinterpret_cast<const T*>(k), reinterpret_cast<const T*>(v),     \
                l, reinterpret_cast<const T*>(dout), reinterpret_cast<T*>(dq),     \
                reinterpret_cast<T*>(dk), reinterpret_cast<T*>(dv), sdk)
  if (dtype == static_cast<int>(DType::Float32)) {
    MOLM_QFCA_BACKWARD(float);
  } else if (dtype == static_cast<int>(DType::Float64)) {
    MOLM_QFCA_BACKWARD(double);
  } else if (dtype == static_cast<int>(DType::BFloat16)) {
    MOLM_QFCA_BACKWARD(uint16_t);
  } else {
    throw std::invalid_argument(concat(op, ": q must be float32, float64 or bfloat16, got ", dtype_name(dtype)));
  }
#undef MOLM_QFCA_BACKWARD
}

}  // namespace molm_fast
