// ctest executable for rmix_fast::rmix_cpp and its backward on the CPU: cases small enough to work out by
// hand (thresholds, copies, blends on both lerp branches, backward, NaN saliency), layouts, determinism
// and error types.
#include "tests/test_helpers.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace rmix_fast::test {
namespace {

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, const at::Tensor&, int64_t, bool);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);

void run_checks() {
  auto forward = op<Forward>("rmix_fast::rmix_cpp");
  auto backward = op<Backward>("rmix_fast::rmix_cpp_backward");

  const at::Tensor x = images({10, 20, 30, 40}, {1, 2, 3, 4});
  const at::Tensor grad = images({1, 2, 3, 4}, {4, 3, 2, 1});  // saliency = |grad|
  const at::Tensor perm = at::tensor(std::vector<int64_t>{1, 0});
  const at::Tensor half = at::full({2}, 0.5);

  {  // q = 0.5: rank 1.5 between 2 and 3 -> threshold 2.5; the two masks are complements
    auto [mixed, lam_eff, mask] = forward.call(x, grad, perm, at::full({2}, 0.25), half, 2, true);
    const at::Tensor want_mask = bools({0, 0, 1, 1, 1, 1, 0, 0}, {2, 2, 2});
    check(same(mask, want_mask), "q=0.5 thresholds at the interpolated median");
    // every cell disagrees, so the top image is copied: the top row from sample 1, the bottom row from sample 0
    check(same(mixed, images({1, 2, 30, 40}, {1, 2, 30, 40})), "disagreeing cells copy the top image");
    check(same(lam_eff, at::full({2}, 0.5)), "lam_eff counts the kept own cells: 2 of 4");

    // backward: x0's bottom row reaches both outputs, its top row neither
    const at::Tensor go = images({1, 1, 1, 1}, {2, 2, 2, 2});
    check(same(backward.call(go, mask, perm, at::full({2}, 0.25)), images({0, 0, 3, 3}, {3, 3, 0, 0})),
          "backward routes the gradient of copied cells to their source");
  }
  {  // q = 0: the threshold is the minimum, every cell is top, everything blends
    auto [mixed, lam_eff, mask] = forward.call(x, grad, perm, at::full({2}, 0.25), at::zeros({2}), 2, true);
    check(mask.all().item<bool>(), "q=0 marks every cell top");
    check(same(mixed, images({3.25, 6.5, 9.75, 13}, {7.75, 15.5, 23.25, 31})), "lam=0.25 blends 0.25*x + 0.75*x[perm]");
    check(same(lam_eff, at::full({2}, 0.25)), "lam_eff = lam when everything blends");
    auto [mixed_hi, lam_eff_hi, mask_hi] = forward.call(x, grad, perm, at::full({2}, 0.75), at::zeros({2}), 2, true);
    check(same(mixed_hi, images({7.75, 15.5, 23.25, 31}, {3.25, 6.5, 9.75, 13})), "lam=0.75 takes lerp's other branch");

    const at::Tensor go = images({1, 1, 1, 1}, {2, 2, 2, 2});
    check(same(backward.call(go, mask, perm, at::full({2}, 0.25)),
               images({1.75, 1.75, 1.75, 1.75}, {1.25, 1.25, 1.25, 1.25})),
          "backward of a blend: lam*g[b] + (1-lam)*g[src]");
  }
  {  // channel L2: cell (1,1) has sqrt((3^2+4^2)/2) = 3.54, the largest; q = 1 keeps only the maximum
    at::Tensor g = at::ones({2, 2, 4, 4});
    g.index_put_({0, 0, at::indexing::Slice(2, 4), at::indexing::Slice(2, 4)}, 3.0);
    g.index_put_({0, 1, at::indexing::Slice(2, 4), at::indexing::Slice(2, 4)}, 4.0);
    g.index_put_({1, 0, 0, 0}, std::numeric_limits<float>::quiet_NaN());
    auto [mixed, lam_eff, mask] = forward.call(at::randn({2, 2, 4, 4}), g, perm, half, at::ones({2}), 2, true);
    check(same(mask[0], bools({0, 0, 0, 1}, {2, 2})), "q=1 keeps only the most salient cell");
    check(mask[1].all().item<bool>(), "a NaN gradient gives an all-top mask");
  }
  {  // channels_last and a strided view give the same bits as contiguous input
    at::manual_seed(0);
    const at::Tensor xr = at::randn({5, 3, 8, 12}), gr = at::randn({5, 3, 8, 12});
    const at::Tensor p5 = at::tensor(std::vector<int64_t>{3, 0, 4, 1, 2}), lam = at::rand({5}), q = at::full({5}, 0.44);
    auto ref = forward.call(xr, gr, p5, lam, q, 4, true);
    auto cl = forward.call(xr.contiguous(at::MemoryFormat::ChannelsLast), gr.contiguous(at::MemoryFormat::ChannelsLast),
                           p5, lam, q, 4, true);
    const at::Tensor wide = at::zeros({5, 3, 8, 24});
    wide.slice(3, 0, 24, 2).copy_(xr);
    auto st = forward.call(wide.slice(3, 0, 24, 2), gr, p5, lam, q, 4, true);
    check(same(std::get<0>(cl), std::get<0>(ref)) && same(std::get<2>(cl), std::get<2>(ref)), "channels_last = NCHW");
    check(std::get<0>(cl).is_contiguous(at::MemoryFormat::ChannelsLast), "mixed keeps channels_last");
    check(same(std::get<0>(st), std::get<0>(ref)), "strided view = NCHW");
    auto again = forward.call(xr, gr, p5, lam, q, 4, true);
    check(same(std::get<0>(again), std::get<0>(ref)) && same(std::get<1>(again), std::get<1>(ref)), "deterministic");
  }
  // bad input: a ValueError / TypeError on the Python side
  const at::Tensor repeated = at::tensor(std::vector<int64_t>{0, 0});
  expect_error<c10::ValueError>("a repeated index is rejected", "perm must be a permutation",
                                [&] { forward.call(x, grad, repeated, half, half, 2, true); });
  expect_error<c10::ValueError>("lam outside [0, 1] is rejected", "lam must lie in [0, 1]",
                                [&] { forward.call(x, grad, perm, at::full({2}, 1.5), half, 2, true); });
  expect_error<c10::ValueError>("a grid that does not divide H, W is rejected", "grid=3 must divide",
                                [&] { forward.call(x, grad, perm, half, half, 3, true); });
  expect_error<c10::TypeError>("integer images are rejected", "x must be float16, bfloat16, float32 or float64",
                               [&] { forward.call(x.to(at::kInt), grad, perm, half, half, 2, true); });
}

}  // namespace
}  // namespace rmix_fast::test

int main() { return rmix_fast::test::run(rmix_fast::test::run_checks); }
