// ctest executable for rmix_fast::sage_cpp and its backward on the CPU: a 1x4 case small enough to work out
// by hand (saliency, scores with a tie, the first best shift, M, the blend, lam_eff, the backward), the
// uniform fallback of a zero gradient, layouts, determinism and error types.
#include "tests/test_helpers.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace rmix_fast::test {
namespace {

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                           const at::Tensor&, const at::Tensor&,
                                                                           const at::Tensor&, double, int64_t, bool);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);

// Two 1x1x4 rows as a (2, 1, 1, 4) batch.
at::Tensor rows(std::vector<double> a, std::vector<double> b) {
  return at::stack({at::tensor(a), at::tensor(b)}).to(at::kFloat).view({2, 1, 1, 4});
}

at::Tensor shifts(std::vector<int64_t> flat) {
  const int64_t K = static_cast<int64_t>(flat.size()) / 2;
  return at::tensor(flat).view({K, 2});
}

bool close(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && at::allclose(a.to(at::kDouble), b.to(at::kDouble), 1e-6, 1e-6);
}

void run_checks() {
  auto forward = op<Forward>("rmix_fast::sage_cpp");
  auto backward = op<Backward>("rmix_fast::sage_cpp_backward");

  const at::Tensor x = rows({10, 20, 30, 40}, {1, 2, 3, 4});
  const at::Tensor perm = at::tensor(std::vector<int64_t>{1, 0});
  const at::Tensor half = at::full({2}, 0.5);
  {
    // kernel_size 1: the blur is the identity, so s~ = |grad|: sample 0 uniform (a = 0.5 * 1/4 = 0.125), sample 1
    // [0, 0, 2, 2] (normalised [0, 0, .5, .5]). Sample 0: c = [0, 0, .25, .25]; a pixel scores a where the
    // shifted partner is 0 or outside, else (a^2 + c^2) / (a + c) = 0.2083. dx = -1 keeps one salient partner
    // pixel (0.5833), dx = 1 and dx = 0 keep both (0.6667, a tie that the first candidate, dx = 1, wins).
    // Sample 1: a = [0, 0, .25, .25], c = 0.125: dx = 1 scores .7083, dx = 0 .6667, dx = -1 .5417.
    const at::Tensor grad = rows({1, -1, 1, -1}, {0, 0, 2, -2});
    const at::Tensor offsets = shifts({0, -1, 0, 1, 0, 0});
    auto [mixed, lam_eff, shift, weight] = forward.call(x, grad, perm, half, offsets, 1.0, 1, true);
    check(same(shift, shifts({0, 1, 0, 1})), "the first of the best shifts wins, per sample");
    const double third = 1.0 / 3;
    // M0 = a / (a + c(p + 1)) = [1, 1/3, 1/3, 1] (the last pixel's partner is outside); M1 = [0, 0, 2/3, 1].
    check(close(weight, rows({1, third, third, 1}, {0, 0, 2 * third, 1}).view({2, 1, 4})), "M of the chosen shift");
    // mixed0 = M0 x0 + (1 - M0) [2, 3, 4, 0]; mixed1 = M1 x1 + (1 - M1) [20, 30, 40, 0].
    check(close(mixed, rows({10, 20 * third + 2, 10 + 8 * third, 40}, {20, 30, 2 + 40 * third, 4})),
          "mixed blends the shifted partner, 0 outside");
    check(close(lam_eff, at::tensor({2 * third, 5.0 / 12}).to(at::kFloat)), "lam_eff = mean M");
    check(lam_eff.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, "output dtypes");

    // grad_x[b] = M_b g_b + (1 - M_s) g_s(p - d_s), s = the sample whose partner is b (here the other one).
    const at::Tensor go = rows({1, 1, 1, 1}, {2, 2, 2, 2});
    check(close(backward.call(go, weight, perm, shift),
                rows({1, third + 2, third + 2, 1 + 2 * third}, {0, 0, 2, 2 + 2 * third})),
          "backward gathers both terms");
  }
  {  // zero gradients fall back to uniform saliency: a = c, M = 1/2 at shift 0, exactly
    auto [mixed, lam_eff, shift, weight] = forward.call(x, at::zeros_like(x), perm, half, shifts({0, 0}), 1.0, 5, true);
    check(same(weight, at::full({2, 1, 4}, 0.5)), "zero gradient: uniform saliency, M = 1/2");
    check(same(mixed, rows({5.5, 11, 16.5, 22}, {5.5, 11, 16.5, 22})), "M = 1/2 averages the pair");
    check(same(lam_eff, at::full({2}, 0.5)), "lam_eff = 1/2");
  }
  {  // channels_last and strided inputs give the same bits as contiguous ones; repeated calls too
    at::manual_seed(0);
    const at::Tensor xr = at::randn({5, 3, 9, 12}), gr = at::randn({5, 3, 9, 12});
    const at::Tensor p5 = at::tensor(std::vector<int64_t>{3, 0, 4, 1, 2}), lam = at::rand({5});
    const at::Tensor offsets = shifts({0, 0, 3, -2, -8, 11, 8, -11, 1, 1, -4, 5});
    auto ref = forward.call(xr, gr, p5, lam, offsets, 1.0, 5, true);
    const auto cl_format = at::MemoryFormat::ChannelsLast;
    auto cl = forward.call(xr.contiguous(cl_format), gr.contiguous(cl_format), p5, lam, offsets, 1.0, 5, true);
    const at::Tensor wide = at::zeros({5, 3, 9, 24});
    wide.slice(3, 0, 24, 2).copy_(xr);
    auto st = forward.call(wide.slice(3, 0, 24, 2), gr, p5, lam, offsets, 1.0, 5, true);
    bool all_same = true;
    for (const auto& [a, b] :
         {std::pair{std::get<0>(cl), std::get<0>(ref)}, std::pair{std::get<2>(cl), std::get<2>(ref)},
          std::pair{std::get<3>(cl), std::get<3>(ref)}, std::pair{std::get<0>(st), std::get<0>(ref)}}) {
      all_same = all_same && same(a, b);
    }
    check(all_same, "channels_last and strided inputs = NCHW");
    check(std::get<0>(cl).is_contiguous(cl_format), "mixed keeps channels_last");
    const at::Tensor go = at::randn({5, 3, 9, 12});
    const at::Tensor back = backward.call(go, std::get<3>(ref), p5, std::get<2>(ref));
    const at::Tensor back_cl = backward.call(go.contiguous(cl_format), std::get<3>(ref), p5, std::get<2>(ref));
    check(same(back_cl, back) && back_cl.is_contiguous(cl_format), "backward: channels_last = NCHW");
    auto again = forward.call(xr, gr, p5, lam, offsets, 1.0, 5, true);
    check(same(std::get<0>(again), std::get<0>(ref)) && same(std::get<1>(again), std::get<1>(ref)), "deterministic");
  }
  // bad input: a ValueError / TypeError on the Python side
  const at::Tensor one = shifts({0, 1});
  expect_error<c10::TypeError>("integer images are rejected", "x must be float16, bfloat16, float32 or float64",
                               [&] { forward.call(x.to(at::kInt), x, perm, half, one, 1.0, 5, true); });
  expect_error<c10::TypeError>("float offsets are rejected", "offsets must be an integer tensor",
                               [&] { forward.call(x, x, perm, half, one.to(at::kFloat), 1.0, 5, true); });
  expect_error<c10::ValueError>("an even kernel is rejected", "kernel_size must be odd, got 4",
                                [&] { forward.call(x, x, perm, half, one, 1.0, 4, true); });
  expect_error<c10::ValueError>("sigma <= 0 is rejected", "sigma must be a finite number > 0",
                                [&] { forward.call(x, x, perm, half, one, -1.0, 5, true); });
  expect_error<c10::ValueError>("a shift outside the image is rejected",
                                "offsets must hold shifts (dy, dx) with |dy| < H=1", [&] {
                                  forward.call(x, x, perm, half, shifts({1, 0}), 1.0, 5, true);
                                });
  expect_error<c10::ValueError>("a repeated index is rejected", "perm must be a permutation",
                                [&] { forward.call(x, x, at::zeros({2}, at::kLong), half, one, 1.0, 5, true); });
  expect_error<c10::ValueError>("lam outside [0, 1] is rejected", "lam must lie in [0, 1]",
                                [&] { forward.call(x, x, perm, at::full({2}, 1.5), one, 1.0, 5, true); });
  expect_error<c10::ValueError>("a weight of the wrong shape is rejected", "weight must have shape (B, H, W)", [&] {
    backward.call(x, at::ones({2, 1, 3}), perm, at::zeros({2, 2}, at::kLong));
  });
}

}  // namespace
}  // namespace rmix_fast::test

int main() { return rmix_fast::test::run(rmix_fast::test::run_checks); }
