// CPU kernels of SAGE: the smoothed saliency (a task per sample), the search (a task per sample and candidate
// shift), the mask of the chosen shift, the blend and its backward (a task per image row), all with
// at::parallel_for. Every output element and every sum is made by one task in a fixed order, so results do
// not depend on the thread count; sums over pixels run in double.
#include "cpu/kernel_utils.h"
#include "sage.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace rmix_fast::cpu {
namespace {

// The reference's clamp_min: NaN stays NaN. Written as a select of `lo > v`, which is x86's max operand
// order, so the loops that use it still vectorise.
template <typename acc_t>
inline acc_t clamp_min(acc_t v, acc_t lo) {
  return lo > v ? lo : v;
}

// M_d = a / max(a + c_d, 1e-16) and the pixel's score a M_d + c_d (1 - M_d), exactly as the reference
// writes them (c_d = 0 outside the image, added as such so the rounding is the reference's).
template <typename acc_t>
inline acc_t mask_value(acc_t a, acc_t c) {
  return a / clamp_min(a + c, static_cast<acc_t>(1e-16));
}

template <typename acc_t>
inline acc_t score_value(acc_t a, acc_t c) {
  const acc_t m = mask_value(a, c);
  return a * m + c * (acc_t(1) - m);
}

// Sum in double, in a fixed order whatever the thread count: four interleaved partial sums (independent adds
// that pipeline), then combined in one order.
template <typename acc_t>
double sum_fixed(const acc_t* v, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(v[i]);
    s1 += static_cast<double>(v[i + 1]);
    s2 += static_cast<double>(v[i + 2]);
    s3 += static_cast<double>(v[i + 3]);
  }
  for (; i < n; ++i) s0 += static_cast<double>(v[i]);
  return (s0 + s1) + (s2 + s3);
}

// reflect_index of the reference: F.pad(mode="reflect") folded repeatedly into [0, n); n = 1 gives 0.
inline int64_t reflect(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  int64_t r = i % period;
  if (r < 0) r += period;
  return r < n ? r : period - r;
}

// table[k * n + i]: the source of tap k for output i along a dimension of n, taps centred on i.
std::vector<int64_t> tap_sources(int64_t n, int64_t taps) {
  std::vector<int64_t> table(taps * n);
  const int64_t half = (taps - 1) / 2;
  for (int64_t k = 0; k < taps; ++k) {
    for (int64_t i = 0; i < n; ++i) table[k * n + i] = reflect(i + k - half, n);
  }
  return table;
}

// A shift clamped to [-n, n]: beyond that everything is outside anyway, and the sums below cannot overflow
// (offsets and shifts are unchecked with validate=False).
inline int64_t clamp_shift(int64_t d, int64_t n) { return std::clamp<int64_t>(d, -n, n); }

// The columns [begin, end) of a row of W whose source column w + dx lies inside [0, W).
struct Inside {
  int64_t begin, end;
  Inside(int64_t dx, int64_t W) : begin(std::max<int64_t>(0, -dx)), end(std::max(begin, std::min(W, W - dx))) {}
};

// ---------------------------------------------------------------------------------------------
// Step 1: s~[b] = blur(mean_c |grad[b]|), or all ones where it sums to 0 or is not finite.

// s = mean_c |g| of one sample. Every pixel adds its channels in channel order starting from 0 whatever the
// loop order, so all layouts give the same bits; the loop walks memory order (pixel-major for channels_last).
template <typename scalar_t, typename acc_t>
void channel_mean(const scalar_t* g, int64_t C, int64_t H, int64_t W, int64_t sc, int64_t sh, int64_t sw, acc_t* s) {
  std::fill_n(s, H * W, acc_t(0));
  if (sc < sw) {  // pixel-major: channels innermost in memory
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t w = 0; w < W; ++w) {
        const scalar_t* px = g + h * sh + w * sw;
        acc_t sum = 0;
        for (int64_t c = 0; c < C; ++c) sum += std::abs(static_cast<acc_t>(px[c * sc]));
        s[h * W + w] = sum;
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t h = 0; h < H; ++h) {
        const scalar_t* row = g + c * sc + h * sh;
        acc_t* out = s + h * W;
        if (sw == 1) {
          for (int64_t w = 0; w < W; ++w) out[w] += std::abs(static_cast<acc_t>(row[w]));
        } else {
          for (int64_t w = 0; w < W; ++w) out[w] += std::abs(static_cast<acc_t>(row[w * sw]));
        }
      }
    }
  }
  const acc_t channels = static_cast<acc_t>(C);
  for (int64_t p = 0; p < H * W; ++p) s[p] /= channels;  // the reference's mean: the sum, then / C
}

// The separable blur, rows then columns, each output adding its taps in index order from 0 (the reference's
// _blur_1d). `tmp` is H*W scratch.
template <typename acc_t>
void blur(const acc_t* s, const acc_t* taps, int64_t K, const std::vector<int64_t>& cols,
          const std::vector<int64_t>& rows, int64_t H, int64_t W, acc_t* tmp, acc_t* out) {
  for (int64_t h = 0; h < H; ++h) {
    const acc_t* in = s + h * W;
    acc_t* o = tmp + h * W;
    std::fill_n(o, W, acc_t(0));
    for (int64_t k = 0; k < K; ++k) {
      const int64_t* src = cols.data() + k * W;
      for (int64_t w = 0; w < W; ++w) o[w] += taps[k] * in[src[w]];
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    acc_t* o = out + h * W;
    std::fill_n(o, W, acc_t(0));
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* in = tmp + rows[k * H + h] * W;
      for (int64_t w = 0; w < W; ++w) o[w] += taps[k] * in[w];
    }
  }
}

// Fills smooth (B*H*W) with s~ and total (B) with its sums (the denominators of a and c).
template <typename scalar_t, typename acc_t>
void smoothed_saliency(const at::Tensor& grad, const at::Tensor& blur_taps, acc_t* smooth, acc_t* total) {
  const int64_t B = grad.size(0), C = grad.size(1), H = grad.size(2), W = grad.size(3);
  const int64_t sb = grad.stride(0), sc = grad.stride(1), sh = grad.stride(2), sw = grad.stride(3);
  const int64_t K = blur_taps.size(0), n = H * W;
  const acc_t* taps = blur_taps.const_data_ptr<acc_t>();
  const std::vector<int64_t> cols = tap_sources(W, K), rows = tap_sources(H, K);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  at::parallel_for(0, B, grain_for(n * (C + 2 * K)), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(2 * n);
    for (int64_t b = begin; b < end; ++b) {
      acc_t* out = smooth + b * n;
      channel_mean<scalar_t, acc_t>(g + b * sb, C, H, W, sc, sh, sw, scratch.data());
      blur<acc_t>(scratch.data(), taps, K, cols, rows, H, W, scratch.data() + n, out);
      // Rounded to acc_t like the reference's sum; a float32 overflow still shows as inf.
      acc_t sum = static_cast<acc_t>(sum_fixed(out, n));
      if (!(std::isfinite(sum) && sum > acc_t(0))) {
        std::fill_n(out, n, acc_t(1));
        sum = static_cast<acc_t>(sum_fixed(out, n));
      }
      total[b] = sum;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Steps 2-3: a, c, the score of every candidate, the first best one, its mask M and mean.

template <typename acc_t>
struct SearchMaps {
  int64_t B, H, W;
  std::vector<acc_t> a, c;       // (B, H, W): own and partner maps
  std::vector<acc_t> own;        // (B, H, W): the score of a pixel whose shifted partner lies outside (c_d = 0)
  std::vector<double> own_rows;  // (B, H): own summed over each row
};

// a = max(lam, 1e-12) * (s~[b] / sum s~[b]), c = max(1 - lam, 1e-12) * (s~[perm b] / sum s~[perm b]), as the
// reference's _scaled rounds them.
template <typename acc_t>
void scaled_maps(const acc_t* smooth, const acc_t* total, const int64_t* perm, const acc_t* lam, SearchMaps<acc_t>& m) {
  const int64_t H = m.H, W = m.W, n = H * W;
  at::parallel_for(0, m.B, grain_for(4 * n), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p = perm[b];
      const acc_t own_scale = clamp_min(lam[b], static_cast<acc_t>(1e-12));
      const acc_t partner_scale = clamp_min(acc_t(1) - lam[b], static_cast<acc_t>(1e-12));
      const acc_t *s = smooth + b * n, *sp = smooth + p * n;
      acc_t *a = m.a.data() + b * n, *c = m.c.data() + b * n, *o = m.own.data() + b * n;
      for (int64_t i = 0; i < n; ++i) {
        a[i] = own_scale * (s[i] / total[b]);
        c[i] = partner_scale * (sp[i] / total[p]);
        o[i] = score_value(a[i], acc_t(0));
      }
      for (int64_t h = 0; h < H; ++h) m.own_rows[b * H + h] = sum_fixed(o + h * W, W);
    }
  });
}

// score(d) for one sample: rows whose source row is outside add their precomputed own sum, the rest add the
// outside columns' own scores and the inside columns' scores (made into `terms` first, so that loop
// vectorises).
template <typename acc_t>
double shift_score(const SearchMaps<acc_t>& m, int64_t b, int64_t dy, int64_t dx, acc_t* terms) {
  const int64_t H = m.H, W = m.W, n = H * W;
  const Inside in(dx, W);
  const acc_t *a = m.a.data() + b * n, *c = m.c.data() + b * n, *own = m.own.data() + b * n;
  double score = 0;
  for (int64_t h = 0; h < H; ++h) {
    const int64_t hs = h + dy;
    if (hs < 0 || hs >= H) {
      score += m.own_rows[b * H + h];
      continue;
    }
    const acc_t* ar = a + h * W;
    const acc_t* cr = c + hs * W;
    for (int64_t w = in.begin; w < in.end; ++w) terms[w - in.begin] = score_value(ar[w], cr[w + dx]);
    score += sum_fixed(own + h * W, in.begin);
    score += sum_fixed(terms, in.end - in.begin);
    score += sum_fixed(own + h * W + in.end, W - in.end);
  }
  return score;
}

// torch.argmax: the first maximum, a NaN counting as larger than everything.
inline int64_t first_argmax(const double* v, int64_t n) {
  int64_t best = 0;
  for (int64_t k = 1; k < n; ++k) {
    if (std::isnan(v[best])) break;
    if (v[k] > v[best] || std::isnan(v[k])) best = k;
  }
  return best;
}

template <typename scalar_t, typename acc_t>
void search_typed(const SageSearchArgs& args, SageSearchOutputs& out) {
  const at::Tensor& grad = args.grad;
  const int64_t B = grad.size(0), H = grad.size(2), W = grad.size(3), n = H * W, K = args.offsets.size(0);
  const int64_t* perm = args.perm.const_data_ptr<int64_t>();
  const int64_t* offsets = args.offsets.const_data_ptr<int64_t>();

  std::vector<acc_t> smooth(B * n), total(B);
  smoothed_saliency<scalar_t, acc_t>(grad, args.blur, smooth.data(), total.data());

  SearchMaps<acc_t> maps{B,
                         H,
                         W,
                         std::vector<acc_t>(B * n),
                         std::vector<acc_t>(B * n),
                         std::vector<acc_t>(B * n),
                         std::vector<double>(B * H)};
  scaled_maps<acc_t>(smooth.data(), total.data(), perm, args.lam.const_data_ptr<acc_t>(), maps);
  std::vector<acc_t>().swap(smooth);  // freed before the search allocates

  // One task per (sample, candidate): enough tasks for both cores even at B = 1.
  std::vector<double> scores(B * K);
  at::parallel_for(0, B * K, grain_for(n), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> terms(W);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / K, k = t % K;
      scores[t] =
          shift_score(maps, b, clamp_shift(offsets[2 * k], H), clamp_shift(offsets[2 * k + 1], W), terms.data());
    }
  });

  acc_t* weight = out.weight.mutable_data_ptr<acc_t>();
  int64_t* shift = out.shift.mutable_data_ptr<int64_t>();
  float* lam_eff = out.lam_eff.mutable_data_ptr<float>();
  at::parallel_for(0, B, grain_for(n), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t k = first_argmax(scores.data() + b * K, K);
      shift[2 * b] = offsets[2 * k];
      shift[2 * b + 1] = offsets[2 * k + 1];
      const int64_t dy = clamp_shift(offsets[2 * k], H), dx = clamp_shift(offsets[2 * k + 1], W);
      const Inside in(dx, W);
      const acc_t *a = maps.a.data() + b * n, *c = maps.c.data() + b * n;
      acc_t* m = weight + b * n;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t hs = h + dy;
        const bool row_inside = hs >= 0 && hs < H;
        const acc_t* ar = a + h * W;
        acc_t* mr = m + h * W;
        const int64_t begin_w = row_inside ? in.begin : W, end_w = row_inside ? in.end : W;
        for (int64_t w = 0; w < begin_w; ++w) mr[w] = mask_value(ar[w], acc_t(0));
        const acc_t* cr = c + (row_inside ? hs : 0) * W;
        for (int64_t w = begin_w; w < end_w; ++w) mr[w] = mask_value(ar[w], cr[w + dx]);
        for (int64_t w = std::max(begin_w, end_w); w < W; ++w) mr[w] = mask_value(ar[w], acc_t(0));
      }
      lam_eff[b] = static_cast<float>(sum_fixed(m, n) / static_cast<double>(n));
    }
  });
}

void search_cpu(const SageSearchArgs& args, SageSearchOutputs& out) {
  check_perm_in_range(args.perm.const_data_ptr<int64_t>(), args.grad.size(0));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.grad.scalar_type(), "sage_cpu_search",
                                  [&] { search_typed<scalar_t, at::opmath_type<scalar_t>>(args, out); });
}

// ---------------------------------------------------------------------------------------------
// Step 4 and its backward, a task per output row: NCHW rows are (b, c, h) with W elements, channels_last rows
// (b, h) with W*C elements. Both terms are formed and added in the reference's order, and a source outside
// the image is a 0 that still goes through the arithmetic, so the bits are the reference's.

// m * own + (1 - m) * partner.
template <typename scalar_t, typename acc_t>
inline scalar_t mix(acc_t m, scalar_t own, acc_t partner) {
  return static_cast<scalar_t>(m * static_cast<acc_t>(own) + (acc_t(1) - m) * partner);
}

// m_b g_b + (1 - m_s) g_s.
template <typename scalar_t, typename acc_t>
inline scalar_t grad_sum(acc_t m, scalar_t g, acc_t via) {
  return static_cast<scalar_t>(m * static_cast<acc_t>(g) + via);
}

// The per-pixel weights of one row repeated over the channels, so channels_last rows are plain loops.
template <typename acc_t>
void expand_pixels(const acc_t* m, int64_t W, int64_t C, acc_t* out) {
  for (int64_t w = 0; w < W; ++w) std::fill_n(out + w * C, C, m[w]);
}

// The forward, for one row of `len` elements with weights m: positions k in [lo, hi) blend own with the
// partner row's element k + shift (element stride `ps`), the others with 0.
template <typename scalar_t, typename acc_t, bool kUnit>
inline void mix_row(scalar_t* out, const acc_t* m, const scalar_t* own, int64_t os, const scalar_t* partner, int64_t ps,
                    int64_t shift, int64_t lo, int64_t hi, int64_t len) {
  const int64_t o = kUnit ? 1 : os, p = kUnit ? 1 : ps;
  for (int64_t k = 0; k < lo; ++k) out[k] = mix(m[k], own[k * o], acc_t(0));
  for (int64_t k = lo; k < hi; ++k) out[k] = mix(m[k], own[k * o], static_cast<acc_t>(partner[(k + shift) * p]));
  for (int64_t k = std::max(lo, hi); k < len; ++k) out[k] = mix(m[k], own[k * o], acc_t(0));
}

template <typename scalar_t, typename acc_t>
void blend_typed(const at::Tensor& x, const acc_t* weight, const int64_t* perm, const int64_t* shift,
                 at::Tensor& mixed) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst = mixed.mutable_data_ptr<scalar_t>();
  if (mixed.is_contiguous()) {
    at::parallel_for(0, B * C * H, grain_for(W), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / (C * H), c = (r / H) % C, h = r % H;
        const int64_t dy = clamp_shift(shift[2 * b], H), dx = clamp_shift(shift[2 * b + 1], W), hs = h + dy;
        const Inside in(dx, W);
        const bool row_inside = hs >= 0 && hs < H;
        const scalar_t* own = src + b * sb + c * sc + h * sh;
        const scalar_t* partner = src + perm[b] * sb + c * sc + (row_inside ? hs : 0) * sh;
        const int64_t lo = row_inside ? in.begin : W, hi = row_inside ? in.end : W;
        const acc_t* m = weight + (b * H + h) * W;
        if (sw == 1) {
          mix_row<scalar_t, acc_t, true>(dst + r * W, m, own, 1, partner, 1, dx, lo, hi, W);
        } else {
          mix_row<scalar_t, acc_t, false>(dst + r * W, m, own, sw, partner, sw, dx, lo, hi, W);
        }
      }
    });
    return;
  }
  // channels_last output.
  const bool dense = sc == 1 && sw == C;  // x channels_last too: a row is W*C consecutive elements
  const int64_t len = W * C;
  at::parallel_for(0, B * H, grain_for(len), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> m_row(len);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / H, h = r % H;
      const int64_t dy = clamp_shift(shift[2 * b], H), dx = clamp_shift(shift[2 * b + 1], W), hs = h + dy;
      const Inside in(dx, W);
      const bool row_inside = hs >= 0 && hs < H;
      const int64_t lo = row_inside ? in.begin : W, hi = row_inside ? in.end : W;
      const acc_t* m = weight + (b * H + h) * W;
      scalar_t* out = dst + r * len;
      const scalar_t* own = src + b * sb + h * sh;
      const scalar_t* partner = src + perm[b] * sb + (row_inside ? hs : 0) * sh;
      if (dense) {
        expand_pixels(m, W, C, m_row.data());
        mix_row<scalar_t, acc_t, true>(out, m_row.data(), own, 1, partner, 1, dx * C, lo * C, hi * C, len);
      } else {
        for (int64_t c = 0; c < C; ++c) {
          // Channel c of the row: elements c, c + C, ... of out.
          for (int64_t w = 0; w < W; ++w) {
            const bool inside = w >= lo && w < hi;
            const acc_t pv = inside ? static_cast<acc_t>(partner[c * sc + (w + dx) * sw]) : acc_t(0);
            out[w * C + c] = mix(m[w], own[c * sc + w * sw], pv);
          }
        }
      }
    }
  });
}

void blend_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& perm, const at::Tensor& shift,
               at::Tensor& mixed) {
  const int64_t* pm = perm.const_data_ptr<int64_t>();
  check_perm_in_range(pm, x.size(0));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sage_cpu_blend", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    blend_typed<scalar_t, acc_t>(x, weight.const_data_ptr<acc_t>(), pm, shift.const_data_ptr<int64_t>(), mixed);
  });
}

// The backward, for one row of `len` elements: positions k in [lo, hi) add (1 - m_s) g_s from element
// k - shift of the rows via_m (dense) and via_g (element stride `vs`); the others add the reference's 0.
template <typename scalar_t, typename acc_t, bool kUnit>
inline void grad_row(scalar_t* out, const acc_t* m, const scalar_t* g, int64_t gs, const acc_t* via_m,
                     const scalar_t* via_g, int64_t vs, int64_t shift, int64_t lo, int64_t hi, int64_t len) {
  const int64_t o = kUnit ? 1 : gs, v = kUnit ? 1 : vs;
  for (int64_t k = 0; k < lo; ++k) out[k] = grad_sum(m[k], g[k * o], acc_t(0));
  for (int64_t k = lo; k < hi; ++k) {
    out[k] = grad_sum(m[k], g[k * o], (acc_t(1) - via_m[k - shift]) * static_cast<acc_t>(via_g[(k - shift) * v]));
  }
  for (int64_t k = std::max(lo, hi); k < len; ++k) out[k] = grad_sum(m[k], g[k * o], acc_t(0));
}

template <typename scalar_t, typename acc_t>
void backward_typed(const at::Tensor& go, const acc_t* weight, const int64_t* src_of, const int64_t* shift,
                    at::Tensor& gx) {
  const int64_t B = go.size(0), C = go.size(1), H = go.size(2), W = go.size(3);
  const int64_t sb = go.stride(0), sc = go.stride(1), sh = go.stride(2), sw = go.stride(3);
  const scalar_t* g = go.const_data_ptr<scalar_t>();
  scalar_t* dst = gx.mutable_data_ptr<scalar_t>();
  // x[b] reached mixed[s] (s = src_of[b]) at p + d*_s, so grad_x[b](p) reads s at p - d*_s.
  struct Via {
    int64_t s, hs, lo, hi;
    bool row_inside;
  };
  auto via_of = [&](int64_t b, int64_t h) {
    const int64_t s = src_of[b];
    const int64_t dy = clamp_shift(shift[2 * s], H), dx = clamp_shift(shift[2 * s + 1], W), hs = h - dy;
    const Inside in(-dx, W);
    const bool row_inside = hs >= 0 && hs < H;
    return Via{s, row_inside ? hs : 0, row_inside ? in.begin : W, row_inside ? in.end : W, row_inside};
  };
  if (gx.is_contiguous()) {
    at::parallel_for(0, B * C * H, grain_for(W), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / (C * H), c = (r / H) % C, h = r % H;
        const Via v = via_of(b, h);
        const int64_t dx = clamp_shift(shift[2 * v.s + 1], W);
        const acc_t* m = weight + (b * H + h) * W;
        const acc_t* via_m = weight + (v.s * H + v.hs) * W;
        const scalar_t* own = g + b * sb + c * sc + h * sh;
        const scalar_t* via_g = g + v.s * sb + c * sc + v.hs * sh;
        if (sw == 1) {
          grad_row<scalar_t, acc_t, true>(dst + r * W, m, own, 1, via_m, via_g, 1, dx, v.lo, v.hi, W);
        } else {
          grad_row<scalar_t, acc_t, false>(dst + r * W, m, own, sw, via_m, via_g, sw, dx, v.lo, v.hi, W);
        }
      }
    });
    return;
  }
  const bool dense = sc == 1 && sw == C;
  const int64_t len = W * C;
  at::parallel_for(0, B * H, grain_for(len), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> m_row(len), via_row(len);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / H, h = r % H;
      const Via v = via_of(b, h);
      const int64_t dx = clamp_shift(shift[2 * v.s + 1], W);
      const acc_t* m = weight + (b * H + h) * W;
      const acc_t* vm = weight + (v.s * H + v.hs) * W;
      scalar_t* out = dst + r * len;
      const scalar_t* own = g + b * sb + h * sh;
      const scalar_t* via_g = g + v.s * sb + v.hs * sh;
      if (dense) {
        expand_pixels(m, W, C, m_row.data());
        expand_pixels(vm, W, C, via_row.data());
        grad_row<scalar_t, acc_t, true>(out, m_row.data(), own, 1, via_row.data(), via_g, 1, dx * C, v.lo * C, v.hi * C,
                                        len);
      } else {
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t w = 0; w < W; ++w) {
            const bool inside = w >= v.lo && w < v.hi;
            const acc_t via =
                inside ? (acc_t(1) - vm[w - dx]) * static_cast<acc_t>(via_g[c * sc + (w - dx) * sw]) : acc_t(0);
            out[w * C + c] = grad_sum(m[w], own[c * sc + w * sw], via);
          }
        }
      }
    }
  });
}

void blend_backward_cpu(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& perm,
                        const at::Tensor& shift, at::Tensor& grad_x) {
  const int64_t B = grad_out.size(0);
  const int64_t* pm = perm.const_data_ptr<int64_t>();
  check_perm_in_range(pm, B);
  // The inverse permutation; zeros where perm is no permutation (validate=False), which stays in bounds.
  std::vector<int64_t> src_of(B);
  for (int64_t b = 0; b < B; ++b) src_of[pm[b]] = b;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "sage_cpu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_typed<scalar_t, acc_t>(grad_out, weight.const_data_ptr<acc_t>(), src_of.data(),
                                    shift.const_data_ptr<int64_t>(), grad_x);
  });
}

constexpr SageKernels kSageKernels{&search_cpu, &blend_cpu, &blend_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(rmix_fast, CPU, m) { impl_op<sage_forward, sage_backward, kSageKernels>(m, "sage"); }

}  // namespace rmix_fast::cpu
