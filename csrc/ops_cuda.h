// Declarations of every CUDA entry bound in bindings_cuda.cu. One block per op. `stream` is a cudaStream_t
// passed as an integer (torch.cuda.current_stream().cuda_stream).
#pragma once
#include <cstdint>
#include <vector>

namespace molm_fast {

// gaussian_pair_bias.cu
void gaussian_pair_bias_forward_cuda(uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                     uintptr_t work, uintptr_t mul, uintptr_t bias, uintptr_t means, uintptr_t stds,
                                     uintptr_t w1, uintptr_t b1, uintptr_t w2, uintptr_t b2, uintptr_t w1t,
                                     uintptr_t w2t, uintptr_t out, int64_t tiles, int64_t N, int64_t chunks, int64_t K, int64_t C, int64_t H,
                                     int64_t num_types, int64_t pad_idx, int out_dtype, uintptr_t stream);
void gaussian_pair_bias_backward_cuda(uintptr_t grad, uintptr_t coords, uintptr_t tokens, uintptr_t cu_seqlens,
                                      uintptr_t cu_pairs, uintptr_t work, uintptr_t mul, uintptr_t bias,
                                      uintptr_t means, uintptr_t stds, uintptr_t w1, uintptr_t b1, uintptr_t w2,
                                      uintptr_t b2, uintptr_t w1t, uintptr_t w2t, uintptr_t d_coords, uintptr_t d_mul, uintptr_t d_bias,
                                      uintptr_t d_means, uintptr_t d_stds, uintptr_t d_w1, uintptr_t d_b1,
                                      uintptr_t d_w2, uintptr_t d_b2, int64_t tiles, int64_t N, int64_t chunks,
                                      int64_t K, int64_t C, int64_t H, int64_t num_types, int64_t pad_idx,
                                      uintptr_t stream);

// pair_bias_attention.cu
void pair_bias_attention_forward_cuda(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t bias, uintptr_t out,
                                      uintptr_t logits, uintptr_t lse, uintptr_t cu_seqlens, uintptr_t cu_pairs,
                                      int64_t B, int64_t H, int64_t N, int64_t D,
                                      const std::vector<int64_t>& strides, double scale, double dropout_p,
                                      uint64_t seed, int dtype, uintptr_t stream);
void pair_bias_attention_backward_cuda(uintptr_t grad_out, uintptr_t grad_logits, uintptr_t q, uintptr_t k,
                                       uintptr_t v, uintptr_t bias, uintptr_t out, uintptr_t lse, uintptr_t dq,
                                       uintptr_t dk, uintptr_t dv, uintptr_t dbias, uintptr_t cu_seqlens,
                                       uintptr_t cu_pairs, int64_t B, int64_t H, int64_t N, int64_t D,
                                       const std::vector<int64_t>& strides, double scale, double dropout_p,
                                       uint64_t seed, int dtype, uintptr_t stream);

// pairwise_distance.cu
void pairwise_distance_forward_cuda(uintptr_t coords, uintptr_t out, int64_t B, int64_t N, int64_t sxb, int64_t sxn,
                                    int64_t sxc, int64_t sob, int64_t soi, int64_t soj, int dtype, uintptr_t stream);

// qformer_cross_attention.cu
void qformer_cross_attention_forward_cuda(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t cu_seqlens,
                                          uintptr_t out, uintptr_t lse, int64_t B, int64_t H, int64_t Q, int64_t N,
                                          int64_t D, double scale, int varlen, int64_t sqb, int64_t sqh, int64_t sqq,
                                          int64_t skb, int64_t skh, int64_t skn, int64_t svb, int64_t svh,
                                          int64_t svn, int dtype, uintptr_t stream);
void qformer_cross_attention_backward_cuda(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t cu_seqlens,
                                           uintptr_t lse, uintptr_t dout, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                                           int64_t B, int64_t H, int64_t Q, int64_t N, int64_t D, double scale,
                                           int varlen, int64_t sqb, int64_t sqh, int64_t sqq, int64_t skb, int64_t skh,
                                           int64_t skn, int64_t svb, int64_t svh, int64_t svn, int64_t sdkb,
                                           int64_t sdkh, int64_t sdkn, int dtype, uintptr_t stream);

}  // namespace molm_fast
