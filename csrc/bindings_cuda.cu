// The only PYBIND11_MODULE of molm_fast._C_cuda: one def and docstring per entry, no logic.
// Importing this module touches no CUDA API; kernels run only when an entry is called.
#include <pybind11/pybind11.h>

#include "ops_cuda.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "molm_fast CUDA kernels; no libtorch dependency, static cudart";
  m.attr("__version__") = MOLM_FAST_VERSION;
  m.attr("cuda_archs") = MOLM_FAST_CUDA_ARCHS;

  m.def("pairwise_distance_forward_cuda", &molm_fast::pairwise_distance_forward_cuda,
        "out[b,i,j] = |x[b,i]-x[b,j]| for coords [B,N,3] (float32/float64) on the GPU; stream is a cudaStream_t int.",
        py::arg("coords"), py::arg("out"), py::arg("B"), py::arg("N"), py::arg("sxb"), py::arg("sxn"), py::arg("sxc"),
        py::arg("sob"), py::arg("soi"), py::arg("soj"), py::arg("dtype"), py::arg("stream"));
}
