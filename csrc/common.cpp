#include "common.h"

#include <ATen/ATen.h>

namespace rmix_fast {

at::ScalarType accumulate_type(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

namespace {

bool is_float(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
}

}  // namespace

void check_float_tensor(const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_float(t), name, " must be float16, bfloat16, float32 or float64, got dtype ", t.scalar_type());
}

void check_image(const char* name, const at::Tensor& t) {
  check_float_tensor(name, t);
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be 4-D (B, C, H, W), got shape ", t.sizes());
}

void check_same_device(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device(),
                    "; all tensors must share a device");
}

void check_perm(const at::Tensor& perm, const at::Tensor& x) {
  TORCH_CHECK_TYPE(!perm.is_floating_point() && !perm.is_complex() && perm.scalar_type() != at::kBool,
                   "perm must be an integer tensor, got dtype ", perm.scalar_type());
  TORCH_CHECK_VALUE(perm.dim() == 1 && perm.size(0) == x.size(0), "perm must have shape (", x.size(0),
                    ",) to match x's batch, got ", perm.sizes());
  check_same_device("perm", perm, x);
}

void check_level(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.is_floating_point(), name, " must be a float tensor, got dtype ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(0), name, " must be a tensor of shape (", x.size(0),
                    ",), got shape ", t.sizes());
  check_same_device(name, t, x);
}

at::Tensor as_index(const at::Tensor& perm) { return perm.to(at::kLong).contiguous(); }

std::vector<ContentCheck> permutation_checks(const at::Tensor& perm) {
  const int64_t B = perm.size(0);
  const at::Tensor idx = perm.to(at::kLong);
  const at::Tensor in_range = idx.ge(0).logical_and(idx.lt(B));
  // A permutation hits every index exactly once: count the hits of the in-range entries.
  at::Tensor hits = at::zeros({B}, idx.options().dtype(at::kInt));
  hits.index_add_(0, at::where(in_range, idx, at::zeros_like(idx)), in_range.to(at::kInt));
  auto out_of_range = [idx, B] {
    TORCH_CHECK_VALUE(false, "perm must hold indices in [0, ", B - 1, "], got values in [", idx.min().item<int64_t>(),
                      ", ", idx.max().item<int64_t>(), "]");
  };
  auto repeats = [B] {
    TORCH_CHECK_VALUE(false, "perm must be a permutation of 0..", B - 1, "; it repeats some indices and misses others");
  };
  return {{in_range.all(), out_of_range}, {hits.eq(1).all(), repeats}};
}

ContentCheck unit_interval_check(const char* name, const at::Tensor& t) {
  auto outside = [name, t] {
    const at::Tensor bad = t.masked_select(at::logical_not(t.ge(0).logical_and(t.le(1))));
    TORCH_CHECK_VALUE(false, name, " must lie in [0, 1]; got ", bad.numel(), " value(s) outside, e.g. ",
                      bad[0].item<double>());
  };
  return {t.ge(0).logical_and(t.le(1)).all(), outside};
}

void run_content_checks(const std::vector<ContentCheck>& checks) {
  if (checks.empty()) return;
  std::vector<at::Tensor> flags;
  flags.reserve(checks.size());
  for (const ContentCheck& check : checks) flags.push_back(check.ok);
  const at::Tensor got = at::stack(flags).cpu();  // the one host-device sync
  const bool* ok = got.const_data_ptr<bool>();
  for (size_t i = 0; i < checks.size(); ++i) {
    if (!ok[i]) checks[i].fail();
  }
}

}  // namespace rmix_fast
