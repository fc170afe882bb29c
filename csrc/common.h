// What every op of the compiled backend shares: the region codes, the accumulate type, the argument checks
// with the Python API's messages, the content checks with one host-device sync, and the helper that
// registers an op's wrappers for one dispatch key.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace rmix_fast {

// What one cell of mixed[b] is made of. The kernels read uint8 codes and treat every code other than
// kBlend and kOwn as kPartner, so no code value can make them read out of bounds.
enum Region : uint8_t { kBlend = 0, kOwn = 1, kPartner = 2 };

// R-Mix's cell rule: blend where a sample and its partner agree, else copy whichever of the two is top.
C10_HOST_DEVICE inline Region region_of(bool own_top, bool partner_top) {
  if (own_top == partner_top) return kBlend;
  return own_top ? kOwn : kPartner;
}

// float64 stays float64, every other float dtype computes in float32 (as the reference does).
at::ScalarType accumulate_type(at::ScalarType dtype);

// ---------------------------------------------------------------------------------------------
// Argument checks that read no tensor contents (no sync), with the messages of rmix_fast/ops/_checks.py:
// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE reach Python as ValueError / TypeError.

// A float16/bfloat16/float32/float64 tensor of any shape.
void check_float_tensor(const char* name, const at::Tensor& t);
// A (B, C, H, W) float16/bfloat16/float32/float64 tensor.
void check_image(const char* name, const at::Tensor& t);
// t is on x's device.
void check_same_device(const char* name, const at::Tensor& t, const at::Tensor& x);
// A (B,) integer tensor on x's device, B = x.size(0).
void check_perm(const at::Tensor& perm, const at::Tensor& x);
// lam / q: a (B,) float tensor on x's device.
void check_level(const char* name, const at::Tensor& t, const at::Tensor& x);

// perm as the kernels take it: int64, contiguous.
at::Tensor as_index(const at::Tensor& perm);

// ---------------------------------------------------------------------------------------------
// Content checks (the ops' `validate`), as in rmix_fast/ops/_checks.py: each gives a 0-d bool device
// tensor and the error to raise when it is false; run_content_checks reads all of an op's flags back in
// one host-device sync and raises the first failing check's error.

struct ContentCheck {
  at::Tensor ok;               // 0-d bool, on the checked tensor's device
  std::function<void()> fail;  // throws; called only when ok is false, so it may read tensor values
};

// perm holds indices in [0, B) and hits each once. Two checks: the range first, then the repeats.
std::vector<ContentCheck> permutation_checks(const at::Tensor& perm);
// Every value of t lies in [0, 1] (NaN does not).
ContentCheck unit_interval_check(const char* name, const at::Tensor& t);
void run_content_checks(const std::vector<ContentCheck>& checks);

// ---------------------------------------------------------------------------------------------
// Registration. Every op is a pair rmix_fast::<op>_cpp and <op>_cpp_backward, defined in ops.cpp with
// the schemas of the op's Python OpSpec. An op's device-independent wrappers take the device's kernels
// as their first argument; impl_op binds a device's kernels into them and registers both for the
// dispatch key of the enclosing TORCH_LIBRARY_IMPL block:
//
//   TORCH_LIBRARY_IMPL(rmix_fast, CPU, m) { impl_op<rmix_forward, rmix_backward, kRmixKernels>(m, "rmix"); }

// The backend's suffix in the op names: several backends of one op live side by side in the namespace.
inline constexpr const char* kOpSuffix = "_cpp";

// wrapper(kernels, args...) as a plain function of args..., which is what the dispatcher registers. The
// kernels are a template argument, so the registered function holds no state.
template <auto wrapper, const auto& kernels, typename R, typename... Args>
R with_kernels(Args... args) {
  return wrapper(kernels, args...);
}

// with_kernels for `wrapper`, as a compile-time function pointer (what TORCH_FN makes); the argument only
// gives wrapper's type.
template <auto wrapper, const auto& kernels, typename R, typename Kernels, typename... Args>
constexpr auto bind_kernels(R (*)(const Kernels&, Args...)) {
  return c10::CompileTimeFunctionPointer<R(Args...), &with_kernels<wrapper, kernels, R, Args...>>();
}

template <auto forward, auto backward, const auto& kernels>
void impl_op(torch::Library& m, const std::string& op) {
  m.impl((op + kOpSuffix).c_str(), bind_kernels<forward, kernels>(forward));
  m.impl((op + kOpSuffix + "_backward").c_str(), bind_kernels<backward, kernels>(backward));
}

}  // namespace rmix_fast
