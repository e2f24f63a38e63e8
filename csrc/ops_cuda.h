// Declarations of every CUDA entry bound in bindings_cuda.cu. One block per op. `stream` is a cudaStream_t
// passed as an integer (torch.cuda.current_stream().cuda_stream).
#pragma once
#include <cstdint>

namespace molm_fast {

// pairwise_distance.cu
void pairwise_distance_forward_cuda(uintptr_t coords, uintptr_t out, int64_t B, int64_t N, int64_t sxb, int64_t sxn,
                                    int64_t sxc, int64_t sob, int64_t soi, int64_t soj, int dtype, uintptr_t stream);

}  // namespace molm_fast
