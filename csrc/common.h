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
