// gaussian_pair_bias, CUDA: coordinates + atom types -> Uni-Mol's layer-0 pair bias, forward and backward, fp32.
//
// A tile is TP consecutive pairs p = i * n + j of one molecule's [n, n] block (padded batches: every n = N;
// packed ones: a (molecule, chunk) work list built by the Python glue). Per tile, in shared memory: the features
// of the pairs, G [TP, K] (fp32 Gaussians), the hidden [TP, C] and y [TP, H]; [pairs, K] never reaches global
// memory. Thread c owns hidden column c (W1 read transposed, coalesced); y rows are written coalesced along p.
// Backward: persistent blocks keep dW1 [K, C], dW2 [H, C], db1, db2, dmeans, dstds in shared memory over all
// their tiles (each entry owned by one thread, no shared atomics) and add them to global memory once; per-pair
// scatters (mul/bias rows, coordinates) are global atomics. Parameters arrive in fp32 (the glue converts bf16).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "common.h"
#include "ops_cuda.h"

namespace molm_fast {
namespace {

constexpr int kThreads = 128;
constexpr int kTileForward = 32;
constexpr int kTileBackward = 16;
constexpr float kRoot2Pi = 2.5066272f;  // sqrt(2 * 3.14159): upstream's literal pi (spec 3d-molm.md §8.3)

struct Problem {
  const float *coords, *mul, *bias, *means, *stds, *w1, *b1, *w2, *b2;  // w1 [C, K], w2 [H, C]
  const float *w1t, *w2t;  // w1t [K, C], w2t [C, H]: the same weights transposed, for coalesced column reads
  const int64_t* tokens;
  const int32_t *cu_seqlens, *work;  // packed: cu_seqlens [B + 1], work [tiles, 2] = (molecule, chunk)
  const int64_t* cu_pairs;
  int64_t N, chunks, K, C, H, num_types, pad_idx;
};

template <int TP>
struct TileFeatures {  // per pair of the tile, in shared memory
  float x[TP], dist[TP], mul[TP], diff[TP][3];
  int64_t e[TP], i[TP], j[TP];
  bool valid[TP], pad_j[TP];
  int64_t start, n, block, p0;
};

template <int TP>
__device__ void load_tile(const Problem& pr, int64_t tile, TileFeatures<TP>& f) {
  if (threadIdx.x == 0) {
    int64_t b, chunk;
    if (pr.work != nullptr) {
      b = pr.work[2 * tile], chunk = pr.work[2 * tile + 1];
      f.start = pr.cu_seqlens[b], f.n = pr.cu_seqlens[b + 1] - f.start, f.block = pr.cu_pairs[b];
    } else {
      b = tile / pr.chunks, chunk = tile % pr.chunks;
      f.start = b * pr.N, f.n = pr.N, f.block = b * pr.N * pr.N;
    }
    f.p0 = chunk * TP;
  }
  __syncthreads();
  for (int q = threadIdx.x; q < TP; q += blockDim.x) {
    const int64_t n = f.n, p = f.p0 + q;
    const bool valid = p < n * n;
    const int64_t i = valid ? p / n : 0, j = valid ? p % n : 0;
    const int64_t ti = valid ? pr.tokens[f.start + i] : pr.pad_idx, tj = valid ? pr.tokens[f.start + j] : pr.pad_idx;
    const bool pair_pad = ti == pr.pad_idx || tj == pr.pad_idx;
    const float* ci = pr.coords + 3 * (f.start + i);
    const float* cj = pr.coords + 3 * (f.start + j);
    float d2 = 0.f;
    for (int a = 0; a < 3; ++a) {
      f.diff[q][a] = ci[a] - cj[a];
      d2 += f.diff[q][a] * f.diff[q][a];
    }
    const float dist = pair_pad ? 0.f : sqrtf(d2);
    const int64_t e = pair_pad ? 0 : ti * pr.num_types + tj;
    f.valid[q] = valid, f.pad_j[q] = tj == pr.pad_idx, f.i[q] = i, f.j[q] = j, f.e[q] = e, f.dist[q] = dist;
    f.mul[q] = pr.mul[e];
    f.x[q] = pr.mul[e] * dist + pr.bias[e];
  }
  __syncthreads();
}

// G[q * K + k] = Gaussian k of pair q; u (optional) the standardised distance.
template <int TP>
__device__ void gaussians(const Problem& pr, const TileFeatures<TP>& f, float* g) {
  for (int64_t idx = threadIdx.x; idx < TP * pr.K; idx += blockDim.x) {
    const int64_t q = idx / pr.K, k = idx % pr.K;
    const float s = fabsf(pr.stds[k]) + 1e-5f;
    const float u = (f.x[q] - pr.means[k]) / s;
    g[idx] = expf(-0.5f * u * u) / (kRoot2Pi * s);
  }
}

__device__ __forceinline__ float gelu(float h) { return 0.5f * h * (1.f + erff(h * 0.70710678f)); }
__device__ __forceinline__ float gelu_grad(float h) {
  return 0.5f * (1.f + erff(h * 0.70710678f)) + h * expf(-0.5f * h * h) * 0.39894228f;
}

// hidden column c for the TP pairs: acc[q] = b1[c] + sum_k G[q, k] W1[c, k]
template <int TP>
__device__ void hidden_column(const Problem& pr, const float* g, int64_t c, float (&acc)[TP]) {
  for (int q = 0; q < TP; ++q) acc[q] = pr.b1[c];
  for (int64_t k = 0; k < pr.K; ++k) {
    const float w = __ldg(pr.w1t + k * pr.C + c);
    for (int q = 0; q < TP; ++q) acc[q] += g[q * pr.K + k] * w;
  }
}

__device__ __forceinline__ void store(float* o, float v) { *o = v; }
__device__ __forceinline__ void store(__nv_bfloat16* o, float v) { *o = __float2bfloat16(v); }
__device__ __forceinline__ void store(__half* o, float v) { *o = __float2half(v); }

template <typename O>
__global__ void __launch_bounds__(kThreads) gaussian_pair_bias_forward_kernel(Problem pr, O* __restrict__ out) {
  constexpr int TP = kTileForward;
  extern __shared__ float smem[];
  __shared__ TileFeatures<TP> f;
  float* g = smem;                  // [TP, K]
  float* act = g + TP * pr.K;       // [TP, C]
  float* y = act + TP * pr.C;       // [TP, H]
  load_tile<TP>(pr, blockIdx.x, f);
  gaussians<TP>(pr, f, g);
  __syncthreads();
  for (int64_t c = threadIdx.x; c < pr.C; c += blockDim.x) {
    float acc[TP];
    hidden_column<TP>(pr, g, c, acc);
    for (int q = 0; q < TP; ++q) act[q * pr.C + c] = gelu(acc[q]);
  }
  __syncthreads();
  for (int64_t w = threadIdx.x; w < 2 * pr.H; w += blockDim.x) {  // (h, half of the tile)
    const int64_t h = w % pr.H, q0 = (w / pr.H) * (TP / 2);
    float acc[TP / 2];
    for (int q = 0; q < TP / 2; ++q) acc[q] = pr.b2[h];
    for (int64_t c = 0; c < pr.C; ++c) {
      const float wv = __ldg(pr.w2t + c * pr.H + h);
      for (int q = 0; q < TP / 2; ++q) acc[q] += act[(q0 + q) * pr.C + c] * wv;
    }
    for (int q = 0; q < TP / 2; ++q) y[(q0 + q) * pr.H + h] = acc[q];
  }
  __syncthreads();
  const int64_t nn = f.n * f.n;
  for (int64_t idx = threadIdx.x; idx < TP * pr.H; idx += blockDim.x) {
    const int64_t h = idx / TP, q = idx % TP;
    if (!f.valid[q]) continue;
    store(out + pr.H * f.block + h * nn + f.p0 + q, f.pad_j[q] ? -INFINITY : y[q * pr.H + h]);
  }
}

struct Grads {
  float *coords, *mul, *bias, *means, *stds, *w1, *b1, *w2, *b2;
};

__global__ void __launch_bounds__(kThreads) gaussian_pair_bias_backward_kernel(Problem pr, const float* __restrict__ grad,
                                                                               Grads gr, int64_t tiles) {
  constexpr int TP = kTileBackward;
  extern __shared__ float smem[];
  __shared__ TileFeatures<TP> f;
  const int64_t K = pr.K, C = pr.C, H = pr.H;
  float* acc_w1 = smem;               // [K, C]
  float* acc_w2 = acc_w1 + K * C;     // [H, C]
  float* acc_mean = acc_w2 + H * C;   // [K]
  float* acc_std = acc_mean + K;      // [K]
  float* acc_b1 = acc_std + K;        // [C]
  float* acc_b2 = acc_b1 + C;         // [H]
  float* g = acc_b2 + H;              // [TP, K]; later t * u
  float* hid = g + TP * K;            // [TP, C]; later d hidden
  float* act = hid + TP * C;          // [TP, C]
  float* dy = act + TP * C;           // [TP, H]
  for (int64_t idx = threadIdx.x; idx < K * C + H * C + 2 * K + C + H; idx += blockDim.x) smem[idx] = 0.f;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    load_tile<TP>(pr, tile, f);
    gaussians<TP>(pr, f, g);
    const int64_t nn = f.n * f.n;
    for (int64_t idx = threadIdx.x; idx < TP * H; idx += blockDim.x) {  // coalesced along p
      const int64_t h = idx / TP, q = idx % TP;
      const bool live = f.valid[q] && !f.pad_j[q];  // -inf outputs have no gradient
      dy[q * H + h] = live ? grad[H * f.block + h * nn + f.p0 + q] : 0.f;
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {  // thread c owns column c of hid, act, acc_w*
      float acc[TP];
      hidden_column<TP>(pr, g, c, acc);
      for (int q = 0; q < TP; ++q) act[q * C + c] = gelu(acc[q]);
      float dact[TP] = {};
      for (int64_t h = 0; h < H; ++h) {
        const float w = __ldg(pr.w2 + h * C + c);
        float s = 0.f;
        for (int q = 0; q < TP; ++q) {
          s += dy[q * H + h] * act[q * C + c];
          dact[q] += dy[q * H + h] * w;
        }
        acc_w2[h * C + c] += s;
      }
      float db1 = 0.f;
      for (int q = 0; q < TP; ++q) {
        hid[q * C + c] = dact[q] * gelu_grad(acc[q]);
        db1 += hid[q * C + c];
      }
      acc_b1[c] += db1;
      for (int64_t k = 0; k < K; ++k) {
        float s = 0.f;
        for (int q = 0; q < TP; ++q) s += hid[q * C + c] * g[q * K + k];
        acc_w1[k * C + c] += s;
      }
    }
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
      float s = 0.f;
      for (int q = 0; q < TP; ++q) s += dy[q * H + h];
      acc_b2[h] += s;
    }
    __syncthreads();
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {  // thread k owns column k of g
      float dg[TP] = {};
      for (int64_t c = 0; c < C; ++c) {
        const float w = __ldg(pr.w1 + c * K + k);
        for (int q = 0; q < TP; ++q) dg[q] += hid[q * C + c] * w;
      }
      const float s = fabsf(pr.stds[k]) + 1e-5f;
      float dmean = 0.f, dstd = 0.f;
      for (int q = 0; q < TP; ++q) {
        const float u = (f.x[q] - pr.means[k]) / s;
        const float t = dg[q] * g[q * K + k] / s;  // dL/dG * G / s
        dmean += t * u;
        dstd += t * (u * u - 1.f);
        g[q * K + k] = t * u;
      }
      acc_mean[k] += dmean;
      acc_std[k] += dstd;
    }
    __syncthreads();
    for (int q = threadIdx.x; q < TP; q += blockDim.x) {
      if (!f.valid[q] || f.pad_j[q]) continue;
      float dx = 0.f;
      for (int64_t k = 0; k < K; ++k) dx -= g[q * K + k];
      atomicAdd(gr.mul + f.e[q], dx * f.dist[q]);
      atomicAdd(gr.bias + f.e[q], dx);
      if (f.dist[q] > 0.f) {
        const float w = dx * f.mul[q] / f.dist[q];
        for (int a = 0; a < 3; ++a) {
          atomicAdd(gr.coords + 3 * (f.start + f.i[q]) + a, w * f.diff[q][a]);
          atomicAdd(gr.coords + 3 * (f.start + f.j[q]) + a, -w * f.diff[q][a]);
        }
      }
    }
    __syncthreads();
  }
  for (int64_t idx = threadIdx.x; idx < K * C; idx += blockDim.x) {
    const int64_t k = idx / C, c = idx % C;
    atomicAdd(gr.w1 + c * K + k, acc_w1[idx]);
  }
  for (int64_t idx = threadIdx.x; idx < H * C; idx += blockDim.x) atomicAdd(gr.w2 + idx, acc_w2[idx]);
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float s = pr.stds[k];
    atomicAdd(gr.means + k, acc_mean[k]);
    atomicAdd(gr.stds + k, acc_std[k] * (s > 0.f ? 1.f : (s < 0.f ? -1.f : 0.f)));  // d|std|
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(gr.b1 + c, acc_b1[c]);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) atomicAdd(gr.b2 + h, acc_b2[h]);
}

Problem make_problem(uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens, uintptr_t cu_pairs, uintptr_t work,
                     uintptr_t mul, uintptr_t bias, uintptr_t means, uintptr_t stds, uintptr_t w1, uintptr_t b1,
                     uintptr_t w2, uintptr_t b2, uintptr_t w1t, uintptr_t w2t, int64_t N, int64_t chunks, int64_t K,
                     int64_t C, int64_t H, int64_t num_types, int64_t pad_idx, const char* op) {
  for (uintptr_t ptr : {coords, tokens, mul, bias, means, stds, w1, b1, w2, b2, w1t, w2t})
    MOLM_CHECK_PTR(ptr, op, "a tensor");
  MOLM_CHECK((cu_seqlens == 0) == (work == 0) && (work == 0) == (cu_pairs == 0), op,
             "cu_seqlens, cu_pairs and work must be given together");
  MOLM_CHECK(K > 0 && C > 0 && H > 0, op, "K, C, H must be positive, got ", K, ", ", C, ", ", H);
  auto f = [](uintptr_t p) { return reinterpret_cast<const float*>(p); };
  return Problem{f(coords), f(mul), f(bias), f(means), f(stds), f(w1), f(b1), f(w2), f(b2), f(w1t), f(w2t),
                 reinterpret_cast<const int64_t*>(tokens), reinterpret_cast<const int32_t*>(cu_seqlens),
                 reinterpret_cast<const int32_t*>(work), reinterpret_cast<const int64_t*>(cu_pairs),
                 N, chunks, K, C, H, num_types, pad_idx};
}

template <typename Kernel>
void set_shared_memory(Kernel kernel, size_t bytes, const char* op) {
  int device = 0, limit = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  MOLM_CHECK(bytes <= static_cast<size_t>(limit), op, "needs ", bytes, " bytes of shared memory for K, C, H; the "
             "device allows ", limit);
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace

void gaussian_pair_bias_forward_cuda(uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                     uintptr_t work, uintptr_t mul, uintptr_t bias, uintptr_t means, uintptr_t stds,
                                     uintptr_t w1, uintptr_t b1, uintptr_t w2, uintptr_t b2, uintptr_t w1t,
                                     uintptr_t w2t, uintptr_t out, int64_t tiles, int64_t N, int64_t chunks, int64_t K, int64_t C, int64_t H,
                                     int64_t num_types, int64_t pad_idx, int out_dtype, uintptr_t stream) {
  const char* op = "gaussian_pair_bias_forward_cuda";
  MOLM_CHECK_NONNEG(tiles, op, "tiles");
  if (tiles == 0) return;
  MOLM_CHECK(tiles <= 2147483647, op, "too many tiles: ", tiles);
  MOLM_CHECK_PTR(out, op, "out");
  const Problem pr = make_problem(coords, tokens, cu_seqlens, cu_pairs, work, mul, bias, means, stds, w1, b1, w2, b2,
                                  w1t, w2t, N, chunks, K, C, H, num_types, pad_idx, op);
  const size_t bytes = sizeof(float) * kTileForward * (K + C + H);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(tiles));
  if (out_dtype == static_cast<int>(DType::Float32)) {
    set_shared_memory(gaussian_pair_bias_forward_kernel<float>, bytes, op);
    gaussian_pair_bias_forward_kernel<float><<<grid, kThreads, bytes, s>>>(pr, reinterpret_cast<float*>(out));
  } else if (out_dtype == static_cast<int>(DType::BFloat16)) {
    set_shared_memory(gaussian_pair_bias_forward_kernel<__nv_bfloat16>, bytes, op);
    gaussian_pair_bias_forward_kernel<__nv_bfloat16><<<grid, kThreads, bytes, s>>>(
        pr, reinterpret_cast<__nv_bfloat16*>(out));
  } else if (out_dtype == static_cast<int>(DType::Float16)) {
    set_shared_memory(gaussian_pair_bias_forward_kernel<__half>, bytes, op);
    gaussian_pair_bias_forward_kernel<__half><<<grid, kThreads, bytes, s>>>(pr, reinterpret_cast<__half*>(out));
  } else {
    throw std::invalid_argument(concat(op, ": out must be float32, bfloat16 or float16, got ", dtype_name(out_dtype)));
  }
  MOLM_CUDA_CHECK_LAUNCH(op);
}

void gaussian_pair_bias_backward_cuda(uintptr_t grad, uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens,
                                      uintptr_t cu_pairs, uintptr_t work, uintptr_t mul, uintptr_t bias,
                                      uintptr_t means, uintptr_t stds, uintptr_t w1, uintptr_t b1, uintptr_t w2,
                                      uintptr_t b2, uintptr_t w1t, uintptr_t w2t, uintptr_t d_coords, uintptr_t d_mul, uintptr_t d_bias,
                                      uintptr_t d_means, uintptr_t d_stds, uintptr_t d_w1, uintptr_t d_b1,
                                      uintptr_t d_w2, uintptr_t d_b2, int64_t tiles, int64_t N, int64_t chunks,
                                      int64_t K, int64_t C, int64_t H, int64_t num_types, int64_t pad_idx,
                                      uintptr_t stream) {
  const char* op = "gaussian_pair_bias_backward_cuda";
  MOLM_CHECK_NONNEG(tiles, op, "tiles");
  if (tiles == 0) return;
  MOLM_CHECK_PTR(grad, op, "grad");
  for (uintptr_t ptr : {d_coords, d_mul, d_bias, d_means, d_stds, d_w1, d_b1, d_w2, d_b2})
    MOLM_CHECK_PTR(ptr, op, "a gradient");
  const Problem pr = make_problem(coords, tokens, cu_seqlens, cu_pairs, work, mul, bias, means, stds, w1, b1, w2, b2,
                                  w1t, w2t, N, chunks, K, C, H, num_types, pad_idx, op);
  auto f = [](uintptr_t p) { return reinterpret_cast<float*>(p); };
  const Grads gr{f(d_coords), f(d_mul), f(d_bias), f(d_means), f(d_stds), f(d_w1), f(d_b1), f(d_w2), f(d_b2)};
  const size_t bytes = sizeof(float) * (K * C + H * C + 2 * K + C + H + kTileBackward * (K + 2 * C + H));
  set_shared_memory(gaussian_pair_bias_backward_kernel, bytes, op);
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t blocks = std::min<int64_t>(tiles, 2 * static_cast<int64_t>(sms));
  gaussian_pair_bias_backward_kernel<<<static_cast<unsigned>(blocks), kThreads, bytes,
                                       reinterpret_cast<cudaStream_t>(stream)>>>(
      pr, reinterpret_cast<const float*>(grad), gr, tiles);
  MOLM_CUDA_CHECK_LAUNCH(op);
}

}  // namespace molm_fast
