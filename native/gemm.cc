#include "gemm.h"

// x86-64 only: elsewhere the addon builds without kernels and reports none (products stay on XNNPACK).
#if defined(__x86_64__) || defined(_M_X64)
#define MGLLAVA_X86 1
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "pool.h"

namespace {

// Cache blocking: a KC x NR slice of packed B stays in L1 while MC rows of packed A (L2) pass over it.
constexpr int KC = 256;
constexpr int MC = 96;
// Columns per work item: with the row groups below, enough items for every thread.
constexpr int NC = 512;

struct Isa {
  const char* name;
  int mr, nr;
  // c[mr, nr] (leading dimension ldc) = (accumulate ? c : 0) + a_panel[kc, mr]ᵀ · b_panel[kc, nr]
  void (*kernel)(int kc, const float* a, const float* b, float* c, int ldc, bool accumulate);
};

#ifdef MGLLAVA_X86
// The two micro-kernels are the same loop over different vector types; each needs its own definition because
// the target attribute (which instructions the compiler may emit) belongs to a function, not to a template argument.
template <int MR, int NV>
__attribute__((target("avx512f"))) void kernelAvx512(int kc, const float* a, const float* b, float* c, int ldc, bool accumulate) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
  for (int p = 0; p < kc; p++) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + p * NV * 16 + v * 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
      const __m512 ai = _mm512_set1_ps(a[p * MR + i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      float* dst = c + i * ldc + v * 16;
      _mm512_storeu_ps(dst, accumulate ? _mm512_add_ps(_mm512_loadu_ps(dst), acc[i][v]) : acc[i][v]);
    }
}

template <int MR, int NV>
__attribute__((target("avx2,fma"))) void kernelAvx2(int kc, const float* a, const float* b, float* c, int ldc, bool accumulate) {
  __m256 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[i][v] = _mm256_setzero_ps();
  for (int p = 0; p < kc; p++) {
    __m256 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) bv[v] = _mm256_loadu_ps(b + p * NV * 8 + v * 8);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
      const __m256 ai = _mm256_broadcast_ss(a + p * MR + i);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      float* dst = c + i * ldc + v * 8;
      _mm256_storeu_ps(dst, accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), acc[i][v]) : acc[i][v]);
    }
}

#ifndef MGLLAVA_AVX512_MR
#define MGLLAVA_AVX512_MR 12
#endif
#ifndef MGLLAVA_AVX512_NV
#define MGLLAVA_AVX512_NV 2
#endif

const Isa AVX512{"avx512", MGLLAVA_AVX512_MR, 16 * MGLLAVA_AVX512_NV, kernelAvx512<MGLLAVA_AVX512_MR, MGLLAVA_AVX512_NV>};
const Isa AVX2{"avx2", 6, 16, kernelAvx2<6, 2>};
#endif
const Isa NONE{"", 0, 0, nullptr};

#ifdef MGLLAVA_X86
bool supports(const Isa& candidate) {
  __builtin_cpu_init();
  if (&candidate == &AVX512) return __builtin_cpu_supports("avx512f");
  if (&candidate == &AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return false;
}

const Isa* best() { return supports(AVX512) ? &AVX512 : supports(AVX2) ? &AVX2 : &NONE; }
const Isa* named(const std::string& n) { return n == "avx512" ? &AVX512 : n == "avx2" ? &AVX2 : nullptr; }
#else
bool supports(const Isa&) { return false; }
const Isa* best() { return &NONE; }
const Isa* named(const std::string&) { return nullptr; }
#endif

// The kernel in use: the best this CPU has, or the one gemmSetIsa chose (tests run every kernel the CPU has).
const Isa*& current() {
  static const Isa* value = best();
  return value;
}

const Isa& isa() { return *current(); }

// One call at a time: the pool, the per-thread scratch and the kernel choice are process-wide, and the addon
// may be loaded by several worker_threads (each its own JS context) of one process.
std::mutex& callMutex() {
  static std::mutex value;
  return value;
}

Pool& pool() {
  static Pool value;
  return value;
}

// Per-thread packing buffers, grown on demand (only touched by their own thread during a call).
struct Scratch {
  std::vector<float> a, b, tile;
};
std::vector<Scratch>& scratch() {
  static std::vector<Scratch> value(1);
  return value;
}

// Element (i, p) of op(A) and (p, j) of op(B), given the stored operand and its flag.
inline float atA(const GemmArgs& g, const float* a, int i, int p) { return g.transA ? a[(size_t)p * g.m + i] : a[(size_t)i * g.k + p]; }

// Packs rows [i0, i0+mc) x depth [p0, p0+kc) of op(A) into panels of MR rows: dst[panel][p][r].
void packA(const GemmArgs& g, const float* a, int i0, int mc, int p0, int kc, int mr, float* dst) {
  for (int r0 = 0; r0 < mc; r0 += mr) {
    const int rows = std::min(mr, mc - r0);
    float* panel = dst + (size_t)r0 * kc;
    if (g.transA) {
      // op(A) row i is column i of the stored [K, M]: contiguous MR floats per depth step.
      for (int p = 0; p < kc; p++) {
        const float* src = a + (size_t)(p0 + p) * g.m + i0 + r0;
        float* out = panel + (size_t)p * mr;
        std::memcpy(out, src, rows * sizeof(float));
        for (int r = rows; r < mr; r++) out[r] = 0.f;
      }
    } else {
      for (int r = 0; r < mr; r++) {
        if (r < rows) {
          const float* src = a + (size_t)(i0 + r0 + r) * g.k + p0;
          for (int p = 0; p < kc; p++) panel[(size_t)p * mr + r] = src[p];
        } else {
          for (int p = 0; p < kc; p++) panel[(size_t)p * mr + r] = 0.f;
        }
      }
    }
  }
}

// Packs depth [p0, p0+kc) x columns [j0, j0+nc) of op(B) into panels of NR columns: dst[panel][p][c].
void packB(const GemmArgs& g, const float* b, int j0, int nc, int p0, int kc, int nr, float* dst) {
  for (int c0 = 0; c0 < nc; c0 += nr) {
    const int cols = std::min(nr, nc - c0);
    float* panel = dst + (size_t)c0 * kc;
    if (!g.transB) {
      for (int p = 0; p < kc; p++) {
        const float* src = b + (size_t)(p0 + p) * g.n + j0 + c0;
        float* out = panel + (size_t)p * nr;
        std::memcpy(out, src, cols * sizeof(float));
        for (int c = cols; c < nr; c++) out[c] = 0.f;
      }
    } else {
      // op(B) column j is row j of the stored [N, K].
      for (int c = 0; c < nr; c++) {
        if (c < cols) {
          const float* src = b + (size_t)(j0 + c0 + c) * g.k + p0;
          for (int p = 0; p < kc; p++) panel[(size_t)p * nr + c] = src[p];
        } else {
          for (int p = 0; p < kc; p++) panel[(size_t)p * nr + c] = 0.f;
        }
      }
    }
  }
}

// One work item: rows [i0, i1) x columns [j0, j1) of batch element e, over the whole depth.
void block(const GemmArgs& g, int e, int i0, int i1, int j0, int j1, Scratch& s) {
  const Isa& cpu = isa();
  const int mr = cpu.mr, nr = cpu.nr;
  const float* a = g.a + (size_t)(g.aIndex ? g.aIndex[e] : e) * g.m * g.k;
  const float* b = g.b + (size_t)(g.bIndex ? g.bIndex[e] : e) * g.k * g.n;
  float* c = g.c + (size_t)e * g.m * g.n;
  const int nc = j1 - j0;
  const int ncPadded = (nc + nr - 1) / nr * nr;
  s.b.resize((size_t)KC * ncPadded);
  s.a.resize((size_t)KC * ((MC + mr - 1) / mr * mr));
  s.tile.resize((size_t)mr * nr);
  for (int p0 = 0; p0 < g.k; p0 += KC) {
    const int kc = std::min(KC, g.k - p0);
    const bool accumulate = p0 > 0;
    packB(g, b, j0, nc, p0, kc, nr, s.b.data());
    for (int ib = i0; ib < i1; ib += MC) {
      const int mc = std::min(MC, i1 - ib);
      packA(g, a, ib, mc, p0, kc, mr, s.a.data());
      for (int jr = 0; jr < nc; jr += nr) {
        const int cols = std::min(nr, nc - jr);
        const float* bp = s.b.data() + (size_t)jr * kc;
        for (int ir = 0; ir < mc; ir += mr) {
          const int rows = std::min(mr, mc - ir);
          const float* ap = s.a.data() + (size_t)ir * kc;
          float* cp = c + (size_t)(ib + ir) * g.n + j0 + jr;
          if (rows == mr && cols == nr) {
            cpu.kernel(kc, ap, bp, cp, g.n, accumulate);
          } else {
            // Edge tile: full tile into scratch, then the valid part into C.
            cpu.kernel(kc, ap, bp, s.tile.data(), nr, false);
            for (int r = 0; r < rows; r++) {
              float* dst = cp + (size_t)r * g.n;
              const float* src = s.tile.data() + (size_t)r * nr;
              if (accumulate) {
                for (int q = 0; q < cols; q++) dst[q] += src[q];
              } else {
                std::memcpy(dst, src, cols * sizeof(float));
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace

const char* gemmIsa() { return isa().name; }

bool gemmSetIsa(const char* name) {
  std::lock_guard<std::mutex> lock(callMutex());
  const std::string n = name;
  const Isa* choice = n == "auto" ? best() : named(n);
  if (!choice || (choice != &NONE && !supports(*choice))) return false;
  current() = choice;
  return true;
}

void gemmSetThreads(int n) {
  std::lock_guard<std::mutex> lock(callMutex());
  n = std::max(1, n);
  pool().setThreads(n);
  scratch().resize(n);
}

int gemmThreads() {
  std::lock_guard<std::mutex> lock(callMutex());
  return pool().threads();
}

void gemm(const GemmArgs& g) {
  if (g.batch <= 0 || g.m <= 0 || g.n <= 0) return;
  std::lock_guard<std::mutex> lock(callMutex());
  if (g.k <= 0) {
    std::memset(g.c, 0, sizeof(float) * (size_t)g.batch * g.m * g.n);
    return;
  }
  const int mr = isa().mr;
  const int threads = pool().threads();
  const int colBlocks = (g.n + NC - 1) / NC;
  const int colWidth = (g.n + colBlocks - 1) / colBlocks;
  // Row groups: enough items that a thread the OS delays holds back little of the call; a group
  // repeats the packing of its B columns, so no more groups than that (>= 4 MR rows each).
  const double flops = 2.0 * g.m * g.n * g.k * g.batch;
  int rowGroups = 1;
  if (threads > 1 && flops > 4e6) {
    const int wanted = (4 * threads + g.batch * colBlocks - 1) / (g.batch * colBlocks);
    rowGroups = std::max(1, std::min(wanted, g.m / (4 * mr)));
  }
  const int rowHeight = ((g.m + rowGroups - 1) / rowGroups + mr - 1) / mr * mr;
  rowGroups = (g.m + rowHeight - 1) / rowHeight;
  const int items = g.batch * colBlocks * rowGroups;
  auto work = [&](int item, int thread) {
    const int e = item / (colBlocks * rowGroups);
    const int rest = item % (colBlocks * rowGroups);
    const int jb = rest / rowGroups, ig = rest % rowGroups;
    const int j0 = jb * colWidth, j1 = std::min(g.n, j0 + colWidth);
    const int i0 = ig * rowHeight, i1 = std::min(g.m, i0 + rowHeight);
    if (j0 < j1 && i0 < i1) block(g, e, i0, i1, j0, j1, scratch()[thread]);
  };
  if (threads > 1 && flops > 4e6) {
    pool().run(items, work);
  } else {
    for (int i = 0; i < items; i++) work(i, 0);
  }
}
