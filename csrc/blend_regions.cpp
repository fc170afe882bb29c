#include "blend_regions.h"

#include <ATen/ATen.h>

namespace rmix_fast {

namespace {

// `image` is x or grad_out, named `image_name` in the message.
void check_regions(const at::Tensor& regions, const char* image_name, const at::Tensor& image) {
  TORCH_CHECK_TYPE(at::isIntegralType(regions.scalar_type(), /*includeBool=*/false),
                   "regions must be an integer tensor, got dtype ", regions.scalar_type());
  const int64_t H = image.size(2), W = image.size(3);
  TORCH_CHECK_VALUE(regions.dim() == 3 && regions.size(0) == image.size(0) && regions.size(1) >= 1 &&
                        regions.size(2) >= 1 && H % regions.size(1) == 0 && W % regions.size(2) == 0,
                    "regions must have shape (B, gh, gw) with gh dividing H=", H, " and gw dividing W=", W, " of ",
                    image_name, " (shape ", image.sizes(), "), got shape ", regions.sizes());
  check_same_device("regions", regions, image);
}

// uint16/32/64 lack the comparisons and clamp used below; their codes are read as int64.
at::Tensor comparable(const at::Tensor& regions) {
  return c10::isBarebonesUnsignedType(regions.scalar_type()) ? regions.to(at::kLong) : regions;
}

// The kernels' uint8 codes. int8/uint8 are used as they are (a negative int8 code is a byte >= 128, still
// "partner"); wider codes are clamped to [-1, 2], which keeps 0 and 1 and leaves every other code outside
// {0, 1} (-1 becomes byte 255), so no code can alias blend or own.
at::Tensor region_codes(const at::Tensor& regions) {
  if (regions.scalar_type() == at::kByte) return regions.contiguous();
  if (regions.scalar_type() == at::kChar) return regions.contiguous().view(at::kByte);
  return regions.clamp(-1, 2).to(at::kByte).contiguous();
}

// Every code (of a comparable tensor) is 0, 1 or 2.
ContentCheck region_code_check(const at::Tensor& regions) {
  auto error = [regions] {
    TORCH_CHECK_VALUE(false, "regions must hold only 0 (blend), 1 (own) and 2 (partner), got values in [",
                      regions.min().item<int64_t>(), ", ", regions.max().item<int64_t>(), "]");
  };
  return {regions.ge(0).logical_and(regions.le(2)).all(), error};
}

}  // namespace

BlendArgs blend_args(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam) {
  return {x, at::Tensor(), as_index(perm), lam.to(accumulate_type(x.scalar_type())).contiguous(),
          lam.to(at::kDouble).contiguous()};
}

BlendBackwardArgs blend_backward_args(const at::Tensor& grad_out, const at::Tensor& perm, const at::Tensor& lam) {
  return {grad_out, at::Tensor(), as_index(perm), lam.to(accumulate_type(grad_out.scalar_type())).contiguous()};
}

BlendOutputs empty_blend_outputs(const at::Tensor& x) {
  return {at::empty_like(x), at::empty({x.size(0)}, x.options().dtype(at::kFloat))};
}

std::tuple<at::Tensor, at::Tensor> blend_regions_forward(const BlendRegionsKernels& kernels, const at::Tensor& x,
                                                         const at::Tensor& regions, const at::Tensor& perm,
                                                         const at::Tensor& lam, bool validate) {
  check_image("x", x);
  check_regions(regions, "x", x);
  check_perm(perm, x);
  check_level("lam", lam, x);
  const at::Tensor codes = comparable(regions);
  if (validate && x.size(0) > 0) {
    std::vector<ContentCheck> checks = permutation_checks(perm);
    checks.push_back(unit_interval_check("lam", lam));
    checks.push_back(region_code_check(codes));
    run_content_checks(checks);
  }

  BlendOutputs out = empty_blend_outputs(x);
  if (x.size(0) > 0) {
    BlendArgs args = blend_args(x, perm, lam);
    args.regions = region_codes(codes);
    kernels.blend(args, out);
  }
  return {out.mixed, out.lam_eff};
}

at::Tensor blend_regions_backward(const BlendRegionsKernels& kernels, const at::Tensor& grad_out,
                                  const at::Tensor& regions, const at::Tensor& perm, const at::Tensor& lam) {
  check_image("grad_out", grad_out);
  check_regions(regions, "grad_out", grad_out);
  check_perm(perm, grad_out);
  check_level("lam", lam, grad_out);

  at::Tensor grad_x = at::empty_like(grad_out);
  if (grad_out.size(0) > 0) {
    BlendBackwardArgs args = blend_backward_args(grad_out, perm, lam);
    args.regions = region_codes(comparable(regions));
    kernels.blend_backward(args, grad_x);
  }
  return grad_x;
}

}  // namespace rmix_fast
