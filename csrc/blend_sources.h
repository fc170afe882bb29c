// AdAutoMix's mixing step (Qin et al., ICLR 2024), op blend_sources: a per-pixel soft mix of N source images
// whose weights are upsampled from low-resolution maps,
//   W = normalize(upsample(logits, scale, mode))      (B, N, H, W)
//   mixed[b] = sum_i W[b, i] * x[index[i, b]]          (summed in source order i = 0, 1, ...)
// upsample is F.interpolate(scale_factor=scale, align_corners=False) ("bilinear" or "nearest"), normalize a
// softmax over the N sources per pixel or nothing. Semantics: rmix_fast/reference/blend_sources.py.
#pragma once

#include "common.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <tuple>

namespace rmix_fast {

enum class Upsample : uint8_t { kBilinear, kNearest };
enum class Normalize : uint8_t { kSoftmax, kNone };

// What both kernels read; everything is on x's device and B >= 1 when a kernel runs.
struct BlendSourcesArgs {
  at::Tensor x;       // (B, C, H, W) float16/bfloat16/float32/float64, any strides
  at::Tensor index;   // (N, B) int64, contiguous; each row a permutation unless the caller skipped validation
  at::Tensor logits;  // (B, N, H / scale, W / scale) accumulate_type(logits.dtype), contiguous
  int64_t scale;      // >= 1
  Upsample mode;
  Normalize normalize;
};

// What a device supplies for blend_sources (cpu/blend_sources_kernel.cpp).
struct BlendSourcesKernels {
  // Fills mixed: x's dtype, contiguous or channels_last (the reference's layout).
  void (*blend)(const BlendSourcesArgs& args, at::Tensor& mixed);
  // Fills grad_x (grad_out's dtype and reference layout) and grad_logits ((B, N, h, w) contiguous, in
  // args.logits' dtype, i.e. the logits' accumulate type); grad_out has x's shape and dtype, any strides.
  void (*blend_backward)(const BlendSourcesArgs& args, const at::Tensor& grad_out, at::Tensor& grad_x,
                         at::Tensor& grad_logits);
};

// rmix_fast::blend_sources_cpp and its backward: argument checks, the content checks when `validate`, int64
// index and logits in their accumulate type, output allocation; then the device's kernels.
at::Tensor blend_sources_forward(const BlendSourcesKernels& kernels, const at::Tensor& x, const at::Tensor& index,
                                 const at::Tensor& logits, int64_t scale, c10::string_view mode,
                                 c10::string_view normalize, bool validate);

std::tuple<at::Tensor, at::Tensor> blend_sources_backward(const BlendSourcesKernels& kernels,
                                                          const at::Tensor& grad_out, const at::Tensor& x,
                                                          const at::Tensor& index, const at::Tensor& logits,
                                                          int64_t scale, c10::string_view mode,
                                                          c10::string_view normalize);

}  // namespace rmix_fast
