// ctest executable: the CPU kernels of rmix_fast::rmix_cpp and rmix_fast::blend_regions_cpp on cases small
// enough to work out by hand, called through the dispatcher exactly as Python calls them. Exit code 0 when every check passes.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <functional>
#include <string>
#include <tuple>
#include <vector>
#include <limits>

namespace {

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, int64_t, bool);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
using RegionsForward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, bool);

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

bool same(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && at::equal(a, b);
}

template <typename Error>
void expect_error(const std::function<void()>& call, const std::string& fragment, const std::string& what) {
  try {
    call();
  } catch (const Error& e) {
    check(std::string(e.what()).find(fragment) != std::string::npos, what + " (message: " + fragment + ")");
    return;
  } catch (const std::exception& e) {
    check(false, what + ": wrong exception type: " + e.what());
    return;
  }
  check(false, what + ": no exception");
}

// 2 samples, 1 channel, 2x2 pixels, grid 2: every pixel is its own cell.
at::Tensor images(std::initializer_list<float> a, std::initializer_list<float> b) {
  return at::stack({at::tensor(a).view({1, 2, 2}), at::tensor(b).view({1, 2, 2})});
}

at::Tensor bools(std::initializer_list<int> v, at::IntArrayRef shape) {
  return at::tensor(std::vector<int>(v)).to(at::kBool).view(shape);
}

void run_checks();
void run_region_checks();

}  // namespace

int main() {
  try {
    run_checks();
    run_region_checks();
  } catch (const std::exception& e) {
    check(false, std::string("unexpected exception: ") + e.what());
  }
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}

namespace {

void run_checks() {
  auto forward = c10::Dispatcher::singleton().findSchemaOrThrow("rmix_fast::rmix_cpp", "").typed<Forward>();
  auto backward = c10::Dispatcher::singleton().findSchemaOrThrow("rmix_fast::rmix_cpp_backward", "").typed<Backward>();

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
    check(same(backward.call(go, mask, perm, at::full({2}, 0.25)), images({1.75, 1.75, 1.75, 1.75}, {1.25, 1.25, 1.25, 1.25})),
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
    auto cl = forward.call(xr.contiguous(at::MemoryFormat::ChannelsLast),
                           gr.contiguous(at::MemoryFormat::ChannelsLast), p5, lam, q, 4, true);
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
  expect_error<c10::ValueError>([&] { forward.call(x, grad, at::tensor(std::vector<int64_t>{0, 0}), half, half, 2, true); },
                                "perm must be a permutation", "a repeated index is rejected");
  expect_error<c10::ValueError>([&] { forward.call(x, grad, perm, at::full({2}, 1.5), half, 2, true); },
                                "lam must lie in [0, 1]", "lam outside [0, 1] is rejected");
  expect_error<c10::ValueError>([&] { forward.call(x, grad, perm, half, half, 3, true); }, "grid=3 must divide",
                                "a grid that does not divide H, W is rejected");
  expect_error<c10::TypeError>([&] { forward.call(x.to(at::kInt), grad, perm, half, half, 2, true); },
                               "x must be float16, bfloat16, float32 or float64", "integer images are rejected");

}

// blend_regions_cpp: the caller's codes per cell (0 blend, 1 own, 2 partner) on a grid that may be
// coarser than the pixels and non-square.
void run_region_checks() {
  auto& dispatcher = c10::Dispatcher::singleton();
  auto forward = dispatcher.findSchemaOrThrow("rmix_fast::blend_regions_cpp", "").typed<RegionsForward>();
  auto backward = dispatcher.findSchemaOrThrow("rmix_fast::blend_regions_cpp_backward", "").typed<Backward>();

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
  expect_error<c10::ValueError>([&] { forward.call(x, at::full({2, 1, 2}, 3, at::kByte), perm, lam, true); },
                                "regions must hold only 0 (blend), 1 (own) and 2 (partner)", "code 3 is rejected");
  expect_error<c10::ValueError>([&] { forward.call(x, at::zeros({2, 3, 1}, at::kByte), perm, lam, true); },
                                "regions must have shape (B, gh, gw)", "a grid that does not divide H is rejected");
  expect_error<c10::TypeError>([&] { forward.call(x, ok.to(at::kFloat), perm, lam, true); },
                               "regions must be an integer tensor", "float codes are rejected");
  expect_error<c10::ValueError>([&] { forward.call(x, ok, at::tensor(std::vector<int64_t>{0, 5}), lam, false); },
                                "perm must hold indices in [0, 1]", "an out-of-range index is caught without validate");
}

}  // namespace
