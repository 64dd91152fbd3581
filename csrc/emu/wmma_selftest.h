// A tiny wmma kernel that tests the emulation of <mma.h> itself (tests/cuda_emu/emu_cases.py, through
// emu_api.cpp): D = 2 (A B) + C for one 16 x 16 x K tile (K = 16 for half / bfloat16, 8 for TF32), every
// layout, A and B staged through shared memory by both warps of a 64-thread block, so that leaving out the
// __syncthreads() between the staging and the fragment loads must give wrong results (the emulation sees
// the race a GPU may show). TF32 operands are float; `round` passes them through __float_to_tf32 after the
// load (elementwise, as a kernel may), else the tensor cores' truncation applies.
#pragma once
#include <mma.h>

#include <type_traits>

#include "cuda_emu.h"

namespace emu_selftest {

namespace wmma = nvcuda::wmma;

constexpr int kThreads = 64;
constexpr int kLdm = 24;  // elements per row of every matrix: 16 used + 8 padding (ldm need not be 16)

template <typename T>
constexpr int kDepth = std::is_same_v<T, wmma::precision::tf32> ? 8 : 16;  // the shape's K
template <typename T>
using Stored = typename wmma::fragment<wmma::matrix_a, 16, 16, kDepth<T>, T, wmma::row_major>::storage_element_type;

template <typename T, typename LayoutA, typename LayoutB>
void wmma_kernel(const Stored<T>* a, const Stored<T>* b, const float* c, float* d, int c_col, int d_col, int sync,
                 int round) {
  constexpr int K = kDepth<T>;
  struct alignas(32) Staging {
    Stored<T> a[16 * kLdm], b[16 * kLdm];
  };
  __shared__ Staging s;
  for (int e = threadIdx.x; e < 16 * kLdm; e += kThreads) {
    s.a[e] = a[e];
    s.b[e] = b[e];
  }
  if (sync) __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, K, T, LayoutA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, K, T, LayoutB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, K, float> acc, fc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, s.a, kLdm);
  wmma::load_matrix_sync(fb, s.b, kLdm);
  if constexpr (std::is_same_v<T, wmma::precision::tf32>) {
    if (round) {
      for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
      for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
    }
  }
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::load_matrix_sync(fc, c, kLdm, c_col ? wmma::mem_col_major : wmma::mem_row_major);
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] = 2.0f * acc.x[i] + fc.x[i];  // elementwise only
  const int warp = threadIdx.x / 32;
  wmma::store_matrix_sync(d + warp * 16 * kLdm, acc, kLdm, d_col ? wmma::mem_col_major : wmma::mem_row_major);
}

template <typename T, typename LayoutA, typename LayoutB>
int run(const void* a, const void* b, const float* c, float* d, int c_col, int d_col, int sync, int round) {
  emu::launch(wmma_kernel<T, LayoutA, LayoutB>, emu::Config{dim3(1), dim3(kThreads)}, static_cast<const Stored<T>*>(a),
              static_cast<const Stored<T>*>(b), c, d, c_col, d_col, sync, round);
  return cudaGetLastError();
}

template <typename T>
int run_layouts(int a_col, int b_col, const void* a, const void* b, const float* c, float* d, int c_col, int d_col,
                int sync, int round = 0) {
  using R = wmma::row_major;
  using C = wmma::col_major;
  if (a_col) {
    return b_col ? run<T, C, C>(a, b, c, d, c_col, d_col, sync, round)
                 : run<T, C, R>(a, b, c, d, c_col, d_col, sync, round);
  }
  return b_col ? run<T, R, C>(a, b, c, d, c_col, d_col, sync, round) : run<T, R, R>(a, b, c, d, c_col, d_col, sync, round);
}

}  // namespace emu_selftest
