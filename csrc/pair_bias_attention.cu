// pair_bias_attention, CUDA forward: logits = (q * scale) k^T + bias written once (the next layer's bias),
// out = dropout(softmax(logits)) v, row LSE (fp32) for the backward. Warp per row, in the manner of Uni-Core's
// softmax_dropout: a whole row (N <= 512) lives in registers, COLS = ceil(N / 32) values per lane, so the softmax
// needs one max and one sum reduction and no online rescaling. One block per (molecule, head, 16 rows): K and V of
// the molecule are staged in shared memory ([n][D + 1] floats, padded so lanes hit distinct banks). Padded and
// packed (cu_seqlens) batches share the kernel: the Problem arithmetic matches pair_bias_attention_cpu.cpp.
// Dropout: Philox (common.h), the same mask as the C++, Triton and reference paths. Head dim is fixed at 8
// (Uni-Mol); the backward of this backend is the Triton one (same p recomputation from bias + LSE).
#include <cuda_bf16.h>

#include <vector>

#include "common.h"
#include "ops_cuda.h"

namespace molm_fast {
namespace {

constexpr int kD = 8, kWarps = 4, kRowsPerBlock = 16, kMaxN = 512;

struct AttnLayout {
  int64_t H, N;
  int64_t s[5][4];  // q, k, v, out, bias: (b, h, token, d) strides in elements; b-strides 0 when packed
  const int32_t* cu;
  const int64_t* cu_pairs;
};

__device__ inline float to_float(float x) { return x; }
__device__ inline double to_float(double x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T, typename S> __device__ inline T from_float(S x) { return static_cast<T>(x); }
template <> __device__ inline __nv_bfloat16 from_float<__nv_bfloat16, float>(float x) { return __float2bfloat16_rn(x); }

template <typename S> __device__ inline S warp_max(S x) {
  for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
template <typename S> __device__ inline S warp_sum(S x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T, typename S, int COLS>
__global__ void __launch_bounds__(kWarps * 32)
pair_bias_attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                   const T* __restrict__ bias, T* __restrict__ out, T* __restrict__ logits,
                                   S* __restrict__ lse, AttnLayout L, S scale, float dropout_p, uint64_t seed) {
  extern __shared__ unsigned char smem_raw[];
  S* ks = reinterpret_cast<S*>(smem_raw);  // [n][kD + 1]
  const int64_t bh = blockIdx.x, b = bh / L.H, h = bh % L.H;
  const int64_t t0 = L.cu ? L.cu[b] : 0;
  const int64_t n = L.cu ? L.cu[b + 1] - t0 : L.N;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  if (row0 >= n) return;
  S* vs = ks + n * (kD + 1);
  int64_t at[5];
  for (int t = 0; t < 5; ++t) at[t] = b * L.s[t][0] + h * L.s[t][1] + t0 * L.s[t][2];
  const int64_t pair = L.cu ? L.H * L.cu_pairs[b] + h * n * n : (b * L.H + h) * n * n;
  const int64_t bias0 = L.cu ? pair : at[4], bias_i = L.cu ? n : L.s[4][2], bias_j = L.cu ? 1 : L.s[4][3];
  const int64_t lse0 = L.cu ? t0 * L.H + h : (b * L.H + h) * n, lse_i = L.cu ? L.H : 1;

  for (int64_t x = threadIdx.x; x < n * kD; x += blockDim.x) {
    const int64_t j = x / kD, d = x % kD;
    ks[j * (kD + 1) + d] = to_float(k[at[1] + j * L.s[1][2] + d]);
    vs[j * (kD + 1) + d] = to_float(v[at[2] + j * L.s[2][2] + d]);
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const S inf = S(1) / S(0);
  const int64_t row_end = min(row0 + kRowsPerBlock, n);
  for (int64_t i = row0 + warp; i < row_end; i += kWarps) {
    S qs[kD];
#pragma unroll
    for (int d = 0; d < kD; ++d) qs[d] = to_float(q[at[0] + i * L.s[0][2] + d]) * scale;
    S s[COLS];
    S m = -inf;
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      const int64_t j = lane + 32 * c;
      s[c] = -inf;
      if (j < n) {
        S acc = 0;
#pragma unroll
        for (int d = 0; d < kD; ++d) acc += qs[d] * ks[j * (kD + 1) + d];
        s[c] = acc + to_float(bias[bias0 + i * bias_i + j * bias_j]);
        logits[pair + i * n + j] = from_float<T>(s[c]);
        m = max(m, s[c]);
      }
    }
    m = warp_max(m);
    T* orow = out + at[3] + i * L.s[3][2];
    if (m == -inf) {  // no key: out 0, LSE -inf, never NaN
      if (lane < kD) orow[lane] = from_float<T>(S(0));
      if (lane == 0) lse[lse0 + i * lse_i] = -inf;
      continue;
    }
    S sum = 0;
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      s[c] = exp(s[c] - m);  // exp(-inf) = 0 for masked and out-of-row columns
      sum += s[c];
    }
    sum = warp_sum(sum);
    if (lane == 0) lse[lse0 + i * lse_i] = m + log(sum);
    const S inv = S(1) / sum;
    S o[kD];
#pragma unroll
    for (int d = 0; d < kD; ++d) o[d] = 0;
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      const int64_t j = lane + 32 * c;
      if (j < n) {
        S p = s[c] * inv;
        if (dropout_p > 0)
          p = philox_uniform(seed, static_cast<uint64_t>(pair + i * n + j)) >= dropout_p ? p / S(1 - dropout_p) : S(0);
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

template <typename T, typename S>
void launch(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t bias, uintptr_t out, uintptr_t logits, uintptr_t lse,
            const AttnLayout& L, int64_t B, double scale, double dropout_p, uint64_t seed, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(B * L.H), static_cast<unsigned>((L.N + kRowsPerBlock - 1) / kRowsPerBlock));
  const size_t smem = 2 * L.N * (kD + 1) * sizeof(S);
  auto args = [&](auto kernel) {
    kernel<<<grid, kWarps * 32, smem, stream>>>(
        reinterpret_cast<const T*>(q), reinterpret_cast<const T*>(k), reinterpret_cast<const T*>(v),
        reinterpret_cast<const T*>(bias), reinterpret_cast<T*>(out), reinterpret_cast<T*>(logits),
        reinterpret_cast<S*>(lse), L, static_cast<S>(scale), static_cast<float>(dropout_p), seed);
  };
  if (L.N <= 32) args(pair_bias_attention_forward_kernel<T, S, 1>);
  else if (L.N <= 64) args(pair_bias_attention_forward_kernel<T, S, 2>);
  else if (L.N <= 128) args(pair_bias_attention_forward_kernel<T, S, 4>);
  else if (L.N <= 256) args(pair_bias_attention_forward_kernel<T, S, 8>);
  else args(pair_bias_attention_forward_kernel<T, S, 16>);
}

}  // namespace

void pair_bias_attention_forward_cuda(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t bias, uintptr_t out,
                                      uintptr_t logits, uintptr_t lse, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                      int64_t B, int64_t H, int64_t N, int64_t D,
                                      const std::vector<int64_t>& strides, double scale, double dropout_p,
                                      uint64_t seed, int dtype, uintptr_t stream) {
  const char* op = "pair_bias_attention_forward_cuda";
  MOLM_CHECK_NONNEG(B, op, "B");
  MOLM_CHECK_NONNEG(H, op, "H");
  MOLM_CHECK_NONNEG(N, op, "N");
  if (B == 0 || H == 0 || N == 0) return;
  MOLM_CHECK(D == kD, op, "the CUDA kernel is built for head dim ", kD, " (Uni-Mol), got ", D);
  MOLM_CHECK(N <= kMaxN, op, "N (max_seqlen) must be <= ", kMaxN, ", got ", N);
  MOLM_CHECK(2 * N * (kD + 1) * (dtype == static_cast<int>(DType::Float64) ? 8 : 4) <= 48 * 1024, op,
             "K and V of one molecule must fit 48 KiB of shared memory; N = ", N, " is too long for this dtype");
  MOLM_CHECK(strides.size() == 20, op, "strides must hold 4 each for q, k, v, out, bias, got ", strides.size());
  MOLM_CHECK(dropout_p >= 0 && dropout_p < 1, op, "dropout_p must be in [0, 1), got ", dropout_p);
  MOLM_CHECK(cu_seqlens == 0 || cu_pairs != 0, op, "packed inputs need cu_pairs");
  for (auto [p, name] : {std::pair{q, "q"}, {k, "k"}, {v, "v"}, {bias, "bias"}, {out, "out"}, {logits, "logits"},
                         {lse, "lse"}})
    MOLM_CHECK_PTR(p, op, name);
  AttnLayout L{H, N, {}, reinterpret_cast<const int32_t*>(cu_seqlens), reinterpret_cast<const int64_t*>(cu_pairs)};
  for (int t = 0; t < 5; ++t)
    for (int a = 0; a < 4; ++a) L.s[t][a] = strides[4 * t + a];
  for (int t = 0; t < 4; ++t) MOLM_CHECK(L.s[t][3] == 1, op, "q, k, v and out need a contiguous last dim");
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (dtype == static_cast<int>(DType::Float32))
    launch<float, float>(q, k, v, bias, out, logits, lse, L, B, scale, dropout_p, seed, s);
  else if (dtype == static_cast<int>(DType::BFloat16))
    launch<__nv_bfloat16, float>(q, k, v, bias, out, logits, lse, L, B, scale, dropout_p, seed, s);
  else if (dtype == static_cast<int>(DType::Float64))
    launch<double, double>(q, k, v, bias, out, logits, lse, L, B, scale, dropout_p, seed, s);
  else
    throw std::invalid_argument(concat(op, ": q must be float32, float64 or bfloat16, got ", dtype_name(dtype)));
  MOLM_CUDA_CHECK_LAUNCH(op);
}

}  // namespace molm_fast
