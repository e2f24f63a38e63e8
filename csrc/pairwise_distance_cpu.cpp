// pairwise_distance, CPU: out[b, i, j] = ||x[b, i] - x[b, j]|| over padded coordinates [B, N, 3].
// The first op through the whole path (pointers in, OpenMP over (b, i) rows). fp32/fp64 in, same dtype out;
// accumulation in the input dtype, difference-then-square like torch.cdist's exact path.
#include <cmath>

#include "common.h"

namespace molm_fast {

template <typename T>
MOLM_FAST_MULTIVERSION static void pairwise_distance_rows(const T* x, T* out, int64_t B, int64_t N, Strides3 sx,
                                                          Strides3 so) {
#if MOLM_FAST_HAS_OPENMP
#pragma omp parallel for collapse(2) schedule(static)
#endif
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < N; ++i) {
      const T* xi = x + b * sx.s0 + i * sx.s1;
      const T xi0 = xi[0], xi1 = xi[sx.s2], xi2 = xi[2 * sx.s2];
      T* orow = out + b * so.s0 + i * so.s1;
      for (int64_t j = 0; j < N; ++j) {
        const T* xj = x + b * sx.s0 + j * sx.s1;
        const T d0 = xi0 - xj[0], d1 = xi1 - xj[sx.s2], d2 = xi2 - xj[2 * sx.s2];
        orow[j * so.s2] = std::sqrt(d0 * d0 + d1 * d1 + d2 * d2);
      }
    }
  }
}

void pairwise_distance_forward_cpu(uintptr_t coords, uintptr_t out, int64_t B, int64_t N, int64_t sxb, int64_t sxn,
                                   int64_t sxc, int64_t sob, int64_t soi, int64_t soj, int dtype) {
  const char* op = "pairwise_distance_forward_cpu";
  MOLM_CHECK_NONNEG(B, op, "B");
  MOLM_CHECK_NONNEG(N, op, "N");
  if (B == 0 || N == 0) return;
  MOLM_CHECK_PTR(coords, op, "coords");
  MOLM_CHECK_PTR(out, op, "out");
  const Strides3 sx{sxb, sxn, sxc}, so{sob, soi, soj};
  if (dtype == static_cast<int>(DType::Float32)) {
    pairwise_distance_rows(reinterpret_cast<const float*>(coords), reinterpret_cast<float*>(out), B, N, sx, so);
  } else if (dtype == static_cast<int>(DType::Float64)) {
    pairwise_distance_rows(reinterpret_cast<const double*>(coords), reinterpret_cast<double*>(out), B, N, sx, so);
  } else {
    throw std::invalid_argument(concat(op, ": coords must be float32 or float64, got ", dtype_name(dtype)));
  }
}

}  // namespace molm_fast
