// AVX-512 building blocks for the CPU kernels' fast paths (x86-64 + GCC/Clang only): every function here is
// compiled for AVX-512 (F, BW, VL, DQ) whatever the build's -march, so the portable wheel carries it; a kernel
// calls it only after avx512_usable() said yes at run time, and keeps its generic loop for every other CPU
// (AVX2-only AMD, older Intel) and for MOLM_FAST_CPU_GENERIC=1 (set by the tests to check the generic loop here).
// fp32 math; bf16 in and out with round-to-nearest-even (NaN kept), the same rounding as common.h.
#pragma once

#include <cstdlib>

#include "common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOLM_FAST_HAS_AVX512_PATH 1
#include <immintrin.h>

#define MOLM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define MOLM_AVX512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"), always_inline)) inline

namespace molm_fast {

// True when the CPU runs AVX-512 F/BW/VL/DQ and MOLM_FAST_CPU_GENERIC is unset or "0" (read on every call, so a
// test can flip it between calls).
inline bool avx512_usable() {
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const char* env = std::getenv("MOLM_FAST_CPU_GENERIC");
  return cpu && !(env != nullptr && env[0] != '\0' && !(env[0] == '0' && env[1] == '\0'));
}

namespace avx512 {

// 16 values (j < n valid) -> fp32; lanes past n read as 0.
MOLM_AVX512_INLINE __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
MOLM_AVX512_INLINE __m512 load16(const uint16_t* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// fp32 -> bf16, round to nearest even, NaN stays NaN (common.h float_to_bf16, 16 at a time).
MOLM_AVX512_INLINE __m256i to_bf16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}

MOLM_AVX512_INLINE void store16(float* p, __m512 x, __mmask16 m) { _mm512_mask_storeu_ps(p, m, x); }
MOLM_AVX512_INLINE void store16(uint16_t* p, __m512 x, __mmask16 m) { _mm256_mask_storeu_epi16(p, m, to_bf16(x)); }

// common.h fast_exp, 16 lanes: Cody-Waite reduction + cephes' degree-6 polynomial; 0 below -87.3 (exp(-inf) = 0).
MOLM_AVX512_INLINE __m512 exp16(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~tiny), _mm512_scalef_ps(p, n));
}

// log for x >= 0 (cephes logf, ~1 ulp): x = m 2^e with m in [sqrt(1/2), sqrt(2)); log(0) = -inf.
MOLM_AVX512_INLINE __m512 log16(__m512 x) {
  const __m512 m1 = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
  __m512 e = _mm512_getexp_ps(x);
  const __mmask16 big = _mm512_cmp_ps_mask(m1, _mm512_set1_ps(1.41421356237f), _CMP_GE_OQ);
  const __m512 f = _mm512_mask_fmadd_ps(m1, big, _mm512_set1_ps(0.5f), _mm512_set1_ps(-1.0f));  // m - 1
  const __m512 m = _mm512_mask_mov_ps(_mm512_sub_ps(m1, _mm512_set1_ps(1.0f)), big, f);
  e = _mm512_mask_add_ps(e, big, e, _mm512_set1_ps(1.0f));
  const __m512 z = _mm512_mul_ps(m, m);
  __m512 y = _mm512_set1_ps(7.0376836292E-2f);
  for (const float c : {-1.1514610310E-1f, 1.1676998740E-1f, -1.2420140846E-1f, 1.4249322787E-1f,
                        -1.6668057665E-1f, 2.0000714765E-1f, -2.4999993993E-1f, 3.3333331174E-1f})
    y = _mm512_fmadd_ps(y, m, _mm512_set1_ps(c));
  y = _mm512_mul_ps(_mm512_mul_ps(y, m), z);
  y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
  y = _mm512_fmadd_ps(z, _mm512_set1_ps(-0.5f), y);
  const __m512 r = _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), _mm512_add_ps(m, y));
  const __mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_EQ_OQ);
  return _mm512_mask_mov_ps(r, zero, _mm512_set1_ps(-__builtin_inff()));
}

// In-register transpose of a 16 x 16 fp32 tile: r[i] lane j -> r[j] lane i.
MOLM_AVX512_INLINE void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xDD);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
}

// The 8 horizontal sums of a[0..7] -> one 8-lane vector (s[d] = sum of a[d]'s 16 lanes), 24 shuffles and adds.
MOLM_AVX512_INLINE __m256 hsum8(const __m512* a) {
  __m512 t[4];
  for (int i = 0; i < 4; ++i)  // per 128-bit chunk: [a2i, a2i+1, a2i, a2i+1] partials
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  __m512 u[2];
  for (int i = 0; i < 2; ++i) {  // per chunk: [a4i .. a4i+3] partials
    const __m512d x = _mm512_castps_pd(t[2 * i]), y = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // chunks of u0 hold a0..a3, of u1 a4..a7: add chunk pairs, then the remaining pair
  const __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 w = _mm512_add_ps(_mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(0, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(0, 0, 3, 1)));
  return _mm512_castps512_ps256(w);
}

}  // namespace avx512
}  // namespace molm_fast
#else
#define MOLM_FAST_HAS_AVX512_PATH 0
namespace molm_fast {
inline bool avx512_usable() { return false; }
}  // namespace molm_fast
#endif
