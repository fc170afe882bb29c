// CPU kernels of blend_sources: the forward in one pass over the sources (a task per pixel row (b, y): the
// row's N weights are upsampled and normalised into a small buffer, then each source row is read once and
// mixed written once), the backward in three passes (per pixel row the weights and the logits' gradient dz
// at full resolution; per pixel row grad_x as a gather through the inverse permutations; per (b, i) map
// the upsampling's adjoint). Every output element is produced by one task in a fixed order, so results do
// not depend on the thread count. Dense NCHW and channels_last tensors are walked in memory order with plain
// loops; other strides per element.
#include "blend_sources.h"
#include "cpu/kernel_utils.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

namespace rmix_fast::cpu {
namespace {

// Dense layouts walked as rows of memory: an NCHW row (b, c, y) is W elements, a channels_last row (b, y)
// is W*C elements (pixel-major).
enum class Layout { kNCHW, kNHWC, kStrided };

Layout dense_layout(const at::Tensor& t) {
  if (t.is_contiguous()) return Layout::kNCHW;
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) return Layout::kNHWC;
  return Layout::kStrided;
}

// The layout that an input and the output allocated for it share, or kStrided.
Layout shared_layout(const at::Tensor& in, const at::Tensor& out) {
  const Layout l = dense_layout(in);
  return l == dense_layout(out) ? l : Layout::kStrided;
}

// Even with validate=False an index outside [0, B) must not read out of bounds: one pass over N*B integers.
void check_index_in_range(const int64_t* index, int64_t N, int64_t B) {
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t v = index[i * B + b];
      TORCH_CHECK_VALUE(v >= 0 && v < B, "index must hold indices in [0, ", B - 1, "], got ", v, " at (", i, ", ", b,
                        ")");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The upsampling, as ATen's CPU kernels compute it (aten/src/ATen/native/UpSample.h). Per output coordinate
// of one axis: the input coordinates i0, i1 and their weights l0, l1 (bilinear), or i0 alone (nearest).

// nearest_idx: a shift for scale 2, else floor(o * float(1 / scale)) clamped, in float as ATen has it.
int64_t nearest_source(int64_t o, int64_t in, int64_t out, int64_t scale) {
  if (out == in) return o;
  if (out == 2 * in) return o >> 1;
  const float s = static_cast<float>(1.0 / static_cast<double>(scale));
  return std::min(static_cast<int64_t>(std::floor(static_cast<float>(o) * s)), in - 1);
}

template <typename T>
struct Axis {
  std::vector<int64_t> i0, i1;
  std::vector<T> l0, l1;

  Axis(int64_t in, int64_t scale, Upsample mode) {
    const int64_t out = in * scale;
    i0.resize(out), i1.resize(out), l0.assign(out, T(1)), l1.assign(out, T(0));
    // area_pixel_compute_scale with the caller's scale_factor: 1 / scale in the compute type.
    const T ratio = static_cast<T>(1.0 / static_cast<double>(scale));
    for (int64_t o = 0; o < out; ++o) {
      if (scale == 1) {
        i0[o] = i1[o] = o;
      } else if (mode == Upsample::kNearest) {
        i0[o] = i1[o] = nearest_source(o, in, out, scale);
      } else {
        // area_pixel_compute_source_index (align_corners=False, clamped at 0), then guard_index_and_lambda,
        // whose floorf rounds a double index to float first: kept, so float64 picks ATen's cells.
        T real = ratio * (static_cast<T>(o) + T(0.5)) - T(0.5);
        if (real < T(0)) real = T(0);
        const int64_t k = std::min(static_cast<int64_t>(std::floor(static_cast<float>(real))), in - 1);
        const T lambda = std::min(std::max(real - static_cast<T>(k), T(0)), T(1));
        i0[o] = k;
        i1[o] = k + (k < in - 1 ? 1 : 0);
        l1[o] = lambda;
        l0[o] = T(1) - lambda;
      }
    }
  }
};

// The weights W = normalize(upsample(logits)) of one pixel row, and the upsampling's adjoint, in T (the
// logits' accumulate type).
template <typename T>
class Weights {
 public:
  explicit Weights(const BlendSourcesArgs& args)
      : logits_(args.logits.const_data_ptr<T>()),
        N_(args.logits.size(1)),
        h_(args.logits.size(2)),
        w_(args.logits.size(3)),
        W_(w_ * args.scale),
        scale_(args.scale),
        mode_(args.mode),
        normalize_(args.normalize),
        rows_(h_, args.scale, args.mode),
        cols_(w_, args.scale, args.mode) {}

  // W[b, i, y, :] for every source i into out + i * stride (W elements each).
  void row(int64_t b, int64_t y, T* out, int64_t stride) const {
    for (int64_t i = 0; i < N_; ++i) upsample_row(logits_ + (b * N_ + i) * h_ * w_, y, out + i * stride);
    if (normalize_ == Normalize::kSoftmax) softmax(out, stride);
  }

  // plane (h, w) = the adjoint of the upsampling applied to dz (H, W): each low-res cell receives its share of
  // every pixel, pixel after pixel in memory order (as ATen's backward), so the sums have one fixed order.
  void adjoint(const T* dz, T* plane) const {
    const int64_t H = h_ * scale_;
    if (scale_ == 1) {
      std::copy_n(dz, H * W_, plane);
      return;
    }
    std::fill_n(plane, h_ * w_, T(0));
    for (int64_t y = 0; y < H; ++y) {
      const T* d = dz + y * W_;
      T* r0 = plane + rows_.i0[y] * w_;
      if (mode_ == Upsample::kNearest) {
        for (int64_t x = 0; x < W_; ++x) r0[cols_.i0[x]] += d[x];
        continue;
      }
      T* r1 = plane + rows_.i1[y] * w_;
      const T h0 = rows_.l0[y], h1 = rows_.l1[y];
      for (int64_t x = 0; x < W_; ++x) {
        const int64_t c0 = cols_.i0[x], c1 = cols_.i1[x];
        const T w0 = cols_.l0[x], w1 = cols_.l1[x];
        r0[c0] += h0 * w0 * d[x];
        r0[c1] += h0 * w1 * d[x];
        r1[c0] += h1 * w0 * d[x];
        r1[c1] += h1 * w1 * d[x];
      }
    }
  }

 private:
  void upsample_row(const T* plane, int64_t y, T* out) const {
    if (scale_ == 1) {  // the reference does not interpolate at scale 1
      std::copy_n(plane + y * w_, W_, out);
      return;
    }
    const T* r0 = plane + rows_.i0[y] * w_;
    if (mode_ == Upsample::kNearest) {
      for (int64_t x = 0; x < W_; ++x) out[x] = r0[cols_.i0[x]];
      return;
    }
    // The four corner weights as products of the axes' weights, the same products the adjoint uses.
    const T* r1 = plane + rows_.i1[y] * w_;
    const T h0 = rows_.l0[y], h1 = rows_.l1[y];
    for (int64_t x = 0; x < W_; ++x) {
      const int64_t c0 = cols_.i0[x], c1 = cols_.i1[x];
      const T w0 = cols_.l0[x], w1 = cols_.l1[x];
      out[x] = r0[c0] * (h0 * w0) + r0[c1] * (h0 * w1) + r1[c0] * (h1 * w0) + r1[c1] * (h1 * w1);
    }
  }

  // Softmax over the N sources of each pixel: max-shifted, summed in source order.
  void softmax(T* z, int64_t stride) const {
    for (int64_t x = 0; x < W_; ++x) {
      T m = z[x];
      for (int64_t i = 1; i < N_; ++i) m = std::max(m, z[i * stride + x]);
      T sum = T(0);
      for (int64_t i = 0; i < N_; ++i) {
        const T e = std::exp(z[i * stride + x] - m);
        z[i * stride + x] = e;
        sum += e;
      }
      for (int64_t i = 0; i < N_; ++i) z[i * stride + x] /= sum;
    }
  }

  const T* logits_;
  int64_t N_, h_, w_, W_, scale_;
  Upsample mode_;
  Normalize normalize_;
  Axis<T> rows_, cols_;
};

// The strides of a (B, C, H, W) tensor.
struct Strides {
  int64_t b, c, y, x;
  explicit Strides(const at::Tensor& t) : b(t.stride(0)), c(t.stride(1)), y(t.stride(2)), x(t.stride(3)) {}
  int64_t row(int64_t bb, int64_t yy) const { return bb * b + yy * y; }
};

// The mix of one pixel row: out(b, :, y, :) = sum_i wt_i * src_i(:, y, :), summed from 0 in source order.
// `src[i]` points at row y of source i's sample, `wt` holds the row's weights (N x W, or N x W*C repeated
// over the channels for kNHWC, so that row is one plain loop); `acc` is scratch of W (W*C for kNHWC).
template <typename scalar_t, typename acc_t>
void mix_row(Layout layout, const scalar_t* const* src, const acc_t* wt, int64_t N, int64_t C, int64_t W,
             const Strides& in, scalar_t* out, const Strides& os, acc_t* acc) {
  switch (layout) {
    case Layout::kNCHW:
      for (int64_t c = 0; c < C; ++c) {
        std::fill_n(acc, W, acc_t(0));
        for (int64_t i = 0; i < N; ++i) {
          const scalar_t* s = src[i] + c * in.c;
          const acc_t* w = wt + i * W;
          for (int64_t x = 0; x < W; ++x) acc[x] += w[x] * static_cast<acc_t>(s[x]);
        }
        scalar_t* o = out + c * os.c;
        for (int64_t x = 0; x < W; ++x) o[x] = static_cast<scalar_t>(acc[x]);
      }
      break;
    case Layout::kNHWC: {
      const int64_t len = W * C;
      std::fill_n(acc, len, acc_t(0));
      for (int64_t i = 0; i < N; ++i) {
        const scalar_t* s = src[i];
        const acc_t* w = wt + i * len;
        for (int64_t k = 0; k < len; ++k) acc[k] += w[k] * static_cast<acc_t>(s[k]);
      }
      for (int64_t k = 0; k < len; ++k) out[k] = static_cast<scalar_t>(acc[k]);
      break;
    }
    case Layout::kStrided:
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t x = 0; x < W; ++x) {
          acc_t a = acc_t(0);
          for (int64_t i = 0; i < N; ++i) a += wt[i * W + x] * static_cast<acc_t>(src[i][c * in.c + x * in.x]);
          out[c * os.c + x * os.x] = static_cast<scalar_t>(a);
        }
      }
      break;
  }
}

// N x W weights in T to the mix's accumulate type, repeated over the C channels of each pixel for kNHWC.
template <typename acc_t, typename T>
void mix_weights(Layout layout, const T* w, int64_t stride, int64_t N, int64_t C, int64_t W, acc_t* out) {
  for (int64_t i = 0; i < N; ++i) {
    const T* wi = w + i * stride;
    if (layout == Layout::kNHWC) {
      acc_t* o = out + i * W * C;
      for (int64_t x = 0; x < W; ++x) std::fill_n(o + x * C, C, static_cast<acc_t>(wi[x]));
    } else {
      acc_t* o = out + i * W;
      for (int64_t x = 0; x < W; ++x) o[x] = static_cast<acc_t>(wi[x]);
    }
  }
}

// Calls f(T{}) with T the logits' accumulate type (float or double).
template <typename F>
void with_logit_type(const at::Tensor& logits, F&& f) {
  if (logits.scalar_type() == at::kDouble) {
    f(double{});
  } else {
    f(float{});
  }
}

// ---------------------------------------------------------------------------------------------
// The forward.

template <typename scalar_t, typename acc_t, typename T>
void blend_impl(const BlendSourcesArgs& args, at::Tensor& mixed) {
  const at::Tensor& x = args.x;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), N = args.index.size(0);
  const int64_t* index = args.index.const_data_ptr<int64_t>();
  const Weights<T> weights(args);
  const Layout layout = shared_layout(x, mixed);
  const Strides in(x), os(mixed);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* mp = mixed.mutable_data_ptr<scalar_t>();
  const int64_t wide = layout == Layout::kNHWC ? C : 1;  // weights repeated over the channels
  at::parallel_for(0, B * H, grain_for(N * C * W), [&](int64_t begin, int64_t end) {
    std::vector<T> z(N * W);
    std::vector<acc_t> wt(N * W * wide), acc(W * wide);
    std::vector<const scalar_t*> src(N);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / H, y = r % H;
      weights.row(b, y, z.data(), W);
      mix_weights(layout, z.data(), W, N, C, W, wt.data());
      for (int64_t i = 0; i < N; ++i) src[i] = xp + in.row(index[i * B + b], y);
      mix_row<scalar_t, acc_t>(layout, src.data(), wt.data(), N, C, W, in, mp + os.row(b, y), os, acc.data());
    }
  });
}

void blend_cpu(const BlendSourcesArgs& args, at::Tensor& mixed) {
  check_index_in_range(args.index.const_data_ptr<int64_t>(), args.index.size(0), args.index.size(1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "blend_sources_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_logit_type(args.logits, [&](auto tag) { blend_impl<scalar_t, acc_t, decltype(tag)>(args, mixed); });
  });
}

// ---------------------------------------------------------------------------------------------
// The backward.
//   dW[b, i] = sum_c g[b, c] * x[index[i, b], c]         per pixel, in x's accumulate type, rounded to T
//   dz[b, i] = W[b, i] * (dW[b, i] - sum_j W[b, j] dW[b, j])   (softmax; dz = dW without normalisation)
//   grad_logits[b, i] = upsample's adjoint of dz[b, i]
//   grad_x[j] = sum_i W[b_i, i] * g[b_i], b_i = the sample whose source i is j (the inverse of row i)

// dW of one pixel row into dw (N x W), each channel sum from 0 in channel order whatever the layout, so every
// layout gives the same bits; channels_last tensors are walked pixel-major.
template <typename scalar_t, typename acc_t>
void source_grads(const scalar_t* g, const Strides& gs, const scalar_t* const* src, const Strides& xs, int64_t N,
                  int64_t C, int64_t W, bool pixel_major, acc_t* dw) {
  std::fill_n(dw, N * W, acc_t(0));
  for (int64_t i = 0; i < N; ++i) {
    acc_t* d = dw + i * W;
    const scalar_t* s = src[i];
    if (pixel_major) {
      for (int64_t x = 0; x < W; ++x) {
        acc_t a = acc_t(0);
        for (int64_t c = 0; c < C; ++c) {
          a += static_cast<acc_t>(g[c * gs.c + x * gs.x]) * static_cast<acc_t>(s[c * xs.c + x * xs.x]);
        }
        d[x] = a;
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* gc = g + c * gs.c;
        const scalar_t* sc = s + c * xs.c;
        for (int64_t x = 0; x < W; ++x) {
          d[x] += static_cast<acc_t>(gc[x * gs.x]) * static_cast<acc_t>(sc[x * xs.x]);
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t, typename T>
void backward_impl(const BlendSourcesArgs& args, const at::Tensor& grad_out, at::Tensor& grad_x,
                   at::Tensor& grad_logits) {
  const at::Tensor& x = args.x;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), N = args.index.size(0);
  const int64_t HW = H * W;
  const int64_t* index = args.index.const_data_ptr<int64_t>();
  const Weights<T> weights(args);
  const Strides xs(x), gs(grad_out), os(grad_x);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
  scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
  T* gl = grad_logits.mutable_data_ptr<T>();

  // The inverse of each row; zeros where a row is no permutation (validate=False), so reads stay in bounds.
  std::vector<int64_t> inverse(N * B, 0);
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t b = 0; b < B; ++b) inverse[i * B + index[i * B + b]] = b;
  }

  // Pass 1: W and dz at full resolution, (B, N, H, W) each; at scale 1 dz is grad_logits itself.
  const auto w_all = std::make_unique_for_overwrite<T[]>(B * N * HW);
  std::unique_ptr<T[]> dz_scratch;
  T* dz_all = gl;
  if (args.scale != 1) {
    dz_scratch = std::make_unique_for_overwrite<T[]>(B * N * HW);
    dz_all = dz_scratch.get();
  }
  const bool pixel_major = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  at::parallel_for(0, B * H, grain_for(N * C * W), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dw(N * W);
    std::vector<const scalar_t*> src(N);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / H, y = r % H;
      T* w = w_all.get() + b * N * HW + y * W;  // source i's row at w + i * HW
      T* dz = dz_all + b * N * HW + y * W;
      weights.row(b, y, w, HW);
      for (int64_t i = 0; i < N; ++i) src[i] = xp + xs.row(index[i * B + b], y);
      source_grads<scalar_t, acc_t>(gp + gs.row(b, y), gs, src.data(), xs, N, C, W, pixel_major, dw.data());
      for (int64_t px = 0; px < W; ++px) {
        if (args.normalize == Normalize::kNone) {
          for (int64_t i = 0; i < N; ++i) dz[i * HW + px] = static_cast<T>(dw[i * W + px]);
          continue;
        }
        T dot = T(0);
        for (int64_t i = 0; i < N; ++i) dot += w[i * HW + px] * static_cast<T>(dw[i * W + px]);
        for (int64_t i = 0; i < N; ++i) dz[i * HW + px] = w[i * HW + px] * (static_cast<T>(dw[i * W + px]) - dot);
      }
    }
  });

  // Pass 2: grad_x, a gather: row (j, y) reads row (b_i, y) of g and of W[:, i] for every source i.
  const Layout layout = shared_layout(grad_out, grad_x);
  const int64_t wide = layout == Layout::kNHWC ? C : 1;
  at::parallel_for(0, B * H, grain_for(N * C * W), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> wt(N * W * wide), acc(W * wide);
    std::vector<const scalar_t*> src(N);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t j = r / H, y = r % H;
      for (int64_t i = 0; i < N; ++i) {
        const int64_t b = inverse[i * B + j];
        src[i] = gp + gs.row(b, y);
        // source i's weights come from sample b's row: converted one source at a time
        mix_weights(layout, w_all.get() + (b * N + i) * HW + y * W, /*stride=*/0, /*N=*/1, C, W,
                    wt.data() + i * W * wide);
      }
      mix_row<scalar_t, acc_t>(layout, src.data(), wt.data(), N, C, W, gs, gxp + os.row(j, y), os, acc.data());
    }
  });

  // Pass 3: grad_logits, the upsampling's adjoint of each (b, i) map.
  if (args.scale != 1) {
    const int64_t hw = grad_logits.size(2) * grad_logits.size(3);
    at::parallel_for(0, B * N, grain_for(HW), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) weights.adjoint(dz_all + p * HW, gl + p * hw);
    });
  }
}

void blend_backward_cpu(const BlendSourcesArgs& args, const at::Tensor& grad_out, at::Tensor& grad_x,
                        at::Tensor& grad_logits) {
  check_index_in_range(args.index.const_data_ptr<int64_t>(), args.index.size(0), args.index.size(1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "blend_sources_cpu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_logit_type(args.logits, [&](auto tag) {
      backward_impl<scalar_t, acc_t, decltype(tag)>(args, grad_out, grad_x, grad_logits);
    });
  });
}

}  // namespace

constexpr BlendSourcesKernels kBlendSourcesKernels{&blend_cpu, &blend_backward_cpu};

TORCH_LIBRARY_IMPL(rmix_fast, CPU, m) {
  impl_op<blend_sources_forward, blend_sources_backward, kBlendSourcesKernels>(m, "blend_sources");
}

}  // namespace rmix_fast::cpu
