// Declarations of every CPU entry bound in bindings.cpp. One block per op, in the op's own file's order.
#pragma once
#include <cstdint>
#include <vector>

namespace molm_fast {

// runtime_cpu.cpp
int openmp_max_threads();

// gaussian_pair_bias_cpu.cpp
void gaussian_pair_bias_forward_cpu(uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                    uintptr_t mul, uintptr_t bias, uintptr_t means, uintptr_t stds, uintptr_t w1,
                                    uintptr_t b1, uintptr_t w2, uintptr_t b2, uintptr_t out, int64_t B, int64_t N,
                                    int64_t T, int64_t K, int64_t C, int64_t H, int64_t num_types, int64_t pad_idx,
                                    int dtype, int out_dtype);
void gaussian_pair_bias_backward_cpu(uintptr_t grad, uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens,
                                     uintptr_t cu_pairs, uintptr_t mul, uintptr_t bias, uintptr_t means,
                                     uintptr_t stds, uintptr_t w1, uintptr_t b1, uintptr_t w2, uintptr_t b2,
                                     uintptr_t d_coords, uintptr_t d_mul, uintptr_t d_bias, uintptr_t d_means,
                                     uintptr_t d_stds, uintptr_t d_w1, uintptr_t d_b1, uintptr_t d_w2, uintptr_t d_b2,
                                     int64_t B, int64_t N, int64_t T, int64_t K, int64_t C, int64_t H,
                                     int64_t num_types, int64_t pad_idx, int dtype);

// gaussian_pair_bias_gemm_cpu.cpp (bf16 parameters: the MLP runs on the CPU's bf16 GEMMs in between)
void gaussian_pair_bias_basis_cpu(uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                  uintptr_t mul, uintptr_t bias, uintptr_t means, uintptr_t stds, uintptr_t g,
                                  int64_t B, int64_t N, int64_t T, int64_t t0, int64_t t1, int64_t K,
                                  int64_t num_types, int64_t pad_idx);
void gaussian_pair_bias_scatter_cpu(uintptr_t y, uintptr_t tokens, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                    uintptr_t out, int64_t B, int64_t N, int64_t T, int64_t t0, int64_t t1, int64_t H,
                                    int64_t pad_idx);

// linear_cpu.cpp (AMX bf16 GEMM with the encoder's epilogues)
bool linear_amx_usable();
void linear_pack_weight_cpu(uintptr_t weight, uintptr_t packed, int64_t N, int64_t K);
void linear_forward_cpu(uintptr_t x, uintptr_t packed_weight, uintptr_t bias, uintptr_t residual, uintptr_t out,
                        int64_t M, int64_t N, int64_t K, int activation);

// pair_bias_attention_cpu.cpp
void pair_bias_attention_forward_cpu(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t bias, uintptr_t out,
                                     uintptr_t logits, uintptr_t lse, uintptr_t cu_seqlens, int64_t B, int64_t H,
                                     int64_t N, int64_t D, int64_t Dv, const std::vector<int64_t>& strides,
                                     double scale, double dropout_p, uint64_t seed, int dtype);
void pair_bias_attention_backward_cpu(uintptr_t grad_out, uintptr_t grad_logits, uintptr_t q, uintptr_t k,
                                      uintptr_t v, uintptr_t bias, uintptr_t out, uintptr_t lse, uintptr_t dq,
                                      uintptr_t dk, uintptr_t dv, uintptr_t dbias, uintptr_t cu_seqlens, int64_t B,
                                      int64_t H, int64_t N, int64_t D, const std::vector<int64_t>& strides,
                                      double scale, double dropout_p, uint64_t seed, int dtype);

// pairwise_distance_cpu.cpp
void pairwise_distance_forward_cpu(uintptr_t coords, uintptr_t out, int64_t B, int64_t N, int64_t sxb, int64_t sxn,
                                   int64_t sxc, int64_t sob, int64_t soi, int64_t soj, int dtype);

// qformer_cross_attention_cpu.cpp
void qformer_cross_attention_forward_cpu(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t cu_seqlens,
                                         uintptr_t out, uintptr_t lse, int64_t B, int64_t H, int64_t Q, int64_t N,
                                         int64_t D, double scale, int varlen, int64_t sqb, int64_t sqh, int64_t sqq,
                                         int64_t skb, int64_t skh, int64_t skn, int64_t svb, int64_t svh, int64_t svn,
                                         int dtype);
void qformer_cross_attention_backward_cpu(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t cu_seqlens,
                                          uintptr_t lse, uintptr_t dout, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                                          int64_t B, int64_t H, int64_t Q, int64_t N, int64_t D, double scale,
                                          int varlen, int64_t sqb, int64_t sqh, int64_t sqq, int64_t skb, int64_t skh,
                                          int64_t skn, int64_t svb, int64_t svh, int64_t svn,
                                          int64_t sdkb, int64_t sdkh, int64_t sdkn, int dtype);

}  // namespace molm_fast
