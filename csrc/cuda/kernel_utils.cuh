// What the CUDA kernel files share: launch sizes of element-wise kernels, correctly rounded arithmetic,
// torch.lerp's formula, and the engine's CUDA kernels for the ops that end in the engine.
#pragma once

#include "blend_regions.h"

// c10's stream and guard headers, not ATen/cuda/CUDAContext.h: that one also includes the cuBLAS, cuSPARSE and
// cuSOLVER headers, which a bare CUDA toolkit (as on the CPU-only CI machine) lacks; at::cuda::getCurrentCUDAStream
// is this same c10 function.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace rmix_fast::cuda {

constexpr int kElementThreads = 256;  // threads of the element-wise blocks (blend, region codes)
constexpr int64_t kMaxElementBlocks = int64_t{1} << 19;

// A 4-D tensor's strides, passed to kernels by value.
struct Strides {
  int64_t b, c, h, w;
};

inline Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One element per thread up to kMaxElementBlocks blocks; beyond, the threads stride over the rest.
inline int64_t element_blocks(int64_t total) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(total, kElementThreads), kMaxElementBlocks));
}

// The partner of sample b. A perm that is no permutation gets here only with validate=False; an entry outside
// [0, B) then stands for the sample itself rather than reading out of bounds (a device-side error would cost a
// sync).
__device__ __forceinline__ int64_t partner_index(const int64_t* perm, int64_t b, int64_t batch) {
  const int64_t p = perm[b];
  return p >= 0 && p < batch ? p : b;
}

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

// Defined in cuda/blend_regions_kernel.cu.
extern const BlendRegionsKernels kBlendRegionsKernels;

}  // namespace rmix_fast::cuda
