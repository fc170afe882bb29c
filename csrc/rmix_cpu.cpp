// CPU kernels of the compiled ops: for R-Mix one pass over grad for the p x p cell saliency and an exact
// per-sample percentile by selection (nth_element); for both ops one pass over x for the region blend and
// one over grad_out for its backward. Parallel with at::parallel_for. Dense NCHW and channels_last tensors
// are walked row by row in memory order, in runs of pixels that share one cell, so the inner loops are
// plain vectorisable loops; any other strides take a per-element path.
#include "rmix.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
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

// Below this many elements per cell column, a per-cell switch and memcpy cost more than the work, so a
// row is processed element by element through per-element codes (ElementCodes).
constexpr int64_t kMinRun = 16;

// The rows of a dense (B, C, H, W) tensor over a gh x gw cell grid; in either layout cell column j of a
// row covers elements [j*run, (j+1)*run), and the cell row follows from the row's index within its sample.
struct DenseRows {
  int64_t rows;  // rows per sample
  int64_t len;   // elements per row
  int64_t run;   // elements per cell column
  int64_t H, ch;

  DenseRows(const at::Tensor& t, int64_t gh, int64_t gw, bool channels_last)
      : rows(channels_last ? t.size(2) : t.size(1) * t.size(2)),
        len(channels_last ? t.size(3) * t.size(1) : t.size(3)),
        run(len / gw),
        H(t.size(2)),
        ch(t.size(2) / gh) {}

  int64_t cell_row(int64_t row_in_sample) const { return (row_in_sample % H) / ch; }
  bool mapped() const { return run < kMinRun; }
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

// One strip of cells (sample b, cell row i). Each pixel row's saliency is added into per-column sums in
// acc_t (element-wise over w, so the square root and the adds vectorise); the columns of a cell are summed
// in double once per strip. The reduction order differs from the reference's mean only by rounding.
// `sq` and `columns` are W-element scratch owned by the calling task (reused across its strips).
template <typename scalar_t, typename acc_t>
void cell_strip(const scalar_t* g, int64_t C, int64_t sc, int64_t sh, int64_t sw, int64_t h0, int64_t ch,
                int64_t W, int64_t p, acc_t* sq, acc_t* columns, acc_t* cells_row) {
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
      const acc_t hi = std::ceil(rank) > below && k + 1 < n ? *std::min_element(sorted.begin() + k + 1, sorted.end()) : lo;
      const acc_t t = lerp(lo, hi, rank - below);
      for (int64_t c = 0; c < n; ++c) m[c] = S[c] >= t;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The region blend (R-Mix steps 4-5, and blend_regions_cpp): per cell of a gh x gw grid, mixed[b] is
// lerp(x[perm[b]], x[b], lam[b]), x[b] or x[perm[b]] as the cell's code says.

// The uint8 codes of all samples, row-major per sample.
struct Regions {
  const uint8_t* codes;
  int64_t gh, gw;

  explicit Regions(const at::Tensor& t) : codes(t.const_data_ptr<uint8_t>()), gh(t.size(1)), gw(t.size(2)) {}

  const uint8_t* row(int64_t b, int64_t i) const { return codes + (b * gh + i) * gw; }
};

// Per-element int32 codes for dense rows with runs shorter than kMinRun. The codes of a (sample, cell row)
// are built on first use and reused by the sample's other rows in that cell row (channels, pixel rows).
// int32 has the width of a float lane, so the selects over them vectorise.
class ElementCodes {
 public:
  ElementCodes(const Regions& regions, const DenseRows& geo)
      : regions_(regions),
        geo_(geo),
        owner_(geo.mapped() ? regions.gh : 0, -1),
        codes_(std::make_unique_for_overwrite<int32_t[]>(geo.mapped() ? regions.gh * geo.len : 0)) {}

  const int32_t* row(int64_t b, int64_t i) {
    int32_t* out = codes_.get() + i * geo_.len;
    if (owner_[i] != b) {
      const uint8_t* cells = regions_.row(b, i);
      for (int64_t j = 0; j < regions_.gw; ++j) std::fill_n(out + j * geo_.run, geo_.run, int32_t{cells[j]});
      owner_[i] = b;
    }
    return out;
  }

 private:
  const Regions& regions_;
  const DenseRows& geo_;
  std::vector<int64_t> owner_;  // per cell row: the sample whose codes it holds
  std::unique_ptr<int32_t[]> codes_;
};

// lam*own + (1-lam)*partner, rounded to the image dtype. lam is loop-invariant in every caller, so the
// compiler hoists lerp's branch out of the loop (-O3 unswitching) and the loops vectorise.
template <typename scalar_t, typename acc_t>
inline scalar_t blend_value(scalar_t own, scalar_t partner, acc_t lam) {
  return static_cast<scalar_t>(lerp<acc_t>(static_cast<acc_t>(partner), static_cast<acc_t>(own), lam));
}

// A pixel of mixed[b] given its blend: selected, never multiplied, so copies stay bit-exact and an inf/NaN
// in the unselected image never reaches the output.
template <typename scalar_t>
inline scalar_t pick(int32_t code, scalar_t blended, scalar_t own, scalar_t partner) {
  return code == kBlend ? blended : (code == kOwn ? own : partner);
}

template <typename scalar_t, typename acc_t>
void blend_run(scalar_t* out, const scalar_t* own, const scalar_t* partner, int64_t n, acc_t lam) {
  for (int64_t k = 0; k < n; ++k) out[k] = blend_value(own[k], partner[k], lam);
}

// A whole row through per-element codes: the blend is computed everywhere and picked where a cell blends.
template <typename scalar_t, typename acc_t>
void blend_row_mapped(scalar_t* out, const scalar_t* own, const scalar_t* partner, const int32_t* code, int64_t n,
                      acc_t lam) {
  for (int64_t k = 0; k < n; ++k) {
    const scalar_t ov = own[k], pv = partner[k];
    out[k] = pick(code[k], blend_value(ov, pv, lam), ov, pv);
  }
}

// Dense rows: one row of sample b is `len` elements; cell column j covers `run` consecutive ones.
template <typename scalar_t, typename acc_t>
void blend_dense(const at::Tensor& x, at::Tensor& mixed, const Regions& regions, const int64_t* perm,
                 const acc_t* lam, bool channels_last) {
  const DenseRows geo(x, regions.gh, regions.gw, channels_last);
  const int64_t B = x.size(0), rows = geo.rows, len = geo.len, run = geo.run;
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst = mixed.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, B * rows, grain_for(len), [&](int64_t begin, int64_t end) {
    ElementCodes codes(regions, geo);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / rows, row = r % rows, i = geo.cell_row(row);
      const scalar_t* own = src + r * len;
      const scalar_t* partner = src + (perm[b] * rows + row) * len;
      scalar_t* out = dst + r * len;
      if (geo.mapped()) {
        blend_row_mapped<scalar_t, acc_t>(out, own, partner, codes.row(b, i), len, lam[b]);
        continue;
      }
      const uint8_t* cells = regions.row(b, i);
      for (int64_t j = 0; j < regions.gw; ++j) {
        const int64_t o = j * run;
        switch (cells[j]) {
          case kBlend:
            blend_run<scalar_t, acc_t>(out + o, own + o, partner + o, run, lam[b]);
            break;
          case kOwn:
            std::memcpy(out + o, own + o, run * sizeof(scalar_t));
            break;
          default:  // kPartner, and every other code
            std::memcpy(out + o, partner + o, run * sizeof(scalar_t));
            break;
        }
      }
    }
  });
}

// Any strides: one (b, c, h) row at a time, each element addressed through its strides.
template <typename scalar_t, typename acc_t>
void blend_strided(const at::Tensor& x, at::Tensor& mixed, const Regions& regions, const int64_t* perm,
                   const acc_t* lam) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t ch = H / regions.gh, cw = W / regions.gw;
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst = mixed.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, B * C * H, grain_for(W), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (C * H), c = (r / H) % C, h = r % H;
      const uint8_t* cells = regions.row(b, h / ch);
      const scalar_t* own = src + b * x.stride(0) + c * x.stride(1) + h * x.stride(2);
      const scalar_t* partner = src + perm[b] * x.stride(0) + c * x.stride(1) + h * x.stride(2);
      scalar_t* out = dst + b * mixed.stride(0) + c * mixed.stride(1) + h * mixed.stride(2);
      const int64_t sw = x.stride(3), so = mixed.stride(3);
      for (int64_t w = 0; w < W; ++w) {
        const scalar_t a = own[w * sw], pv = partner[w * sw];
        out[w * so] = pick(cells[w / cw], blend_value(a, pv, lam[b]), a, pv);
      }
    }
  });
}

// lam_eff[b] = (blended cells * lam + own cells) / cells, in double from the caller's lam (as the reference).
void label_weights(const Regions& regions, const double* lam, int64_t B, float* lam_eff) {
  const int64_t n = regions.gh * regions.gw;
  at::parallel_for(0, B, grain_for(n), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* codes = regions.row(b, 0);
      int64_t blended = 0, own = 0;
      for (int64_t c = 0; c < n; ++c) {
        blended += codes[c] == kBlend;
        own += codes[c] == kOwn;
      }
      lam_eff[b] = static_cast<float>((static_cast<double>(blended) * lam[b] + own) / n);
    }
  });
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

void blend_cpu(const BlendArgs& args, BlendOutputs& out) {
  const at::Tensor& x = args.x;
  const int64_t B = x.size(0);
  const int64_t* perm = args.perm.const_data_ptr<int64_t>();
  check_perm_in_range(perm, B);
  const Regions regions(args.regions);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rmix_cpu_blend", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* lam = args.lam.const_data_ptr<acc_t>();
    const Layout layout = shared_layout(x, out.mixed);
    if (layout == Layout::kStrided) {
      blend_strided<scalar_t, acc_t>(x, out.mixed, regions, perm, lam);
    } else {
      blend_dense<scalar_t, acc_t>(x, out.mixed, regions, perm, lam, layout == Layout::kNHWC);
    }
  });
  label_weights(regions, args.lam_label.const_data_ptr<double>(), B, out.lam_eff.mutable_data_ptr<float>());
}

// ---------------------------------------------------------------------------------------------
// Backward: x[b] feeds mixed[b] (as "own") and mixed[s] with perm[s] == b (as "partner").
// grad_x[b] = own + via, own = lam[b]*g[b] / g[b] / 0 as b's cell blends / keeps own / takes partner,
// via = (1-lam[s])*g[s] / 0 / g[s] as s's cell blends / keeps own / takes partner.

// The weight of one gradient term in a cell; a zero term is skipped (never 0 * inf).
template <typename acc_t>
struct Term {
  bool used;
  acc_t weight;
};

// x[b]'s share of mixed[b]: lam where b's cell blends, 1 where it keeps its own pixel, none where it takes
// its partner's.
template <typename acc_t>
inline Term<acc_t> own_term(int32_t code, acc_t lam) {
  return {code == kBlend || code == kOwn, code == kBlend ? lam : acc_t(1)};
}

// x[b]'s share of mixed[s], perm[s] == b: 1-lam[s] where s's cell blends, 1 where s takes its partner (b),
// none where s keeps its own pixel. Selects of precomputed values, so per-element loops stay branch-free.
template <typename acc_t>
inline Term<acc_t> via_term(int32_t code_s, acc_t lam_s) {
  const acc_t blend_weight = acc_t(1) - lam_s;
  return {code_s != kOwn, code_s == kBlend ? blend_weight : acc_t(1)};
}

// weight * g where the term is used, exactly +0 where not. An unused term (weight 1) is masked off, not
// branched around: GCC will not if-convert a multiply it could skip (-ftrapping-math), so a branch would
// keep the per-element loops from vectorising. Its product never reaches the sum, so never 0 * inf.
template <typename acc_t>
inline acc_t term_value(Term<acc_t> term, acc_t g) {
  using bits_t = std::conditional_t<sizeof(acc_t) == 4, uint32_t, uint64_t>;
  const bits_t keep = bits_t(0) - static_cast<bits_t>(term.used);  // all ones or all zeros
  return std::bit_cast<acc_t>(std::bit_cast<bits_t>(term.weight * g) & keep);
}

template <typename scalar_t, typename acc_t>
inline scalar_t grad_value(scalar_t g_own, scalar_t g_via, Term<acc_t> own, Term<acc_t> via) {
  const acc_t a = term_value(own, static_cast<acc_t>(g_own)), v = term_value(via, static_cast<acc_t>(g_via));
  return static_cast<scalar_t>(a + v);
}

// The used flags as compile-time constants fold grad_value's tests away, so each variant vectorises.
template <typename scalar_t, typename acc_t, bool kOwnUsed, bool kViaUsed>
void grad_run_impl(scalar_t* out, const scalar_t* g_own, const scalar_t* g_via, int64_t n, acc_t wo, acc_t wv) {
  const Term<acc_t> own{kOwnUsed, wo}, via{kViaUsed, wv};
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

// A whole row through per-element codes of b and of s; the terms become selects, so the loop vectorises.
template <typename scalar_t, typename acc_t>
void grad_row_mapped(scalar_t* out, const scalar_t* g_own, const scalar_t* g_via, const int32_t* code,
                     const int32_t* code_s, int64_t n, acc_t lam, acc_t lam_s) {
  for (int64_t k = 0; k < n; ++k) {
    out[k] = grad_value<scalar_t, acc_t>(g_own[k], g_via[k], own_term(code[k], lam), via_term(code_s[k], lam_s));
  }
}

template <typename scalar_t, typename acc_t>
void backward_dense(const at::Tensor& go, at::Tensor& gx, const Regions& regions, const int64_t* src,
                    const acc_t* lam, bool channels_last) {
  const DenseRows geo(go, regions.gh, regions.gw, channels_last);
  const int64_t B = go.size(0), rows = geo.rows, len = geo.len, run = geo.run;
  const scalar_t* g = go.const_data_ptr<scalar_t>();
  scalar_t* dst = gx.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, B * rows, grain_for(len), [&](int64_t begin, int64_t end) {
    ElementCodes codes(regions, geo), codes_s(regions, geo);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / rows, row = r % rows, i = geo.cell_row(row), s = src[b];
      const scalar_t* g_own = g + r * len;
      const scalar_t* g_via = g + (s * rows + row) * len;
      scalar_t* out = dst + r * len;
      if (geo.mapped()) {
        grad_row_mapped<scalar_t, acc_t>(out, g_own, g_via, codes.row(b, i), codes_s.row(s, i), len, lam[b], lam[s]);
        continue;
      }
      const uint8_t* cells = regions.row(b, i);
      const uint8_t* cells_s = regions.row(s, i);
      for (int64_t j = 0; j < regions.gw; ++j) {
        const int64_t o = j * run;
        grad_run<scalar_t, acc_t>(out + o, g_own + o, g_via + o, run, own_term(cells[j], lam[b]),
                                  via_term(cells_s[j], lam[s]));
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_strided(const at::Tensor& go, at::Tensor& gx, const Regions& regions, const int64_t* src,
                      const acc_t* lam) {
  const int64_t B = go.size(0), C = go.size(1), H = go.size(2), W = go.size(3);
  const int64_t ch = H / regions.gh, cw = W / regions.gw;
  const scalar_t* g = go.const_data_ptr<scalar_t>();
  scalar_t* dst = gx.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, B * C * H, grain_for(W), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (C * H), c = (r / H) % C, h = r % H, s = src[b];
      const uint8_t* cells = regions.row(b, h / ch);
      const uint8_t* cells_s = regions.row(s, h / ch);
      const int64_t inner = c * go.stride(1) + h * go.stride(2), sw = go.stride(3), so = gx.stride(3);
      const scalar_t* g_own = g + b * go.stride(0) + inner;
      const scalar_t* g_via = g + s * go.stride(0) + inner;
      scalar_t* out = dst + b * gx.stride(0) + c * gx.stride(1) + h * gx.stride(2);
      for (int64_t w = 0; w < W; ++w) {
        const int64_t j = w / cw;
        out[w * so] = grad_value<scalar_t, acc_t>(g_own[w * sw], g_via[w * sw], own_term(cells[j], lam[b]),
                                                  via_term(cells_s[j], lam[s]));
      }
    }
  });
}

void blend_backward_cpu(const BackwardArgs& args, at::Tensor& grad_x) {
  const at::Tensor& go = args.grad_out;
  const int64_t B = go.size(0);
  const int64_t* perm = args.perm.const_data_ptr<int64_t>();
  check_perm_in_range(perm, B);
  std::vector<int64_t> src(B);  // inverse permutation
  for (int64_t b = 0; b < B; ++b) src[perm[b]] = b;
  const Regions regions(args.regions);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "rmix_cpu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* lam = args.lam.const_data_ptr<acc_t>();
    const Layout layout = shared_layout(go, grad_x);
    if (layout == Layout::kStrided) {
      backward_strided<scalar_t, acc_t>(go, grad_x, regions, src.data(), lam);
    } else {
      backward_dense<scalar_t, acc_t>(go, grad_x, regions, src.data(), lam, layout == Layout::kNHWC);
    }
  });
}

constexpr DeviceKernels kCpuKernels{&mask_cpu, &regions_from_mask_cpu, &blend_cpu, &blend_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(rmix_fast, CPU, m) { register_kernels<kCpuKernels>(m); }

}  // namespace rmix_fast
