// CUDA kernels of the blend engine, launched on the current stream, no float atomics (bit-identical run to
// run), no sync:
//   lam_eff_kernel                 one block per sample: counts blended / own cells (integer), lam_eff.
//   blend_vector_kernel            mixed[b] from x[b] and x[perm[b]] as each element's cell code says, reading a
//   blend_strided_kernel           source only where an element uses it.
//   inverse_perm_kernel            backward: src[perm[b]] = b.
//   blend_backward_vector_kernel   grad_x[b] from grad_out[b] (its own share) and grad_out[src[b]] (its share as
//   blend_backward_strided_kernel  the partner of src[b]).
// R-Mix runs the same launches after its mask and codes (cuda/rmix_kernel.cu), over a p x p grid;
// blend_regions_cpp over the caller's gh x gw grid.
//
// Two paths per direction (csrc/README.md, "The CUDA blend"):
//   *_vector_kernel   input and output share a dense layout (NCHW or channels_last), both 16-byte aligned, and a
//                     sample's element count is a multiple of the vector: a thread moves whole 16-byte vectors
//                     of one sample in memory order, so the blend streams at copy speed.
//   *_strided_kernel  anything else: an element per thread, each tensor through its own strides.
// Both walk the batch in tiles of one sample each (the sample and its partner are block-uniform) and index a
// sample in 32 bits when its elements and offsets fit, in 64 bits otherwise; all index division is a
// multiply-high by a precomputed magic number (Divider), never a hardware division.
#include "blend_regions.h"
#include "cuda/kernel_utils.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

namespace rmix_fast::cuda {
namespace {

constexpr int kCountThreads = 256;  // threads of the lam_eff blocks
constexpr int kVectorBytes = 16;    // the widest global load / store (ld.global.v4.u32)
// Items (vectors or elements) per thread per tile: a tile is kTileItems consecutive items of one sample, so
// the per-sample loads (perm, lam, the codes' base) are paid once per 16 KiB (vector path) of data.
constexpr int kItems = 4;
constexpr int64_t kTileItems = int64_t{kElementThreads} * kItems;

// ---------------------------------------------------------------------------------------------------
// Division by a runtime constant: q = (mulhi(v, magic) + v) >> shift with magic = ceil(2^(bits+shift) / d) - 2^bits
// and shift = ceil(log2(d)) (the round-up method), exact for dividends v < 2^(bits-1) and divisors in
// [1, 2^(bits-1)]. A few integer instructions where a 64-bit hardware division costs about a hundred.
__device__ __forceinline__ uint32_t mulhi(uint32_t a, uint32_t b) { return __umulhi(a, b); }
__device__ __forceinline__ uint64_t mulhi(uint64_t a, uint64_t b) { return __umul64hi(a, b); }

template <typename U>
struct Divider {
  static_assert(std::is_same_v<U, uint32_t> || std::is_same_v<U, uint64_t>);
  static constexpr int kBits = 8 * sizeof(U);

  U d;      // divisor
  U magic;  // ceil(2^(kBits+shift) / d) - 2^kBits
  U shift;  // ceil(log2(d))

  static Divider make(int64_t divisor) {
    using wide = unsigned __int128;
    TORCH_INTERNAL_ASSERT(divisor >= 1 && static_cast<uint64_t>(divisor) <= (uint64_t{1} << (kBits - 1)),
                          "rmix_cuda: divisor out of range: ", divisor);
    Divider r;
    r.d = static_cast<U>(divisor);
    r.shift = 0;
    while ((wide{1} << r.shift) < r.d) ++r.shift;
    r.magic = static_cast<U>((wide{1} << kBits) * ((wide{1} << r.shift) - r.d) / r.d + 1);
    return r;
  }
  __device__ __forceinline__ U div(U v) const { return (mulhi(v, magic) + v) >> shift; }
};

// 32-bit indices serve a sample whose largest element index or offset, plus a tile's overrun past its end, stays
// below 2^31: the 32-bit dividers are exact there and no index product overflows. The sample's base offset
// (b * stride) is always 64-bit.
bool fits_index32(int64_t largest) { return largest <= INT32_MAX - kTileItems; }

// ---------------------------------------------------------------------------------------------------
// The launch's tiles: tile t is items [chunk * kTileItems, (chunk + 1) * kTileItems) of sample b, with
// t = b * per_sample + chunk. The batch is folded into the 1-D grid (gridDim.y would cap it at 65535), and
// blocks stride over the tiles beyond kMaxElementBlocks.
template <typename I>
struct Tiles {
  Divider<uint64_t> per_sample;  // tiles per sample
  uint64_t total;                // B * per_sample
  I items;                       // items per sample

  // The sample of tile t and this thread's first item in it; block-uniform but for the thread's lane.
  __device__ __forceinline__ void start(uint64_t t, int64_t& b, I& first) const {
    const uint64_t sample = per_sample.div(t);
    b = static_cast<int64_t>(sample);
    first = static_cast<I>((t - sample * per_sample.d) * kTileItems) + static_cast<I>(threadIdx.x);
  }
};

template <typename I>
Tiles<I> make_tiles(int64_t B, int64_t items) {
  const int64_t per_sample = ceil_div(items, kTileItems);
  return {Divider<uint64_t>::make(per_sample), static_cast<uint64_t>(B) * static_cast<uint64_t>(per_sample),
          static_cast<I>(items)};
}

template <typename I>
unsigned int blocks_of(const Tiles<I>& tiles) {
  return static_cast<unsigned int>(std::min<uint64_t>(tiles.total, kMaxElementBlocks));
}

// ---------------------------------------------------------------------------------------------------
// Vector path: element e of a dense sample (memory order) -> its cell i * gw + j. The sample is a sequence of
// memory rows: NCHW rows are (c, h) with W elements each, channels_last rows are h with W*C elements; cell
// column j of a row is its elements [j * run, (j + 1) * run), and a row's image row is its index mod H.
template <typename I>
struct DenseCells {
  Divider<I> len;     // elements per memory row
  Divider<I> height;  // H
  Divider<I> cell_h;  // H / gh: image rows per cell row
  Divider<I> run;     // len / gw: elements of a cell column in one row
  I gw;

  __device__ __forceinline__ I row_cells(I r) const { return cell_h.div(r - height.div(r) * height.d) * gw; }
  __device__ __forceinline__ I cell(I e) const {
    const I r = len.div(e);
    return row_cells(r) + run.div(e - r * len.d);
  }
};

template <typename I>
DenseCells<I> dense_cells(int64_t C, int64_t H, int64_t W, int64_t gh, int64_t gw, bool channels_last) {
  const int64_t len = channels_last ? W * C : W;
  return {Divider<I>::make(len), Divider<I>::make(H), Divider<I>::make(H / gh), Divider<I>::make(len / gw),
          static_cast<I>(gw)};
}

// V consecutive elements of one sample, one 16-byte load or store.
template <typename scalar_t, int V>
struct alignas(sizeof(scalar_t) * V) Pack {
  scalar_t v[V];
};

template <typename scalar_t>
constexpr int kVector = kVectorBytes / sizeof(scalar_t);  // 4 float, 8 half / bfloat16, 2 double

// The codes of a vector's elements as bit masks (bit i: element i). The cell can change inside a vector
// (cells narrower than a vector, channels_last pixels), so each element has its own mode.
struct Modes {
  uint32_t blend = 0;  // the cell blends
  uint32_t own = 0;    // the cell keeps the sample's own pixel; neither bit: it takes the partner's

  __device__ __forceinline__ void add(int code, uint32_t mask) {
    if (code == kBlend) {
      blend |= mask;
    } else if (code == kOwn) {
      own |= mask;
    }
  }
};

// Calls f(cell, mask) for the cells of elements e .. e + V - 1, mask their bits. A vector within one cell
// (every vector when a cell column's run of elements is a multiple of V) takes one call and one code load.
template <int V, typename I, typename F>
__device__ __forceinline__ void for_vector_cells(const DenseCells<I>& map, I e, F&& f) {
  constexpr uint32_t kAll = (1u << V) - 1;
  const I r = map.len.div(e);
  const I o = e - r * map.len.d;
  if (o + (V - 1) < map.len.d) {  // one memory row, so one cell row
    const I row = map.row_cells(r);
    const I j = map.run.div(o);
    if (j == map.run.div(o + (V - 1))) {
      f(row + j, kAll);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) f(row + map.run.div(o + i), 1u << i);
    }
  } else {  // rows shorter than, or not a multiple of, V: the vector spans rows
#pragma unroll
    for (int i = 0; i < V; ++i) f(map.cell(e + i), 1u << i);
  }
}

// ---------------------------------------------------------------------------------------------------
// Strided path: element e of a sample, in the output's order (NCHW: w fastest, then h, c; channels_last: c,
// then w, h) -> its offsets in the input and the output, and its cell.
template <typename I>
struct StridedCells {
  Divider<I> d0, d1;          // the two fastest extents: (W, H) or (C, W)
  Divider<I> cell_h, cell_w;  // H / gh and W / gw
  I gw;
  I in_c, in_h, in_w;     // input strides within a sample
  I out_c, out_h, out_w;  // output strides within a sample
  bool channels_last;
};

template <typename I>
struct StridedElement {
  I in, out, cell;
};

template <typename I>
__device__ __forceinline__ StridedElement<I> locate(const StridedCells<I>& m, I e) {
  const I q0 = m.d0.div(e);
  const I r0 = e - q0 * m.d0.d;
  const I q1 = m.d1.div(q0);
  const I r1 = q0 - q1 * m.d1.d;
  const I c = m.channels_last ? r0 : q1;
  const I h = m.channels_last ? q1 : r1;
  const I w = m.channels_last ? r1 : r0;
  return {c * m.in_c + h * m.in_h + w * m.in_w, c * m.out_c + h * m.out_h + w * m.out_w,
          m.cell_h.div(h) * m.gw + m.cell_w.div(w)};
}

template <typename I>
StridedCells<I> strided_cells(const at::Tensor& in, const at::Tensor& out, int64_t gh, int64_t gw) {
  const int64_t C = in.size(1), H = in.size(2), W = in.size(3);
  // Walk in the output's memory order, so its stores coalesce whenever it is dense.
  const bool channels_last = !out.is_contiguous() && out.is_contiguous(at::MemoryFormat::ChannelsLast);
  auto index = [](int64_t v) { return static_cast<I>(v); };
  return {Divider<I>::make(channels_last ? C : W),
          Divider<I>::make(channels_last ? W : H),
          Divider<I>::make(H / gh),
          Divider<I>::make(W / gw),
          index(gw),
          index(in.stride(1)),
          index(in.stride(2)),
          index(in.stride(3)),
          index(out.stride(1)),
          index(out.stride(2)),
          index(out.stride(3)),
          channels_last};
}

// The largest offset of an element within a sample.
int64_t max_offset(const at::Tensor& t) {
  int64_t m = 0;
  for (int d = 1; d < 4; ++d) m += (t.size(d) - 1) * t.stride(d);
  return m;
}

// ---------------------------------------------------------------------------------------------------
// lam_eff[b] = (n_blend * lam[b] + n_own) / n in float64, rounded to float32. One block per sample.
template <typename T>
__global__ void __launch_bounds__(kCountThreads)
    lam_eff_kernel(const uint8_t* __restrict__ regions, const T* __restrict__ lam, float* __restrict__ lam_eff,
                   int64_t n) {
  const int64_t b = blockIdx.x;
  const uint8_t* codes = regions + b * n;
  int64_t n_blend = 0;
  int64_t n_own = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {  // block-uniform loop around the barriers
    const int64_t idx = base + threadIdx.x;
    const int code = idx < n ? codes[idx] : kPartner;
    n_blend += __syncthreads_count(code == kBlend);
    n_own += __syncthreads_count(code == kOwn);
  }
  if (threadIdx.x == 0) {
    const double weighted = __dmul_rn(static_cast<double>(n_blend), static_cast<double>(lam[b]));
    const double own = __dadd_rn(weighted, static_cast<double>(n_own));
    lam_eff[b] = static_cast<float>(__ddiv_rn(own, static_cast<double>(n)));
  }
}

// ---------------------------------------------------------------------------------------------------
// Blend. A copy is a select of the stored value (bit-exact, never multiplied, never converted); a blend is
// lerp(x[perm[b]], x[b], lam[b]) in T, rounded to nearest into scalar_t. Codes other than kBlend and kOwn
// take the partner.
template <typename scalar_t, typename T>
__device__ __forceinline__ scalar_t mix(bool blend, bool own, scalar_t a, scalar_t p, T lam) {
  if (blend) return static_cast<scalar_t>(lerp_rn(static_cast<T>(p), static_cast<T>(a), lam));
  return own ? a : p;
}

template <typename scalar_t, typename T, typename I>
__global__ void __launch_bounds__(kElementThreads)
    blend_vector_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, const uint8_t* __restrict__ regions,
                        const int64_t* __restrict__ perm, const T* __restrict__ lam, int64_t batch, int64_t n,
                        int64_t cells, Tiles<I> tiles, DenseCells<I> map) {
  constexpr int V = kVector<scalar_t>;
  constexpr uint32_t kAll = (1u << V) - 1;
  using P = Pack<scalar_t, V>;
  for (uint64_t t = blockIdx.x; t < tiles.total; t += gridDim.x) {
    int64_t b;
    I first;
    tiles.start(t, b, first);
    const P* own = reinterpret_cast<const P*>(x + b * n);
    const P* partner = reinterpret_cast<const P*>(x + partner_index(perm, b, batch) * n);
    P* dst = reinterpret_cast<P*>(out + b * n);
    const uint8_t* codes = regions + b * cells;
    const T w = lam[b];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const I v = first + static_cast<I>(k * kElementThreads);
      if (v < tiles.items) {
        Modes m;
        for_vector_cells<V>(map, v * V, [&](I cell, uint32_t mask) { m.add(codes[cell], mask); });
        P a{}, p{};
        if ((m.blend | m.own) != 0) a = own[v];  // a source no element uses is not read
        if (m.own != kAll) p = partner[v];
        P r;
#pragma unroll
        for (int i = 0; i < V; ++i) r.v[i] = mix((m.blend >> i) & 1u, (m.own >> i) & 1u, a.v[i], p.v[i], w);
        dst[v] = r;
      }
    }
  }
}

template <typename scalar_t, typename T, typename I>
__global__ void __launch_bounds__(kElementThreads)
    blend_strided_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                         const uint8_t* __restrict__ regions, const int64_t* __restrict__ perm,
                         const T* __restrict__ lam, int64_t batch, int64_t in_b, int64_t out_b, int64_t cells,
                         Tiles<I> tiles, StridedCells<I> map) {
  for (uint64_t t = blockIdx.x; t < tiles.total; t += gridDim.x) {
    int64_t b;
    I first;
    tiles.start(t, b, first);
    const scalar_t* own = x + b * in_b;
    const scalar_t* partner = x + partner_index(perm, b, batch) * in_b;
    scalar_t* dst = out + b * out_b;
    const uint8_t* codes = regions + b * cells;
    const T w = lam[b];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const I e = first + static_cast<I>(k * kElementThreads);
      if (e < tiles.items) {
        const StridedElement<I> el = locate(map, e);
        const int code = codes[el.cell];
        scalar_t r;
        if (code == kBlend) {
          r = mix(true, false, own[el.in], partner[el.in], w);
        } else {
          r = code == kOwn ? own[el.in] : partner[el.in];
        }
        dst[el.out] = r;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward.

// src[perm[b]] = b. src starts zeroed, so even a perm that is no permutation (validate=False) leaves every
// entry a valid sample index.
__global__ void inverse_perm_kernel(const int64_t* __restrict__ perm, int64_t* __restrict__ src, int64_t B) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < B) {
    const int64_t target = perm[b];
    if (target >= 0 && target < B) src[target] = b;
  }
}

// x[b]'s gradient at one element: its own share of mixed[b] (lam[b] * g[b] where b's cell blends, g[b] where
// it keeps its own pixel) plus its share of mixed[s], perm[s] == b ((1 - lam[s]) * g[s] where s's cell blends,
// g[s] where s takes its partner's pixel). A share the cell does not take is +0, never a product (0 * inf).
template <typename scalar_t, typename T>
__device__ __forceinline__ scalar_t grad_of(bool own_blend, bool own_copy, bool via_blend, bool via_copy,
                                            scalar_t g_own, scalar_t g_via, T lam_b, T keep_s) {
  using A = Arith<T>;
  T own = T(0);
  if (own_blend) {
    own = A::mul(lam_b, static_cast<T>(g_own));
  } else if (own_copy) {
    own = static_cast<T>(g_own);
  }
  T via = T(0);
  if (via_blend) {
    via = A::mul(keep_s, static_cast<T>(g_via));
  } else if (via_copy) {
    via = static_cast<T>(g_via);
  }
  return static_cast<scalar_t>(A::add(own, via));
}

template <typename scalar_t, typename T, typename I>
__global__ void __launch_bounds__(kElementThreads)
    blend_backward_vector_kernel(const scalar_t* __restrict__ go, scalar_t* __restrict__ gx,
                                 const uint8_t* __restrict__ regions, const int64_t* __restrict__ src,
                                 const T* __restrict__ lam, int64_t n, int64_t cells, Tiles<I> tiles,
                                 DenseCells<I> map) {
  using A = Arith<T>;
  constexpr int V = kVector<scalar_t>;
  constexpr uint32_t kAll = (1u << V) - 1;
  using P = Pack<scalar_t, V>;
  for (uint64_t t = blockIdx.x; t < tiles.total; t += gridDim.x) {
    int64_t b;
    I first;
    tiles.start(t, b, first);
    const int64_t s = src[b];
    const P* g_own = reinterpret_cast<const P*>(go + b * n);
    const P* g_via = reinterpret_cast<const P*>(go + s * n);
    P* dst = reinterpret_cast<P*>(gx + b * n);
    const uint8_t* codes = regions + b * cells;
    const uint8_t* codes_s = regions + s * cells;
    const T lam_b = lam[b];
    const T keep_s = A::sub(T(1), lam[s]);
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const I v = first + static_cast<I>(k * kElementThreads);
      if (v < tiles.items) {
        Modes mb, ms;
        for_vector_cells<V>(map, v * V, [&](I cell, uint32_t mask) {
          mb.add(codes[cell], mask);
          ms.add(codes_s[cell], mask);
        });
        const uint32_t via_copy = kAll & ~(ms.blend | ms.own);  // s takes its partner, b
        P a{}, g{};
        if ((mb.blend | mb.own) != 0) a = g_own[v];
        if (ms.own != kAll) g = g_via[v];
        P r;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          r.v[i] = grad_of((mb.blend >> i) & 1u, (mb.own >> i) & 1u, (ms.blend >> i) & 1u, (via_copy >> i) & 1u, a.v[i],
                           g.v[i], lam_b, keep_s);
        }
        dst[v] = r;
      }
    }
  }
}

template <typename scalar_t, typename T, typename I>
__global__ void __launch_bounds__(kElementThreads)
    blend_backward_strided_kernel(const scalar_t* __restrict__ go, scalar_t* __restrict__ gx,
                                  const uint8_t* __restrict__ regions, const int64_t* __restrict__ src,
                                  const T* __restrict__ lam, int64_t in_b, int64_t out_b, int64_t cells, Tiles<I> tiles,
                                  StridedCells<I> map) {
  using A = Arith<T>;
  for (uint64_t t = blockIdx.x; t < tiles.total; t += gridDim.x) {
    int64_t b;
    I first;
    tiles.start(t, b, first);
    const int64_t s = src[b];
    const scalar_t* g_own = go + b * in_b;
    const scalar_t* g_via = go + s * in_b;
    scalar_t* dst = gx + b * out_b;
    const uint8_t* codes = regions + b * cells;
    const uint8_t* codes_s = regions + s * cells;
    const T lam_b = lam[b];
    const T keep_s = A::sub(T(1), lam[s]);
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const I e = first + static_cast<I>(k * kElementThreads);
      if (e < tiles.items) {
        const StridedElement<I> el = locate(map, e);
        const int code = codes[el.cell];
        const int code_s = codes_s[el.cell];
        const bool own_used = code == kBlend || code == kOwn;
        const bool via_used = code_s != kOwn;
        const scalar_t a = own_used ? g_own[el.in] : scalar_t(0);
        const scalar_t g = via_used ? g_via[el.in] : scalar_t(0);
        dst[el.out] =
            grad_of(code == kBlend, code == kOwn, code_s == kBlend, via_used && code_s != kBlend, a, g, lam_b, keep_s);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side.

enum class Layout { kNCHW, kNHWC, kStrided };

Layout dense_layout(const at::Tensor& t) {
  if (t.is_contiguous()) return Layout::kNCHW;
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) return Layout::kNHWC;
  return Layout::kStrided;
}

// The vector path's condition: in and out share a dense layout, both start on a vector boundary, and a sample
// is a whole number of vectors, so every sample (and its partner) starts on one too.
template <typename scalar_t>
bool vectorisable(const at::Tensor& in, const at::Tensor& out, Layout layout, int64_t n) {
  auto aligned = [](const at::Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % kVectorBytes == 0;
  };
  return layout != Layout::kStrided && layout == dense_layout(out) && n % kVector<scalar_t> == 0 && aligned(in) &&
         aligned(out);
}

// Calls f(I{}) with I = uint32_t where a sample fits 32-bit indices, uint64_t where not.
template <typename F>
void with_index_type(bool index32, F&& f) {
  if (index32) {
    f(uint32_t{});
  } else {
    f(uint64_t{});
  }
}

// lam_eff from the caller's lam in float64 (as the reference); the blend with lam in accumulate_type(x).
void blend_cuda(const BlendArgs& args, BlendOutputs& out) {
  const at::Tensor& x = args.x;
  const at::Tensor& mixed = out.mixed;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t gh = args.regions.size(1), gw = args.regions.size(2);
  const int64_t cells = gh * gw;
  lam_eff_kernel<double><<<static_cast<unsigned int>(B), kCountThreads, 0, stream>>>(
      args.regions.const_data_ptr<uint8_t>(), args.lam_label.const_data_ptr<double>(),
      out.lam_eff.mutable_data_ptr<float>(), cells);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t n = C * H * W;  // elements per sample
  if (n == 0) return;
  const Layout layout = dense_layout(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rmix_cuda_blend", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* dst = mixed.mutable_data_ptr<scalar_t>();
    const uint8_t* codes = args.regions.const_data_ptr<uint8_t>();
    const int64_t* perm = args.perm.const_data_ptr<int64_t>();
    const acc_t* lam = args.lam.const_data_ptr<acc_t>();
    if (vectorisable<scalar_t>(x, mixed, layout, n)) {
      with_index_type(fits_index32(n), [&](auto index) {
        using I = decltype(index);
        const Tiles<I> tiles = make_tiles<I>(B, n / kVector<scalar_t>);
        blend_vector_kernel<scalar_t, acc_t, I><<<blocks_of(tiles), kElementThreads, 0, stream>>>(
            in, dst, codes, perm, lam, B, n, cells, tiles, dense_cells<I>(C, H, W, gh, gw, layout == Layout::kNHWC));
      });
    } else {
      with_index_type(fits_index32(std::max({n, max_offset(x), max_offset(mixed)})), [&](auto index) {
        using I = decltype(index);
        const Tiles<I> tiles = make_tiles<I>(B, n);
        blend_strided_kernel<scalar_t, acc_t, I><<<blocks_of(tiles), kElementThreads, 0, stream>>>(
            in, dst, codes, perm, lam, B, x.stride(0), mixed.stride(0), cells, tiles,
            strided_cells<I>(x, mixed, gh, gw));
      });
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void blend_backward_cuda(const BlendBackwardArgs& args, at::Tensor& grad_x) {
  const at::Tensor& go = args.grad_out;
  const c10::cuda::CUDAGuard guard(go.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int64_t B = go.size(0), C = go.size(1), H = go.size(2), W = go.size(3);
  const int64_t gh = args.regions.size(1), gw = args.regions.size(2);
  const int64_t cells = gh * gw;
  const int64_t n = C * H * W;
  if (n == 0) return;

  const at::Tensor src = at::zeros({B}, args.perm.options());
  inverse_perm_kernel<<<static_cast<unsigned int>(ceil_div(B, kElementThreads)), kElementThreads, 0, stream>>>(
      args.perm.const_data_ptr<int64_t>(), src.mutable_data_ptr<int64_t>(), B);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const Layout layout = dense_layout(go);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "rmix_cuda_blend_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = go.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_x.mutable_data_ptr<scalar_t>();
    const uint8_t* codes = args.regions.const_data_ptr<uint8_t>();
    const int64_t* inverse = src.const_data_ptr<int64_t>();
    const acc_t* lam = args.lam.const_data_ptr<acc_t>();
    if (vectorisable<scalar_t>(go, grad_x, layout, n)) {
      with_index_type(fits_index32(n), [&](auto index) {
        using I = decltype(index);
        const Tiles<I> tiles = make_tiles<I>(B, n / kVector<scalar_t>);
        blend_backward_vector_kernel<scalar_t, acc_t, I><<<blocks_of(tiles), kElementThreads, 0, stream>>>(
            in, dst, codes, inverse, lam, n, cells, tiles, dense_cells<I>(C, H, W, gh, gw, layout == Layout::kNHWC));
      });
    } else {
      with_index_type(fits_index32(std::max({n, max_offset(go), max_offset(grad_x)})), [&](auto index) {
        using I = decltype(index);
        const Tiles<I> tiles = make_tiles<I>(B, n);
        blend_backward_strided_kernel<scalar_t, acc_t, I><<<blocks_of(tiles), kElementThreads, 0, stream>>>(
            in, dst, codes, inverse, lam, go.stride(0), grad_x.stride(0), cells, tiles,
            strided_cells<I>(go, grad_x, gh, gw));
      });
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

const BlendRegionsKernels kBlendRegionsKernels{&blend_cuda, &blend_backward_cuda};

TORCH_LIBRARY_IMPL(rmix_fast, CUDA, m) {
  impl_op<blend_regions_forward, blend_regions_backward, kBlendRegionsKernels>(m, "blend_regions");
}

}  // namespace rmix_fast::cuda
