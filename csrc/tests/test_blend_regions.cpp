// ctest executable for rmix_fast::blend_regions_cpp and its backward on the CPU: the caller's codes per
// cell (0 blend, 1 own, 2 partner) on a grid that may be coarser than the pixels and non-square (codes,
// lam_eff, backward, mixup as one cell, int64 codes, layouts, errors).
#include "tests/test_helpers.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace rmix_fast::test {
namespace {

using Forward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                   const at::Tensor&, bool);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);

void run_checks() {
  auto forward = op<Forward>("rmix_fast::blend_regions_cpp");
  auto backward = op<Backward>("rmix_fast::blend_regions_cpp_backward");

  const at::Tensor x = images({10, 20, 30, 40}, {1, 2, 3, 4});
  const at::Tensor perm = at::tensor(std::vector<int64_t>{1, 0});
  const at::Tensor lam = at::full({2}, 0.25);
  {  // a 1x2 grid: sample 0 keeps its left column and takes its partner's right one; sample 1 blends its left
    const at::Tensor regions = at::tensor(std::vector<uint8_t>{1, 2, 0, 1}).view({2, 1, 2});
    auto [mixed, lam_eff] = forward.call(x, regions, perm, lam, true);
    check(same(mixed, images({10, 2, 30, 4}, {7.75, 2, 23.25, 4})), "codes pick own, partner or the blend per cell");
    check(same(lam_eff, at::tensor(std::vector<float>{0.5, 0.625})), "lam_eff = (blended*lam + own) / cells");
    // grad_x[0] = own (left, 1) + via sample 1 (left blends: 0.75*2); grad_x[1] = own (left 0.25*2, right 2)
    // + via sample 0 (right takes its partner: 1)
    const at::Tensor go = images({1, 1, 1, 1}, {2, 2, 2, 2});
    check(same(backward.call(go, regions, perm, lam), images({2.5, 0, 2.5, 0}, {0.5, 3, 0.5, 3})),
          "backward routes each cell's gradient by its code");
  }
  {  // one cell for the whole image: a plain mixup; the same bits as R-Mix with every cell top
    const at::Tensor regions = at::zeros({2, 1, 1}, at::kByte);
    auto [mixed, lam_eff] = forward.call(x, regions, perm, lam, true);
    check(same(mixed, images({3.25, 6.5, 9.75, 13}, {7.75, 15.5, 23.25, 31})), "a 1x1 blend region is mixup");
    check(same(lam_eff, lam.to(at::kFloat)), "mixup's lam_eff is lam");
  }
  {  // int64 codes are accepted; any layout gives the same bits
    at::manual_seed(1);
    const at::Tensor xr = at::randn({3, 2, 6, 8});
    const at::Tensor p3 = at::tensor(std::vector<int64_t>{2, 0, 1}), l3 = at::rand({3});
    const at::Tensor codes = at::randint(0, 3, {3, 3, 4}, at::kLong);
    auto ref = forward.call(xr, codes.to(at::kByte), p3, l3, true);
    auto wide = forward.call(xr, codes, p3, l3, true);
    auto cl = forward.call(xr.contiguous(at::MemoryFormat::ChannelsLast), codes, p3, l3, true);
    check(same(std::get<0>(wide), std::get<0>(ref)), "int64 codes = uint8 codes");
    check(same(std::get<0>(cl), std::get<0>(ref)), "channels_last = NCHW for regions");
  }
  const at::Tensor ok = at::zeros({2, 1, 2}, at::kByte);
  const at::Tensor code3 = at::full({2, 1, 2}, 3, at::kByte), tall = at::zeros({2, 3, 1}, at::kByte);
  expect_error<c10::ValueError>("code 3 is rejected", "regions must hold only 0 (blend), 1 (own) and 2 (partner)",
                                [&] { forward.call(x, code3, perm, lam, true); });
  expect_error<c10::ValueError>("a grid that does not divide H is rejected", "regions must have shape (B, gh, gw)",
                                [&] { forward.call(x, tall, perm, lam, true); });
  expect_error<c10::TypeError>("float codes are rejected", "regions must be an integer tensor",
                               [&] { forward.call(x, ok.to(at::kFloat), perm, lam, true); });
  const at::Tensor out_of_range = at::tensor(std::vector<int64_t>{0, 5});
  expect_error<c10::ValueError>("an out-of-range index is caught without validate", "perm must hold indices in [0, 1]",
                                [&] { forward.call(x, ok, out_of_range, lam, false); });
}

}  // namespace
}  // namespace rmix_fast::test

int main() { return rmix_fast::test::run(rmix_fast::test::run_checks); }
