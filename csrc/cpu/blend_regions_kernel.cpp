// CPU kernels of the blend engine: one pass over x for the blend and one over grad_out for its backward,
// parallel with at::parallel_for. Dense NCHW and channels_last tensors are walked row by row in memory
// order, in runs of pixels that share one cell, so the inner loops are plain vectorisable loops; any other
// strides take a per-element path.
#include "blend_regions.h"
#include "cpu/kernel_utils.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

namespace rmix_fast::cpu {
namespace {

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

// ---------------------------------------------------------------------------------------------
// The blend (R-Mix steps 4-5, and blend_regions_cpp): per cell of a gh x gw grid, mixed[b] is
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
void blend_dense(const at::Tensor& x, at::Tensor& mixed, const Regions& regions, const int64_t* perm, const acc_t* lam,
                 bool channels_last) {
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
void backward_dense(const at::Tensor& go, at::Tensor& gx, const Regions& regions, const int64_t* src, const acc_t* lam,
                    bool channels_last) {
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

void blend_backward_cpu(const BlendBackwardArgs& args, at::Tensor& grad_x) {
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

}  // namespace

const BlendRegionsKernels kBlendRegionsKernels{&blend_cpu, &blend_backward_cpu};

TORCH_LIBRARY_IMPL(rmix_fast, CPU, m) {
  impl_op<blend_regions_forward, blend_regions_backward, kBlendRegionsKernels>(m, "blend_regions");
}

}  // namespace rmix_fast::cpu
