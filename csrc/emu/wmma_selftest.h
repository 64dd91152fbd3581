// A tiny wmma kernel that tests the emulation of <mma.h> itself (tests/cuda_emu/emu_cases.py, through
// emu_api.cpp): D = 2 (A B) + C for one 16 x 16 x 16 tile, every layout, A and B staged through shared
// memory by both warps of a 64-thread block, so that leaving out the __syncthreads() between the staging
// and the fragment loads must give wrong results (the emulation sees the race a GPU may show).
#pragma once
#include <mma.h>

#include "cuda_emu.h"

namespace emu_selftest {

namespace wmma = nvcuda::wmma;

constexpr int kThreads = 64;
constexpr int kLdm = 24;  // elements per row of every matrix: 16 used + 8 padding (ldm need not be 16)

template <typename T, typename LayoutA, typename LayoutB>
void wmma_kernel(const T* a, const T* b, const float* c, float* d, int c_col, int d_col, int sync) {
  struct alignas(32) Staging {
    T a[16 * kLdm], b[16 * kLdm];
  };
  __shared__ Staging s;
  for (int e = threadIdx.x; e < 16 * kLdm; e += kThreads) {
    s.a[e] = a[e];
    s.b[e] = b[e];
  }
  if (sync) __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc, fc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, s.a, kLdm);
  wmma::load_matrix_sync(fb, s.b, kLdm);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::load_matrix_sync(fc, c, kLdm, c_col ? wmma::mem_col_major : wmma::mem_row_major);
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] = 2.0f * acc.x[i] + fc.x[i];  // elementwise only
  const int warp = threadIdx.x / 32;
  wmma::store_matrix_sync(d + warp * 16 * kLdm, acc, kLdm, d_col ? wmma::mem_col_major : wmma::mem_row_major);
}

template <typename T, typename LayoutA, typename LayoutB>
int run(const void* a, const void* b, const float* c, float* d, int c_col, int d_col, int sync) {
  emu::launch(wmma_kernel<T, LayoutA, LayoutB>, emu::Config{dim3(1), dim3(kThreads)}, static_cast<const T*>(a),
              static_cast<const T*>(b), c, d, c_col, d_col, sync);
  return cudaGetLastError();
}

template <typename T>
int run_layouts(int a_col, int b_col, const void* a, const void* b, const float* c, float* d, int c_col, int d_col,
                int sync) {
  using R = wmma::row_major;
  using C = wmma::col_major;
  if (a_col) {
    return b_col ? run<T, C, C>(a, b, c, d, c_col, d_col, sync) : run<T, C, R>(a, b, c, d, c_col, d_col, sync);
  }
  return b_col ? run<T, R, C>(a, b, c, d, c_col, d_col, sync) : run<T, R, R>(a, b, c, d, c_col, d_col, sync);
}

}  // namespace emu_selftest
