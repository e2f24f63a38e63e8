// Declarations of every CPU entry bound in bindings.cpp. One block per op, in the op's own file's order.
#pragma once
#include <cstdint>

namespace molm_fast {

// runtime_cpu.cpp
int openmp_max_threads();

// pairwise_distance_cpu.cpp
void pairwise_distance_forward_cpu(uintptr_t coords, uintptr_t out, int64_t B, int64_t N, int64_t sxb, int64_t sxn,
                                   int64_t sxc, int64_t sob, int64_t soi, int64_t soj, int dtype);

}  // namespace molm_fast
