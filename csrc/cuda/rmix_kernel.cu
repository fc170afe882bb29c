// CUDA kernels of R-Mix's steps 1-3, launched on the current stream, no float atomics (bit-identical run to
// run), no sync:
//   1. cell_saliency_kernel  one block per (sample, cell row, band of rows): reads its band of `grad`
//                            once, s = sqrt(mean_c g^2) per pixel in accumulate_type(grad), and writes the
//                            band's per-cell sums of s in float64, reduced in a fixed order.
//   2. threshold_kernel      one block per sample: sums the band partials in a fixed order, cell mean,
//                            exact q-quantile by rank counting (O(n^2) over n = p*p <= 4096 cells in
//                            shared memory, no sort), torch.lerp's interpolation, and writes the mask.
//   3. regions_kernel        one thread per cell: R-Mix's region code from the masks of b and perm[b].
// Steps 4-5 (lam_eff, blend) and the backward are the engine's (cuda/blend_regions_kernel.cu).
#include "cuda/kernel_utils.cuh"
#include "rmix.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>

namespace rmix_fast::cuda {
namespace {

constexpr int64_t kMaxGrid = 64;                // the quantile holds p*p cells in shared memory
constexpr int kMaxCells = kMaxGrid * kMaxGrid;  // 4096
constexpr int kSalThreads = 256;                // threads of a saliency block
constexpr int64_t kSalPixelsPerBlock = 4096;    // target pixels per saliency block
constexpr int kThresholdMaxThreads = 1024;
constexpr int kThresholdItems = kMaxCells / kThresholdMaxThreads;  // cells per thread at most (4)

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
  const int64_t batch = total / n;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int64_t b = idx / n;
    regions[idx] = region_of(mask[idx], mask[partner_index(perm, b, batch) * n + (idx - b * n)]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side.

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
  const at::Tensor partials = at::empty({B, p, std::max<int64_t>(splits, 1), p}, grad.options().dtype(at::kDouble));
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

constexpr RmixKernels kRmixKernels{&mask_cuda, &regions_from_mask_cuda, kBlendRegionsKernels};

}  // namespace

TORCH_LIBRARY_IMPL(rmix_fast, CUDA, m) { impl_op<rmix_forward, rmix_backward, kRmixKernels>(m, "rmix"); }

}  // namespace rmix_fast::cuda
