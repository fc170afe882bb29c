// R-Mix, op rmix: (1-2) each sample's cell saliency, the mean channel-L2 norm of grad over each of p x p
// cells; (3) its top mask, cells at or above the sample's q-quantile; the region codes region_of(mask[b],
// mask[perm[b]]); (4-5) the blend engine (blend_regions.h) on those codes.
#pragma once

#include "blend_regions.h"
#include "common.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace rmix_fast {

// What a device supplies for R-Mix (cpu/rmix_kernel.cpp, cuda/rmix_kernel.cu).
struct RmixKernels {
  // Steps 1-3: fills the (B, grid, grid) bool top mask; q is (B,) accumulate_type(grad.dtype).
  void (*mask)(const at::Tensor& grad, const at::Tensor& q, int64_t grid, at::Tensor& mask);
  // Fills (B, p, p) uint8 regions with region_of(mask[b], mask[perm[b]]); perm is int64, contiguous.
  void (*regions_from_mask)(const at::Tensor& mask, const at::Tensor& perm, at::Tensor& regions);
  // Steps 4-5 and the backward: the same device's engine.
  const BlendRegionsKernels& engine;
};

// rmix_fast::rmix_cpp and its backward: argument checks, the content checks when `validate`, conversion
// of perm / lam / q, output allocation; then the device's kernels.
std::tuple<at::Tensor, at::Tensor, at::Tensor> rmix_forward(const RmixKernels& kernels, const at::Tensor& x,
                                                            const at::Tensor& grad, const at::Tensor& perm,
                                                            const at::Tensor& lam, const at::Tensor& q, int64_t grid,
                                                            bool validate);

at::Tensor rmix_backward(const RmixKernels& kernels, const at::Tensor& grad_out, const at::Tensor& mask,
                         const at::Tensor& perm, const at::Tensor& lam);

}  // namespace rmix_fast
