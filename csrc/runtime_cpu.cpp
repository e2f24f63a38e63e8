// Build facts the Python side reports in build_info().
#include "common.h"

#if MOLM_FAST_HAS_OPENMP
#include <omp.h>
#endif

namespace molm_fast {

int openmp_max_threads() {
#if MOLM_FAST_HAS_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace molm_fast
