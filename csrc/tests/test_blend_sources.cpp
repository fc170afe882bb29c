// ctest executable for rmix_fast::blend_sources_cpp and its backward on the CPU: two sources over two 2x2
// samples, small enough to work out by hand (equal logits average the sources at scales 1 and 2, weights
// taken as they are, nearest upsampling of a two-column map, the backward's gather and the logits' gradient
// through the softmax and the upsampling's adjoint), layouts, determinism and errors.
#include "tests/test_helpers.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace rmix_fast::test {
namespace {

using Forward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, c10::string_view,
                           c10::string_view, bool);
using Backward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, int64_t, c10::string_view, c10::string_view);

// (2, 2, h, w) logits: source 0's value a, source 1's value b, for both samples.
at::Tensor two_maps(float a, float b, int64_t h, int64_t w) {
  return at::stack({at::full({h, w}, a), at::full({h, w}, b)}).unsqueeze(0).repeat({2, 1, 1, 1});
}

void run_checks() {
  auto forward = op<Forward>("rmix_fast::blend_sources_cpp");
  auto backward = op<Backward>("rmix_fast::blend_sources_cpp_backward");

  const at::Tensor x = images({1, 2, 3, 4}, {10, 20, 30, 40});
  // Source 0 is the sample itself, source 1 the other sample.
  const at::Tensor index = at::tensor(std::vector<int64_t>{0, 1, 1, 0}).view({2, 2});
  const at::Tensor average = images({5.5, 11, 16.5, 22}, {5.5, 11, 16.5, 22});

  {  // equal logits: softmax gives 0.5 / 0.5 at every pixel, at scale 1 and upsampled from one cell
    check(same(forward.call(x, index, at::zeros({2, 2, 2, 2}), 1, "bilinear", "softmax", true), average),
          "equal logits average the two sources (scale 1)");
    check(same(forward.call(x, index, at::zeros({2, 2, 1, 1}), 2, "bilinear", "softmax", true), average),
          "equal logits average the two sources (bilinear, scale 2)");
    check(same(forward.call(x, index, at::zeros({2, 2, 1, 1}), 2, "nearest", "softmax", true), average),
          "equal logits average the two sources (nearest, scale 2)");
  }
  {  // no normalisation: the maps are the weights as they are
    const at::Tensor mixed = forward.call(x, index, two_maps(0.25, 0.75, 2, 2), 1, "bilinear", "none", true);
    check(same(mixed, images({7.75, 15.5, 23.25, 31}, {3.25, 6.5, 9.75, 13})), "weights 0.25 / 0.75 as given");
    // nearest x2 of a 1x2 map (1, 0) / (0, 1) over 2x4 images: the left half from source 0, the right half
    // from source 1
    const at::Tensor x0 = at::arange(1, 9, at::kFloat).view({1, 1, 2, 4});
    at::Tensor cols = at::zeros({2, 2, 1, 2});
    cols.select(1, 0).select(2, 0).fill_(1);
    cols.select(1, 1).select(2, 1).fill_(1);
    const at::Tensor want = at::tensor(std::vector<float>{1, 2, 30, 40, 5, 6, 70, 80, 10, 20, 3, 4, 50, 60, 7, 8});
    check(same(forward.call(at::cat({x0, 10 * x0}), index, cols, 2, "nearest", "none", true), want.view({2, 1, 2, 4})),
          "nearest upsampling repeats each cell over its 2x2 block");
  }
  {  // backward, g = 1 on sample 0 and 2 on sample 1, equal logits
    const at::Tensor go = images({1, 1, 1, 1}, {2, 2, 2, 2});
    // grad_x[j] = 0.5 g[j] (row 0, identity) + 0.5 g[1 - j] (row 1, the swap) = 1.5
    // dz_0 = 0.5 (dW_0 - (0.5 dW_0 + 0.5 dW_1)) = 0.25 (dW_0 - dW_1), dW_i = g[b] * x[index[i, b]]; dz_1 = -dz_0
    const at::Tensor dz0 = images({-2.25, -4.5, -6.75, -9}, {4.5, 9, 13.5, 18});
    auto [gx, gl] = backward.call(go, x, index, at::zeros({2, 2, 2, 2}), 1, "bilinear", "softmax");
    check(same(gx, at::full({2, 1, 2, 2}, 1.5f)), "grad_x gathers each sample's share from both rows");
    check(same(gl, at::cat({dz0, -dz0}, 1)), "grad_logits through the softmax (scale 1)");
    // scale 2 from one cell: every pixel's four corner weights sum to 1 on that cell, so it gets the sum of dz
    auto [gx2, gl2] = backward.call(go, x, index, at::zeros({2, 2, 1, 1}), 2, "bilinear", "softmax");
    check(same(gx2, gx), "grad_x at scale 2");
    check(same(gl2, at::tensor(std::vector<float>{-22.5, 22.5, 45, -45}).view({2, 2, 1, 1})),
          "grad_logits sums its cell's pixels (the upsampling's adjoint)");
    auto [gx3, gl3] = backward.call(go, x, index, two_maps(0.25, 0.75, 2, 2), 1, "bilinear", "none");
    check(same(gl3, at::cat({images({1, 2, 3, 4}, {20, 40, 60, 80}), images({10, 20, 30, 40}, {2, 4, 6, 8})}, 1)),
          "without normalisation grad_logits is <g, x[index]> per pixel");
    check(same(gx3, images({1.75, 1.75, 1.75, 1.75}, {1.25, 1.25, 1.25, 1.25})), "grad_x with weights 0.25 / 0.75");
  }
  {  // channels_last and a strided view give the same bits as contiguous input; repeated runs too
    at::manual_seed(0);
    const at::Tensor xr = at::randn({4, 3, 6, 10}), lr = at::randn({4, 3, 3, 5});
    const at::Tensor i3 = at::stack({at::randperm(4), at::randperm(4), at::randperm(4)}).to(at::kInt);
    const at::Tensor ref = forward.call(xr, i3, lr, 2, "bilinear", "softmax", true);
    const at::Tensor cl =
        forward.call(xr.contiguous(at::MemoryFormat::ChannelsLast), i3, lr, 2, "bilinear", "softmax", true);
    const at::Tensor wide = at::zeros({4, 3, 6, 20});
    wide.slice(3, 0, 20, 2).copy_(xr);
    const at::Tensor st = forward.call(wide.slice(3, 0, 20, 2), i3, lr, 2, "bilinear", "softmax", true);
    check(same(cl, ref) && cl.is_contiguous(at::MemoryFormat::ChannelsLast), "channels_last = NCHW, kept");
    check(same(st, ref) && st.is_contiguous(), "strided view = NCHW, contiguous output");
    check(same(forward.call(xr, i3, lr, 2, "bilinear", "softmax", true), ref), "deterministic");
  }
  // bad input: a ValueError / TypeError on the Python side
  expect_error<c10::ValueError>("a repeated index is rejected", "must be a permutation of 0..1", [&] {
    forward.call(x, at::tensor(std::vector<int64_t>{0, 1, 1, 1}).view({2, 2}), at::zeros({2, 2, 2, 2}), 1, "bilinear",
                 "softmax", true);
  });
  expect_error<c10::ValueError>("an index out of range is rejected even without validate", "index must hold", [&] {
    forward.call(x, at::tensor(std::vector<int64_t>{0, 1, 2, 0}).view({2, 2}), at::zeros({2, 2, 2, 2}), 1, "bilinear",
                 "softmax", false);
  });
  expect_error<c10::ValueError>("NaN logits are rejected", "logits must be finite", [&] {
    forward.call(x, index, at::full({2, 2, 2, 2}, std::numeric_limits<float>::quiet_NaN()), 1, "bilinear", "softmax",
                 true);
  });
  expect_error<c10::ValueError>("logits that do not upsample to x are rejected", "logits must have shape", [&] {
    forward.call(x, index, at::zeros({2, 2, 2, 2}), 2, "bilinear", "softmax", true);
  });
  expect_error<c10::ValueError>("an unknown mode is rejected", "mode must be 'bilinear' or 'nearest'", [&] {
    forward.call(x, index, at::zeros({2, 2, 2, 2}), 1, "bicubic", "softmax", true);
  });
  expect_error<c10::ValueError>("an unknown normalisation is rejected", "normalize must be 'softmax' or 'none'", [&] {
    backward.call(x, x, index, at::zeros({2, 2, 2, 2}), 1, "nearest", "sum");
  });
  expect_error<c10::TypeError>("integer images are rejected", "x must be float16, bfloat16, float32 or float64", [&] {
    forward.call(x.to(at::kInt), index, at::zeros({2, 2, 2, 2}), 1, "bilinear", "softmax", true);
  });
}

}  // namespace
}  // namespace rmix_fast::test

int main() { return rmix_fast::test::run(rmix_fast::test::run_checks); }
