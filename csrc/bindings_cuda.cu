// The only PYBIND11_MODULE of molm_fast._C_cuda: one def and docstring per entry, no logic.
// Importing this module touches no CUDA API; kernels run only when an entry is called.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ops_cuda.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "molm_fast CUDA kernels; no libtorch dependency, static cudart";
  m.attr("__version__") = MOLM_FAST_VERSION;
  m.attr("cuda_archs") = MOLM_FAST_CUDA_ARCHS;

  m.def("gaussian_pair_bias_forward_cuda", &molm_fast::gaussian_pair_bias_forward_cuda,
        "Fused Uni-Mol pair bias on the GPU, fp32 compute: (coords [T,3] f32, tokens [T] i64, cu_seqlens, cu_pairs, "
        "work [tiles,2] i32 (packed) or 0s, mul, bias, means, stds, w1, b1, w2, b2, w1t [K,C], w2t [C,H] (f32 "
        "contiguous), out, tiles, N, "
        "chunks, K, C, H, num_types, pad_idx, out_dtype, stream); tiles of 32 pairs.");
  m.def("gaussian_pair_bias_backward_cuda", &molm_fast::gaussian_pair_bias_backward_cuda,
        "Backward of gaussian_pair_bias_forward_cuda: (grad f32, the forward's inputs, d_coords, d_mul, d_bias, d_means, "
        "d_stds, d_w1, d_b1, d_w2, d_b2 (zeroed f32, added to), tiles, N, chunks, K, C, H, num_types, pad_idx, stream); "
        "tiles of 16 pairs.");

  m.def("pair_bias_attention_forward_cuda", &molm_fast::pair_bias_attention_forward_cuda,
        "Warp-per-row forward: logits = (q*scale) k^T + bias, out = dropout(softmax(logits)) v, row LSE; padded or "
        "packed (cu_seqlens, cu_pairs != 0); head dim 8, N <= 512; strides: 4 each for q, k, v, out, bias.",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("bias"), py::arg("out"), py::arg("logits"), py::arg("lse"),
        py::arg("cu_seqlens"), py::arg("cu_pairs"), py::arg("B"), py::arg("H"), py::arg("N"), py::arg("D"),
        py::arg("strides"), py::arg("scale"), py::arg("dropout_p"), py::arg("seed"), py::arg("dtype"),
        py::arg("stream"));
  m.def("pair_bias_attention_backward_cuda", &molm_fast::pair_bias_attention_backward_cuda,
        "Backward of pair_bias_attention_forward_cuda from the saved LSE (p recomputed, Philox mask regenerated): "
        "dq, dk, dv and dbias = dlogits (+ grad_logits, 0 when none); a rows kernel (dbias, dq) and a keys kernel "
        "(dk, dv), deterministic; head dim 8, N <= 512; strides: 4 each for q, k, v, out, bias, grad_out, dq, dk, dv.",
        py::arg("grad_out"), py::arg("grad_logits"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("bias"),
        py::arg("out"), py::arg("lse"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("dbias"),
        py::arg("cu_seqlens"), py::arg("cu_pairs"), py::arg("B"), py::arg("H"), py::arg("N"), py::arg("D"),
        py::arg("strides"), py::arg("scale"), py::arg("dropout_p"), py::arg("seed"), py::arg("dtype"),
        py::arg("stream"));
  m.def("pairwise_distance_forward_cuda", &molm_fast::pairwise_distance_forward_cuda,
        "out[b,i,j] = |x[b,i]-x[b,j]| for coords [B,N,3] (float32/float64) on the GPU; stream is a cudaStream_t int.",
        py::arg("coords"), py::arg("out"), py::arg("B"), py::arg("N"), py::arg("sxb"), py::arg("sxn"), py::arg("sxc"),
        py::arg("sob"), py::arg("soi"), py::arg("soj"), py::arg("dtype"), py::arg("stream"));

  m.def("qformer_cross_attention_forward_cuda", &molm_fast::qformer_cross_attention_forward_cuda,
        "Q-Former cross-attention forward on the GPU: the CPU entry's arguments, then stream (cudaStream_t int).");
  m.def("qformer_cross_attention_backward_cuda", &molm_fast::qformer_cross_attention_backward_cuda,
        "Q-Former cross-attention backward on the GPU: the CPU entry's arguments, then stream (cudaStream_t int).");
}
