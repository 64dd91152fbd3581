// Emulation stand-in for <mma.h> (test-only build of csrc/cuda on the CPU): nvcuda::wmma with the
// m16n16k16 shape (__half / __nv_bfloat16 operands) and the m16n16k8 shape (wmma::precision::tf32 operands
// stored as float, sm_80 and later), float accumulators.
//
// The model. A fragment's element-to-lane mapping is opaque on a GPU, so a kernel may only touch x[]
// elementwise (the same operation on every x[i], e.g. scaling or a fill); it may not assume which row or
// column x[i] is. Here every fragment has num_elements = 256, one per element of the 16 x 16 tile, row
// major. matrix_a / matrix_b fragments hold the whole tile in every lane. An accumulator fragment is spread
// over the warp as on a GPU: lane l owns the elements e with e % 32 == l; the others hold NaN in that lane,
// so a kernel that reads an element it does not own (a mapping it assumed) sees NaN, and a tile written by
// store_matrix_sync is complete only once every lane of the warp has stored its part.
//
// Warp-collective semantics: load_matrix_sync, store_matrix_sync and mma_sync are warp barriers, as
// __shfl_xor_sync is in cuda_emu.h. A lane reads (load) or writes (store) memory when it reaches the call,
// then waits for the rest of its warp; so a load that is not separated from other threads' shared-memory
// writes by __syncthreads() (or, within the warp, __syncwarp()) reads stale data, as it may on a GPU. Every
// call needs all 32 lanes of the warp (a partial warp is undefined behaviour on a GPU): the emulation fails
// otherwise. Pointers must be 256-bit aligned and ldm a multiple of 16 bytes, as the CUDA documentation
// requires; the emulation fails otherwise.
//
// Arithmetic: mma_sync computes d = a b + c in float, each product of two half / bfloat16 values (exact in
// float) added in k order. TF32 operands: the tensor cores read 10 of float's 23 mantissa bits, so each
// operand's low 13 bits are dropped (truncation, the hardware's behaviour for a value not first rounded
// with __float_to_tf32, which rounds to nearest, ties away from zero); products of TF32 values are exact
// in float. Tensor cores add the 16 products of a step in an unspecified order and
// precision, so tests compare against a reference with a tolerance, never bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../cuda_emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {
template <typename T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && (K == 16 || K == 8), "the emulation has the m16n16k16 and m16n16k8 shapes");
  static_assert(std::is_same_v<Use, accumulator>
                    ? std::is_same_v<T, float> && std::is_void_v<Layout>
                    : (K == 16 ? std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>
                               : std::is_same_v<T, precision::tf32>) &&
                          (std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>),
                "emulated fragments: matrix_a / matrix_b of __half or __nv_bfloat16 (m16n16k16) or of "
                "precision::tf32 (m16n16k8) with a layout, float accumulators without one");

 public:
  using element_type = T;
  using storage_element_type = typename detail::storage<T>::type;
  // Every element of the tile, row major: a is 16 x K, b is K x 16, the accumulator 16 x 16.
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : 16;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : 16;
  enum { num_elements = kRows * kCols };
  storage_element_type x[num_elements];
};

namespace detail {

constexpr int kTile = 16;

inline void check_pointer(const void* p, unsigned ldm, size_t element_bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu::fail(what);
  if ((ldm * element_bytes) % 16 != 0) emu::fail(what);
}

// Every call, once this lane has done its part: a barrier of the warp, which all 32 lanes must reach (a lane
// that has reached fewer collectives than this one skipped it, or exited).
inline void warp_collective(const char* what) {
  emu::Block& b = *emu::block;
  const int me = b.current, base = me - emu::lane_id();
  if (base + emu::kWarp > static_cast<int>(b.fibres.size())) emu::fail(what);
  const uint64_t reached = ++b.fibres[me].collectives;
  emu::yield(emu::State::kWarpBarrier);
  for (int t = base; t < base + emu::kWarp; ++t) {
    if (b.fibres[t].collectives < reached) emu::fail(what);
  }
}

inline bool owns(int e) { return e % emu::kWarp == emu::lane_id(); }

template <typename T> float widen(T v);
template <> inline float widen<__half>(__half v) { return __half2float(v); }
template <> inline float widen<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
// A TF32 operand as the tensor cores read it: the low 13 mantissa bits ignored (inf and NaN unchanged).
template <> inline float widen<float>(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits &= 0xFFFFE000u;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f,
                   const typename fragment<Use, M, N, K, T, Layout>::storage_element_type& v) {
  for (int e = 0; e < f.num_elements; ++e) {
    if constexpr (std::is_same_v<Use, accumulator>) {
      f.x[e] = detail::owns(e) ? v : std::numeric_limits<float>::quiet_NaN();
    } else {
      f.x[e] = v;
    }
  }
}

// matrix_a (row i, column k) and matrix_b (row k, column j): element (r, c) of the tile is at
// p[r * ldm + c] when row_major, p[c * ldm + r] when col_major.
template <typename Use, int K, typename T, typename Layout>
std::enable_if_t<!std::is_same_v<Use, accumulator>> load_matrix_sync(
    fragment<Use, 16, 16, K, T, Layout>& f, const typename fragment<Use, 16, 16, K, T, Layout>::storage_element_type* p,
    unsigned ldm) {
  using F = fragment<Use, 16, 16, K, T, Layout>;
  detail::check_pointer(p, ldm, sizeof(*p), "wmma::load_matrix_sync: pointer not 256-bit aligned or ldm not a "
                                            "multiple of 16 bytes");
  constexpr bool row = std::is_same_v<Layout, row_major>;
  for (int r = 0; r < F::kRows; ++r) {
    for (int c = 0; c < F::kCols; ++c) f.x[r * F::kCols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
  }
  detail::warp_collective("wmma::load_matrix_sync needs all 32 lanes of the warp");
}

template <int K>
void load_matrix_sync(fragment<accumulator, 16, 16, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
  detail::check_pointer(p, ldm, sizeof(float), "wmma::load_matrix_sync: pointer not 256-bit aligned or ldm not "
                                               "a multiple of 16 bytes");
  for (int e = 0; e < f.num_elements; ++e) {
    const int r = e / detail::kTile, c = e % detail::kTile;
    f.x[e] = detail::owns(e) ? (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r])
                             : std::numeric_limits<float>::quiet_NaN();
  }
  detail::warp_collective("wmma::load_matrix_sync needs all 32 lanes of the warp");
}

template <int K>
void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, K, float>& f, unsigned ldm, layout_t layout) {
  detail::check_pointer(p, ldm, sizeof(float), "wmma::store_matrix_sync: pointer not 256-bit aligned or ldm not "
                                               "a multiple of 16 bytes");
  for (int e = 0; e < f.num_elements; ++e) {
    if (!detail::owns(e)) continue;
    const int r = e / detail::kTile, c = e % detail::kTile;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
  detail::warp_collective("wmma::store_matrix_sync needs all 32 lanes of the warp");
}

template <int K, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, K, float>& d, const fragment<matrix_a, 16, 16, K, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, K, T, LayoutB>& b, const fragment<accumulator, 16, 16, K, float>& c) {
  float out[256];  // d may be c
  for (int e = 0; e < 256; ++e) {
    if (!detail::owns(e)) {
      out[e] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const int i = e / detail::kTile, j = e % detail::kTile;
    float acc = c.x[e];
    for (int k = 0; k < K; ++k) {
      acc += detail::widen(a.x[i * K + k]) * detail::widen(b.x[k * detail::kTile + j]);
    }
    out[e] = acc;
  }
  for (int e = 0; e < 256; ++e) d.x[e] = out[e];
  detail::warp_collective("wmma::mma_sync needs all 32 lanes of the warp");
}

// Round to TF32 as the device function does (cvt.rna.tf32.f32: to nearest, ties away from zero), kept in a
// float; inf and NaN unchanged.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits = (bits + 0x1000u) & 0xFFFFE000u;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

}  // namespace wmma
}  // namespace nvcuda
