// CPU kernels of R-Mix's steps 1-3: one pass over grad for the p x p cell saliency (a task per sample and
// cell row) and an exact per-sample percentile by selection (nth_element), then R-Mix's region codes; the
// blend is the engine's (cpu/blend_regions_kernel.cpp).
#include "cpu/kernel_utils.h"
#include "rmix.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace rmix_fast::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Step 1-2: cells[b, i, j] = mean over cell (i, j) of sqrt(sum_c grad[b, c, h, w]^2 / C).

// Adds the squares of one image row (all channels) into sq[0..W).
template <typename scalar_t, typename acc_t, bool kUnitW>
inline void add_row_squares(const scalar_t* row, int64_t C, int64_t sc, int64_t sw, int64_t W, acc_t* sq) {
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* r = row + c * sc;
    for (int64_t w = 0; w < W; ++w) {
      const acc_t v = static_cast<acc_t>(r[kUnitW ? w : w * sw]);
      sq[w] += v * v;
    }
  }
}

// One strip of cells (sample b, cell row i). Each pixel row's saliency is added into per-column sums in
// acc_t (element-wise over w, so the square root and the adds vectorise); the columns of a cell are summed
// in double once per strip. The reduction order differs from the reference's mean only by rounding.
// `sq` and `columns` are W-element scratch owned by the calling task (reused across its strips).
template <typename scalar_t, typename acc_t>
void cell_strip(const scalar_t* g, int64_t C, int64_t sc, int64_t sh, int64_t sw, int64_t h0, int64_t ch, int64_t W,
                int64_t p, acc_t* sq, acc_t* columns, acc_t* cells_row) {
  const int64_t cw = W / p;
  std::fill_n(columns, W, acc_t(0));
  const acc_t channels = static_cast<acc_t>(C);
  for (int64_t h = h0; h < h0 + ch; ++h) {
    std::fill_n(sq, W, acc_t(0));
    if (sw == 1) {
      add_row_squares<scalar_t, acc_t, true>(g + h * sh, C, sc, sw, W, sq);
    } else {
      add_row_squares<scalar_t, acc_t, false>(g + h * sh, C, sc, sw, W, sq);
    }
    for (int64_t w = 0; w < W; ++w) columns[w] += std::sqrt(sq[w] / channels);
  }
  const double area = static_cast<double>(ch * cw);
  for (int64_t j = 0; j < p; ++j) {
    double sum = 0.0;
    for (int64_t w = j * cw; w < (j + 1) * cw; ++w) sum += static_cast<double>(columns[w]);
    cells_row[j] = static_cast<acc_t>(sum / area);
  }
}

template <typename scalar_t, typename acc_t>
void cell_saliency(const at::Tensor& grad, int64_t p, acc_t* cells) {
  const int64_t B = grad.size(0), C = grad.size(1), H = grad.size(2), W = grad.size(3);
  const int64_t sb = grad.stride(0), sc = grad.stride(1), sh = grad.stride(2), sw = grad.stride(3);
  const int64_t ch = H / p;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  // One task per (sample, cell row): B*p tasks keep both cores busy even for small batches.
  at::parallel_for(0, B * p, grain_for(C * ch * W), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(2 * W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / p, i = task % p;
      cell_strip<scalar_t, acc_t>(g + b * sb, C, sc, sh, sw, i * ch, ch, W, p, scratch.data(), scratch.data() + W,
                                  cells + task * p);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Step 3: mask[b] = cells[b] >= torch.quantile(cells[b], q[b]); all True if any cell is non-finite.

template <typename acc_t>
void threshold_masks(const acc_t* cells, const acc_t* q, int64_t B, int64_t n, bool* mask) {
  at::parallel_for(0, B, grain_for(16 * n), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sorted(n);
    for (int64_t b = begin; b < end; ++b) {
      const acc_t* S = cells + b * n;
      bool* m = mask + b * n;
      if (!std::all_of(S, S + n, [](acc_t v) { return std::isfinite(v); })) {
        std::fill(m, m + n, true);
        continue;
      }
      // torch.quantile (linear): rank = q*(n-1), lerp between the order statistics around it.
      const acc_t rank = q[b] * static_cast<acc_t>(n - 1);
      const acc_t below = std::floor(rank);
      // Clamped: for huge n, float(n - 1) can round up to n.
      const int64_t k = std::min<int64_t>(static_cast<int64_t>(below), n - 1);
      std::copy(S, S + n, sorted.begin());
      std::nth_element(sorted.begin(), sorted.begin() + k, sorted.end());
      const acc_t lo = sorted[k];
      // After nth_element everything past k is >= lo, so the next order statistic is their minimum.
      const acc_t hi =
          std::ceil(rank) > below && k + 1 < n ? *std::min_element(sorted.begin() + k + 1, sorted.end()) : lo;
      const acc_t t = lerp(lo, hi, rank - below);
      for (int64_t c = 0; c < n; ++c) m[c] = S[c] >= t;
    }
  });
}

// Even with validate=False a level outside [0, 1] (or NaN) must not select outside the cells.
template <typename acc_t>
void check_q_in_range(const acc_t* q, int64_t B) {
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(q[b] >= acc_t(0) && q[b] <= acc_t(1), "q must lie in [0, 1]; got ", q[b], " at position ", b);
  }
}

void mask_cpu(const at::Tensor& grad, const at::Tensor& q, int64_t grid, at::Tensor& mask) {
  const int64_t B = grad.size(0), n = grid * grid;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rmix_cpu_saliency", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* levels = q.const_data_ptr<acc_t>();
    check_q_in_range(levels, B);
    std::vector<acc_t> cells(B * n);
    cell_saliency<scalar_t, acc_t>(grad, grid, cells.data());
    threshold_masks<acc_t>(cells.data(), levels, B, n, mask.mutable_data_ptr<bool>());
  });
}

void regions_from_mask_cpu(const at::Tensor& mask, const at::Tensor& perm, at::Tensor& regions) {
  const int64_t B = mask.size(0), n = mask.size(1) * mask.size(2);
  const int64_t* pm = perm.const_data_ptr<int64_t>();
  check_perm_in_range(pm, B);
  const bool* m = mask.const_data_ptr<bool>();
  uint8_t* codes = regions.mutable_data_ptr<uint8_t>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < n; ++c) codes[b * n + c] = region_of(m[b * n + c], m[pm[b] * n + c]);
  }
}

constexpr RmixKernels kRmixKernels{&mask_cpu, &regions_from_mask_cpu, kBlendRegionsKernels};

}  // namespace

TORCH_LIBRARY_IMPL(rmix_fast, CPU, m) { impl_op<rmix_forward, rmix_backward, kRmixKernels>(m, "rmix"); }

}  // namespace rmix_fast::cpu
