// The schemas of every op (TORCH_LIBRARY). Each op is a pair rmix_fast::<op>_cpp / <op>_cpp_backward whose
// schemas are the op's Python OpSpec.schema / backward_schema (rmix_fast/ops/<op>.py): Python attaches the
// spec's fake kernels and autograd to these ops, so the strings must agree, which
// tests/ops/test_op_contracts.py checks. The wrappers are in <op>.cpp, the kernels in cpu/ and cuda/.
#include "common.h"

#include <torch/library.h>

#include <string>

namespace rmix_fast {

namespace {

void define_op(torch::Library& m, const std::string& op, const std::string& schema,
               const std::string& backward_schema) {
  m.def((op + kOpSuffix + schema).c_str());
  m.def((op + kOpSuffix + "_backward" + backward_schema).c_str());
}

}  // namespace

TORCH_LIBRARY(rmix_fast, m) {
  // The module that registers the fakes and autograd of every op (torch checks the caller's module); torch
  // imports it if they are needed first, and importing it imports the package, so every op registers.
  m.set_python_module("rmix_fast.ops._registry");

  // The blend engine with the caller's codes per cell (0 blend, 1 own, else partner): Mixup, CutMix.
  define_op(m, "blend_regions",
            "(Tensor x, Tensor regions, Tensor perm, Tensor lam, bool validate) -> (Tensor, Tensor)",
            "(Tensor grad_out, Tensor regions, Tensor perm, Tensor lam) -> Tensor");

  // R-Mix: the saliency mask of grad, then the engine on R-Mix's codes.
  define_op(m, "rmix",
            "(Tensor x, Tensor grad, Tensor perm, Tensor lam, Tensor q, int grid, bool validate)"
            " -> (Tensor, Tensor, Tensor)",
            "(Tensor grad_out, Tensor mask, Tensor perm, Tensor lam) -> Tensor");

  // AdAutoMix's blend: per pixel, a mix of N sources whose weights are upsampled (and softmaxed) logits.
  define_op(m, "blend_sources",
            "(Tensor x, Tensor index, Tensor logits, int scale, str mode, str normalize, bool validate) -> Tensor",
            "(Tensor grad_out, Tensor x, Tensor index, Tensor logits, int scale, str mode, str normalize)"
            " -> (Tensor, Tensor)");
  // SAGE: smoothed saliency, the search over the partner's candidate shifts, the soft-mask blend.
  define_op(m, "sage",
            "(Tensor x, Tensor grad, Tensor perm, Tensor lam, Tensor offsets, float sigma, int kernel_size,"
            " bool validate) -> (Tensor, Tensor, Tensor, Tensor)",
            "(Tensor grad_out, Tensor weight, Tensor perm, Tensor shift) -> Tensor");
}

}  // namespace rmix_fast
