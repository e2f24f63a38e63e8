// The only PYBIND11_MODULE of molm_fast._C: one def and docstring per entry, no logic.
// Entries take raw data pointers (int), sizes and strides in elements; molm_fast/ops/<op>.py passes them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "molm_fast CPU kernels (C++17, OpenMP); no libtorch dependency";
  m.attr("__version__") = MOLM_FAST_VERSION;
  m.attr("has_openmp") = static_cast<bool>(MOLM_FAST_HAS_OPENMP);
  m.def("openmp_max_threads", &molm_fast::openmp_max_threads, "Threads an OpenMP parallel region will use (1 without OpenMP).");

  m.def("gaussian_pair_bias_forward_cpu", &molm_fast::gaussian_pair_bias_forward_cpu,
        "Fused Uni-Mol pair bias: (coords [T,3], tokens [T] int64, cu_seqlens [B+1] int32 or 0, cu_pairs [B+1] int64 "
        "or 0, mul, bias, means, stds, w1, b1, w2, b2 (contiguous, compute dtype), out, B, N, T, K, C, H, num_types, "
        "pad_idx, dtype, out_dtype); out is [B,H,N,N] padded or the packed pair tensor.");
  m.def("gaussian_pair_bias_backward_cpu", &molm_fast::gaussian_pair_bias_backward_cpu,
        "Backward of gaussian_pair_bias_forward_cpu: (grad, the forward's inputs, d_coords, d_mul, d_bias, d_means, "
        "d_stds, d_w1, d_b1, d_w2, d_b2, B, N, T, K, C, H, num_types, pad_idx, dtype); everything in the compute dtype.");

  m.def("gaussian_pair_bias_basis_cpu", &molm_fast::gaussian_pair_bias_basis_cpu,
        "Gaussians of every pair of query rows [t0, t1) as bf16 G [pairs, K] in pair order: (coords [T,3] fp32, "
        "tokens [T] int64, cu_seqlens [B+1] int32 or 0, cu_pairs [B+1] int64 or 0, mul, bias, means, stds (fp32), g, "
        "B, N, T, t0, t1, K, num_types, pad_idx).");
  m.def("gaussian_pair_bias_scatter_cpu", &molm_fast::gaussian_pair_bias_scatter_cpu,
        "gbf_proj output y [pairs, H] bf16 of rows [t0, t1) -> out [B,H,N,N] or the packed pair tensor (bf16), "
        "-inf on pad keys: (y, tokens, cu_seqlens, cu_pairs, out, B, N, T, t0, t1, H, pad_idx).");

  m.def("linear_amx_usable", &molm_fast::linear_amx_usable,
        "Whether linear_forward_cpu runs here: AMX-TILE + AMX-BF16, the OS's tile permission, and "
        "MOLM_FAST_CPU_GENERIC unset.");
  m.def("linear_pack_weight_cpu", &molm_fast::linear_pack_weight_cpu,
        "bf16 weight [N, K] -> AMX VNNI order [N/16][K/2][16][2] (same numel): (weight, packed, N, K); N, K % 32 == 0.");
  m.def("linear_forward_cpu", &molm_fast::linear_forward_cpu,
        "out [M, N] = residual + act(x W^T + b), bf16, rounding after each step like the unfused ops: (x [M, K], "
        "packed weight, bias [N] or 0, residual [M, N] or 0, out, M, N, K, activation 0 none / 1 gelu (erf)).",
        py::arg("x"), py::arg("packed_weight"), py::arg("bias"), py::arg("residual"), py::arg("out"), py::arg("M"),
        py::arg("N"), py::arg("K"), py::arg("activation"));

  m.def("pair_bias_attention_forward_cpu", &molm_fast::pair_bias_attention_forward_cpu,
        "logits = (q*scale) k^T + bias, out = dropout(softmax(logits)) v, row LSE; padded [B,H,N,*] or packed "
        "(cu_seqlens != 0); D: head dim of q, k; Dv: of v, out; logits may be 0 (not written); strides: 4 each for "
        "q, k, v, out, bias.",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("bias"), py::arg("out"), py::arg("logits"), py::arg("lse"),
        py::arg("cu_seqlens"), py::arg("B"), py::arg("H"), py::arg("N"), py::arg("D"), py::arg("Dv"), py::arg("strides"),
        py::arg("scale"), py::arg("dropout_p"), py::arg("seed"), py::arg("dtype"));
  m.def("pair_bias_attention_backward_cpu", &molm_fast::pair_bias_attention_backward_cpu,
        "dq, dk, dv, dbias (= dlogits incl. grad_logits, may be 0) from bias + LSE; strides: 4 each for q, k, v, "
        "out, bias, grad_out, dq, dk, dv.",
        py::arg("grad_out"), py::arg("grad_logits"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("bias"),
        py::arg("out"), py::arg("lse"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("dbias"),
        py::arg("cu_seqlens"), py::arg("B"), py::arg("H"), py::arg("N"), py::arg("D"), py::arg("strides"),
        py::arg("scale"), py::arg("dropout_p"), py::arg("seed"), py::arg("dtype"));

  m.def("pairwise_distance_forward_cpu", &molm_fast::pairwise_distance_forward_cpu,
        "out[b,i,j] = |x[b,i]-x[b,j]| for coords [B,N,3] (float32/float64), out [B,N,N] same dtype.",
        py::arg("coords"), py::arg("out"), py::arg("B"), py::arg("N"), py::arg("sxb"), py::arg("sxn"), py::arg("sxc"),
        py::arg("sob"), py::arg("soi"), py::arg("soj"), py::arg("dtype"));

  m.def("qformer_cross_attention_forward_cpu", &molm_fast::qformer_cross_attention_forward_cpu,
        "Q-Former cross-attention forward: (q, k, v, mask, cu_seqlens, out, lse, B, H, Q, N, D, scale, varlen, "
        "q strides (b,h,q), k strides (b,h,n), v strides (b,h,n), dtype); out [B,H,Q,D], lse [B,H,Q] fp32 contiguous.");
  m.def("qformer_cross_attention_backward_cpu", &molm_fast::qformer_cross_attention_backward_cpu,
        "Q-Former cross-attention backward: (q, k, v, mask, cu_seqlens, lse, dout, dq, dk, dv, B, H, Q, N, D, "
        "scale, varlen, q/k/v strides, dk/dv strides (b,h,n), dtype); out, dout, dq contiguous [B,H,Q,D].");
}

