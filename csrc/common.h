// Shared helpers for molm_fast's C++ and CUDA entries: argument checks, size/stride structs, dtype codes,
// bf16 conversion, and the CUDA launch check. Entries take raw pointers (as integers) from Python, so the
// checks here are what keeps memory safe: every entry validates before it launches (flash-attention style).
#pragma once

#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

namespace molm_fast {

// dtype codes passed from Python (molm_fast/ops/_backend.py::DTYPE_CODES).
enum class DType : int { Float32 = 0, Float64 = 1, BFloat16 = 2, Float16 = 3 };

inline const char* dtype_name(int code) {
  switch (code) {
    case 0: return "float32";
    case 1: return "float64";
    case 2: return "bfloat16";
    case 3: return "float16";
    default: return "unknown";
  }
}

template <typename... Args>
inline std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// Throws std::invalid_argument (pybind11 turns it into ValueError) naming the op and what was wrong.
#define MOLM_CHECK(cond, op, ...)                                                         \
  do {                                                                                     \
    if (!(cond)) throw std::invalid_argument(::molm_fast::concat(op, ": ", __VA_ARGS__)); \
  } while (0)

#define MOLM_CHECK_PTR(ptr, op, name) MOLM_CHECK((ptr) != 0, op, name, " must not be a null pointer")

#define MOLM_CHECK_NONNEG(x, op, name) MOLM_CHECK((x) >= 0, op, name, " must be >= 0, got ", (x))

// bf16 <-> fp32 on the CPU: bf16 is the top half of an fp32, round-to-nearest-even on the way down.
inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu)) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

#ifdef __CUDACC__
#define MOLM_HOST_DEVICE __host__ __device__
#else
#define MOLM_HOST_DEVICE
#endif

// Philox4x32-10 uniform in [0, 1), bit-identical to Triton's tl.rand(seed, offset) and to
// molm_fast/ops/_random.py::philox_uniform: every backend's dropout draws the same mask from the same seed.
MOLM_HOST_DEVICE inline float philox_uniform(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const uint64_t pb = static_cast<uint64_t>(0xCD9E8D57u) * c2, pa = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0, n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb), c3 = static_cast<uint32_t>(pa), c0 = n0, c2 = n2;
    k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
  }
  int32_t x = static_cast<int32_t>(c0);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

#ifndef __CUDACC__
// exp for float without libm calls, so loops vectorise: Cody-Waite reduction + cephes' degree-6 polynomial
// (~2 ulp); exactly 0 below -87.3 (so exp(-inf) = 0), clamped at 88.
inline float fast_exp(float x) {
  const bool tiny = x < -87.3f;
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float e = p * __builtin_bit_cast(float, (static_cast<int>(n) + 127) << 23);
  return tiny ? 0.0f : e;
}
#endif

// Strides are in elements, as torch reports them.
struct Strides3 {
  int64_t s0, s1, s2;
};

}  // namespace molm_fast

// Hot CPU loops are compiled for several ISAs and picked at load time, so the portable wheel (x86-64-v2)
// still uses AVX2/AVX-512 where the CPU has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOLM_FAST_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MOLM_FAST_MULTIVERSION
#endif

#ifdef __CUDACC__
#include <cuda_runtime.h>
#define MOLM_CUDA_CHECK_LAUNCH(op)                                                                              \
  do {                                                                                                          \
    cudaError_t err__ = cudaGetLastError();                                                                     \
    if (err__ != cudaSuccess)                                                                                   \
      throw std::runtime_error(::molm_fast::concat(op, ": CUDA launch failed at ", __FILE__, ":", __LINE__, ": ", \
                                                   cudaGetErrorString(err__)));                                 \
  } while (0)
#endif
