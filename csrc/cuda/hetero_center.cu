// CUDA kernels of vtreid.ops.modality_centers / hetero_center_loss (formulas in kernels/hetero_center.py).
// Forward: one 64-thread block per (class slot, feature set, 64-feature slice); a thread owns a feature,
// walks the slot's samples in batch order (staged in shared memory; the feature loads coalesce across
// threads), and the slice's five per-class scalars are reduced with a fixed shared-memory tree; with more
// than one slice, one thread per class sums them in slice order. Backward: one thread per (sample, set,
// feature).
// No atomics anywhere: bitwise reproducible. Class slots: two O(N^2) counting kernels (kernels/hetero_center.py
// gives the formulas), one thread per sample or sorted position, the labels staged through shared memory.
#include "common.cuh"
#include "launch.h"

namespace vtreid::cuda {
namespace {

constexpr int kThreads = 256;      // backward, combine: one thread per (sample, feature) or per class
constexpr int kSliceThreads = 64;  // forward: one feature of a slice per thread
constexpr int kStaged = 256;       // forward: samples of a slot staged in shared memory

// Features per forward block, then slices on grid axis z (each thread strides by the grid's width past
// 65535 slices). A class's walk over its samples is serial, so the features are split to fill the GPU:
// at the HC preset's shape (24 classes, E = 512) 64-feature slices give 192 busy blocks, where one block
// per class gave 24 on 132 SMs (kernels/hetero_center.py makes the same split).
int64_t fwd_slices(int64_t dim) {
  const int64_t slices = (dim + kSliceThreads - 1) / kSliceThreads;
  return slices < 1 ? 1 : slices > kMaxGridYZ ? kMaxGridYZ : slices;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kSliceThreads)
centers_fwd_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ order, const int64_t* __restrict__ seg,
                   const int32_t* __restrict__ mod, typename Acc<scalar_t>::type* __restrict__ hinge,
                   typename Acc<scalar_t>::type* __restrict__ centers, typename Acc<scalar_t>::type* __restrict__ vars,
                   int64_t* __restrict__ counts, typename Acc<scalar_t>::type* __restrict__ stats,
                   typename Acc<scalar_t>::type* __restrict__ partials, int64_t n, int64_t dim, int metric,
                   bool strong, typename Acc<scalar_t>::type margin) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ acc_t partial[5][kSliceThreads];
  // The slot's first kStaged samples and their modality, staged by one parallel load: every thread walks
  // them once per feature, and read from global memory each step waited on order[p], then mod[order[p]].
  // Samples past them (a class of more than 256) are read as before; the sums run in the same order.
  __shared__ int64_t staged_order[kStaged];
  __shared__ bool staged_ir[kStaged];
  const int64_t k = blockIdx.x, s = blockIdx.y, slice = blockIdx.z, slices = gridDim.z;
  const int tid = threadIdx.x;
  const int64_t start = seg[k], end = seg[k + 1];
  const int64_t staged_end = end - start < kStaged ? end : start + kStaged;
  for (int64_t p = start + tid; p < staged_end; p += kSliceThreads) {
    const int64_t j = order[p];
    staged_order[p - start] = j;
    staged_ir[p - start] = mod[j] != 0;
  }
  __syncthreads();
  const auto sample = [&](int64_t p, int64_t& j) -> bool {  // j = order[p]; whether it is infrared
    if (p < staged_end) {
      j = staged_order[p - start];
      return staged_ir[p - start];
    }
    j = order[p];
    return mod[j] != 0;
  };
  int64_t n_vis = 0, n_ir = 0;
  for (int64_t p = start; p < end; ++p) {
    int64_t j;
    (sample(p, j) ? n_ir : n_vis) += 1;
  }
  const acc_t inv_vis = acc_t(1) / (n_vis > 0 ? n_vis : 1), inv_ir = acc_t(1) / (n_ir > 0 ? n_ir : 1);
  const scalar_t* xs = x + s * n * dim;
  acc_t* c = centers + (s * n + k) * 2 * dim;
  acc_t* v = vars + (s * n + k) * 2 * dim;
  acc_t diff_sq = 0, dot = 0, vis_sq = 0, ir_sq = 0, var_diff_sq = 0;
  for (int64_t d = slice * kSliceThreads + tid; d < dim; d += slices * kSliceThreads) {
    acc_t sum_vis = 0, sum_ir = 0;
    for (int64_t p = start; p < end; ++p) {
      int64_t j;
      const bool ir = sample(p, j);
      const acc_t value = to_acc(xs[j * dim + d]);
      if (ir) sum_ir += value; else sum_vis += value;
    }
    const acc_t cv = sum_vis * inv_vis, ci = sum_ir * inv_ir;
    c[d] = cv;
    c[dim + d] = ci;
    diff_sq += (cv - ci) * (cv - ci);
    dot += cv * ci;
    vis_sq += cv * cv;
    ir_sq += ci * ci;
    if (strong) {
      acc_t dev_vis = 0, dev_ir = 0;
      for (int64_t p = start; p < end; ++p) {
        int64_t j;
        const bool ir = sample(p, j);
        const acc_t value = to_acc(xs[j * dim + d]);
        if (ir) dev_ir += (value - ci) * (value - ci); else dev_vis += (value - cv) * (value - cv);
      }
      const acc_t vv = dev_vis * inv_vis, vi = dev_ir * inv_ir;
      v[d] = vv;
      v[dim + d] = vi;
      var_diff_sq += (vv - vi) * (vv - vi);
    } else {
      v[d] = 0;
      v[dim + d] = 0;
    }
  }
  partial[0][tid] = diff_sq; partial[1][tid] = dot; partial[2][tid] = vis_sq;
  partial[3][tid] = ir_sq; partial[4][tid] = var_diff_sq;
  __syncthreads();
  for (int stride = kSliceThreads / 2; stride > 0; stride >>= 1) {
    if (tid < stride) {
#pragma unroll
      for (int q = 0; q < 5; ++q) partial[q][tid] += partial[q][tid + stride];
    }
    __syncthreads();
  }
  if (tid == 0) {
    // one slice: the class is done here; more: centers_combine_kernel sums the slices in order
    acc_t* out = slices == 1 ? stats + (s * n + k) * 5 : partials + ((s * n + k) * slices + slice) * 5;
    acc_t st[5];
#pragma unroll
    for (int q = 0; q < 5; ++q) out[q] = st[q] = partial[q][0];
    if (slices == 1) hinge[s * n + k] = class_hinge(st, n_vis, n_ir, metric, margin);
    if (s == 0 && slice == 0) {
      counts[2 * k] = n_vis;
      counts[2 * k + 1] = n_ir;
    }
  }
}

// One thread per (slot, set): the class's five scalars summed over its slices in slice order, and its hinge.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
centers_combine_kernel(const acc_t* __restrict__ partials, const int64_t* __restrict__ counts,
                       acc_t* __restrict__ hinge, acc_t* __restrict__ stats, int64_t n, int64_t slices, int metric,
                       acc_t margin) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (k >= n) return;
  const int64_t sk = static_cast<int64_t>(blockIdx.y) * n + k;
  acc_t st[5] = {0, 0, 0, 0, 0};
  for (int64_t t = 0; t < slices; ++t) {
#pragma unroll
    for (int q = 0; q < 5; ++q) st[q] += partials[(sk * slices + t) * 5 + q];
  }
#pragma unroll
  for (int q = 0; q < 5; ++q) stats[sk * 5 + q] = st[q];
  hinge[sk] = class_hinge(st, counts[2 * k], counts[2 * k + 1], metric, margin);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
centers_bwd_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ slot, const int32_t* __restrict__ mod,
                   const typename Acc<scalar_t>::type* __restrict__ hinge,
                   const typename Acc<scalar_t>::type* __restrict__ centers,
                   const typename Acc<scalar_t>::type* __restrict__ vars, const int64_t* __restrict__ counts,
                   const typename Acc<scalar_t>::type* __restrict__ stats,
                   const typename Acc<scalar_t>::type* __restrict__ grad_hinge, int64_t gh_stride_s,
                   int64_t gh_stride_n, const typename Acc<scalar_t>::type* __restrict__ grad_centers,
                   scalar_t* __restrict__ grad_x, int64_t n, int64_t dim, int metric, bool strong) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t j = blockIdx.x, s = blockIdx.y;
  const int64_t d = static_cast<int64_t>(blockIdx.z) * kThreads + threadIdx.x;
  if (d >= dim) return;
  const int64_t k = slot[j];
  const int m = mod[j] != 0 ? 1 : 0;  // any non-zero value is infrared: never an index past 1
  const int64_t sk = s * n + k;
  const int64_t count = counts[2 * k + m];
  const acc_t inv_n = acc_t(1) / (count > 0 ? count : 1);
  // The hinge passes gradient where it is active or NaN, as relu, and only for a class seen in both
  // modalities (the sample's own has count >= 1; a one-modality class's hinge is 0 or NaN, times 0).
  // An inactive hinge (or an unused one, passed as 0) adds no term at all: not 0 * a NaN centre.
  const bool live = hinge[sk] != acc_t(0);
  const bool passes = live && counts[2 * k + 1 - m] > 0;
  const acc_t g = passes ? grad_hinge[s * gh_stride_s + k * gh_stride_n] : acc_t(0);
  const acc_t cm = centers[(sk * 2 + m) * dim + d], co = centers[(sk * 2 + 1 - m) * dim + d];
  acc_t own = 2, other = 2;  // d dist / d c_m = own * c_m - other * c_o
  if (metric == kCosine) {
    const acc_t* st = stats + sk * 5;
    const acc_t norm_m = sqrt(st[2 + m]);
    const acc_t inv_m = inverse_norm(st[2 + m]);
    const acc_t inv_o = inverse_norm(st[3 - m]);
    own = norm_m > acc_t(kCosineEps) ? st[1] * inv_m * inv_o * inv_m * inv_m : acc_t(0);
    other = inv_m * inv_o;
  }
  acc_t grad = live ? g * (own * cm - other * co) : acc_t(0);
  if (strong && live) {
    const acc_t vm = vars[(sk * 2 + m) * dim + d], vo = vars[(sk * 2 + 1 - m) * dim + d];
    grad += g * acc_t(4) * (vm - vo) * (to_acc(x[(s * n + j) * dim + d]) - cm);
  }
  if (grad_centers != nullptr) grad += grad_centers[(sk * 2 + m) * dim + d];
  grad_x[(s * n + j) * dim + d] = from_acc<scalar_t, acc_t>(grad * inv_n);
}

template <typename scalar_t>
cudaError_t fwd_typed(const void* x, const int64_t* order, const int64_t* seg, const int32_t* mod, void* hinge,
                      void* centers, void* vars, int64_t* counts, void* stats, void* workspace, int64_t sets,
                      int64_t n, int64_t dim, int metric, bool strong, double margin, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if (n > kMaxGridX || sets > kMaxGridYZ) return cudaErrorInvalidConfiguration;
  const int64_t slices = fwd_slices(dim);
  if (slices > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(sets), static_cast<unsigned>(slices));
  centers_fwd_kernel<scalar_t><<<grid, kSliceThreads, 0, stream>>>(
      static_cast<const scalar_t*>(x), order, seg, mod, static_cast<acc_t*>(hinge), static_cast<acc_t*>(centers),
      static_cast<acc_t*>(vars), counts, static_cast<acc_t*>(stats), static_cast<acc_t*>(workspace), n, dim, metric,
      strong, static_cast<acc_t>(margin));
  if (slices == 1) return cudaGetLastError();
  if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  centers_combine_kernel<acc_t><<<dim3(blocks_for(n, kThreads), static_cast<unsigned>(sets)), kThreads, 0, stream>>>(
      static_cast<const acc_t*>(workspace), counts, static_cast<acc_t*>(hinge), static_cast<acc_t*>(stats), n, slices,
      metric, static_cast<acc_t>(margin));
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t bwd_typed(const void* x, const int64_t* slot, const int32_t* mod, const void* hinge, const void* centers,
                      const void* vars, const int64_t* counts, const void* stats, const void* grad_hinge,
                      int64_t gh_stride_s, int64_t gh_stride_n, const void* grad_centers, void* grad_x, int64_t sets,
                      int64_t n, int64_t dim, int metric, bool strong, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if (dim == 0) return cudaSuccess;
  if (n > kMaxGridX || sets > kMaxGridYZ || blocks_for(dim, kThreads) > kMaxGridYZ) {
    return cudaErrorInvalidConfiguration;
  }
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(sets), blocks_for(dim, kThreads));
  centers_bwd_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
      static_cast<const scalar_t*>(x), slot, mod, static_cast<const acc_t*>(hinge), static_cast<const acc_t*>(centers),
      static_cast<const acc_t*>(vars), counts, static_cast<const acc_t*>(stats), static_cast<const acc_t*>(grad_hinge),
      gh_stride_s, gh_stride_n, static_cast<const acc_t*>(grad_centers), static_cast<scalar_t*>(grad_x), n, dim,
      metric, strong);
  return cudaGetLastError();
}

constexpr int kSlotThreads = 256;

// Sample i's stable sorted position: #{j: l_j < l_i} + #{j < i: l_j = l_i}.
template <typename label_t>
__global__ void __launch_bounds__(kSlotThreads)
slot_rank_kernel(const label_t* __restrict__ labels, int64_t* __restrict__ order, int64_t* __restrict__ sorted_labels,
                 int64_t n) {
  __shared__ label_t tile[kSlotThreads];
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kSlotThreads + threadIdx.x;
  const label_t li = i < n ? labels[i] : label_t(0);
  int64_t rank = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kSlotThreads) {
    const int64_t j = j0 + threadIdx.x;
    tile[threadIdx.x] = j < n ? labels[j] : label_t(0);
    __syncthreads();
    const int count = static_cast<int>(n - j0 < kSlotThreads ? n - j0 : kSlotThreads);
    for (int t = 0; t < count; ++t) rank += tile[t] < li || (tile[t] == li && j0 + t < i);
    __syncthreads();
  }
  if (i < n) {
    order[rank] = i;
    sorted_labels[rank] = li;
  }
}

// Position p's slot: the class boundaries (a label differing from the one before) at or before p; the
// first position of a slot writes its seg entry, and the slots past the last class end at n.
__global__ void __launch_bounds__(kSlotThreads)
slot_segments_kernel(const int64_t* __restrict__ order, const int64_t* __restrict__ sorted_labels,
                     int64_t* __restrict__ seg, int64_t* __restrict__ slot, int64_t* __restrict__ sorted_slot,
                     int64_t n) {
  __shared__ bool starts[kSlotThreads];
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kSlotThreads + threadIdx.x;
  int64_t at_or_before = 0, boundaries = 0;
  for (int64_t q0 = 0; q0 < n; q0 += kSlotThreads) {
    const int64_t q = q0 + threadIdx.x;
    starts[threadIdx.x] = q >= 1 && q < n && sorted_labels[q] != sorted_labels[q - 1];
    __syncthreads();
    const int count = static_cast<int>(n - q0 < kSlotThreads ? n - q0 : kSlotThreads);
    for (int t = 0; t < count; ++t) {
      boundaries += starts[t];
      at_or_before += starts[t] && q0 + t <= p;
    }
    __syncthreads();
  }
  if (p < n) {
    sorted_slot[p] = at_or_before;
    slot[order[p]] = at_or_before;
    if (p == 0 || sorted_labels[p] != sorted_labels[p - 1]) seg[at_or_before] = p;
    if (p + 1 > boundaries) seg[p + 1] = n;
  }
}

}  // namespace

size_t hetero_center_fwd_workspace_bytes(DType dtype, int64_t sets, int64_t n, int64_t dim) {
  const int64_t slices = fwd_slices(dim);
  if (slices <= 1) return 0;
  return static_cast<size_t>(sets * n * slices * 5) * (dtype == DType::kFloat64 ? sizeof(double) : sizeof(float));
}

cudaError_t hetero_center_fwd(DType dtype, const void* x, const int64_t* order, const int64_t* seg,
                              const int32_t* modality, void* hinge, void* centers, void* variances, int64_t* counts,
                              void* stats, void* workspace, int64_t sets, int64_t n, int64_t dim, int metric,
                              bool strong, double margin, cudaStream_t stream) {
  if (sets == 0 || n == 0) return cudaSuccess;
#define VTREID_HC_FWD(T) \
  fwd_typed<T>(x, order, seg, modality, hinge, centers, variances, counts, stats, workspace, sets, n, dim, metric, \
               strong, margin, stream)
  switch (dtype) {
    case DType::kFloat32: return VTREID_HC_FWD(float);
    case DType::kFloat16: return VTREID_HC_FWD(__half);
    case DType::kBFloat16: return VTREID_HC_FWD(__nv_bfloat16);
    case DType::kFloat64: return VTREID_HC_FWD(double);
  }
#undef VTREID_HC_FWD
  return cudaErrorInvalidValue;
}

cudaError_t hetero_center_bwd(DType dtype, const void* x, const int64_t* slot, const int32_t* modality,
                              const void* hinge, const void* centers, const void* variances, const int64_t* counts,
                              const void* stats, const void* grad_hinge, int64_t grad_hinge_stride_s,
                              int64_t grad_hinge_stride_n, const void* grad_centers, void* grad_x, int64_t sets,
                              int64_t n, int64_t dim, int metric, bool strong, cudaStream_t stream) {
  if (sets == 0 || n == 0) return cudaSuccess;
#define VTREID_HC_BWD(T)                                                                                      \
  bwd_typed<T>(x, slot, modality, hinge, centers, variances, counts, stats, grad_hinge, grad_hinge_stride_s,  \
               grad_hinge_stride_n, grad_centers, grad_x, sets, n, dim, metric, strong, stream)
  switch (dtype) {
    case DType::kFloat32: return VTREID_HC_BWD(float);
    case DType::kFloat16: return VTREID_HC_BWD(__half);
    case DType::kBFloat16: return VTREID_HC_BWD(__nv_bfloat16);
    case DType::kFloat64: return VTREID_HC_BWD(double);
  }
#undef VTREID_HC_BWD
  return cudaErrorInvalidValue;
}

cudaError_t class_slots(bool labels_int32, const void* labels, int64_t* order, int64_t* seg, int64_t* slot,
                        int64_t* sorted_labels, int64_t* sorted_slot, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned blocks = blocks_for(n, kSlotThreads);  // n < 2^31 * 256: within grid dimension x
  if (labels_int32) {
    slot_rank_kernel<int32_t><<<blocks, kSlotThreads, 0, stream>>>(static_cast<const int32_t*>(labels), order,
                                                                    sorted_labels, n);
  } else {
    slot_rank_kernel<int64_t><<<blocks, kSlotThreads, 0, stream>>>(static_cast<const int64_t*>(labels), order,
                                                                    sorted_labels, n);
  }
  if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  slot_segments_kernel<<<blocks, kSlotThreads, 0, stream>>>(order, sorted_labels, seg, slot, sorted_slot, n);
  return cudaGetLastError();
}

}  // namespace vtreid::cuda
