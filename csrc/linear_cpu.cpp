// linear on the CPU's AMX bf16 tile units, with the encoder's epilogues fused:
//   out = residual + act(bf16(x W^T + b))      x [M, K], W [N, K], b [N], residual and out [M, N], all bf16
// act is identity or exact (erf) GELU; every step rounds to bf16 where the unfused PyTorch sequence
// (F.linear -> F.gelu -> residual add, each a bf16 tensor) rounds, with fp32 accumulation over K.
//
// Why not oneDNN (what F.linear and mkldnn's linear call): at 2 threads it gives the Uni-Mol shapes with N = 512
// (fc2 2048 -> 512, out_proj 512 -> 512; M = 300-700 packed atoms) one thread's speed (benchmarks/notes/
// encoder_cpu_bf16.md). Here the N columns are split into one panel per thread (rows too when there are more
// threads than 32-column blocks), so both cores always work, and the GELU and residual add cost no extra pass.
//
// Layout: the weight is packed once (linear_pack_weight_cpu) into AMX's VNNI order, [N/16][K/2][16][2]: for
// 16 output columns, each pair of K values of a column side by side, so one B tile (16 K-pairs x 16 columns,
// 64 bytes a row) is 1 KB of contiguous memory. A tiles are read straight from x (16 rows x 32 K values).
// Micro-kernel: a 32 x 32 block of out in 4 fp32 C tiles, 2 A + 2 B tiles per 32-deep K step (8 of the 8 tile
// registers), then the epilogue on the block in AVX-512. N and K must be multiples of 32 (every Uni-Mol and
// Q-Former projection is); molm_fast/ops/linear.py sends other shapes to oneDNN.
// The path needs AMX-TILE + AMX-BF16 and the kernel's permission to use tile data (Linux >= 5.16,
// arch_prctl(ARCH_REQ_XCOMP_PERM)); linear_amx_usable() says whether it runs here (and is false under
// MOLM_FAST_CPU_GENERIC=1, like every AVX-512 path).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "common.h"
#include "simd_avx512.h"

#if MOLM_FAST_HAS_OPENMP
#include <omp.h>
#endif

#if MOLM_FAST_HAS_AVX512_PATH && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define MOLM_FAST_HAS_AMX_PATH 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define MOLM_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#define MOLM_AMX_INLINE MOLM_AMX __attribute__((always_inline)) inline
#else
#define MOLM_FAST_HAS_AMX_PATH 0
#endif

namespace molm_fast {
namespace {

constexpr const char* kOp = "linear_forward_cpu";

// Both entries' shape rule: whole 32 x 32 tiles of the weight (the packed layout and the micro-kernel need them).
void check_sizes(const char* op, int64_t N, int64_t K) {
  MOLM_CHECK(N > 0 && N % 32 == 0 && K > 0 && K % 32 == 0, op, "N and K must be positive multiples of 32, got N = ",
             N, ", K = ", K);
}

#if MOLM_FAST_HAS_AMX_PATH
// CPUID.(EAX=7, ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE; then ask Linux for the tile-data state
// (ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18), once per process.
bool amx_granted() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24))) return false;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// fp32 -> bf16 (round to nearest even; every AMX CPU has AVX512-BF16), and back: each epilogue step rounds where
// PyTorch's bf16 tensors do.
MOLM_AMX_INLINE __m256i to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
MOLM_AMX_INLINE __m512 from_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
MOLM_AMX_INLINE __m512 round_bf16(__m512 v) { return from_bf16(to_bf16(v)); }

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), the formula ATen's vectorised erf uses too.
MOLM_AMX_INLINE __m512 erf16(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 d = _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), ax, _mm512_set1_ps(1.0f));
  __m512 t = _mm512_rcp14_ps(d);  // 1 / d: 14 bits, then one Newton step (~2^-28)
  t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.0f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  for (const float c : {-1.453152027f, 1.421413741f, -0.284496736f, 0.254829592f})
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
  const __m512 e = avx512::exp16(_mm512_mul_ps(_mm512_mul_ps(ax, ax), _mm512_set1_ps(-1.0f)));
  const __m512 y = _mm512_fnmadd_ps(_mm512_mul_ps(p, t), e, _mm512_set1_ps(1.0f));  // erf(|x|)
  return _mm512_or_ps(y, _mm512_and_ps(x, _mm512_set1_ps(-0.0f)));                   // sign of x
}

MOLM_AMX_INLINE __m512 load_bf16(const uint16_t* p) {
  return from_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

struct Problem {
  const uint16_t *x, *w, *bias, *residual;
  uint16_t* out;
  int64_t M, N, K;
  int activation;  // 0: none, 1: exact GELU
};

// Rows [r0, r1) of a 32 x 32 block of fp32 accumulators (row stride 32) at out[m.., n..] -> out, with the epilogue.
MOLM_AMX void epilogue(const Problem& P, const float* acc, int64_t m, int64_t n, int64_t r0, int64_t r1) {
  const __m512 bias[2] = {P.bias ? load_bf16(P.bias + n) : _mm512_setzero_ps(),
                          P.bias ? load_bf16(P.bias + n + 16) : _mm512_setzero_ps()};
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t at = (m + r) * P.N + n + h * 16;
      __m512 v = _mm512_add_ps(_mm512_load_ps(acc + r * 32 + h * 16), bias[h]);
      if (P.activation == 0 && P.residual == nullptr) {  // the one rounding is the store's
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(P.out + at), to_bf16(v));
        continue;
      }
      v = round_bf16(v);
      if (P.activation == 1)
        v = round_bf16(_mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(0.5f)),
                                     _mm512_add_ps(erf16(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f))),
                                                   _mm512_set1_ps(1.0f))));
      if (P.residual != nullptr) v = _mm512_add_ps(load_bf16(P.residual + at), v);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(P.out + at), to_bf16(v));
    }
}

// A 32 x 32 block whose accumulators are stored and whose epilogue is still to run.
struct Pending {
  int64_t m = 0, n = 0, rows = 0;
};

// One thread's share: task t of (column panel p, row chunk c) pairs, t = thread, thread + threads, ...; within a
// panel, sub-panels of columns whose weights stay in L2 while every 32-row block of x passes them.
// Software-pipelined: block i's epilogue (AVX-512) runs a few rows per K step of block i + 1's tile products, so the
// vector units work while the tile unit does, and no vector load waits on the tile store just before it.
MOLM_AMX void amx_worker(const Problem& P, int thread, int threads) {
  const int64_t K = P.K, col_blocks = P.N / 32, row_blocks = (P.M + 31) / 32;
  const int64_t panels = std::min<int64_t>(threads, col_blocks);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(row_blocks, threads / panels));
  const int64_t rows_per_step = (32 + K / 32 - 1) / (K / 32);  // epilogue rows of the pending block per K step
  // columns whose weights (K x 2 bytes each) fill ~1 MB, half the L2 of an AMX core: x's rows stream past them
  const int64_t sub_panel = std::max<int64_t>(32, (int64_t{1} << 20) / (2 * K) / 32 * 32);
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;  // every tile: 16 rows x 64 bytes
  _tile_loadconfig(&cfg);
  alignas(64) float acc[2][32 * 32];  // the block being computed, and the pending one
  int cur = 0;
  Pending pending;                // rows == 0: none
  std::vector<uint16_t> tail;     // the last < 32 rows of x, zero-padded to 32 (tiles always read 16 rows)
  for (int64_t task = thread; task < panels * chunks; task += threads) {
    const int64_t p = task / chunks, c = task % chunks;
    const int64_t n0 = col_blocks * p / panels * 32, n1 = col_blocks * (p + 1) / panels * 32;
    const int64_t m0 = row_blocks * c / chunks * 32, m1 = std::min(P.M, row_blocks * (c + 1) / chunks * 32);
    for (int64_t s0 = n0, s1 = std::min(n1, n0 + sub_panel); s0 < n1; s0 = s1, s1 = std::min(n1, s1 + sub_panel)) {
      for (int64_t m = m0; m < m1; m += 32) {
        const int64_t rows = std::min<int64_t>(32, m1 - m);
        const uint16_t* a = P.x + m * K;
        if (rows < 32) {
          tail.assign(32 * K, 0);
          std::memcpy(tail.data(), a, rows * K * sizeof(uint16_t));
          a = tail.data();
        }
        for (int64_t n = s0; n < s1; n += 32) {
          const uint16_t* b0 = P.w + n / 16 * (K / 2) * 32;  // columns n .. n+15, then n+16 .. n+31
          const uint16_t* b1 = b0 + (K / 2) * 32;
          const float* prev = acc[cur ^ 1];
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (int64_t k = 0, r = 0; k < K; k += 32, r += rows_per_step) {
            _tile_loadd(4, a + k, K * 2);
            _tile_loadd(5, a + 16 * K + k, K * 2);
            _tile_loadd(6, b0 + k * 16, 64);
            _tile_loadd(7, b1 + k * 16, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
            if (r < pending.rows) epilogue(P, prev, pending.m, pending.n, r, std::min(r + rows_per_step, pending.rows));
          }
          _tile_stored(0, acc[cur], 128);
          _tile_stored(1, acc[cur] + 16, 128);
          _tile_stored(2, acc[cur] + 16 * 32, 128);
          _tile_stored(3, acc[cur] + 16 * 32 + 16, 128);
          pending = Pending{m, n, rows};
          cur ^= 1;
        }
      }
    }
  }
  epilogue(P, acc[cur ^ 1], pending.m, pending.n, 0, pending.rows);
  _tile_release();
}
#endif

}  // namespace

bool linear_amx_usable() {
#if MOLM_FAST_HAS_AMX_PATH
  return avx512_usable() && amx_granted();
#else
  return false;
#endif
}

void linear_pack_weight_cpu(uintptr_t weight, uintptr_t packed, int64_t N, int64_t K) {
  constexpr const char* op = "linear_pack_weight_cpu";
  MOLM_CHECK_PTR(weight, op, "weight");
  MOLM_CHECK_PTR(packed, op, "packed");
  check_sizes(op, N, K);
  const auto* w = reinterpret_cast<const uint16_t*>(weight);
  auto* p = reinterpret_cast<uint16_t*>(packed);
#pragma omp parallel for schedule(static)
  for (int64_t nb = 0; nb < N / 16; ++nb)
    for (int64_t kp = 0; kp < K / 2; ++kp)
      for (int64_t j = 0; j < 16; ++j)
        for (int64_t e = 0; e < 2; ++e) p[((nb * (K / 2) + kp) * 16 + j) * 2 + e] = w[(nb * 16 + j) * K + 2 * kp + e];
}

void linear_forward_cpu(uintptr_t x, uintptr_t packed_weight, uintptr_t bias, uintptr_t residual, uintptr_t out,
                        int64_t M, int64_t N, int64_t K, int activation) {
  MOLM_CHECK(linear_amx_usable(), kOp, "needs AMX-TILE + AMX-BF16 and the OS's permission to use them "
             "(linear_amx_usable() is false here); call F.linear instead");
  MOLM_CHECK_NONNEG(M, kOp, "M");
  check_sizes(kOp, N, K);
  MOLM_CHECK(activation == 0 || activation == 1, kOp, "activation must be 0 (none) or 1 (gelu), got ", activation);
  if (M == 0) return;
  MOLM_CHECK_PTR(x, kOp, "x");
  MOLM_CHECK_PTR(packed_weight, kOp, "packed_weight");
  MOLM_CHECK_PTR(out, kOp, "out");
#if MOLM_FAST_HAS_AMX_PATH
  const Problem P{reinterpret_cast<const uint16_t*>(x), reinterpret_cast<const uint16_t*>(packed_weight),
                  reinterpret_cast<const uint16_t*>(bias), reinterpret_cast<const uint16_t*>(residual),
                  reinterpret_cast<uint16_t*>(out), M, N, K, activation};
#if MOLM_FAST_HAS_OPENMP
#pragma omp parallel
  amx_worker(P, omp_get_thread_num(), omp_get_num_threads());
#else
  amx_worker(P, 0, 1);
#endif
#endif
}

}  // namespace molm_fast
