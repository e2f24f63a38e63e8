// qformer_cross_attention, CUDA: each molecule's Q queries attend to that molecule's keys only.
// q [B, H, Q, D]; k, v padded [B, H, N, D] (+ optional uint8 mask [B, N], 1 = attend) or packed [T, H, D] with
// cu_seqlens [B + 1] int32; strides (batch, head, token), batch stride 0 when packed. out [B, H, Q, D] and
// lse [B, H, Q] fp32 contiguous. A masked molecule with no attended key is "uniform" (scores 0 over all N keys:
// upstream's +finfo.min, spec 3d-molm.md §1.3). Semantics identical to qformer_cross_attention_cpu.cpp.
//
// Forward: one block of 4 warps per (molecule, head); the molecule's keys stream through shared memory in chunks
// of 32 (one key per lane for the scores), each warp owns Q/4 query rows with an online softmax, and each lane
// owns D/32 output columns. Backward: one block of 128 threads per (molecule, head), one thread per key of a
// 128-key chunk (dk, dv of that key in a register loop, written once), ds staged in shared memory for dq; delta =
// sum_j p_j dp_j in a first pass, as autograd's softmax backward. Limits: Q <= 32, D <= 128 (checked).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>

#include "common.h"
#include "ops_cuda.h"

namespace molm_fast {
namespace {

constexpr int kMaxQ = 32, kMaxD = 128, kWarps = 4, kChunk = 32, kBackwardThreads = 128;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

struct Params {
  const void *q, *k, *v;
  const uint8_t* mask;
  const int32_t* cu;
  void *out, *dq, *dk, *dv;
  float* lse;
  const void* dout;
  int64_t B, H, Q, N, D;
  float scale;
  bool varlen;
  int64_t sqb, sqh, sqq, skb, skh, skn, svb, svh, svn, sdkb, sdkh, sdkn;
};

// First key row, key count and the uniform flag of molecule b (the whole block agrees).
__device__ void molecule_keys(const Params& p, int64_t b, int64_t& start, int64_t& n, bool& uniform) {
  start = p.varlen ? p.cu[b] : 0;
  n = p.varlen ? p.cu[b + 1] - p.cu[b] : p.N;
  int any = 0;
  if (p.mask != nullptr)
    for (int64_t j = threadIdx.x; j < p.N; j += blockDim.x) any |= p.mask[b * p.N + j] != 0;
  uniform = p.mask != nullptr && !__syncthreads_or(any);
}

__device__ __forceinline__ bool key_kept(const Params& p, int64_t b, int64_t j, int64_t n, bool uniform) {
  return j < n && (p.mask == nullptr || uniform || p.mask[b * p.N + j] != 0);
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) qformer_cross_attention_forward_kernel(Params p) {
  extern __shared__ float smem[];  // q [Q][D], k^T [D][kChunk] (lanes read consecutive keys), v [kChunk][D]
  float* q_s = smem;
  float* kt_s = q_s + p.Q * p.D;
  float* v_s = kt_s + p.D * kChunk;
  const int64_t b = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t start, n;
  bool uniform;
  molecule_keys(p, b, start, n, uniform);
  const T* q = static_cast<const T*>(p.q) + b * p.sqb + h * p.sqh;
  const T* k = static_cast<const T*>(p.k) + b * p.skb + h * p.skh + start * p.skn;
  const T* v = static_cast<const T*>(p.v) + b * p.svb + h * p.svh + start * p.svn;
  for (int64_t idx = threadIdx.x; idx < p.Q * p.D; idx += blockDim.x)
    q_s[idx] = to_f(q[(idx / p.D) * p.sqq + idx % p.D]);
  constexpr int kRows = kMaxQ / kWarps, kCols = kMaxD / 32;
  float m[kRows], l[kRows], acc[kRows][kCols];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[r][c] = 0.f;
  }
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    __syncthreads();
    for (int64_t idx = threadIdx.x; idx < kChunk * p.D; idx += blockDim.x) {
      const int64_t j = idx / p.D, d = idx % p.D;
      const bool in = c0 + j < n;
      kt_s[d * kChunk + j] = in ? to_f(k[(c0 + j) * p.skn + d]) : 0.f;
      v_s[j * p.D + d] = in ? to_f(v[(c0 + j) * p.svn + d]) : 0.f;
    }
    __syncthreads();
    const int64_t j = c0 + lane;
    const bool kept = key_kept(p, b, j, n, uniform);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t i = warp + r * kWarps;
      if (i >= p.Q) break;
      float s = 0.f;
      if (!uniform)
        for (int64_t d = 0; d < p.D; ++d) s += q_s[i * p.D + d] * kt_s[d * kChunk + lane];
      s = kept ? s * p.scale : -INFINITY;
      if (uniform && kept) s = 0.f;
      float cmax = s;
      for (int o = 16; o > 0; o >>= 1) cmax = fmaxf(cmax, __shfl_xor_sync(0xffffffffu, cmax, o));
      const float m_new = fmaxf(m[r], cmax);
      const float m_safe = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = expf(m[r] - m_safe);
      const float pj = expf(s - m_safe);
      float psum = pj;
      for (int o = 16; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
      l[r] = l[r] * alpha + psum;
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[r][c] *= alpha;
      for (int jj = 0; jj < kChunk; ++jj) {
        const float pb = __shfl_sync(0xffffffffu, pj, jj);
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int d = lane + 32 * c;
          if (d < p.D) acc[r][c] += pb * v_s[jj * p.D + d];
        }
      }
      m[r] = m_new;
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t i = warp + r * kWarps;
    if (i >= p.Q) break;
    const int64_t row = (b * p.H + h) * p.Q + i;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int d = lane + 32 * c;
      if (d < p.D) static_cast<T*>(p.out)[row * p.D + d] = from_f<T>(acc[r][c] * inv);
    }
    if (lane == 0) p.lse[row] = l[r] > 0.f ? m[r] + logf(l[r]) : -INFINITY;
  }
}

template <typename T>
__global__ void __launch_bounds__(kBackwardThreads) qformer_cross_attention_backward_kernel(Params p) {
  extern __shared__ float smem[];  // q, do [Q][D]; ds [Q][threads]; lse, delta [Q]
  float* q_s = smem;
  float* do_s = q_s + p.Q * p.D;
  float* ds_s = do_s + p.Q * p.D;
  float* lse_s = ds_s + p.Q * kBackwardThreads;
  float* delta_s = lse_s + p.Q;
  constexpr int kDqPerThread = kMaxQ * kMaxD / kBackwardThreads;
  float dq_acc[kDqPerThread];  // dq[idx] for idx = threadIdx.x + r * threads
#pragma unroll
  for (int r = 0; r < kDqPerThread; ++r) dq_acc[r] = 0.f;
  const int64_t b = blockIdx.x, h = blockIdx.y;
  int64_t start, n;
  bool uniform;
  molecule_keys(p, b, start, n, uniform);
  const T* q = static_cast<const T*>(p.q) + b * p.sqb + h * p.sqh;
  const T* k = static_cast<const T*>(p.k) + b * p.skb + h * p.skh + start * p.skn;
  const T* v = static_cast<const T*>(p.v) + b * p.svb + h * p.svh + start * p.svn;
  const int64_t row0 = (b * p.H + h) * p.Q;
  const T* dout = static_cast<const T*>(p.dout) + row0 * p.D;
  for (int64_t idx = threadIdx.x; idx < p.Q * p.D; idx += blockDim.x) {
    const int64_t i = idx / p.D, d = idx % p.D;
    q_s[idx] = to_f(q[i * p.sqq + d]);
    do_s[idx] = to_f(dout[idx]);
  }
  for (int64_t i = threadIdx.x; i < p.Q; i += blockDim.x) {
    const float L = p.lse[row0 + i];
    lse_s[i] = isinf(L) ? 0.f : L;
    delta_s[i] = 0.f;
  }
  __syncthreads();
  // Scores -> p and dp of this thread's key against every query row (registers).
  auto row_terms = [&](int64_t j, bool kept, float* pr, float* dpr) {
    const T* kj = k + j * p.skn;
    const T* vj = v + j * p.svn;
    for (int64_t i = 0; i < p.Q; ++i) {
      float s = 0.f, dp = 0.f;
      if (kept) {
        for (int64_t d = 0; d < p.D; ++d) {
          if (!uniform) s += q_s[i * p.D + d] * to_f(kj[d]);
          dp += do_s[i * p.D + d] * to_f(vj[d]);
        }
      }
      pr[i] = kept ? expf((uniform ? 0.f : s * p.scale) - lse_s[i]) : 0.f;
      dpr[i] = dp;
    }
  };
  float pr[kMaxQ], dpr[kMaxQ];
  for (int64_t c0 = 0; c0 < n; c0 += kBackwardThreads) {  // pass 1: delta
    const int64_t j = c0 + threadIdx.x;
    row_terms(j, key_kept(p, b, j, n, uniform), pr, dpr);
    for (int64_t i = 0; i < p.Q; ++i) {
      float x = pr[i] * dpr[i];
      for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
      if (threadIdx.x % 32 == 0 && x != 0.f) atomicAdd(&delta_s[i], x);
    }
  }
  __syncthreads();
  T* dk = static_cast<T*>(p.dk) + b * p.sdkb + h * p.sdkh + start * p.sdkn;
  T* dv = static_cast<T*>(p.dv) + b * p.sdkb + h * p.sdkh + start * p.sdkn;
  for (int64_t c0 = 0; c0 < n; c0 += kBackwardThreads) {  // pass 2: dk, dv of this thread's key; ds for dq
    const int64_t j = c0 + threadIdx.x;
    const bool kept = key_kept(p, b, j, n, uniform);
    row_terms(j, kept, pr, dpr);
    for (int64_t i = 0; i < p.Q; ++i) ds_s[i * kBackwardThreads + threadIdx.x] = kept ? pr[i] * (dpr[i] - delta_s[i]) * p.scale : 0.f;
    if (j < n) {
      for (int64_t d = 0; d < p.D; ++d) {
        float gk = 0.f, gv = 0.f;
        for (int64_t i = 0; i < p.Q; ++i) {
          gk += ds_s[i * kBackwardThreads + threadIdx.x] * q_s[i * p.D + d];
          gv += pr[i] * do_s[i * p.D + d];
        }
        dk[j * p.sdkn + d] = from_f<T>(gk);
        dv[j * p.sdkn + d] = from_f<T>(gv);
      }
    }
    __syncthreads();
    const int64_t chunk = n - c0 < kBackwardThreads ? n - c0 : kBackwardThreads;
#pragma unroll
    for (int r = 0; r < kDqPerThread; ++r) {
      const int64_t idx = threadIdx.x + r * kBackwardThreads, i = idx / p.D, d = idx % p.D;
      if (idx >= p.Q * p.D) break;
      for (int64_t t = 0; t < chunk; ++t) dq_acc[r] += ds_s[i * kBackwardThreads + t] * to_f(k[(c0 + t) * p.skn + d]);
    }
    __syncthreads();
  }
  T* dq = static_cast<T*>(p.dq) + row0 * p.D;
#pragma unroll
  for (int r = 0; r < kDqPerThread; ++r) {
    const int64_t idx = threadIdx.x + r * kBackwardThreads;
    if (idx < p.Q * p.D) dq[idx] = from_f<T>(dq_acc[r]);
  }
}

void check_sizes(const char* op, const Params& p) {
  MOLM_CHECK_NONNEG(p.B, op, "B");
  MOLM_CHECK_NONNEG(p.H, op, "H");
  MOLM_CHECK(p.Q >= 0 && p.Q <= kMaxQ, op, "Q must be in [0, ", kMaxQ, "], got ", p.Q);
  MOLM_CHECK(p.D > 0 && p.D <= kMaxD, op, "D must be in [1, ", kMaxD, "], got ", p.D);
  MOLM_CHECK_NONNEG(p.N, op, "N");
  MOLM_CHECK(p.B <= 2147483647 && p.H <= 65535, op, "B must be < 2^31 and H <= 65535, got ", p.B, ", ", p.H);
  MOLM_CHECK(!p.varlen || p.cu != nullptr, op, "cu_seqlens must be given for packed keys");
  MOLM_CHECK(!(p.varlen && p.mask != nullptr), op, "a key mask is only for padded keys");
}

template <template <typename> class Launch>
void dispatch(const char* op, int dtype, const Params& p, cudaStream_t stream) {
  if (dtype == static_cast<int>(DType::Float32)) {
    Launch<float>::run(p, stream);
  } else if (dtype == static_cast<int>(DType::BFloat16)) {
    Launch<__nv_bfloat16>::run(p, stream);
  } else if (dtype == static_cast<int>(DType::Float16)) {
    Launch<__half>::run(p, stream);
  } else {
    throw std::invalid_argument(concat(op, ": q must be float32, bfloat16 or float16, got ", dtype_name(dtype)));
  }
}

// Dynamic shared memory sized to the real Q and D (Q = 8, D = 64 needs 20 KiB forward, 8.1 KiB backward).
template <typename Kernel>
void launch(Kernel kernel, const Params& p, int threads, size_t smem, cudaStream_t s) {
  if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  kernel<<<dim3(static_cast<unsigned>(p.B), static_cast<unsigned>(p.H)), threads, smem, s>>>(p);
}
template <typename T> struct LaunchForward {
  static void run(const Params& p, cudaStream_t s) {
    const size_t smem = sizeof(float) * (p.Q * p.D + 2 * kChunk * p.D);
    launch(qformer_cross_attention_forward_kernel<T>, p, kWarps * 32, smem, s);
  }
};
template <typename T> struct LaunchBackward {
  static void run(const Params& p, cudaStream_t s) {
    const size_t smem = sizeof(float) * (2 * p.Q * p.D + p.Q * kBackwardThreads + 2 * p.Q);
    launch(qformer_cross_attention_backward_kernel<T>, p, kBackwardThreads, smem, s);
  }
};

}  // namespace

void qformer_cross_attention_forward_cuda(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t cu_seqlens,
                                          uintptr_t out, uintptr_t lse, int64_t B, int64_t H, int64_t Q, int64_t N,
                                          int64_t D, double scale, int varlen, int64_t sqb, int64_t sqh, int64_t sqq,
                                          int64_t skb, int64_t skh, int64_t skn, int64_t svb, int64_t svh,
                                          int64_t svn, int dtype, uintptr_t stream) {
  const char* op = "qformer_cross_attention_forward_cuda";
  Params p{};
  p.q = reinterpret_cast<const void*>(q), p.k = reinterpret_cast<const void*>(k), p.v = reinterpret_cast<const void*>(v);
  p.mask = reinterpret_cast<const uint8_t*>(mask), p.cu = reinterpret_cast<const int32_t*>(cu_seqlens);
  p.out = reinterpret_cast<void*>(out), p.lse = reinterpret_cast<float*>(lse);
  p.B = B, p.H = H, p.Q = Q, p.N = N, p.D = D, p.scale = static_cast<float>(scale), p.varlen = varlen != 0;
  p.sqb = sqb, p.sqh = sqh, p.sqq = sqq, p.skb = skb, p.skh = skh, p.skn = skn, p.svb = svb, p.svh = svh, p.svn = svn;
  check_sizes(op, p);
  if (B == 0 || H == 0 || Q == 0) return;
  for (uintptr_t ptr : {q, k, v, out, lse}) MOLM_CHECK_PTR(ptr, op, "q, k, v, out and lse");
  dispatch<LaunchForward>(op, dtype, p, reinterpret_cast<cudaStream_t>(stream));
  MOLM_CUDA_CHECK_LAUNCH(op);
}

void qformer_cross_attention_backward_cuda(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t cu_seqlens,
                                           uintptr_t lse, uintptr_t dout, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                                           int64_t B, int64_t H, int64_t Q, int64_t N, int64_t D, double scale,
                                           int varlen, int64_t sqb, int64_t sqh, int64_t sqq, int64_t skb, int64_t skh,
                                           int64_t skn, int64_t svb, int64_t svh, int64_t svn, int64_t sdkb,
                                           int64_t sdkh, int64_t sdkn, int dtype, uintptr_t stream) {
  const char* op = "qformer_cross_attention_backward_cuda";
  Params p{};
  p.q = reinterpret_cast<const void*>(q), p.k = reinterpret_cast<const void*>(k), p.v = reinterpret_cast<const void*>(v);
  p.mask = reinterpret_cast<const uint8_t*>(mask), p.cu = reinterpret_cast<const int32_t*>(cu_seqlens);
  p.lse = reinterpret_cast<float*>(lse), p.dout = reinterpret_cast<const void*>(dout);
  p.dq = reinterpret_cast<void*>(dq), p.dk = reinterpret_cast<void*>(dk), p.dv = reinterpret_cast<void*>(dv);
  p.B = B, p.H = H, p.Q = Q, p.N = N, p.D = D, p.scale = static_cast<float>(scale), p.varlen = varlen != 0;
  p.sqb = sqb, p.sqh = sqh, p.sqq = sqq, p.skb = skb, p.skh = skh, p.skn = skn, p.svb = svb, p.svh = svh, p.svn = svn;
  p.sdkb = sdkb, p.sdkh = sdkh, p.sdkn = sdkn;
  check_sizes(op, p);
  if (B == 0 || H == 0 || Q == 0) return;
  for (uintptr_t ptr : {q, k, v, lse, dout, dq, dk, dv}) MOLM_CHECK_PTR(ptr, op, "every tensor");
  dispatch<LaunchBackward>(op, dtype, p, reinterpret_cast<cudaStream_t>(stream));
  MOLM_CUDA_CHECK_LAUNCH(op);
}

}  // namespace molm_fast
