// What the CPU kernel files share: the task size of at::parallel_for, torch.lerp's formula, the bounds
// check of perm, and the engine's CPU kernels for the ops that end in the engine.
#pragma once

#include "blend_regions.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

namespace rmix_fast::cpu {

// Elements per parallel chunk: enough work to amortise a task, small enough to split a CIFAR batch.
constexpr int64_t kGrainElements = 16384;

inline int64_t grain_for(int64_t elements_per_task) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, elements_per_task));
}

// torch.lerp's two-sided formula, exact at w = 0 and w = 1 and where start == end.
template <typename T>
inline T lerp(T start, T end, T w) {
  return w < T(0.5) ? start + w * (end - start) : end - (end - start) * (T(1) - w);
}

// Even with validate=False an index outside [0, B) must not read or write out of bounds; on the CPU
// this check costs one pass over B integers.
inline void check_perm_in_range(const int64_t* perm, int64_t B) {
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(perm[b] >= 0 && perm[b] < B, "perm must hold indices in [0, ", B - 1, "], got ", perm[b],
                      " at position ", b);
  }
}

// Defined in cpu/blend_regions_kernel.cpp.
extern const BlendRegionsKernels kBlendRegionsKernels;

}  // namespace rmix_fast::cpu
