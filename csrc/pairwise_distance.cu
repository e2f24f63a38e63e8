// pairwise_distance, CUDA: out[b, i, j] = ||x[b, i] - x[b, j]|| for padded coordinates [B, N, 3].
// One thread per output element; grid (ceil(N*N / 256), B). Memory-bound: 4 bytes written per pair.
#include "common.h"
#include "ops_cuda.h"

namespace molm_fast {

template <typename T>
__global__ void pairwise_distance_forward_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t N, Strides3 sx,
                                                 Strides3 so) {
  const int64_t b = blockIdx.y;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * N) return;
  const int64_t i = idx / N, j = idx % N;
  const T* xi = x + b * sx.s0 + i * sx.s1;
  const T* xj = x + b * sx.s0 + j * sx.s1;
  const T d0 = xi[0] - xj[0], d1 = xi[sx.s2] - xj[sx.s2], d2 = xi[2 * sx.s2] - xj[2 * sx.s2];
  out[b * so.s0 + i * so.s1 + j * so.s2] = sqrt(d0 * d0 + d1 * d1 + d2 * d2);
}

void pairwise_distance_forward_cuda(uintptr_t coords, uintptr_t out, int64_t B, int64_t N, int64_t sxb, int64_t sxn,
                                    int64_t sxc, int64_t sob, int64_t soi, int64_t soj, int dtype, uintptr_t stream) {
  const char* op = "pairwise_distance_forward_cuda";
  MOLM_CHECK_NONNEG(B, op, "B");
  MOLM_CHECK_NONNEG(N, op, "N");
  if (B == 0 || N == 0) return;
  MOLM_CHECK_PTR(coords, op, "coords");
  MOLM_CHECK_PTR(out, op, "out");
  MOLM_CHECK(B <= 65535, op, "B must be <= 65535, got ", B);
  const Strides3 sx{sxb, sxn, sxc}, so{sob, soi, soj};
  const int threads = 256;
  const dim3 grid(static_cast<unsigned>((N * N + threads - 1) / threads), static_cast<unsigned>(B));
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (dtype == static_cast<int>(DType::Float32)) {
    pairwise_distance_forward_kernel<float><<<grid, threads, 0, s>>>(reinterpret_cast<const float*>(coords),
                                                                     reinterpret_cast<float*>(out), N, sx, so);
  } else if (dtype == static_cast<int>(DType::Float64)) {
    pairwise_distance_forward_kernel<double><<<grid, threads, 0, s>>>(reinterpret_cast<const double*>(coords),
                                                                      reinterpret_cast<double*>(out), N, sx, so);
  } else {
    throw std::invalid_argument(concat(op, ": coords must be float32 or float64, got ", dtype_name(dtype)));
  }
  MOLM_CUDA_CHECK_LAUNCH(op);
}

}  // namespace molm_fast
