#include "blend_sources.h"

#include <ATen/ATen.h>

#include <vector>

namespace rmix_fast {

namespace {

Upsample parse_mode(c10::string_view mode) {
  if (mode == "bilinear") return Upsample::kBilinear;
  TORCH_CHECK_VALUE(mode == "nearest", "mode must be 'bilinear' or 'nearest', got '", mode, "'");
  return Upsample::kNearest;
}

Normalize parse_normalize(c10::string_view normalize) {
  if (normalize == "softmax") return Normalize::kSoftmax;
  TORCH_CHECK_VALUE(normalize == "none", "normalize must be 'softmax' or 'none', got '", normalize, "'");
  return Normalize::kNone;
}

// The checks both directions share; `image` is x (its shape gives B, H, W), already checked.
void check_sources(const at::Tensor& image, const at::Tensor& index, const at::Tensor& logits, int64_t scale) {
  const int64_t B = image.size(0), H = image.size(2), W = image.size(3);
  TORCH_CHECK_TYPE(at::isIntegralType(index.scalar_type(), /*includeBool=*/false),
                   "index must be an integer tensor, got dtype ", index.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 2 && index.size(0) >= 1 && index.size(1) == B, "index must have shape (N, ", B,
                    ") with N >= 1 to match x's batch, got ", index.sizes());
  check_same_device("index", index, image);
  TORCH_CHECK_VALUE(scale >= 1, "scale must be >= 1, got ", scale);
  check_float_tensor("logits", logits);
  const int64_t N = index.size(0);
  // H / scale, not h * scale: a huge scale must not overflow into a match.
  TORCH_CHECK_VALUE(logits.dim() == 4 && logits.size(0) == B && logits.size(1) == N && H % scale == 0 &&
                        W % scale == 0 && logits.size(2) == H / scale && logits.size(3) == W / scale,
                    "logits must have shape (B, N, h, w) = (", B, ", ", N, ", h, w) with h * scale == H=", H,
                    " and w * scale == W=", W, " of x (shape ", image.sizes(), ", scale=", scale, "), got shape ",
                    logits.sizes());
  check_same_device("logits", logits, image);
}

// Every row of index is a permutation of 0..B-1: the range first, then the repeats (permutation_checks'
// messages, per row).
std::vector<ContentCheck> index_checks(const at::Tensor& index) {
  const int64_t N = index.size(0), B = index.size(1);
  const at::Tensor idx = index.to(at::kLong);
  const at::Tensor in_range = idx.ge(0).logical_and(idx.lt(B));
  // Count the hits of the in-range entries per row, in one flat (N * B) histogram.
  const at::Tensor flat =
      (at::where(in_range, idx, at::zeros_like(idx)) + at::arange(N, idx.options()).mul_(B).unsqueeze(1)).reshape({-1});
  at::Tensor hits = at::zeros({N * B}, idx.options().dtype(at::kInt));
  hits.index_add_(0, flat, in_range.to(at::kInt).reshape({-1}));
  auto out_of_range = [idx, B] {
    TORCH_CHECK_VALUE(false, "index must hold indices in [0, ", B - 1, "], got values in [", idx.min().item<int64_t>(),
                      ", ", idx.max().item<int64_t>(), "]");
  };
  auto repeats = [hits, B] {
    const int64_t row = hits.view({-1, B}).ne(1).any(1).nonzero()[0][0].item<int64_t>();
    TORCH_CHECK_VALUE(false, "index row ", row, " must be a permutation of 0..", B - 1,
                      "; it repeats some indices and misses others");
  };
  return {{in_range.all(), out_of_range}, {hits.eq(1).all(), repeats}};
}

// NaN or inf in the logits would make every weight of a pixel NaN (softmax) or the blend inf/NaN.
ContentCheck finite_check(const char* name, const at::Tensor& t) {
  const at::Tensor finite = at::isfinite(t);
  auto error = [name, t, finite] {
    const at::Tensor bad = t.masked_select(at::logical_not(finite));
    TORCH_CHECK_VALUE(false, name, " must be finite; got ", bad.numel(), " non-finite value(s), e.g. ",
                      bad[0].item<double>());
  };
  return {finite.all(), error};
}

// The reference's output layout: channels_last when t is (and is not also contiguous), else contiguous.
at::Tensor empty_like_reference(const at::Tensor& t) {
  const bool channels_last = !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
  return at::empty(t.sizes(), t.options(),
                   channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

BlendSourcesArgs sources_args(const at::Tensor& x, const at::Tensor& index, const at::Tensor& logits, int64_t scale,
                              Upsample mode, Normalize normalize) {
  return {x, as_index(index), logits.to(accumulate_type(logits.scalar_type())).contiguous(), scale, mode, normalize};
}

}  // namespace

at::Tensor blend_sources_forward(const BlendSourcesKernels& kernels, const at::Tensor& x, const at::Tensor& index,
                                 const at::Tensor& logits, int64_t scale, c10::string_view mode,
                                 c10::string_view normalize, bool validate) {
  check_image("x", x);
  check_sources(x, index, logits, scale);
  const Upsample up = parse_mode(mode);
  const Normalize norm = parse_normalize(normalize);
  if (validate && x.size(0) > 0) {
    std::vector<ContentCheck> checks = index_checks(index);
    checks.push_back(finite_check("logits", logits));
    run_content_checks(checks);
  }

  at::Tensor mixed = empty_like_reference(x);
  if (x.size(0) > 0) kernels.blend(sources_args(x, index, logits, scale, up, norm), mixed);
  return mixed;
}

std::tuple<at::Tensor, at::Tensor> blend_sources_backward(const BlendSourcesKernels& kernels,
                                                          const at::Tensor& grad_out, const at::Tensor& x,
                                                          const at::Tensor& index, const at::Tensor& logits,
                                                          int64_t scale, c10::string_view mode,
                                                          c10::string_view normalize) {
  check_image("grad_out", grad_out);
  check_image("x", x);
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "grad_out must have x's shape ", x.sizes(), ", got ",
                    grad_out.sizes());
  // Autograd hands the backward grad_out in x's dtype; one dtype keeps the kernels to one dispatch.
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), "grad_out must have x's dtype ", x.scalar_type(),
                   ", got ", grad_out.scalar_type());
  check_same_device("grad_out", grad_out, x);
  check_sources(x, index, logits, scale);
  const Upsample up = parse_mode(mode);
  const Normalize norm = parse_normalize(normalize);

  at::Tensor grad_x = empty_like_reference(grad_out);
  const BlendSourcesArgs args = sources_args(x, index, logits, scale, up, norm);
  at::Tensor grad_acc = at::empty(logits.sizes(), args.logits.options());
  if (x.size(0) > 0) {
    kernels.blend_backward(args, grad_out, grad_x, grad_acc);
  } else {
    grad_acc.zero_();
  }
  return {grad_x, grad_acc.to(logits.scalar_type())};
}

}  // namespace rmix_fast
