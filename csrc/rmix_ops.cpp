// The op schemas (TORCH_LIBRARY) and the device-independent part of every call: argument checks,
// preparation of the small inputs, output allocation. Device kernels live in rmix_cpu.cpp and
// cuda/rmix_cuda.cu. Fake (meta) kernels and autograd are registered from Python (rmix_fast/_ops.py).
#include "rmix.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

namespace rmix_fast {

at::ScalarType accumulate_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

namespace {

bool is_float(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
}

void check_image(const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_float(t), name, " must be float16, bfloat16, float32 or float64, got dtype ",
                   t.scalar_type());
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

void check_range(const char* name, const at::Tensor& t, bool ok) {
  if (ok) return;
  const at::Tensor bad = t.masked_select(at::logical_not(t.ge(0).logical_and(t.le(1))));
  TORCH_CHECK_VALUE(false, name, " must lie in [0, 1]; got ", bad.numel(), " value(s) outside, e.g. ",
                    bad[0].item<double>());
}

// Content checks with the messages of the Python API and one host-device sync: perm is a permutation,
// lam (and q) lie in [0, 1], regions (if given, comparable) holds only the codes 0, 1, 2.
void check_values(const at::Tensor& perm, const at::Tensor& lam, const at::Tensor& q, const at::Tensor& regions) {
  const int64_t B = perm.size(0);
  if (B == 0) return;
  const at::Tensor idx = perm.to(at::kLong);
  const at::Tensor in_range = idx.ge(0).logical_and(idx.lt(B));
  // A permutation hits every index exactly once: count the hits of the in-range entries.
  at::Tensor hits = at::zeros({B}, idx.options().dtype(at::kInt));
  hits.index_add_(0, at::where(in_range, idx, at::zeros_like(idx)), in_range.to(at::kInt));
  std::vector<at::Tensor> flags{in_range.all(), hits.eq(1).all(), lam.ge(0).logical_and(lam.le(1)).all()};
  if (q.defined()) flags.push_back(q.ge(0).logical_and(q.le(1)).all());
  if (regions.defined()) flags.push_back(regions.ge(0).logical_and(regions.le(2)).all());
  const at::Tensor got = at::stack(flags).cpu();  // the one host-device sync
  const bool* ok = got.const_data_ptr<bool>();
  TORCH_CHECK_VALUE(ok[0], "perm must hold indices in [0, ", B - 1, "], got values in [", idx.min().item<int64_t>(),
                    ", ", idx.max().item<int64_t>(), "]");
  TORCH_CHECK_VALUE(ok[1], "perm must be a permutation of 0..", B - 1,
                    "; it repeats some indices and misses others");
  check_range("lam", lam, ok[2]);
  if (q.defined()) check_range("q", q, ok[3]);
  TORCH_CHECK_VALUE(!regions.defined() || ok[got.numel() - 1],
                    "regions must hold only 0 (blend), 1 (own) and 2 (partner), got values in [",
                    regions.min().item<int64_t>(), ", ", regions.max().item<int64_t>(), "]");
}

at::Tensor as_index(const at::Tensor& perm) { return perm.to(at::kLong).contiguous(); }

// Everything but the regions. The blend weight is in the image's accumulate type, the label weight in
// float64 (as the reference).
BlendArgs blend_args(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam) {
  return {x, at::Tensor(), as_index(perm), lam.to(accumulate_type(x.scalar_type())).contiguous(),
          lam.to(at::kDouble).contiguous()};
}

BackwardArgs backward_args(const at::Tensor& grad_out, const at::Tensor& perm, const at::Tensor& lam) {
  return {grad_out, at::Tensor(), as_index(perm), lam.to(accumulate_type(grad_out.scalar_type())).contiguous()};
}

// R-Mix's codes from its top mask: a (B, p, p) byte buffer, negligible next to the images.
at::Tensor mask_regions(const at::Tensor& mask, const at::Tensor& perm, const DeviceKernels& kernels) {
  at::Tensor regions = at::empty(mask.sizes(), mask.options().dtype(at::kByte));
  kernels.regions_from_mask(mask.contiguous(), perm, regions);
  return regions;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(const at::Tensor& x, const at::Tensor& grad,
                                                           const at::Tensor& perm, const at::Tensor& lam,
                                                           const at::Tensor& q, int64_t grid, bool validate,
                                                           const DeviceKernels& kernels) {
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
  if (validate) check_values(perm, lam, q, at::Tensor());

  BlendOutputs out{at::empty_like(x), at::empty({B}, x.options().dtype(at::kFloat))};
  at::Tensor mask = at::empty({B, grid, grid}, x.options().dtype(at::kBool));
  if (B > 0) {
    kernels.mask(grad, q.to(accumulate_type(grad.scalar_type())).contiguous(), grid, mask);
    BlendArgs args = blend_args(x, perm, lam);
    args.regions = mask_regions(mask, args.perm, kernels);
    kernels.blend(args, out);
  }
  return {out.mixed, out.lam_eff, mask};
}

at::Tensor run_backward(const at::Tensor& grad_out, const at::Tensor& mask, const at::Tensor& perm,
                        const at::Tensor& lam, const DeviceKernels& kernels) {
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
    BackwardArgs args = backward_args(grad_out, perm, lam);
    args.regions = mask_regions(mask, args.perm, kernels);
    kernels.blend_backward(args, grad_x);
  }
  return grad_x;
}

std::tuple<at::Tensor, at::Tensor> run_blend_regions(const at::Tensor& x, const at::Tensor& regions,
                                                     const at::Tensor& perm, const at::Tensor& lam, bool validate,
                                                     const DeviceKernels& kernels) {
  check_image("x", x);
  check_regions(regions, "x", x);
  check_perm(perm, x);
  check_level("lam", lam, x);
  const at::Tensor codes = comparable(regions);
  if (validate) check_values(perm, lam, at::Tensor(), codes);

  BlendOutputs out{at::empty_like(x), at::empty({x.size(0)}, x.options().dtype(at::kFloat))};
  if (x.size(0) > 0) {
    BlendArgs args = blend_args(x, perm, lam);
    args.regions = region_codes(codes);
    kernels.blend(args, out);
  }
  return {out.mixed, out.lam_eff};
}

at::Tensor run_blend_regions_backward(const at::Tensor& grad_out, const at::Tensor& regions, const at::Tensor& perm,
                                      const at::Tensor& lam, const DeviceKernels& kernels) {
  check_image("grad_out", grad_out);
  check_regions(regions, "grad_out", grad_out);
  check_perm(perm, grad_out);
  check_level("lam", lam, grad_out);

  at::Tensor grad_x = at::empty_like(grad_out);
  if (grad_out.size(0) > 0) {
    BackwardArgs args = backward_args(grad_out, perm, lam);
    args.regions = region_codes(comparable(regions));
    kernels.blend_backward(args, grad_x);
  }
  return grad_x;
}

TORCH_LIBRARY(rmix_fast, m) {
  // Fake kernels and autograd come from this Python module; torch imports it if they are needed first.
  m.set_python_module("rmix_fast.ops._registry");
  m.def("rmix_cpp(Tensor x, Tensor grad, Tensor perm, Tensor lam, Tensor q, int grid, bool validate)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("rmix_cpp_backward(Tensor grad_out, Tensor mask, Tensor perm, Tensor lam) -> Tensor");
  // The region blend alone, with the caller's codes per cell (0 blend, 1 own, else partner): Mixup, CutMix.
  m.def("blend_regions_cpp(Tensor x, Tensor regions, Tensor perm, Tensor lam, bool validate) -> (Tensor, Tensor)");
  m.def("blend_regions_cpp_backward(Tensor grad_out, Tensor regions, Tensor perm, Tensor lam) -> Tensor");
}

}  // namespace rmix_fast
