// The CUDA built-ins that csrc/cuda/blend_regions_kernel.cu uses, for a host build of its kernels
// (tests/helpers/cuda_emulation/__init__.py): a launch runs every block's threads one after another. That
// is exact for kernels whose threads do not talk to each other (the blend and its backward); the barriers
// of lam_eff_kernel are stubs, so its output is not checked.
#pragma once

#include <c10/core/Device.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 blockIdx, threadIdx, gridDim, blockDim;

using cudaStream_t = void*;

inline uint32_t __umulhi(uint32_t a, uint32_t b) { return static_cast<uint32_t>((uint64_t{a} * b) >> 32); }
inline uint64_t __umul64hi(uint64_t a, uint64_t b) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
}
// Built with -ffp-contract=off: each operation rounds on its own, as the intrinsics do on the device.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline int __syncthreads_count(int predicate) { return predicate; }  // a stub: no barrier between host threads

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace c10::cuda
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)

// What the harness reads back: the kernels launched, and whether to take the 64-bit index path everywhere.
inline std::vector<std::string> emulated_launches;
inline bool emulate_force_index64 = false;

// kernel<<<grid, block, shmem, stream>>>(args...) becomes emulate_launch(grid, block, shmem, stream)("kernel", &kernel,
// args...).
struct EmulatedLaunch {
  dim3 grid, block;
  template <typename Kernel, typename... Args>
  void operator()(const char* name, Kernel kernel, Args... args) const {
    emulated_launches.emplace_back(name);
    gridDim = grid;
    blockDim = block;
    for (unsigned b = 0; b < grid.x; ++b) {
      for (unsigned t = 0; t < block.x; ++t) {
        blockIdx = dim3(b);
        threadIdx = dim3(t);
        kernel(args...);
      }
    }
  }
};
inline EmulatedLaunch emulate_launch(dim3 grid, dim3 block, size_t = 0, cudaStream_t = nullptr) {
  return {grid, block};
}
