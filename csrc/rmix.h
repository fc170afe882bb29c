// Shared declarations of the compiled R-Mix op (backend "cpp").
//
// The op is declared once (rmix_ops.cpp, TORCH_LIBRARY) and implemented per device
// (rmix_cpu.cpp, cuda/rmix_cuda.cu, TORCH_LIBRARY_IMPL). Every device goes through
// run_forward / run_backward, which check the arguments, bring the small (B,) inputs into
// the form the kernels expect and allocate the outputs; a device only supplies the kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace rmix_fast {

// What a device's forward kernel receives; everything is on x's device.
struct ForwardArgs {
  at::Tensor x;     // (B, C, H, W) float16/bfloat16/float32/float64, any strides
  at::Tensor grad;  // (B, C, H, W) any float dtype, any strides
  at::Tensor perm;  // (B,) int64, contiguous, a permutation of 0..B-1
  at::Tensor lam;   // (B,) contiguous, accumulate_type(x.dtype): the blend weight
  at::Tensor lam_label;  // (B,) contiguous, float64, from the caller's lam: the label weight (as the reference)
  at::Tensor q;     // (B,) contiguous, accumulate_type(grad.dtype)
  int64_t grid;     // p >= 1, divides H and W
};

// The outputs a forward kernel fills; B >= 1 when a kernel runs.
struct ForwardOutputs {
  at::Tensor mixed;    // empty_like(x): x's dtype and memory format
  at::Tensor lam_eff;  // (B,) float32, contiguous
  at::Tensor mask;     // (B, p, p) bool, contiguous
};

struct BackwardArgs {
  at::Tensor grad_out;  // (B, C, H, W) float, any strides (may be expanded)
  at::Tensor mask;      // (B, p, p) bool, contiguous
  at::Tensor perm;      // (B,) int64, contiguous
  at::Tensor lam;       // (B,) contiguous, accumulate_type(grad_out.dtype)
};

using ForwardKernel = void (*)(const ForwardArgs& args, ForwardOutputs& out);
// Fills grad_x = empty_like(grad_out).
using BackwardKernel = void (*)(const BackwardArgs& args, at::Tensor& grad_x);

// float64 stays float64, every other float dtype computes in float32 (as the reference does).
at::ScalarType accumulate_type(at::ScalarType dtype);

// Content checks (perm is a permutation, lam and q in [0, 1]), with the messages of the Python API.
// One host-device sync on CUDA.
void check_values(const at::Tensor& perm, const at::Tensor& lam, const at::Tensor& q);

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(const at::Tensor& x, const at::Tensor& grad,
                                                           const at::Tensor& perm, const at::Tensor& lam,
                                                           const at::Tensor& q, int64_t grid, bool validate,
                                                           ForwardKernel kernel);

at::Tensor run_backward(const at::Tensor& grad_out, const at::Tensor& mask, const at::Tensor& perm,
                        const at::Tensor& lam, BackwardKernel kernel);

}  // namespace rmix_fast
