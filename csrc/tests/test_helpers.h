// What the ctest executables share: a check that counts failures, exact tensor comparison, expected
// exceptions, and small hand-made inputs. Each test calls its ops through the dispatcher, exactly as
// Python calls them, and exits 0 when every check passes.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

namespace rmix_fast::test {

inline int failures = 0;

inline void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

inline bool same(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && at::equal(a, b);
}

// `call` throws Error with `fragment` in its message.
template <typename Error>
void expect_error(const std::string& what, const std::string& fragment, const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    check(std::string(e.what()).find(fragment) != std::string::npos, what + " (message: " + fragment + ")");
    return;
  } catch (const std::exception& e) {
    check(false, what + ": wrong exception type: " + e.what());
    return;
  }
  check(false, what + ": no exception");
}

// 2 samples, 1 channel, 2x2 pixels: with grid 2 every pixel is its own cell.
inline at::Tensor images(std::initializer_list<float> a, std::initializer_list<float> b) {
  return at::stack({at::tensor(a).view({1, 2, 2}), at::tensor(b).view({1, 2, 2})});
}

inline at::Tensor bools(std::initializer_list<int> v, at::IntArrayRef shape) {
  return at::tensor(std::vector<int>(v)).to(at::kBool).view(shape);
}

// The op rmix_fast::<name> with the C++ signature Signature.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Runs `checks`, counts an escaping exception as a failure, prints the total; the exit code of main.
inline int run(const std::function<void()>& checks) {
  try {
    checks();
  } catch (const std::exception& e) {
    check(false, std::string("unexpected exception: ") + e.what());
  }
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace rmix_fast::test
