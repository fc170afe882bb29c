// CUDA kernels of the blend engine, launched on the current stream, no float atomics (bit-identical run to
// run), no sync:
//   lam_eff_kernel         one block per sample: counts blended / own cells (integer), lam_eff.
//   blend_kernel           one thread per element of `mixed` (grid-stride): selects or lerps x[b] and
//                          x[perm[b]] as the cell's code says, reading a source only where it is used.
//   inverse_perm_kernel    backward: src[perm[b]] = b.
//   blend_backward_kernel  backward: one thread per element of grad_x, its own and its partner's share.
// R-Mix runs the same two launches after its mask and codes (cuda/rmix_kernel.cu), over a p x p grid;
// blend_regions_cpp over the caller's gh x gw grid.
//
// Every tensor is addressed through its own strides. The element walk follows the output's memory format
// (NCHW or NHWC order), so dense layouts are coalesced.
#include "blend_regions.h"
#include "cuda/kernel_utils.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <limits>

namespace rmix_fast::cuda {
namespace {

constexpr int kCountThreads = 256;  // threads of the lam_eff blocks

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
// Blend. Copies are selects of the stored value (bit-exact, never multiplied); blends are
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

bool fits_32bit(int64_t total) { return total <= std::numeric_limits<int32_t>::max(); }

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
          args.perm.const_data_ptr<int64_t>(), args.lam.const_data_ptr<acc_t>(), strides_of(x), strides_of(out.mixed),
          make_walk<uint32_t>(B, C, H, W, gh, gw, nhwc));
    } else {
      blend_kernel<scalar_t, acc_t, int64_t><<<blocks, kElementThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mixed.mutable_data_ptr<scalar_t>(), args.regions.const_data_ptr<uint8_t>(),
          args.perm.const_data_ptr<int64_t>(), args.lam.const_data_ptr<acc_t>(), strides_of(x), strides_of(out.mixed),
          make_walk<int64_t>(B, C, H, W, gh, gw, nhwc));
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

}  // namespace

const BlendRegionsKernels kBlendRegionsKernels{&blend_cuda, &blend_backward_cuda};

TORCH_LIBRARY_IMPL(rmix_fast, CUDA, m) {
  impl_op<blend_regions_forward, blend_regions_backward, kBlendRegionsKernels>(m, "blend_regions");
}

}  // namespace rmix_fast::cuda
