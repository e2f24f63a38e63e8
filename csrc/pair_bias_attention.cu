// pair_bias_attention, CUDA forward and backward.
// Forward: logits = (q * scale) k^T + bias written once (the next layer's bias), out = dropout(softmax(logits)) v,
// row LSE (fp32; fp64 for fp64) for the backward. Warp per row, in the manner of Uni-Core's softmax_dropout: a whole
// row (N <= 512) lives in registers, COLS = ceil(N / 32) values per lane, so the softmax needs one max and one sum
// reduction and no online rescaling. One block per (molecule, head, 16 rows): K and V of the molecule are staged in
// shared memory ([n][D + 1] floats, padded so lanes hit distinct banks).
// Backward, the math of pair_bias_attention_cpu.cpp's backward_one: p = exp(q k^T scale + bias - LSE) recomputed
// (the softmax is never stored), dp = dO v^T (* dropout factor), dlogits = p (dp - rowsum(dO * O)) + grad_logits,
// dbias = dlogits, dq = scale dlogits k, dk = dlogits^T (q scale), dv = (p * dropout factor)^T dO. Two kernels, both
// deterministic (no atomics): rows (warp per query row, as the forward: dbias and dq) and columns (lane per key,
// 32 keys per block, the warps split the query rows and their dk, dv partial sums are added in a fixed order).
// Each recomputes p; rows whose keys are all masked (LSE -inf) get p = 0, so only grad_logits reaches them.
// Padded and packed (cu_seqlens) batches share every kernel: Problem matches pair_bias_attention_cpu.cpp's.
// Dropout: Philox (common.h), the same mask as the C++, Triton and reference paths. Head dim is fixed at 8 (Uni-Mol).
#include <cuda_bf16.h>

#include <vector>

#include "common.h"
#include "ops_cuda.h"

namespace molm_fast {
namespace {

constexpr int kD = 8, kWarps = 4, kRowsPerBlock = 16, kKeysPerBlock = 32, kMaxN = 512;

// Token tensors ([B, H, N, D] padded, [T, H, D] packed; b-strides 0 when packed), in the strides' order. The
// forward passes the first five; the backward all nine.
enum Tensor : int { kQ, kK, kV, kOut, kBias, kGradOut, kDq, kDk, kDv, kNumTensors };

struct AttnLayout {
  int64_t H, N;
  int64_t s[kNumTensors][4];  // (b, h, token, d) strides in elements
  const int32_t* cu;          // null when padded
  const int64_t* cu_pairs;    // exclusive cumsum of n_b^2 (packed only)
};

// One (molecule, head): its length, where its pair block lives (bias may be strided when padded; logits,
// grad_logits and dbias are always contiguous) and its row LSE.
struct Problem {
  int64_t b, h, t0, n;
  int64_t pair;  // offset of [0, 0] in the contiguous logits (also the dropout counter base)
  int64_t bias0, bias_i, bias_j;
  int64_t lse0, lse_i;
  __device__ int64_t row(const AttnLayout& L, int t, int64_t i) const {  // element [i, 0] of token tensor t
    return b * L.s[t][0] + h * L.s[t][1] + (t0 + i) * L.s[t][2];
  }
};

__device__ inline Problem problem(const AttnLayout& L, int64_t bh) {
  Problem P;
  P.b = bh / L.H, P.h = bh % L.H;
  P.t0 = L.cu ? L.cu[P.b] : 0;
  P.n = L.cu ? L.cu[P.b + 1] - P.t0 : L.N;
  if (P.n < 0 || P.n > L.N) __trap();  // cu_seqlens disagrees with max_seqlen: the shared memory would overflow
  P.pair = L.cu ? L.H * L.cu_pairs[P.b] + P.h * P.n * P.n : bh * P.n * P.n;
  if (L.cu) {
    P.bias0 = P.pair, P.bias_i = P.n, P.bias_j = 1;
    P.lse0 = P.t0 * L.H + P.h, P.lse_i = L.H;
  } else {
    P.bias0 = P.b * L.s[kBias][0] + P.h * L.s[kBias][1], P.bias_i = L.s[kBias][2], P.bias_j = L.s[kBias][3];
    P.lse0 = bh * P.n, P.lse_i = 1;
  }
  return P;
}

__device__ inline float to_float(float x) { return x; }
__device__ inline double to_float(double x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T, typename S> __device__ inline T from_float(S x) { return static_cast<T>(x); }
template <> __device__ inline __nv_bfloat16 from_float<__nv_bfloat16, float>(float x) { return __float2bfloat16_rn(x); }

// Dropout as every backend draws it: (i, j) is kept when philox_uniform(seed, its element index in the logits) >= p,
// and scaled by 1 / (1 - p), computed in double on the host (so fp64 runs keep fp64 accuracy).
template <typename S> struct Dropout {
  float p;
  uint64_t seed;
  S scale;
  __device__ S factor(int64_t elem) const {
    return philox_uniform(seed, static_cast<uint64_t>(elem)) >= p ? scale : S(0);
  }
};

template <typename S> __device__ inline S warp_max(S x) {
  for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
template <typename S> __device__ inline S warp_sum(S x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// What a block of a row kernel (forward, backward rows) works on: its (molecule, head), its query rows
// [row0, row_end), one warp per row, and K, V of the molecule in shared memory ([n][kD + 1] each in the compute type,
// padded so lanes hit distinct banks). The kernel returns at once when row0 >= n (blocks past a short molecule).
template <typename S> struct RowBlock {
  Problem P;
  int64_t row0, row_end;
  const S* ks;
  const S* vs;
};

template <typename T, typename S>
__device__ inline RowBlock<S> row_block(const T* k, const T* v, const AttnLayout& L, unsigned char* smem) {
  RowBlock<S> R;
  R.P = problem(L, blockIdx.x);
  R.row0 = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  R.row_end = min(R.row0 + kRowsPerBlock, R.P.n);
  S* ks = reinterpret_cast<S*>(smem);
  S* vs = ks + R.P.n * (kD + 1);
  R.ks = ks, R.vs = vs;
  if (R.row0 >= R.P.n) return R;  // the same for the whole block: no thread reaches the barrier
  for (int64_t x = threadIdx.x; x < R.P.n * kD; x += blockDim.x) {
    const int64_t j = x / kD, d = x % kD;
    ks[j * (kD + 1) + d] = to_float(k[R.P.row(L, kK, j) + d]);
    vs[j * (kD + 1) + d] = to_float(v[R.P.row(L, kV, j) + d]);
  }
  __syncthreads();
  return R;
}

// The logit of (row i, key j); the forward and both backward kernels call this one function, so the backward's p
// is recomputed from the same arithmetic as the forward's LSE.
template <typename S> __device__ inline S logit(const S* qs, const S* kj, S bias_ij) {
  S acc = 0;
#pragma unroll
  for (int d = 0; d < kD; ++d) acc += qs[d] * kj[d];
  return acc + bias_ij;
}

template <typename T, typename S, int COLS>
__global__ void __launch_bounds__(kWarps * 32)
pair_bias_attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                   const T* __restrict__ bias, T* __restrict__ out, T* __restrict__ logits,
                                   S* __restrict__ lse, AttnLayout L, S scale, Dropout<S> drop) {
  extern __shared__ unsigned char smem_raw[];
  const RowBlock<S> R = row_block<T, S>(k, v, L, smem_raw);
  if (R.row0 >= R.P.n) return;
  const Problem& P = R.P;
  const int64_t n = P.n;
  const S *ks = R.ks, *vs = R.vs;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const S inf = S(1) / S(0);
  for (int64_t i = R.row0 + warp; i < R.row_end; i += kWarps) {
    S qs[kD];
#pragma unroll
    for (int d = 0; d < kD; ++d) qs[d] = to_float(q[P.row(L, kQ, i) + d]) * scale;
    S s[COLS];
    S m = -inf;
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      const int64_t j = lane + 32 * c;
      s[c] = -inf;
      if (j < n) {
        s[c] = logit(qs, ks + j * (kD + 1), to_float(bias[P.bias0 + i * P.bias_i + j * P.bias_j]));
        logits[P.pair + i * n + j] = from_float<T>(s[c]);
        m = max(m, s[c]);
      }
    }
    m = warp_max(m);
    T* orow = out + P.row(L, kOut, i);
    if (m == -inf) {  // no key: out 0, LSE -inf, never NaN
      if (lane < kD) orow[lane] = from_float<T>(S(0));
      if (lane == 0) lse[P.lse0 + i * P.lse_i] = -inf;
      continue;
    }
    S sum = 0;
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      s[c] = exp(s[c] - m);  // exp(-inf) = 0 for masked and out-of-row columns
      sum += s[c];
    }
    sum = warp_sum(sum);
    if (lane == 0) lse[P.lse0 + i * P.lse_i] = m + log(sum);
    const S inv = S(1) / sum;
    S o[kD];
#pragma unroll
    for (int d = 0; d < kD; ++d) o[d] = 0;
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      const int64_t j = lane + 32 * c;
      if (j < n) {
        S p = s[c] * inv;
        if (drop.p > 0) p *= drop.factor(P.pair + i * n + j);
#pragma unroll
        for (int d = 0; d < kD; ++d) o[d] += p * vs[j * (kD + 1) + d];
      }
    }
#pragma unroll
    for (int d = 0; d < kD; ++d) o[d] = warp_sum(o[d]);
    if (lane == 0) {
#pragma unroll
      for (int d = 0; d < kD; ++d) orow[d] = from_float<T>(o[d]);
    }
  }
}

// What the backward needs of one query row: q * scale, dO and delta = rowsum(dO * O) (= rowsum(p * dp)).
template <typename S> struct RowGrad {
  S qs[kD], g[kD], delta, lse;
};

template <typename T, typename S>
__device__ inline RowGrad<S> row_grad(const T* q, const T* go, const T* out, const S* lse, const AttnLayout& L,
                                      const Problem& P, int64_t i, S scale) {
  RowGrad<S> r;
  r.delta = 0;
#pragma unroll
  for (int d = 0; d < kD; ++d) {
    r.qs[d] = to_float(q[P.row(L, kQ, i) + d]) * scale;
    r.g[d] = to_float(go[P.row(L, kGradOut, i) + d]);
    r.delta += r.g[d] * to_float(out[P.row(L, kOut, i) + d]);
  }
  r.lse = lse[P.lse0 + i * P.lse_i];
  return r;
}

// dlogits of (row i, key j) and, in pf, p times the dropout factor (dv's weight). A row with no key has LSE -inf:
// p = 0 there (exp(-inf - -inf) would be NaN), so only grad_logits reaches it.
template <typename T, typename S>
__device__ inline S dlogit(const RowGrad<S>& r, const S* kj, const S* vj, const T* bias, const T* gl,
                           const Problem& P, int64_t i, int64_t j, const Dropout<S>& drop, S& pf) {
  const S s = logit(r.qs, kj, to_float(bias[P.bias0 + i * P.bias_i + j * P.bias_j]));
  const S p = r.lse == -(S(1) / S(0)) ? S(0) : exp(s - r.lse);
  S dp = 0;
#pragma unroll
  for (int d = 0; d < kD; ++d) dp += r.g[d] * vj[d];
  const int64_t elem = P.pair + i * P.n + j;
  const S f = drop.p > 0 ? drop.factor(elem) : S(1);
  pf = p * f;
  return p * (dp * f - r.delta) + (gl ? to_float(gl[elem]) : S(0));
}

// Backward over rows: one warp per query row (as the forward), lanes over its keys: dbias and dq.
template <typename T, typename S>
__global__ void __launch_bounds__(kWarps * 32)
pair_bias_attention_backward_rows_kernel(const T* __restrict__ go, const T* __restrict__ gl, const T* __restrict__ q,
                                         const T* __restrict__ k, const T* __restrict__ v,
                                         const T* __restrict__ bias, const T* __restrict__ out,
                                         const S* __restrict__ lse, T* __restrict__ dq, T* __restrict__ dbias,
                                         AttnLayout L, S scale, Dropout<S> drop) {
  extern __shared__ unsigned char smem_raw[];
  const RowBlock<S> R = row_block<T, S>(k, v, L, smem_raw);
  if (R.row0 >= R.P.n) return;
  const Problem& P = R.P;
  const int64_t n = P.n;
  const S *ks = R.ks, *vs = R.vs;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t i = R.row0 + warp; i < R.row_end; i += kWarps) {
    const RowGrad<S> r = row_grad(q, go, out, lse, L, P, i, scale);
    S acc[kD];
#pragma unroll
    for (int d = 0; d < kD; ++d) acc[d] = 0;
    for (int64_t j = lane; j < n; j += 32) {
      S pf;
      const S ds = dlogit(r, ks + j * (kD + 1), vs + j * (kD + 1), bias, gl, P, i, j, drop, pf);
      dbias[P.pair + i * n + j] = from_float<T>(ds);
#pragma unroll
      for (int d = 0; d < kD; ++d) acc[d] += ds * ks[j * (kD + 1) + d];
    }
#pragma unroll
    for (int d = 0; d < kD; ++d) acc[d] = warp_sum(acc[d]);
    if (lane == 0) {
#pragma unroll
      for (int d = 0; d < kD; ++d) dq[P.row(L, kDq, i) + d] = from_float<T>(acc[d] * scale);
    }
  }
}

// Backward over keys: one lane per key (32 keys per block), the warps split the query rows; each lane sums its
// key's dk and dv over its warp's rows, then warp 0 adds the warps' partial sums in a fixed order (deterministic).
template <typename T, typename S>
__global__ void __launch_bounds__(kWarps * 32)
pair_bias_attention_backward_columns_kernel(const T* __restrict__ go, const T* __restrict__ gl,
                                            const T* __restrict__ q, const T* __restrict__ k,
                                            const T* __restrict__ v, const T* __restrict__ bias,
                                            const T* __restrict__ out, const S* __restrict__ lse,
                                            T* __restrict__ dk, T* __restrict__ dv, AttnLayout L, S scale,
                                            Dropout<S> drop) {
  extern __shared__ unsigned char smem_raw[];
  S* part = reinterpret_cast<S*>(smem_raw);  // [kWarps][2 * kD][32]: each warp's dk (first kD) and dv sums
  const Problem P = problem(L, blockIdx.x);
  const int64_t n = P.n, j0 = static_cast<int64_t>(blockIdx.y) * kKeysPerBlock;
  if (j0 >= n) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t j = j0 + lane;
  S acc[2 * kD];  // dk, dv of key j over this warp's rows
#pragma unroll
  for (int c = 0; c < 2 * kD; ++c) acc[c] = 0;
  if (j < n) {
    S kj[kD], vj[kD];
#pragma unroll
    for (int d = 0; d < kD; ++d) {
      kj[d] = to_float(k[P.row(L, kK, j) + d]);
      vj[d] = to_float(v[P.row(L, kV, j) + d]);
    }
    for (int64_t i = warp; i < n; i += kWarps) {
      const RowGrad<S> r = row_grad(q, go, out, lse, L, P, i, scale);
      S pf;
      const S ds = dlogit(r, kj, vj, bias, gl, P, i, j, drop, pf);
#pragma unroll
      for (int d = 0; d < kD; ++d) {
        acc[d] += ds * r.qs[d];
        acc[kD + d] += pf * r.g[d];
      }
    }
  }
#pragma unroll
  for (int c = 0; c < 2 * kD; ++c) part[(warp * 2 * kD + c) * 32 + lane] = acc[c];
  __syncthreads();
  if (warp == 0 && j < n) {
#pragma unroll
    for (int c = 0; c < 2 * kD; ++c) {
      S sum = part[c * 32 + lane];
      for (int w = 1; w < kWarps; ++w) sum += part[(w * 2 * kD + c) * 32 + lane];
      acc[c] = sum;
    }
#pragma unroll
    for (int d = 0; d < kD; ++d) {
      dk[P.row(L, kDk, j) + d] = from_float<T>(acc[d]);
      dv[P.row(L, kDv, j) + d] = from_float<T>(acc[kD + d]);
    }
  }
}

template <typename S> Dropout<S> dropout(double p, uint64_t seed) {
  return {static_cast<float>(p), seed, static_cast<S>(1.0 / (1.0 - p))};
}

unsigned blocks(int64_t N, int per_block) { return static_cast<unsigned>((N + per_block - 1) / per_block); }

template <typename T, typename S>
void launch_forward(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t bias, uintptr_t out, uintptr_t logits,
                    uintptr_t lse, const AttnLayout& L, int64_t B, double scale, double dropout_p, uint64_t seed,
                    cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(B * L.H), blocks(L.N, kRowsPerBlock));
  const size_t smem = 2 * L.N * (kD + 1) * sizeof(S);
  auto args = [&](auto kernel) {
    kernel<<<grid, kWarps * 32, smem, stream>>>(
        reinterpret_cast<const T*>(q), reinterpret_cast<const T*>(k), reinterpret_cast<const T*>(v),
        reinterpret_cast<const T*>(bias), reinterpret_cast<T*>(out), reinterpret_cast<T*>(logits),
        reinterpret_cast<S*>(lse), L, static_cast<S>(scale), dropout<S>(dropout_p, seed));
  };
  if (L.N <= 32) args(pair_bias_attention_forward_kernel<T, S, 1>);
  else if (L.N <= 64) args(pair_bias_attention_forward_kernel<T, S, 2>);
  else if (L.N <= 128) args(pair_bias_attention_forward_kernel<T, S, 4>);
  else if (L.N <= 256) args(pair_bias_attention_forward_kernel<T, S, 8>);
  else args(pair_bias_attention_forward_kernel<T, S, 16>);
}

template <typename T, typename S>
void launch_backward(const char* op, uintptr_t go, uintptr_t gl, uintptr_t q, uintptr_t k, uintptr_t v,
                     uintptr_t bias, uintptr_t out, uintptr_t lse, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                     uintptr_t dbias, const AttnLayout& L, int64_t B, double scale, double dropout_p, uint64_t seed,
                     cudaStream_t stream) {
  auto c = [](uintptr_t p) { return reinterpret_cast<const T*>(p); };
  auto w = [](uintptr_t p) { return reinterpret_cast<T*>(p); };
  const auto* lse_p = reinterpret_cast<const S*>(lse);
  const unsigned bh = static_cast<unsigned>(B * L.H);
  const size_t rows_smem = 2 * L.N * (kD + 1) * sizeof(S);
  pair_bias_attention_backward_rows_kernel<T, S><<<dim3(bh, blocks(L.N, kRowsPerBlock)), kWarps * 32, rows_smem,
                                                   stream>>>(c(go), c(gl), c(q), c(k), c(v), c(bias), c(out), lse_p,
                                                             w(dq), w(dbias), L, static_cast<S>(scale),
                                                             dropout<S>(dropout_p, seed));
  MOLM_CUDA_CHECK_LAUNCH(op);
  const size_t columns_smem = kWarps * 2 * kD * 32 * sizeof(S);
  pair_bias_attention_backward_columns_kernel<T, S><<<dim3(bh, blocks(L.N, kKeysPerBlock)), kWarps * 32,
                                                      columns_smem, stream>>>(
      c(go), c(gl), c(q), c(k), c(v), c(bias), c(out), lse_p, w(dk), w(dv), L, static_cast<S>(scale),
      dropout<S>(dropout_p, seed));
  MOLM_CUDA_CHECK_LAUNCH(op);
}

// The checks both entries share (after nothing_to_do): sizes the kernels are built for, the
// strides (4 per token tensor in Tensor order, `tensors` of them), the dropout probability.
AttnLayout make_layout(const char* op, uintptr_t cu_seqlens, uintptr_t cu_pairs, int64_t H, int64_t N, int64_t D,
                       const std::vector<int64_t>& strides, int tensors, double dropout_p, int dtype) {
  MOLM_CHECK(D == kD, op, "the CUDA kernel is built for head dim ", kD, " (Uni-Mol), got ", D);
  MOLM_CHECK(N <= kMaxN, op, "N (max_seqlen) must be <= ", kMaxN, ", got ", N);
  MOLM_CHECK(2 * N * (kD + 1) * (dtype == static_cast<int>(DType::Float64) ? 8 : 4) <= 48 * 1024, op,
             "K and V of one molecule must fit 48 KiB of shared memory; N = ", N, " is too long for this dtype");
  MOLM_CHECK(strides.size() == static_cast<size_t>(4 * tensors), op, "strides must hold 4 for each of the ",
             tensors, " token tensors, got ", strides.size());
  MOLM_CHECK(dropout_p >= 0 && dropout_p < 1, op, "dropout_p must be in [0, 1), got ", dropout_p);
  MOLM_CHECK(cu_seqlens == 0 || cu_pairs != 0, op, "packed inputs need cu_pairs");
  AttnLayout L{H, N, {}, reinterpret_cast<const int32_t*>(cu_seqlens), reinterpret_cast<const int64_t*>(cu_pairs)};
  for (int t = 0; t < kNumTensors; ++t)
    for (int a = 0; a < 4; ++a) L.s[t][a] = t < tensors ? strides[4 * t + a] : 0;
  for (int t = 0; t < tensors; ++t)
    MOLM_CHECK(t == kBias || L.s[t][3] == 1, op, "q, k, v, out and the gradients need a contiguous last dim");
  return L;
}

// Checks B, H, N >= 0; true when one of them is 0 (no launch).
bool nothing_to_do(const char* op, int64_t B, int64_t H, int64_t N) {
  MOLM_CHECK_NONNEG(B, op, "B");
  MOLM_CHECK_NONNEG(H, op, "H");
  MOLM_CHECK_NONNEG(N, op, "N");
  return B == 0 || H == 0 || N == 0;
}

// Calls fn(T{}, S{}) for the storage type T and compute type S of a dtype code.
template <typename Fn> void by_dtype(int dtype, const char* op, Fn fn) {
  if (dtype == static_cast<int>(DType::Float32))
    fn(float{}, float{});
  else if (dtype == static_cast<int>(DType::BFloat16))
    fn(__nv_bfloat16{}, float{});
  else if (dtype == static_cast<int>(DType::Float64))
    fn(double{}, double{});
  else
    throw std::invalid_argument(concat(op, ": q must be float32, float64 or bfloat16, got ", dtype_name(dtype)));
}

}  // namespace

void pair_bias_attention_forward_cuda(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t bias, uintptr_t out,
                                      uintptr_t logits, uintptr_t lse, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                      int64_t B, int64_t H, int64_t N, int64_t D,
                                      const std::vector<int64_t>& strides, double scale, double dropout_p,
                                      uint64_t seed, int dtype, uintptr_t stream) {
  const char* op = "pair_bias_attention_forward_cuda";
  if (nothing_to_do(op, B, H, N)) return;
  const AttnLayout L = make_layout(op, cu_seqlens, cu_pairs, H, N, D, strides, kGradOut, dropout_p, dtype);
  for (auto [p, name] : {std::pair{q, "q"}, {k, "k"}, {v, "v"}, {bias, "bias"}, {out, "out"}, {logits, "logits"},
                         {lse, "lse"}})
    MOLM_CHECK_PTR(p, op, name);
  by_dtype(dtype, op, [&](auto t, auto c) {
    launch_forward<decltype(t), decltype(c)>(q, k, v, bias, out, logits, lse, L, B, scale, dropout_p, seed,
                                             reinterpret_cast<cudaStream_t>(stream));
  });
  MOLM_CUDA_CHECK_LAUNCH(op);
}

void pair_bias_attention_backward_cuda(uintptr_t grad_out, uintptr_t grad_logits, uintptr_t q, uintptr_t k,
                                       uintptr_t v, uintptr_t bias, uintptr_t out, uintptr_t lse, uintptr_t dq,
                                       uintptr_t dk, uintptr_t dv, uintptr_t dbias, uintptr_t cu_seqlens,
                                       uintptr_t cu_pairs, int64_t B, int64_t H, int64_t N, int64_t D,
                                       const std::vector<int64_t>& strides, double scale, double dropout_p,
                                       uint64_t seed, int dtype, uintptr_t stream) {
  const char* op = "pair_bias_attention_backward_cuda";
  if (nothing_to_do(op, B, H, N)) return;
  const AttnLayout L = make_layout(op, cu_seqlens, cu_pairs, H, N, D, strides, kNumTensors, dropout_p, dtype);
  for (auto [p, name] : {std::pair{grad_out, "grad_out"}, {q, "q"}, {k, "k"}, {v, "v"}, {bias, "bias"},
                         {out, "out"}, {lse, "lse"}, {dq, "dq"}, {dk, "dk"}, {dv, "dv"}, {dbias, "dbias"}})
    MOLM_CHECK_PTR(p, op, name);  // grad_logits may be 0: no gradient reached the logits
  by_dtype(dtype, op, [&](auto t, auto c) {
    launch_backward<decltype(t), decltype(c)>(op, grad_out, grad_logits, q, k, v, bias, out, lse, dq, dk, dv, dbias,
                                              L, B, scale, dropout_p, seed, reinterpret_cast<cudaStream_t>(stream));
  });
}

}  // namespace molm_fast
