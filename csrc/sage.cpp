#include "sage.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

namespace rmix_fast {

namespace {

// An integer (K, 2) tensor of candidate shifts on x's device, K >= 1.
void check_offsets(const at::Tensor& offsets, const at::Tensor& x) {
  TORCH_CHECK_TYPE(at::isIntegralType(offsets.scalar_type(), /*includeBool=*/false),
                   "offsets must be an integer tensor, got dtype ", offsets.scalar_type());
  TORCH_CHECK_VALUE(offsets.dim() == 2 && offsets.size(1) == 2 && offsets.size(0) >= 1,
                    "offsets must have shape (K, 2) with K >= 1, got ", offsets.sizes());
  check_same_device("offsets", offsets, x);
}

// Every shift lies inside the image: |dy| < H, |dx| < W. Without it a shift only moves the whole partner
// out of the image (the kernels clamp), so skipping it with validate=False stays in bounds.
ContentCheck offsets_check(const at::Tensor& offsets, int64_t H, int64_t W) {
  const at::Tensor dy = offsets.select(1, 0), dx = offsets.select(1, 1);
  auto error = [dy, dx, H, W] {
    TORCH_CHECK_VALUE(false, "offsets must hold shifts (dy, dx) with |dy| < H=", H, " and |dx| < W=", W,
                      ", got dy in [", dy.min().item<int64_t>(), ", ", dy.max().item<int64_t>(), "] and dx in [",
                      dx.min().item<int64_t>(), ", ", dx.max().item<int64_t>(), "]");
  };
  return {dy.abs().lt(H).logical_and(dx.abs().lt(W)).all(), error};
}

// The reference's blur_weights with the same ATen operations in float64, rounded to the accumulate type, so
// every backend blurs with the same taps. Tiny, so always made on the CPU; a device kernel reads it there.
at::Tensor blur_taps(int64_t kernel_size, double sigma, at::ScalarType acc) {
  const at::Tensor t =
      at::arange(kernel_size, at::TensorOptions().dtype(at::kDouble)) - static_cast<double>(kernel_size - 1) / 2;
  const at::Tensor w = at::exp(-0.5 * (t / sigma).pow(2));
  return (w / w.sum()).to(acc).contiguous();
}

// The reference's output layout: channels_last when t is (and is not also contiguous), else contiguous.
at::Tensor empty_like_reference(const at::Tensor& t) {
  const bool channels_last = !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
  return at::empty(t.sizes(), t.options(),
                   channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sage_forward(const SageKernels& kernels, const at::Tensor& x,
                                                                        const at::Tensor& grad, const at::Tensor& perm,
                                                                        const at::Tensor& lam,
                                                                        const at::Tensor& offsets, double sigma,
                                                                        int64_t kernel_size, bool validate) {
  check_image("x", x);
  check_float_tensor("grad", grad);
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes(), "grad must have x's shape ", x.sizes(), ", got ", grad.sizes());
  check_same_device("grad", grad, x);
  check_perm(perm, x);
  check_level("lam", lam, x);
  check_offsets(offsets, x);
  TORCH_CHECK_VALUE(std::isfinite(sigma) && sigma > 0, "sigma must be a finite number > 0, got ", sigma);
  TORCH_CHECK_VALUE(kernel_size >= 1, "kernel_size must be >= 1, got ", kernel_size);
  TORCH_CHECK_VALUE(kernel_size % 2 == 1, "kernel_size must be odd, got ", kernel_size);
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  // int64 before the range check: |int8(-128)| would wrap and pass it.
  const at::Tensor shifts = as_index(offsets);
  if (validate && B > 0) {
    std::vector<ContentCheck> checks = permutation_checks(perm);
    checks.push_back(unit_interval_check("lam", lam));
    checks.push_back(offsets_check(shifts, H, W));
    run_content_checks(checks);
  }

  const at::ScalarType acc = accumulate_type(grad.scalar_type());
  SageSearchOutputs out{at::empty({B, H, W}, x.options().dtype(acc)), at::empty({B, 2}, x.options().dtype(at::kLong)),
                        at::empty({B}, x.options().dtype(at::kFloat))};
  at::Tensor mixed = empty_like_reference(x);
  if (B > 0) {
    // lam in the saliency's dtype, as the reference scales a and c.
    const SageSearchArgs args{grad, as_index(perm), lam.to(acc).contiguous(), shifts,
                              blur_taps(kernel_size, sigma, acc)};
    kernels.search(args, out);
    // The blend runs in x's accumulate type (the reference's weight.to(acc)): a copy only when grad and x
    // differ in it (float64 against the rest).
    kernels.blend(x, out.weight.to(accumulate_type(x.scalar_type())), args.perm, out.shift, mixed);
  }
  return {mixed, out.lam_eff, out.shift, out.weight};
}

at::Tensor sage_backward(const SageKernels& kernels, const at::Tensor& grad_out, const at::Tensor& weight,
                         const at::Tensor& perm, const at::Tensor& shift) {
  check_image("grad_out", grad_out);
  const int64_t B = grad_out.size(0), H = grad_out.size(2), W = grad_out.size(3);
  check_float_tensor("weight", weight);
  TORCH_CHECK_VALUE(weight.dim() == 3 && weight.size(0) == B && weight.size(1) == H && weight.size(2) == W,
                    "weight must have shape (B, H, W) = (", B, ", ", H, ", ", W, ") of grad_out, got ", weight.sizes());
  check_same_device("weight", weight, grad_out);
  check_perm(perm, grad_out);
  TORCH_CHECK_TYPE(at::isIntegralType(shift.scalar_type(), /*includeBool=*/false),
                   "shift must be an integer tensor, got dtype ", shift.scalar_type());
  TORCH_CHECK_VALUE(shift.dim() == 2 && shift.size(0) == B && shift.size(1) == 2, "shift must have shape (", B,
                    ", 2), got ", shift.sizes());
  check_same_device("shift", shift, grad_out);

  at::Tensor grad_x = empty_like_reference(grad_out);
  if (B > 0) {
    kernels.blend_backward(grad_out, weight.to(accumulate_type(grad_out.scalar_type())).contiguous(), as_index(perm),
                           as_index(shift), grad_x);
  }
  return grad_x;
}

}  // namespace rmix_fast
