// Pieces of the hard_mining ops shared by the CPU and CUDA registrations (ATen only, any device).
#pragma once
#include <torch/types.h>

#include <string_view>
#include <utility>

namespace vtreid {

enum Rule : int { kAny = 0, kCross = 1, kSame = 2 };

inline Rule parse_rule(std::string_view rule, const char* name) {
  if (rule == "any") return kAny;
  if (rule == "cross") return kCross;
  if (rule == "same") return kSame;
  TORCH_CHECK_VALUE(false, name, " must be 'any', 'cross' or 'same', got '", rule, "'");
}

// (order, seg): the 2n pair rows (positives 0..n-1, negatives n..2n-1) stably sorted by the candidate
// they chose, and the offsets seg[m + 1] of each candidate's run. Invalid pairs (-1) sort past the last
// run. Summing a candidate's rows in this order is deterministic. Device ops only: no host sync.
inline std::pair<at::Tensor, at::Tensor> segment_layout(const at::Tensor& pos_index, const at::Tensor& neg_index,
                                                        int64_t m) {
  at::Tensor idx = at::cat({pos_index, neg_index});
  idx = at::where(idx < 0, at::full_like(idx, m), idx);
  auto [sorted_idx, order] = at::sort(idx, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor seg = at::searchsorted(sorted_idx, at::arange(m + 1, idx.options()));
  return {order.contiguous(), seg.contiguous()};
}

}  // namespace vtreid
