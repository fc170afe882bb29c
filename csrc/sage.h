// SAGE (Ma et al., BMVC 2022), op sage: (1) each sample's saliency mean_c |grad|, blurred by a separable
// Gaussian; (2) own and partner maps a, c scaled by lam and 1 - lam; (3) a search over the candidate shifts d
// of the partner for the largest sum_p a M_d + c_d (1 - M_d), M_d = a / (a + c_d); (4) the blend
// M x[b] + (1 - M) x[perm b](p + d*). Semantics: rmix_fast/reference/sage.py.
#pragma once

#include "common.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace rmix_fast {

// Steps 1-3, on grad's device; B >= 1 when the kernel runs.
struct SageSearchArgs {
  at::Tensor grad;     // (B, C, H, W) float16/bfloat16/float32/float64, any strides
  at::Tensor perm;     // (B,) int64, contiguous
  at::Tensor lam;      // (B,) accumulate_type(grad.dtype), contiguous
  at::Tensor offsets;  // (K, 2) int64 candidate shifts (dy, dx), contiguous; any values (outside = all zero)
  at::Tensor blur;     // (kernel_size,) accumulate_type(grad.dtype) Gaussian taps, contiguous, on the CPU
};

struct SageSearchOutputs {
  at::Tensor weight;   // (B, H, W) accumulate_type(grad.dtype), contiguous: the mask M of the chosen shift
  at::Tensor shift;    // (B, 2) int64, contiguous: the chosen shift d*
  at::Tensor lam_eff;  // (B,) float32: mean of M
};

// What a device supplies for SAGE (cpu/sage_kernel.cpp).
struct SageKernels {
  // Steps 1-3: fills out.weight, out.shift and out.lam_eff.
  void (*search)(const SageSearchArgs& args, SageSearchOutputs& out);
  // Step 4: mixed = M x[b] + (1 - M) x[perm b](p + d*), 0 outside; `weight` is (B, H, W) contiguous in
  // accumulate_type(x.dtype), `perm` int64 and `shift` (B, 2) int64, both contiguous.
  void (*blend)(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& perm, const at::Tensor& shift,
                at::Tensor& mixed);
  // grad_x[b] = M_b g_b + (1 - M_s) g_s(p - d*_s), s = the sample whose partner is b; `weight` in
  // accumulate_type(grad_out.dtype), the rest as for blend.
  void (*blend_backward)(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& perm,
                         const at::Tensor& shift, at::Tensor& grad_x);
};

// rmix_fast::sage_cpp and its backward: argument checks, the content checks when `validate`, conversion of
// perm / lam / offsets, the blur taps, output allocation; then the device's kernels.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sage_forward(const SageKernels& kernels, const at::Tensor& x,
                                                                        const at::Tensor& grad, const at::Tensor& perm,
                                                                        const at::Tensor& lam,
                                                                        const at::Tensor& offsets, double sigma,
                                                                        int64_t kernel_size, bool validate);

at::Tensor sage_backward(const SageKernels& kernels, const at::Tensor& grad_out, const at::Tensor& weight,
                         const at::Tensor& perm, const at::Tensor& shift);

}  // namespace rmix_fast
