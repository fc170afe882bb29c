// The blend engine, op blend_regions: per cell of a (gh, gw) grid, a uint8 code says whether mixed[b]
// blends x[b] with x[perm[b]] (kBlend), keeps x[b] (kOwn) or takes x[perm[b]] (kPartner). Mixup (one blend
// cell) and CutMix (a box on a coarse grid) call it with their own codes; R-Mix (rmix.h) computes its codes
// on the device and runs the same kernels.
#pragma once

#include "common.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace rmix_fast {

// The blend; everything is on x's device and B >= 1 when a kernel runs.
struct BlendArgs {
  at::Tensor x;          // (B, C, H, W) float16/bfloat16/float32/float64, any strides
  at::Tensor regions;    // (B, gh, gw) uint8 codes (Region), contiguous; gh divides H, gw divides W
  at::Tensor perm;       // (B,) int64, contiguous (a permutation unless the caller skipped validation)
  at::Tensor lam;        // (B,) contiguous, accumulate_type(x.dtype): the blend weight
  at::Tensor lam_label;  // (B,) contiguous, float64, from the caller's lam: the label weight (as the reference)
};

struct BlendOutputs {
  at::Tensor mixed;    // empty_like(x): x's dtype and memory format
  at::Tensor lam_eff;  // (B,) float32, contiguous
};

struct BlendBackwardArgs {
  at::Tensor grad_out;  // (B, C, H, W) float, any strides (may be expanded)
  at::Tensor regions;   // (B, gh, gw) uint8 codes, contiguous
  at::Tensor perm;      // (B,) int64, contiguous
  at::Tensor lam;       // (B,) contiguous, accumulate_type(grad_out.dtype)
};

// What a device supplies for the engine (cpu/blend_regions_kernel.cpp, cuda/blend_regions_kernel.cu).
struct BlendRegionsKernels {
  // Fills out.mixed and out.lam_eff.
  void (*blend)(const BlendArgs& args, BlendOutputs& out);
  // Fills grad_x = empty_like(grad_out).
  void (*blend_backward)(const BlendBackwardArgs& args, at::Tensor& grad_x);
};

// rmix_fast::blend_regions_cpp and its backward: argument checks, the content checks when `validate`,
// the caller's integer codes as uint8 codes, output allocation; then the device's kernels.
std::tuple<at::Tensor, at::Tensor> blend_regions_forward(const BlendRegionsKernels& kernels, const at::Tensor& x,
                                                         const at::Tensor& regions, const at::Tensor& perm,
                                                         const at::Tensor& lam, bool validate);

at::Tensor blend_regions_backward(const BlendRegionsKernels& kernels, const at::Tensor& grad_out,
                                  const at::Tensor& regions, const at::Tensor& perm, const at::Tensor& lam);

// For ops that end in the engine with codes of their own (rmix.cpp): the engine's arguments from checked
// inputs, with `regions` left for the caller to fill, and its outputs, allocated.
BlendArgs blend_args(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam);
BlendBackwardArgs blend_backward_args(const at::Tensor& grad_out, const at::Tensor& perm, const at::Tensor& lam);
BlendOutputs empty_blend_outputs(const at::Tensor& x);

}  // namespace rmix_fast
