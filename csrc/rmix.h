// Shared declarations of the compiled ops (backend "cpp").
//
// Two op pairs, declared once (rmix_ops.cpp, TORCH_LIBRARY) and implemented per device (rmix_cpu.cpp,
// cuda/rmix_cuda.cu, TORCH_LIBRARY_IMPL):
//   rmix_cpp           R-Mix: saliency mask of grad, then the region blend with R-Mix's cell rule;
//   blend_regions_cpp  the region blend with caller-given codes per cell (Mixup, CutMix).
// Both end in the same device blend and blend backward. Every call goes through the run_* functions,
// which check the arguments, bring the small inputs into the form the kernels expect and allocate the
// outputs; a device only supplies the kernels (DeviceKernels) and registers them with register_kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

namespace rmix_fast {

// What one cell of mixed[b] is made of. The kernels read uint8 codes and treat every code other than
// kBlend and kOwn as kPartner, so no code value can make them read out of bounds.
enum Region : uint8_t { kBlend = 0, kOwn = 1, kPartner = 2 };

// R-Mix's cell rule: blend where a sample and its partner agree, else copy whichever of the two is top.
C10_HOST_DEVICE inline Region region_of(bool own_top, bool partner_top) {
  if (own_top == partner_top) return kBlend;
  return own_top ? kOwn : kPartner;
}

// The region blend; everything is on x's device and B >= 1 when a kernel runs.
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

struct BackwardArgs {
  at::Tensor grad_out;  // (B, C, H, W) float, any strides (may be expanded)
  at::Tensor regions;   // (B, gh, gw) uint8 codes, contiguous
  at::Tensor perm;      // (B,) int64, contiguous
  at::Tensor lam;       // (B,) contiguous, accumulate_type(grad_out.dtype)
};

// What a device supplies.
struct DeviceKernels {
  // R-Mix steps 1-3: fills the (B, grid, grid) bool top mask; q is (B,) accumulate_type(grad.dtype).
  void (*mask)(const at::Tensor& grad, const at::Tensor& q, int64_t grid, at::Tensor& mask);
  // Fills (B, p, p) uint8 regions with region_of(mask[b], mask[perm[b]]).
  void (*regions_from_mask)(const at::Tensor& mask, const at::Tensor& perm, at::Tensor& regions);
  void (*blend)(const BlendArgs& args, BlendOutputs& out);
  // Fills grad_x = empty_like(grad_out).
  void (*blend_backward)(const BackwardArgs& args, at::Tensor& grad_x);
};

// float64 stays float64, every other float dtype computes in float32 (as the reference does).
at::ScalarType accumulate_type(at::ScalarType dtype);

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(const at::Tensor& x, const at::Tensor& grad,
                                                           const at::Tensor& perm, const at::Tensor& lam,
                                                           const at::Tensor& q, int64_t grid, bool validate,
                                                           const DeviceKernels& kernels);

at::Tensor run_backward(const at::Tensor& grad_out, const at::Tensor& mask, const at::Tensor& perm,
                        const at::Tensor& lam, const DeviceKernels& kernels);

std::tuple<at::Tensor, at::Tensor> run_blend_regions(const at::Tensor& x, const at::Tensor& regions,
                                                     const at::Tensor& perm, const at::Tensor& lam, bool validate,
                                                     const DeviceKernels& kernels);

at::Tensor run_blend_regions_backward(const at::Tensor& grad_out, const at::Tensor& regions, const at::Tensor& perm,
                                      const at::Tensor& lam, const DeviceKernels& kernels);

// Registers all four ops of one device (inside its TORCH_LIBRARY_IMPL block).
template <const DeviceKernels& K>
void register_kernels(torch::Library& m) {
  m.impl("rmix_cpp", [](const at::Tensor& x, const at::Tensor& grad, const at::Tensor& perm, const at::Tensor& lam,
                        const at::Tensor& q, int64_t grid, bool validate) {
    return run_forward(x, grad, perm, lam, q, grid, validate, K);
  });
  m.impl("rmix_cpp_backward",
         [](const at::Tensor& grad_out, const at::Tensor& mask, const at::Tensor& perm, const at::Tensor& lam) {
           return run_backward(grad_out, mask, perm, lam, K);
         });
  m.impl("blend_regions_cpp", [](const at::Tensor& x, const at::Tensor& regions, const at::Tensor& perm,
                                 const at::Tensor& lam, bool validate) {
    return run_blend_regions(x, regions, perm, lam, validate, K);
  });
  m.impl("blend_regions_cpp_backward",
         [](const at::Tensor& grad_out, const at::Tensor& regions, const at::Tensor& perm, const at::Tensor& lam) {
           return run_blend_regions_backward(grad_out, regions, perm, lam, K);
         });
}

}  // namespace rmix_fast
