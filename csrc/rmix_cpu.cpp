// CPU kernels of the compiled R-Mix op: one pass over grad for the p x p cell saliency, an exact
// per-sample percentile by selection (nth_element), one pass over x for the blend. Parallel with
// at::parallel_for. Dense NCHW and channels_last tensors are walked row by row in memory order, in
// runs of pixels that share one cell, so the inner loops are plain vectorisable loops; any other
// strides take a per-element path.
#include "rmix.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace rmix_fast {
namespace {

// Elements per parallel chunk: enough work to amortise a task, small enough to split a CIFAR batch.
constexpr int64_t kGrainElements = 16384;

int64_t grain_for(int64_t elements_per_task) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, elements_per_task));
}

// Dense layouts walked as rows of memory: NCHW rows are (b, c, h) with W elements, channels_last rows
// are (b, h) with W*C elements (pixel-major).
enum class Layout { kNCHW, kNHWC, kStrided };

// The rows of a dense (B, C, H, W) tensor; in either layout cell column j of a row covers elements
// [j*run, (j+1)*run), and the cell row follows from the row's index within its sample.
struct DenseRows {
  int64_t rows;  // rows per sample
  int64_t len;   // elements per row
  int64_t run;   // elements per cell column
  int64_t H, ch;

  DenseRows(const at::Tensor& t, int64_t p, bool channels_last)
      : rows(channels_last ? t.size(2) : t.size(1) * t.size(2)),
        len(channels_last ? t.size(3) * t.size(1) : t.size(3)),
        run(len / p),
        H(t.size(2)),
        ch(t.size(2) / p) {}

  int64_t cell_row(int64_t row_in_sample) const { return (row_in_sample % H) / ch; }
};

Layout dense_layout(const at::Tensor& t) {
  if (t.is_contiguous()) return Layout::kNCHW;
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) return Layout::kNHWC;
  return Layout::kStrided;
}

// The layout that an input and its empty_like output share, or kStrided.
Layout shared_layout(const at::Tensor& in, const at::Tensor& out) {
  const Layout l = dense_layout(in);
  return l == dense_layout(out) ? l : Layout::kStrided;
}

// torch.lerp's two-sided formula, exact at w = 0 and w = 1 and where start == end.
template <typename T>
inline T lerp(T start, T end, T w) {
  return w < T(0.5) ? start + w * (end - start) : end - (end - start) * (T(1) - w);
}

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

// One strip of cells (sample b, cell row i): per-row pixel saliency; each row's part of a cell is summed
// in acc_t, the rows of a cell in double.
template <typename scalar_t, typename acc_t>
void cell_strip(const scalar_t* g, int64_t C, int64_t sc, int64_t sh, int64_t sw, int64_t h0, int64_t ch,
                int64_t W, int64_t p, acc_t* cells_row) {
  const int64_t cw = W / p;
  std::vector<acc_t> sq(W);
  std::vector<double> sums(p, 0.0);
  const acc_t channels = static_cast<acc_t>(C);
  for (int64_t h = h0; h < h0 + ch; ++h) {
    std::fill(sq.begin(), sq.end(), acc_t(0));
    if (sw == 1) {
      add_row_squares<scalar_t, acc_t, true>(g + h * sh, C, sc, sw, W, sq.data());
    } else {
      add_row_squares<scalar_t, acc_t, false>(g + h * sh, C, sc, sw, W, sq.data());
    }
    for (int64_t j = 0; j < p; ++j) {
      acc_t run = 0;
      for (int64_t w = j * cw; w < (j + 1) * cw; ++w) run += std::sqrt(sq[w] / channels);
      sums[j] += static_cast<double>(run);
    }
  }
  const double area = static_cast<double>(ch * cw);
  for (int64_t j = 0; j < p; ++j) cells_row[j] = static_cast<acc_t>(sums[j] / area);
}

template <typename scalar_t, typename acc_t>
void cell_saliency(const at::Tensor& grad, int64_t p, acc_t* cells) {
  const int64_t B = grad.size(0), C = grad.size(1), H = grad.size(2), W = grad.size(3);
  const int64_t sb = grad.stride(0), sc = grad.stride(1), sh = grad.stride(2), sw = grad.stride(3);
  const int64_t ch = H / p;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  // One task per (sample, cell row): B*p tasks keep both cores busy even for small batches.
  at::parallel_for(0, B * p, grain_for(C * ch * W), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / p, i = task % p;
      cell_strip<scalar_t, acc_t>(g + b * sb, C, sc, sh, sw, i * ch, ch, W, p, cells + task * p);
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
      const acc_t hi = std::ceil(rank) > below && k + 1 < n ? *std::min_element(sorted.begin() + k + 1, sorted.end()) : lo;
      const acc_t t = lerp(lo, hi, rank - below);
      for (int64_t c = 0; c < n; ++c) m[c] = S[c] >= t;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Step 4-5: the blend and the label weight.

// What happens to one cell of sample b: blended with its partner, or one image copied.
enum class Cell : uint8_t { kBlend, kOwn, kPartner };

inline Cell cell_mode(bool own_top, bool partner_top) {
  if (own_top == partner_top) return Cell::kBlend;
  return own_top ? Cell::kOwn : Cell::kPartner;
}

// lam*own + (1-lam)*partner, rounded to the image dtype. lam is loop-invariant in every caller, so the
// compiler hoists lerp's branch out of the loop (-O3 unswitching) and the loops vectorise.
template <typename scalar_t, typename acc_t>
inline scalar_t blend_value(scalar_t own, scalar_t partner, acc_t lam) {
  return static_cast<scalar_t>(lerp<acc_t>(static_cast<acc_t>(partner), static_cast<acc_t>(own), lam));
}

template <typename scalar_t, typename acc_t>
void blend_run(scalar_t* out, const scalar_t* own, const scalar_t* partner, int64_t n, acc_t lam) {
  for (int64_t k = 0; k < n; ++k) out[k] = blend_value(own[k], partner[k], lam);
}

// Below this many elements per cell column, a per-cell switch and memcpy cost more than the work, so a
// row is blended element by element, selecting by its cell's mode.
constexpr int64_t kMinRun = 16;

// Whole row through a per-element mode map: the blend is computed everywhere and selected only where a
// cell blends, so copies stay bit-exact and an inf/NaN in the unselected image never reaches the output.
// int32 modes have the width of a float lane, so the selects vectorise.
template <typename scalar_t, typename acc_t>
void blend_row_mapped(scalar_t* out, const scalar_t* own, const scalar_t* partner, const int32_t* mode, int64_t n,
                      acc_t lam) {
  for (int64_t k = 0; k < n; ++k) {
    const scalar_t ov = own[k], pv = partner[k];
    const scalar_t mixed = blend_value(ov, pv, lam);
    const int32_t m = mode[k];
    out[k] = m == int32_t(Cell::kBlend) ? mixed : (m == int32_t(Cell::kOwn) ? ov : pv);
  }
}

// Dense rows: one row of sample b is `len` elements; cell column j covers `run` consecutive ones.
template <typename scalar_t, typename acc_t>
void blend_dense(const at::Tensor& x, at::Tensor& mixed, const int64_t* perm, const acc_t* lam, const bool* mask,
                 int64_t p, bool channels_last) {
  const DenseRows geo(x, p, channels_last);
  const int64_t B = x.size(0), rows = geo.rows, len = geo.len, run = geo.run;
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst = mixed.mutable_data_ptr<scalar_t>();
  std::vector<int32_t> cell_of(run < kMinRun ? len : 0);
  for (int64_t k = 0; k < static_cast<int64_t>(cell_of.size()); ++k) cell_of[k] = static_cast<int32_t>(k / run);
  at::parallel_for(0, B * rows, grain_for(len), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> mode(run < kMinRun ? p * len : 0);  // per cell row i: the modes of a row's elements
    int64_t mapped = -1;                                      // the sample whose maps `mode` holds
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / rows, row = r % rows, i = geo.cell_row(row);
      const int64_t pb = perm[b];
      const bool* own_m = mask + (b * p + i) * p;
      const bool* par_m = mask + (pb * p + i) * p;
      const scalar_t* own = src + r * len;
      const scalar_t* partner = src + (pb * rows + row) * len;
      scalar_t* out = dst + r * len;
      if (run < kMinRun) {
        if (mapped != b) {  // one map per cell row, shared by all channels and pixel rows of the sample
          for (int64_t ii = 0; ii < p; ++ii) {
            const bool* om = mask + (b * p + ii) * p;
            const bool* pm = mask + (pb * p + ii) * p;
            for (int64_t k = 0; k < len; ++k) mode[ii * len + k] = int32_t(cell_mode(om[cell_of[k]], pm[cell_of[k]]));
          }
          mapped = b;
        }
        blend_row_mapped<scalar_t, acc_t>(out, own, partner, mode.data() + i * len, len, lam[b]);
        continue;
      }
      for (int64_t j = 0; j < p; ++j) {
        const int64_t o = j * run;
        switch (cell_mode(own_m[j], par_m[j])) {
          case Cell::kBlend:
            blend_run<scalar_t, acc_t>(out + o, own + o, partner + o, run, lam[b]);
            break;
          case Cell::kOwn:
            std::memcpy(out + o, own + o, run * sizeof(scalar_t));
            break;
          case Cell::kPartner:
            std::memcpy(out + o, partner + o, run * sizeof(scalar_t));
            break;
        }
      }
    }
  });
}

// Any strides: one (b, c, h) row at a time, each element addressed through its strides.
template <typename scalar_t, typename acc_t>
void blend_strided(const at::Tensor& x, at::Tensor& mixed, const int64_t* perm, const acc_t* lam, const bool* mask,
                   int64_t p) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t ch = H / p, cw = W / p;
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst = mixed.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, B * C * H, grain_for(W), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (C * H), c = (r / H) % C, h = r % H, pb = perm[b];
      const bool* own_m = mask + (b * p + h / ch) * p;
      const bool* par_m = mask + (pb * p + h / ch) * p;
      const scalar_t* own = src + b * x.stride(0) + c * x.stride(1) + h * x.stride(2);
      const scalar_t* partner = src + pb * x.stride(0) + c * x.stride(1) + h * x.stride(2);
      scalar_t* out = dst + b * mixed.stride(0) + c * mixed.stride(1) + h * mixed.stride(2);
      const int64_t sw = x.stride(3), so = mixed.stride(3);
      for (int64_t w = 0; w < W; ++w) {
        const int64_t j = w / cw;
        const scalar_t a = own[w * sw], pv = partner[w * sw];
        switch (cell_mode(own_m[j], par_m[j])) {
          case Cell::kBlend:
            out[w * so] = blend_value(a, pv, lam[b]);
            break;
          case Cell::kOwn:
            out[w * so] = a;
            break;
          case Cell::kPartner:
            out[w * so] = pv;
            break;
        }
      }
    }
  });
}

// lam_eff[b] = (cells blended * lam + cells kept as own) / p^2, in double like the reference.
void label_weights(const bool* mask, const int64_t* perm, const double* lam, int64_t B, int64_t n, float* lam_eff) {
  for (int64_t b = 0; b < B; ++b) {
    const bool* m = mask + b * n;
    const bool* pm = mask + perm[b] * n;
    int64_t inter = 0, own = 0;
    for (int64_t c = 0; c < n; ++c) {
      inter += m[c] == pm[c];
      own += m[c] && !pm[c];
    }
    lam_eff[b] = static_cast<float>((static_cast<double>(inter) * lam[b] + own) / n);
  }
}

// Even with validate=False an index outside [0, B) must not read or write out of bounds; on the CPU
// this check costs one pass over B integers.
void check_perm_in_range(const int64_t* perm, int64_t B) {
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(perm[b] >= 0 && perm[b] < B, "perm must hold indices in [0, ", B - 1, "], got ", perm[b],
                      " at position ", b);
  }
}

// Likewise a level outside [0, 1] (or NaN) would select outside the cells.
template <typename acc_t>
void check_q_in_range(const acc_t* q, int64_t B) {
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(q[b] >= acc_t(0) && q[b] <= acc_t(1), "q must lie in [0, 1]; got ", q[b], " at position ", b);
  }
}

void forward_cpu(const ForwardArgs& args, ForwardOutputs& out) {
  const at::Tensor& x = args.x;
  const int64_t B = x.size(0), p = args.grid, n = p * p;
  check_perm_in_range(args.perm.const_data_ptr<int64_t>(), B);
  bool* mask = out.mask.mutable_data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.grad.scalar_type(), "rmix_cpu_saliency", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check_q_in_range(args.q.const_data_ptr<acc_t>(), B);
    std::vector<acc_t> cells(B * n);
    cell_saliency<scalar_t, acc_t>(args.grad, p, cells.data());
    threshold_masks<acc_t>(cells.data(), args.q.const_data_ptr<acc_t>(), B, n, mask);
  });
  const int64_t* perm = args.perm.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rmix_cpu_blend", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* lam = args.lam.const_data_ptr<acc_t>();
    const Layout layout = shared_layout(x, out.mixed);
    if (layout == Layout::kStrided) {
      blend_strided<scalar_t, acc_t>(x, out.mixed, perm, lam, mask, p);
    } else {
      blend_dense<scalar_t, acc_t>(x, out.mixed, perm, lam, mask, p, layout == Layout::kNHWC);
    }
    label_weights(mask, perm, args.lam_label.const_data_ptr<double>(), B, n, out.lam_eff.mutable_data_ptr<float>());
  });
}

// ---------------------------------------------------------------------------------------------
// Backward: x[b] feeds mixed[b] (as "own") and mixed[s] with perm[s] == b (as "partner").
// grad_x[b] = own + via, own = lam[b]*g[b] / g[b] / 0, via = (1-lam[s])*g[s] / g[s] / 0 by cell.

// The weight of one gradient term in a cell; a zero term is skipped (never 0 * inf).
template <typename acc_t>
struct Term {
  bool used;
  acc_t weight;
};

template <typename acc_t>
inline Term<acc_t> own_term(bool inter, bool top, acc_t lam) {
  return inter ? Term<acc_t>{true, lam} : Term<acc_t>{top, acc_t(1)};
}

template <typename acc_t>
inline Term<acc_t> via_term(bool inter_s, bool top, acc_t lam_s) {
  return inter_s ? Term<acc_t>{true, acc_t(1) - lam_s} : Term<acc_t>{top, acc_t(1)};
}

template <typename scalar_t, typename acc_t>
inline scalar_t grad_value(scalar_t g_own, scalar_t g_via, Term<acc_t> own, Term<acc_t> via) {
  const acc_t a = own.used ? own.weight * static_cast<acc_t>(g_own) : acc_t(0);
  const acc_t v = via.used ? via.weight * static_cast<acc_t>(g_via) : acc_t(0);
  return static_cast<scalar_t>(a + v);
}

// kOwn / kVia as compile-time constants fold grad_value's tests away, so each variant vectorises.
template <typename scalar_t, typename acc_t, bool kOwn, bool kVia>
void grad_run_impl(scalar_t* out, const scalar_t* g_own, const scalar_t* g_via, int64_t n, acc_t wo, acc_t wv) {
  const Term<acc_t> own{kOwn, wo}, via{kVia, wv};
  for (int64_t k = 0; k < n; ++k) out[k] = grad_value(g_own[k], g_via[k], own, via);
}

// The per-cell branch is hoisted out of the element loop.
template <typename scalar_t, typename acc_t>
void grad_run(scalar_t* out, const scalar_t* g_own, const scalar_t* g_via, int64_t n, Term<acc_t> own,
              Term<acc_t> via) {
  if (own.used && via.used) {
    grad_run_impl<scalar_t, acc_t, true, true>(out, g_own, g_via, n, own.weight, via.weight);
  } else if (own.used) {
    grad_run_impl<scalar_t, acc_t, true, false>(out, g_own, g_via, n, own.weight, via.weight);
  } else if (via.used) {
    grad_run_impl<scalar_t, acc_t, false, true>(out, g_own, g_via, n, own.weight, via.weight);
  } else {
    grad_run_impl<scalar_t, acc_t, false, false>(out, g_own, g_via, n, own.weight, via.weight);
  }
}

template <typename scalar_t, typename acc_t>
void backward_dense(const at::Tensor& go, at::Tensor& gx, const int64_t* perm, const int64_t* src, const acc_t* lam,
                    const bool* mask, int64_t p, bool channels_last) {
  const DenseRows geo(go, p, channels_last);
  const int64_t B = go.size(0), rows = geo.rows, len = geo.len, run = geo.run;
  const scalar_t* g = go.const_data_ptr<scalar_t>();
  scalar_t* dst = gx.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, B * rows, grain_for(len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / rows, row = r % rows, i = geo.cell_row(row), s = src[b];
      const bool* m = mask + (b * p + i) * p;
      const bool* pm = mask + (perm[b] * p + i) * p;
      const bool* sm = mask + (s * p + i) * p;
      const scalar_t* g_own = g + r * len;
      const scalar_t* g_via = g + (s * rows + row) * len;
      for (int64_t j = 0; j < p; ++j) {
        const int64_t o = j * run;
        grad_run<scalar_t, acc_t>(dst + r * len + o, g_own + o, g_via + o, run, own_term(m[j] == pm[j], m[j], lam[b]),
                                  via_term(sm[j] == m[j], m[j], lam[s]));
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_strided(const at::Tensor& go, at::Tensor& gx, const int64_t* perm, const int64_t* src,
                      const acc_t* lam, const bool* mask, int64_t p) {
  const int64_t B = go.size(0), C = go.size(1), H = go.size(2), W = go.size(3), ch = H / p, cw = W / p;
  const scalar_t* g = go.const_data_ptr<scalar_t>();
  scalar_t* dst = gx.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, B * C * H, grain_for(W), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (C * H), c = (r / H) % C, h = r % H, s = src[b], i = h / ch;
      const bool* m = mask + (b * p + i) * p;
      const bool* pm = mask + (perm[b] * p + i) * p;
      const bool* sm = mask + (s * p + i) * p;
      const int64_t inner = c * go.stride(1) + h * go.stride(2), sw = go.stride(3), so = gx.stride(3);
      const scalar_t* g_own = g + b * go.stride(0) + inner;
      const scalar_t* g_via = g + s * go.stride(0) + inner;
      scalar_t* out = dst + b * gx.stride(0) + c * gx.stride(1) + h * gx.stride(2);
      for (int64_t w = 0; w < W; ++w) {
        const int64_t j = w / cw;
        out[w * so] = grad_value<scalar_t, acc_t>(g_own[w * sw], g_via[w * sw], own_term(m[j] == pm[j], m[j], lam[b]),
                                                  via_term(sm[j] == m[j], m[j], lam[s]));
      }
    }
  });
}

void backward_cpu(const BackwardArgs& args, at::Tensor& grad_x) {
  const at::Tensor& go = args.grad_out;
  const int64_t B = go.size(0), p = args.mask.size(1);
  const int64_t* perm = args.perm.const_data_ptr<int64_t>();
  check_perm_in_range(perm, B);
  std::vector<int64_t> src(B);  // inverse permutation
  for (int64_t b = 0; b < B; ++b) src[perm[b]] = b;
  const bool* mask = args.mask.const_data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "rmix_cpu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* lam = args.lam.const_data_ptr<acc_t>();
    const Layout layout = shared_layout(go, grad_x);
    if (layout == Layout::kStrided) {
      backward_strided<scalar_t, acc_t>(go, grad_x, perm, src.data(), lam, mask, p);
    } else {
      backward_dense<scalar_t, acc_t>(go, grad_x, perm, src.data(), lam, mask, p, layout == Layout::kNHWC);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rmix_cpu(const at::Tensor& x, const at::Tensor& grad,
                                                        const at::Tensor& perm, const at::Tensor& lam,
                                                        const at::Tensor& q, int64_t grid, bool validate) {
  return run_forward(x, grad, perm, lam, q, grid, validate, &forward_cpu);
}

at::Tensor rmix_cpu_backward(const at::Tensor& grad_out, const at::Tensor& mask, const at::Tensor& perm,
                             const at::Tensor& lam) {
  return run_backward(grad_out, mask, perm, lam, &backward_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(rmix_fast, CPU, m) {
  m.impl("rmix_cpp", &rmix_cpu);
  m.impl("rmix_cpp_backward", &rmix_cpu_backward);
}

}  // namespace rmix_fast
