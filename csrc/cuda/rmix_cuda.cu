// CUDA kernels of the compiled ops (backend "cpp" on CUDA tensors).
//
// R-Mix forward, five launches on the current stream, no float atomics (bit-identical run to run), no sync:
//   1. cell_saliency_kernel  one block per (sample, cell row, band of rows): reads its band of `grad`
//                            once, s = sqrt(mean_c g^2) per pixel in accumulate_type(grad), and writes the
//                            band's per-cell sums of s in float64, reduced in a fixed order.
//   2. threshold_kernel      one block per sample: sums the band partials in a fixed order, cell mean,
//                            exact q-quantile by rank counting (O(n^2) over n = p*p <= 4096 cells in
//                            shared memory, no sort), torch.lerp's interpolation, and writes the mask.
//   3. regions_kernel        one thread per cell: R-Mix's region code from the masks of b and perm[b].
//   4. lam_eff_kernel        one block per sample: counts blended / own cells (integer), lam_eff.
//   5. blend_kernel          one thread per element of `mixed` (grid-stride): selects or lerps x[b] and
//                            x[perm[b]] as the cell's code says, reading a source only where it is used.
// blend_regions_cpp runs 4-5 on the caller's codes, over any gh x gw grid. Backward of both ops:
// inverse_perm_kernel (src[perm[b]] = b) and blend_backward_kernel (for R-Mix after regions_kernel).
//
// Every tensor is addressed through its own strides. The element walk of the blend kernels follows
// the output's memory format (NCHW or NHWC order), so dense layouts are coalesced.
#include "../rmix.h"

// c10's stream and guard headers, not ATen/cuda/CUDAContext.h: that one also includes the cuBLAS, cuSPARSE and
// cuSOLVER headers, which a bare CUDA toolkit (as on the CPU-only CI machine) lacks; at::cuda::getCurrentCUDAStream
// is this same c10 function.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <limits>

namespace rmix_fast {
namespace {

constexpr int64_t kMaxGrid = 64;                     // the quantile holds p*p cells in shared memory
constexpr int kMaxCells = kMaxGrid * kMaxGrid;       // 4096
constexpr int kSalThreads = 256;                     // threads of a saliency block
constexpr int64_t kSalPixelsPerBlock = 4096;         // target pixels per saliency block
constexpr int kThresholdMaxThreads = 1024;
constexpr int kThresholdItems = kMaxCells / kThresholdMaxThreads;  // cells per thread at most (4)
constexpr int kElementThreads = 256;                 // threads of the element-wise (blend) blocks
constexpr int kCountThreads = 256;                   // threads of the lam_eff blocks
constexpr int64_t kMaxElementBlocks = int64_t{1} << 19;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------------
// Correctly rounded arithmetic without contraction: nvcc would otherwise fuse a*b+c into an FMA,
// while the reference rounds every operation.
template <typename T>
struct Arith;

template <>
struct Arith<float> {
  static __device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
  static __device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
  static __device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
  static __device__ __forceinline__ float div(float a, float b) { return __fdiv_rn(a, b); }
  static __device__ __forceinline__ float sqrt(float a) { return __fsqrt_rn(a); }
};

template <>
struct Arith<double> {
  static __device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
  static __device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
  static __device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
  static __device__ __forceinline__ double div(double a, double b) { return __ddiv_rn(a, b); }
  static __device__ __forceinline__ double sqrt(double a) { return __dsqrt_rn(a); }
};

// torch.lerp's two-sided formula, every operation rounded: exact at weight 0 and 1 and where start == end.
template <typename T>
__device__ __forceinline__ T lerp_rn(T start, T end, T weight) {
  using A = Arith<T>;
  const T diff = A::sub(end, start);
  return weight < T(0.5) ? A::add(start, A::mul(weight, diff)) : A::sub(end, A::mul(diff, A::sub(T(1), weight)));
}

// ---------------------------------------------------------------------------------------------------
// Division by a runtime constant. 32-bit: multiply-high by a precomputed magic number (round-up
// method), exact for dividends < 2^31 and divisors in [1, 2^31). 64-bit: plain division.
template <typename I>
struct Divider;

template <>
struct Divider<uint32_t> {
  uint32_t d;      // divisor
  uint32_t magic;  // ceil(2^(32+shift) / d) - 2^32
  uint32_t shift;  // ceil(log2(d))

  static Divider make(int64_t divisor) {
    TORCH_INTERNAL_ASSERT(divisor >= 1 && divisor <= INT32_MAX, "rmix_cuda: divisor out of range: ", divisor);
    Divider r;
    r.d = static_cast<uint32_t>(divisor);
    r.shift = 0;
    while ((uint64_t{1} << r.shift) < r.d) ++r.shift;
    r.magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << r.shift) - r.d)) / r.d + 1);
    return r;
  }
  __device__ __forceinline__ uint32_t div(uint32_t v) const { return (__umulhi(v, magic) + v) >> shift; }
};

template <>
struct Divider<int64_t> {
  int64_t d;

  static Divider make(int64_t divisor) {
    TORCH_INTERNAL_ASSERT(divisor >= 1, "rmix_cuda: divisor out of range: ", divisor);
    Divider r;
    r.d = divisor;
    return r;
  }
  __device__ __forceinline__ int64_t div(int64_t v) const { return v / d; }
};

struct Strides {
  int64_t b, c, h, w;
};

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// How a flat index over all B*C*H*W elements maps to (b, c, h, w) and the pixel's cell of a gh x gw grid.
// NCHW order: w fastest, then h, c, b. NHWC order: c fastest, then w, h, b.
template <typename I>
struct ElementWalk {
  I total;
  Divider<I> d0, d1, d2;      // the three innermost extents, fastest first
  Divider<I> cell_h, cell_w;  // H / gh and W / gw
  int64_t gw;
  int64_t cells;  // gh * gw: region codes per sample
  bool nhwc;
};

template <typename I>
ElementWalk<I> make_walk(int64_t B, int64_t C, int64_t H, int64_t W, int64_t gh, int64_t gw, bool nhwc) {
  ElementWalk<I> walk;
  walk.total = static_cast<I>(B * C * H * W);
  walk.d0 = Divider<I>::make(nhwc ? C : W);
  walk.d1 = Divider<I>::make(nhwc ? W : H);
  walk.d2 = Divider<I>::make(nhwc ? H : C);
  walk.cell_h = Divider<I>::make(H / gh);
  walk.cell_w = Divider<I>::make(W / gw);
  walk.gw = gw;
  walk.cells = gh * gw;
  walk.nhwc = nhwc;
  return walk;
}

struct Element {
  int64_t b, c, h, w, cell;  // cell: i * gw + j within the sample
};

template <typename I>
__device__ __forceinline__ Element locate(I e, const ElementWalk<I>& walk) {
  const I q0 = walk.d0.div(e);
  const I r0 = e - q0 * walk.d0.d;
  const I q1 = walk.d1.div(q0);
  const I r1 = q0 - q1 * walk.d1.d;
  const I q2 = walk.d2.div(q1);
  const I r2 = q1 - q2 * walk.d2.d;
  const I h = walk.nhwc ? r2 : r1;
  const I w = walk.nhwc ? r1 : r0;
  Element el;
  el.b = static_cast<int64_t>(q2);
  el.c = static_cast<int64_t>(walk.nhwc ? r0 : r2);
  el.h = static_cast<int64_t>(h);
  el.w = static_cast<int64_t>(w);
  el.cell = static_cast<int64_t>(walk.cell_h.div(h)) * walk.gw + static_cast<int64_t>(walk.cell_w.div(w));
  return el;
}

__device__ __forceinline__ int64_t offset_of(const Strides& s, int64_t b, const Element& el) {
  return b * s.b + el.c * s.c + el.h * s.h + el.w * s.w;
}

// ---------------------------------------------------------------------------------------------------
// 1. Per-cell saliency partial sums.
//
// Block `blk` = (b * p + i) * splits + split handles rows [r0, r1) of cell row i of sample b. Threads
// form a (row_lanes x tile_w) tile over the columns; each thread sums s over its column and rows in
// float64, then the tile reduces in a fixed order: down each column (sequential over the row lanes), then
// one warp per cell (strided lane sums, shuffle tree). Writes partials[blk * p + j] for every cell j.
template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kSalThreads)
    cell_saliency_kernel(const scalar_t* __restrict__ grad, double* __restrict__ partials, Strides sg, int64_t C,
                         int64_t W, int64_t p, int64_t ch, int64_t cw, int64_t rows_per_block, int64_t splits,
                         int tile_w) {
  using A = Arith<T>;
  __shared__ double tile[kSalThreads];
  __shared__ double cell_sum[kMaxGrid];

  const int tid = threadIdx.x;
  const int tx = tid % tile_w;
  const int ty = tid / tile_w;
  const int row_lanes = kSalThreads / tile_w;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const int64_t blk = blockIdx.x;
  const int64_t split = blk % splits;
  const int64_t bi = blk / splits;
  const int64_t i = bi % p;
  const int64_t b = bi / p;
  const int64_t r0 = i * ch + split * rows_per_block;
  const int64_t r1 = std::min<int64_t>(r0 + rows_per_block, (i + 1) * ch);
  const scalar_t* g_b = grad + b * sg.b;
  const T channels = static_cast<T>(C);

  if (tid < p) cell_sum[tid] = 0.0;

  for (int64_t w0 = 0; w0 < W; w0 += tile_w) {
    const int64_t w = w0 + tx;
    double acc = 0.0;
    if (w < W) {
      for (int64_t h = r0 + ty; h < r1; h += row_lanes) {
        const scalar_t* px = g_b + h * sg.h + w * sg.w;
        T sq = T(0);
        for (int64_t c = 0; c < C; ++c) {
          const T g = static_cast<T>(px[c * sg.c]);
          sq = A::add(sq, A::mul(g, g));
        }
        acc = __dadd_rn(acc, static_cast<double>(A::sqrt(A::div(sq, channels))));
      }
    }
    tile[tid] = acc;
    __syncthreads();
    if (ty == 0) {  // column totals, in row-lane order; thread tx only touches column tx
      double col = tile[tx];
      for (int k = 1; k < row_lanes; ++k) col = __dadd_rn(col, tile[k * tile_w + tx]);
      tile[tx] = col;
    }
    __syncthreads();
    const int64_t w_end = std::min<int64_t>(w0 + tile_w, W);
    const int64_t j_first = w0 / cw;
    const int64_t j_last = (w_end - 1) / cw;
    // warp-uniform loop: every lane of a warp takes part in the shuffles
    for (int64_t j = j_first + warp; j <= j_last; j += kSalThreads / 32) {
      const int64_t c0 = std::max<int64_t>(j * cw, w0) - w0;
      const int64_t c1 = std::min<int64_t>((j + 1) * cw, w_end) - w0;
      double v = 0.0;
      for (int64_t col = c0 + lane; col < c1; col += 32) v = __dadd_rn(v, tile[col]);
      for (int offset = 16; offset > 0; offset >>= 1) v = __dadd_rn(v, __shfl_down_sync(0xffffffffu, v, offset));
      if (lane == 0) cell_sum[j] = __dadd_rn(cell_sum[j], v);
    }
    __syncthreads();  // cell_sum updated, tile free for the next columns
  }
  if (tid < p) partials[blk * p + tid] = cell_sum[tid];
}

// ---------------------------------------------------------------------------------------------------
// 2. Threshold and mask, one block per sample; blockDim.x * kThresholdItems >= n.

template <typename T>
__device__ __forceinline__ int rank_index(T r, int64_t n) {  // clamp to [0, n-1]; NaN -> 0
  if (!(r > T(0))) return 0;
  if (r >= static_cast<T>(n - 1)) return static_cast<int>(n - 1);
  return static_cast<int>(r);
}

template <typename T>
__global__ void __launch_bounds__(kThresholdMaxThreads)
    threshold_kernel(const double* __restrict__ partials, const T* __restrict__ q, bool* __restrict__ mask, int64_t p,
                     int64_t splits, double area, bool force_all) {
  using A = Arith<T>;
  __shared__ T vals[kMaxCells];
  __shared__ int lo_index;
  __shared__ int hi_index;

  const int64_t n = p * p;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  bool* mask_b = mask + b * n;

  int bad = force_all ? 1 : 0;
  for (int64_t idx = tid; idx < n; idx += blockDim.x) {
    const int64_t i = idx / p;
    const int64_t j = idx % p;
    const double* part = partials + (b * p + i) * splits * p + j;
    double total = 0.0;
    for (int64_t s = 0; s < splits; ++s) total = __dadd_rn(total, part[s * p]);  // fixed order
    const T v = static_cast<T>(__ddiv_rn(total, area));
    vals[idx] = v;
    bad |= isfinite(v) ? 0 : 1;
  }
  if (tid == 0) {
    lo_index = INT_MAX;
    hi_index = INT_MAX;
  }
  if (__syncthreads_or(bad)) {  // block-uniform: no usable saliency, every cell is top
    for (int64_t idx = tid; idx < n; idx += blockDim.x) mask_b[idx] = true;
    return;
  }

  // torch.quantile, linear: rank = q*(n-1) in T; lerp(v[floor(rank)], v[ceil(rank)], rank - floor(rank))
  const T rank = A::mul(q[b], static_cast<T>(n - 1));
  const T below = floor(rank);
  const T weight = A::sub(rank, below);
  const int k_lo = rank_index(below, n);
  const int k_hi = rank_index(ceil(rank), n);

  // Order statistics by counting: v_i is the k-th smallest iff #{v < v_i} <= k < #{v <= v_i}.
  T mine[kThresholdItems];
  int less[kThresholdItems];
  int less_eq[kThresholdItems];
#pragma unroll
  for (int r = 0; r < kThresholdItems; ++r) {
    const int64_t idx = tid + static_cast<int64_t>(r) * blockDim.x;
    mine[r] = idx < n ? vals[idx] : T(0);
    less[r] = 0;
    less_eq[r] = 0;
  }
  for (int64_t j = 0; j < n; ++j) {
    const T v = vals[j];  // the same address for the whole block: a broadcast
#pragma unroll
    for (int r = 0; r < kThresholdItems; ++r) {
      less[r] += v < mine[r] ? 1 : 0;
      less_eq[r] += v <= mine[r] ? 1 : 0;
    }
  }
#pragma unroll
  for (int r = 0; r < kThresholdItems; ++r) {
    const int64_t idx = tid + static_cast<int64_t>(r) * blockDim.x;
    if (idx < n) {
      if (less[r] <= k_lo && k_lo < less_eq[r]) atomicMin(&lo_index, static_cast<int>(idx));
      if (less[r] <= k_hi && k_hi < less_eq[r]) atomicMin(&hi_index, static_cast<int>(idx));
    }
  }
  __syncthreads();
  const T t = lerp_rn(vals[lo_index], vals[hi_index], weight);
  for (int64_t idx = tid; idx < n; idx += blockDim.x) mask_b[idx] = vals[idx] >= t;
}

// ---------------------------------------------------------------------------------------------------
// 3. R-Mix's region codes from the top mask, one thread per cell (grid-stride).
__global__ void __launch_bounds__(kElementThreads)
    regions_kernel(const bool* __restrict__ mask, const int64_t* __restrict__ perm, uint8_t* __restrict__ regions,
                   int64_t n, int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int64_t b = idx / n;
    regions[idx] = region_of(mask[idx], mask[perm[b] * n + (idx - b * n)]);
  }
}

// ---------------------------------------------------------------------------------------------------
// 4. lam_eff[b] = (n_blend * lam[b] + n_own) / n in float64, rounded to float32. One block per sample.
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
// 5. Blend. Copies are selects of the stored value (bit-exact, never multiplied); blends are
// lerp(x[perm[b]], x[b], lam[b]) in T, rounded to nearest into scalar_t. Codes other than kBlend and
// kOwn take the partner.
template <typename scalar_t, typename T, typename I>
__global__ void __launch_bounds__(kElementThreads)
    blend_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, const uint8_t* __restrict__ regions,
                 const int64_t* __restrict__ perm, const T* __restrict__ lam, Strides sx, Strides so,
                 ElementWalk<I> walk) {
  const I step = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
  for (I e = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x); e < walk.total;
       e += step) {
    const Element el = locate(e, walk);
    const int code = regions[el.b * walk.cells + el.cell];
    const int64_t in_off = offset_of(sx, 0, el);
    const scalar_t* own = x + el.b * sx.b + in_off;
    const scalar_t* partner = x + perm[el.b] * sx.b + in_off;
    scalar_t result;
    if (code == kBlend) {
      result = static_cast<scalar_t>(lerp_rn(static_cast<T>(*partner), static_cast<T>(*own), lam[el.b]));
    } else {
      result = code == kOwn ? *own : *partner;
    }
    out[offset_of(so, el.b, el)] = result;
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward.
__global__ void inverse_perm_kernel(const int64_t* __restrict__ perm, int64_t* __restrict__ src, int64_t B) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < B) {
    const int64_t target = perm[b];
    if (target >= 0 && target < B) src[target] = b;
  }
}

// grad_x[b] = own share of grad_out[b] + partner share of grad_out[s], where perm[s] == b. A zero share is
// skipped, never multiplied (0 * inf).
template <typename scalar_t, typename T, typename I>
__global__ void __launch_bounds__(kElementThreads)
    blend_backward_kernel(const scalar_t* __restrict__ go, scalar_t* __restrict__ gx,
                          const uint8_t* __restrict__ regions, const int64_t* __restrict__ src,
                          const T* __restrict__ lam, Strides sg, Strides so, ElementWalk<I> walk) {
  using A = Arith<T>;
  const I step = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
  for (I e = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x); e < walk.total;
       e += step) {
    const Element el = locate(e, walk);
    const int64_t s = src[el.b];
    const int code = regions[el.b * walk.cells + el.cell];
    const int code_s = regions[s * walk.cells + el.cell];
    const int64_t in_off = offset_of(sg, 0, el);
    T own = T(0);
    if (code == kBlend) {
      own = A::mul(lam[el.b], static_cast<T>(go[el.b * sg.b + in_off]));
    } else if (code == kOwn) {
      own = static_cast<T>(go[el.b * sg.b + in_off]);
    }
    T via = T(0);
    if (code_s == kBlend) {
      via = A::mul(A::sub(T(1), lam[s]), static_cast<T>(go[s * sg.b + in_off]));
    } else if (code_s != kOwn) {  // s takes its partner, b
      via = static_cast<T>(go[s * sg.b + in_off]);
    }
    gx[offset_of(so, el.b, el)] = static_cast<scalar_t>(A::add(own, via));
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side.

// NHWC walk when the output is dense channels_last (and not also plain contiguous), else NCHW.
bool nhwc_order(const at::Tensor& out) {
  return !out.is_contiguous() && out.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// One element per thread up to kMaxElementBlocks blocks; beyond, the threads stride over the rest.
int64_t element_blocks(int64_t total) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(total, kElementThreads), kMaxElementBlocks));
}

bool fits_32bit(int64_t total) { return total <= std::numeric_limits<int32_t>::max(); }

// R-Mix steps 1-2 (cell saliency partial sums) and 3 (threshold and mask; q is in accumulate_type(grad)).
void mask_cuda(const at::Tensor& grad, const at::Tensor& q, int64_t grid, at::Tensor& mask) {
  TORCH_CHECK_VALUE(grid <= kMaxGrid, "backend 'cpp' on CUDA supports grid <= ", kMaxGrid, ", got grid=", grid,
                    "; use 'reference'");
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int64_t B = grad.size(0), C = grad.size(1), H = grad.size(2), W = grad.size(3);
  const int64_t p = grid;
  const int64_t n = p * p;
  const int64_t ch = H / p, cw = W / p;
  TORCH_INTERNAL_ASSERT(B >= 1 && n <= kMaxCells);

  const bool empty = C == 0 || H == 0 || W == 0;  // no saliency at all: every cell is top
  int tile_w = 32;
  while (tile_w < W && tile_w < kSalThreads) tile_w *= 2;
  const int row_lanes = kSalThreads / tile_w;
  int64_t rows_per_block = 1, splits = 0;
  if (!empty) {
    rows_per_block = std::min<int64_t>(ch, std::max<int64_t>(row_lanes, kSalPixelsPerBlock / W));
    splits = ceil_div(ch, rows_per_block);
  }
  const at::Tensor partials =
      at::empty({B, p, std::max<int64_t>(splits, 1), p}, grad.options().dtype(at::kDouble));
  if (!empty) {
    const int64_t blocks = B * p * splits;
    TORCH_CHECK(blocks <= INT32_MAX, "rmix_cuda: too many saliency blocks (", blocks, ")");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rmix_cuda_saliency", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      cell_saliency_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(blocks), kSalThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), partials.mutable_data_ptr<double>(), strides_of(grad), C, W, p, ch, cw,
          rows_per_block, splits, tile_w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  const int threads = static_cast<int>(std::min<int64_t>(kThresholdMaxThreads, ceil_div(n, 32) * 32));
  TORCH_INTERNAL_ASSERT(static_cast<int64_t>(threads) * kThresholdItems >= n);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "rmix_cuda_threshold", [&] {
    threshold_kernel<scalar_t><<<static_cast<unsigned int>(B), threads, 0, stream>>>(
        partials.const_data_ptr<double>(), q.const_data_ptr<scalar_t>(), mask.mutable_data_ptr<bool>(), p, splits,
        static_cast<double>(ch * cw), empty);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void regions_from_mask_cuda(const at::Tensor& mask, const at::Tensor& perm, at::Tensor& regions) {
  const c10::cuda::CUDAGuard guard(mask.device());
  const int64_t n = mask.size(1) * mask.size(2);
  const int64_t total = mask.size(0) * n;
  regions_kernel<<<static_cast<unsigned int>(element_blocks(total)), kElementThreads, 0,
                   c10::cuda::getCurrentCUDAStream()>>>(mask.const_data_ptr<bool>(), perm.const_data_ptr<int64_t>(),
                                                        regions.mutable_data_ptr<uint8_t>(), n, total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// lam_eff from the caller's lam in float64 (as the reference); the blend with lam in accumulate_type(x).
void blend_cuda(const BlendArgs& args, BlendOutputs& out) {
  const at::Tensor& x = args.x;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t gh = args.regions.size(1), gw = args.regions.size(2);
  lam_eff_kernel<double><<<static_cast<unsigned int>(B), kCountThreads, 0, stream>>>(
      args.regions.const_data_ptr<uint8_t>(), args.lam_label.const_data_ptr<double>(),
      out.lam_eff.mutable_data_ptr<float>(), gh * gw);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t total = B * C * H * W;
  if (total == 0) return;
  const bool nhwc = nhwc_order(out.mixed);
  const auto blocks = static_cast<unsigned int>(element_blocks(total));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rmix_cuda_blend", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (fits_32bit(total)) {
      blend_kernel<scalar_t, acc_t, uint32_t><<<blocks, kElementThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mixed.mutable_data_ptr<scalar_t>(), args.regions.const_data_ptr<uint8_t>(),
          args.perm.const_data_ptr<int64_t>(), args.lam.const_data_ptr<acc_t>(), strides_of(x),
          strides_of(out.mixed), make_walk<uint32_t>(B, C, H, W, gh, gw, nhwc));
    } else {
      blend_kernel<scalar_t, acc_t, int64_t><<<blocks, kElementThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mixed.mutable_data_ptr<scalar_t>(), args.regions.const_data_ptr<uint8_t>(),
          args.perm.const_data_ptr<int64_t>(), args.lam.const_data_ptr<acc_t>(), strides_of(x),
          strides_of(out.mixed), make_walk<int64_t>(B, C, H, W, gh, gw, nhwc));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void blend_backward_cuda(const BackwardArgs& args, at::Tensor& grad_x) {
  const at::Tensor& go = args.grad_out;
  const c10::cuda::CUDAGuard guard(go.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int64_t B = go.size(0), C = go.size(1), H = go.size(2), W = go.size(3);
  const int64_t gh = args.regions.size(1), gw = args.regions.size(2);
  const int64_t total = B * C * H * W;
  if (total == 0) return;

  const at::Tensor src = at::empty({B}, args.perm.options());
  inverse_perm_kernel<<<static_cast<unsigned int>(ceil_div(B, kElementThreads)), kElementThreads, 0, stream>>>(
      args.perm.const_data_ptr<int64_t>(), src.mutable_data_ptr<int64_t>(), B);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const bool nhwc = nhwc_order(grad_x);
  const auto blocks = static_cast<unsigned int>(element_blocks(total));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "rmix_cuda_blend_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (fits_32bit(total)) {
      blend_backward_kernel<scalar_t, acc_t, uint32_t><<<blocks, kElementThreads, 0, stream>>>(
          go.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), args.regions.const_data_ptr<uint8_t>(),
          src.const_data_ptr<int64_t>(), args.lam.const_data_ptr<acc_t>(), strides_of(go), strides_of(grad_x),
          make_walk<uint32_t>(B, C, H, W, gh, gw, nhwc));
    } else {
      blend_backward_kernel<scalar_t, acc_t, int64_t><<<blocks, kElementThreads, 0, stream>>>(
          go.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), args.regions.const_data_ptr<uint8_t>(),
          src.const_data_ptr<int64_t>(), args.lam.const_data_ptr<acc_t>(), strides_of(go), strides_of(grad_x),
          make_walk<int64_t>(B, C, H, W, gh, gw, nhwc));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

constexpr DeviceKernels kCudaKernels{&mask_cuda, &regions_from_mask_cuda, &blend_cuda, &blend_backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(rmix_fast, CUDA, m) { register_kernels<kCudaKernels>(m); }

}  // namespace rmix_fast
