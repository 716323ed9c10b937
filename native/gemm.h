// Single-precision GEMM for the wasm kernel pack: C = op(A)·op(B), row-major, over a batch with
// broadcasting, on AVX-512 or AVX2+FMA, split over a small thread pool.
#pragma once
#include <cstdint>

struct GemmArgs {
  const float* a;  // batch elements of M*K floats ([M,K], or [K,M] when transA)
  const float* b;  // batch elements of K*N floats ([K,N], or [N,K] when transB)
  float* c;        // batch elements of M*N floats, overwritten
  int m, k, n;
  bool transA, transB;
  int batch;
  const int32_t* aIndex;  // per output batch element, which element of a (nullptr: the same index)
  const int32_t* bIndex;  // likewise for b
};

// "avx512", "avx2" or "" when this CPU has neither (then gemm() must not be called).
const char* gemmIsa();
// Use the kernel "avx512", "avx2" or "auto" (the best this CPU has); false if the CPU lacks it.
bool gemmSetIsa(const char* name);
void gemm(const GemmArgs& args);
void gemmSetThreads(int n);
int gemmThreads();
