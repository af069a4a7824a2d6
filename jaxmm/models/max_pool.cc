// Max pooling for jaxmm's ResNets on CPU, as XLA FFI custom calls (fast_backward.py).
//
// Two handlers, float32 NHWC, square windows; attributes window, stride, pad_lo, pad_hi (the
// same on both spatial axes; padding holds -inf):
//   jaxmm_max_pool          (x)     -> y [N, Oh, Ow, C]: the max of each window
//   jaxmm_max_pool_scatter  (g, x)  -> dx [N, H, W, C]: each window's g added at its first
//                                      maximum (row-major window order), the transpose of
//                                      fast_backward's _gather_first_max
// As in fast_backward's XLA version, padding positions count in the order (they hold the max
// of a window of -inf values: its gradient is dropped), and a window holding NaN has the
// maximum NaN and no position equal to it: its gradient goes to its last position.
// Rows (pool) or images (scatter) are split across the OpenMP threads; the loops over channels
// are vectorised (-fopenmp-simd). Both hold their jaxmm::CallTurn (the
// library's lock) while they run.
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxmm {
// onednn_conv.cc: the library's calls run one at a time.
std::unique_lock<std::mutex> CallTurn(bool exclusive);
}  // namespace jaxmm

// One clone of the marked loops per instruction set, picked when the library loads (where the
// compiler can: GCC, or clang 14 and later, on x86-64).
#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 14 : __GNUC__ >= 6)
#define JAXMM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JAXMM_CLONES
#endif

namespace {

struct Window {
  int64_t n, h, w, c, oh, ow, size, stride, pad;
};

// max(acc, v), NaN if either is (as XLA's max).
inline float NanMax(float acc, float v) { return (v > acc || v != v) ? v : acc; }

// Calls visit(position, offset) for the positions of window (p, q) inside the image, in window
// order: position a * size + b, offset (i * W + k) * C of its row of channels in the image.
template <typename Visit>
inline __attribute__((always_inline)) void ForEachInWindow(const Window& s, int64_t p,
                                                           int64_t q, Visit&& visit) {
  for (int64_t a = 0; a < s.size; ++a) {
    const int64_t i = p * s.stride + a - s.pad;
    if (i < 0 || i >= s.h) continue;
    for (int64_t b = 0; b < s.size; ++b) {
      const int64_t k = q * s.stride + b - s.pad;
      if (k < 0 || k >= s.w) continue;
      visit(static_cast<int32_t>(a * s.size + b), (i * s.w + k) * s.c);
    }
  }
}

constexpr float kLowest = -std::numeric_limits<float>::infinity();

// y[p, q, :] of one image for output row p: the max over the window's positions in range.
JAXMM_CLONES void PoolRow(
    const Window& s, const float* __restrict x, float* __restrict y, int64_t p) {
  const int64_t c = s.c;
  for (int64_t q = 0; q < s.ow; ++q) {
    float* __restrict out = y + (p * s.ow + q) * c;
    for (int64_t j = 0; j < c; ++j) out[j] = kLowest;
    ForEachInWindow(s, p, q, [&](int32_t, int64_t offset) __attribute__((always_inline)) {
      const float* __restrict in = x + offset;
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) out[j] = NanMax(out[j], in[j]);
    });
  }
}

// dx of one image (zeroed here): each window's g at its first maximum. Per window, one pass
// finds the first maximum's position per channel (arg), a second adds g there; positions in
// padding are never above the others and take no gradient.
JAXMM_CLONES void ScatterImage(
    const Window& s, const float* __restrict g, const float* __restrict x,
    float* __restrict dx, float* __restrict y, float* __restrict best,
    int32_t* __restrict arg) {
  const int64_t c = s.c;
  const int32_t last = static_cast<int32_t>(s.size * s.size - 1);
  std::memset(dx, 0, sizeof(float) * s.h * s.w * c);
  for (int64_t p = 0; p < s.oh; ++p) {
    for (int64_t q = 0; q < s.ow; ++q) {
      const float* __restrict gq = g + (p * s.ow + q) * c;
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) {
        y[j] = best[j] = kLowest;
        arg[j] = -1;
      }
      ForEachInWindow(s, p, q, [&](int32_t position, int64_t offset)
                                   __attribute__((always_inline)) {
        const float* __restrict in = x + offset;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) {
          y[j] = NanMax(y[j], in[j]);
          const bool above = in[j] > best[j];  // strictly: the first maximum stays
          best[j] = above ? in[j] : best[j];
          arg[j] = above ? position : arg[j];
        }
      });
      // No value above -inf: every position (padding too) equals the max, the first is it.
      // A NaN max equals no position: the last one.
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) arg[j] = y[j] != y[j] ? last : (arg[j] < 0 ? 0 : arg[j]);
      ForEachInWindow(s, p, q, [&](int32_t position, int64_t offset)
                                   __attribute__((always_inline)) {
        float* __restrict d = dx + offset;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) d[j] += arg[j] == position ? gq[j] : 0.0f;
      });
    }
  }
}

ffi::Error Invalid(const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxmm max pool: " + what);
}

// The geometry of x [N, H, W, C] pooled into y [N, Oh, Ow, C], or an error.
ffi::Error MakeWindow(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y, int64_t size,
                      int64_t stride, int64_t pad_lo, int64_t pad_hi, Window& s) {
  if (x.size() != 4 || y.size() != 4 || x[0] != y[0] || x[3] != y[3])
    return Invalid("x and y must be [N, H, W, C] and [N, Oh, Ow, C]");
  if (size < 1 || stride < 1 || pad_lo < 0 || pad_hi < 0 || pad_lo >= size)
    return Invalid("window, stride and padding must be positive, padding below the window");
  s = {x[0], x[1], x[2], x[3], y[1], y[2], size, stride, pad_lo};
  if (s.oh != (s.h + pad_lo + pad_hi - size) / stride + 1 ||
      s.ow != (s.w + pad_lo + pad_hi - size) / stride + 1)
    return Invalid("the output's height and width do not match the window");
  return ffi::Error::Success();
}

ffi::Error PoolImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t window,
                    int64_t stride, int64_t pad_lo, int64_t pad_hi) {
  Window s;
  if (auto err = MakeWindow(x.dimensions(), y->dimensions(), window, stride, pad_lo, pad_hi, s);
      err.failure())
    return err;
  const auto turn = jaxmm::CallTurn(true);
  const float* in = x.typed_data();
  float* out = y->typed_data();
  const int64_t rows = s.n * s.oh;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (rows * s.ow * s.c > (1 << 16))
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t image = r / s.oh;
    PoolRow(s, in + image * s.h * s.w * s.c, out + image * s.oh * s.ow * s.c, r % s.oh);
  }
  return ffi::Error::Success();
}

ffi::Error ScatterImpl(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                       ffi::ResultBuffer<ffi::F32> dx, int64_t window, int64_t stride,
                       int64_t pad_lo, int64_t pad_hi) {
  Window s;
  if (auto err = MakeWindow(x.dimensions(), g.dimensions(), window, stride, pad_lo, pad_hi, s);
      err.failure())
    return err;
  if (dx->element_count() != x.element_count()) return Invalid("dx must have x's shape");
  const auto turn = jaxmm::CallTurn(true);
  const float* gd = g.typed_data();
  const float* xd = x.typed_data();
  float* out = dx->typed_data();
#ifdef _OPENMP
#pragma omp parallel if (s.n > 1 && s.h * s.w * s.c > (1 << 14))
#endif
  {
    std::vector<float> y(s.c), best(s.c);
    std::vector<int32_t> arg(s.c);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t image = 0; image < s.n; ++image) {
      ScatterImage(s, gd + image * s.oh * s.ow * s.c, xd + image * s.h * s.w * s.c,
                   out + image * s.h * s.w * s.c, y.data(), best.data(), arg.data());
    }
  }
  return ffi::Error::Success();
}

}  // namespace

#define JAXMM_POOL_ATTRS                                                              \
  .Attr<int64_t>("window").Attr<int64_t>("stride").Attr<int64_t>("pad_lo")             \
      .Attr<int64_t>("pad_hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmmMaxPool, PoolImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXMM_POOL_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmmMaxPoolScatter, ScatterImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXMM_POOL_ATTRS);
