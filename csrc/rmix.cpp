#include "rmix.h"

#include <ATen/ATen.h>

#include <vector>

namespace rmix_fast {

namespace {

// R-Mix's codes from its top mask: a (B, p, p) byte buffer, negligible next to the images.
at::Tensor mask_regions(const RmixKernels& kernels, const at::Tensor& mask, const at::Tensor& perm) {
  at::Tensor regions = at::empty(mask.sizes(), mask.options().dtype(at::kByte));
  kernels.regions_from_mask(mask.contiguous(), perm, regions);
  return regions;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rmix_forward(const RmixKernels& kernels, const at::Tensor& x,
                                                            const at::Tensor& grad, const at::Tensor& perm,
                                                            const at::Tensor& lam, const at::Tensor& q, int64_t grid,
                                                            bool validate) {
  check_image("x", x);
  check_image("grad", grad);
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes(), "grad must have x's shape ", x.sizes(), ", got ", grad.sizes());
  check_same_device("grad", grad, x);
  check_perm(perm, x);
  check_level("lam", lam, x);
  check_level("q", q, x);
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  TORCH_CHECK_VALUE(grid >= 1, "grid must be >= 1, got ", grid);
  TORCH_CHECK_VALUE(H % grid == 0 && W % grid == 0, "grid=", grid, " must divide both H=", H, " and W=", W,
                    " of x (shape ", x.sizes(), ")");
  if (validate && B > 0) {
    std::vector<ContentCheck> checks = permutation_checks(perm);
    checks.push_back(unit_interval_check("lam", lam));
    checks.push_back(unit_interval_check("q", q));
    run_content_checks(checks);
  }

  BlendOutputs out = empty_blend_outputs(x);
  at::Tensor mask = at::empty({B, grid, grid}, x.options().dtype(at::kBool));
  if (B > 0) {
    kernels.mask(grad, q.to(accumulate_type(grad.scalar_type())).contiguous(), grid, mask);
    BlendArgs args = blend_args(x, perm, lam);
    args.regions = mask_regions(kernels, mask, args.perm);
    kernels.engine.blend(args, out);
  }
  return {out.mixed, out.lam_eff, mask};
}

at::Tensor rmix_backward(const RmixKernels& kernels, const at::Tensor& grad_out, const at::Tensor& mask,
                         const at::Tensor& perm, const at::Tensor& lam) {
  check_image("grad_out", grad_out);
  const int64_t B = grad_out.size(0), H = grad_out.size(2), W = grad_out.size(3);
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool && mask.dim() == 3 && mask.size(0) == B &&
                        mask.size(1) == mask.size(2) && mask.size(1) >= 1 && H % mask.size(1) == 0 &&
                        W % mask.size(1) == 0,
                    "mask must be a (B, p, p) bool tensor with p dividing H and W of grad_out (shape ",
                    grad_out.sizes(), "), got ", mask.scalar_type(), " ", mask.sizes());
  check_same_device("mask", mask, grad_out);
  check_perm(perm, grad_out);
  check_level("lam", lam, grad_out);

  at::Tensor grad_x = at::empty_like(grad_out);
  if (B > 0) {
    BlendBackwardArgs args = blend_backward_args(grad_out, perm, lam);
    args.regions = mask_regions(kernels, mask, args.perm);
    kernels.engine.blend_backward(args, grad_x);
  }
  return grad_x;
}

}  // namespace rmix_fast
