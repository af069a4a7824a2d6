// Batch-norm reductions for jaxmm's ResNets on CPU, as XLA FFI custom calls (batch_norm.py).
//
// Two handlers, float32, activations of any rank with the channels last: C channels, M rows
// (M = size / C):
//   jaxmm_bn_moments    (x)                       -> [2, C]: mean, biased variance
//   jaxmm_bn_grad_sums  (g, x, mean, inv, a, b)   -> [2, C]: sum g', sum g' (x - mean) inv
// where g' = g, or with the attribute relu = 1, g' = g where (x - mean) a + b > 0 and 0
// elsewhere (the ReLU after the normalisation y = (x - mean) a + b, b the bias, its mask
// recomputed from x rather than stored). Each reads the activations once, rows split across
// the OpenMP threads; sums of x - k (k the first row of x for the moments, the mean for the
// gradient sums) run in float over blocks of kBlock rows, then go into double sums. Both hold
// their jaxmm::CallTurn (the library's lock) while they run. The library is built with
// -ffp-contract=off, so (x - mean) a + b rounds as XLA's fusion that applies the ReLU rounds
// it, and -fopenmp-simd, so the loops marked `omp simd` are vectorised.
#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxmm {
// onednn_conv.cc: the library's calls run one at a time.
std::unique_lock<std::mutex> CallTurn(bool exclusive);
}  // namespace jaxmm

namespace {

constexpr int64_t kBlock = 64;              // rows summed in float before the double sums
constexpr int64_t kParallel = int64_t{1} << 16;  // fewer elements than this: one thread

// Adds the column sums over rows [begin, end) into s1 and s2 (C columns each), with d = x - k
// (the shift k [C] keeps a mean far from zero from cancelling the variance out of the sums):
//   moments (kSquares): of d and of d^2, k x's first row;
//   gradient sums: of g' and of g' d, k the mean, so that d a + b is the normalisation y.
template <bool kSquares, bool kRelu>
inline __attribute__((always_inline)) void SumRows(
    const float* __restrict g, const float* __restrict x, const float* __restrict k,
    const float* __restrict a, const float* __restrict b, int64_t begin, int64_t end,
    int64_t c, double* __restrict s1, double* __restrict s2, float* __restrict f1,
    float* __restrict f2) {
  for (int64_t r0 = begin; r0 < end; r0 += kBlock) {
    const int64_t r1 = std::min(end, r0 + kBlock);
    std::fill(f1, f1 + c, 0.0f);
    std::fill(f2, f2 + c, 0.0f);
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict xr = x + r * c;
      if (kSquares) {
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) {
          const float d = xr[j] - k[j];
          f1[j] += d;
          f2[j] += d * d;
        }
      } else {
        const float* __restrict gr = g + r * c;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) {
          const float d = xr[j] - k[j];
          const float gj = (!kRelu || d * a[j] + b[j] > 0.0f) ? gr[j] : 0.0f;
          f1[j] += gj;
          f2[j] += gj * d;
        }
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      s1[j] += f1[j];
      s2[j] += f2[j];
    }
  }
}

// One clone of the marked loops per instruction set, picked when the library loads (where the
// compiler can: GCC, or clang 14 and later, on x86-64).
#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 14 : __GNUC__ >= 6)
#define JAXMM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JAXMM_CLONES
#endif

#define JAXMM_SUM_ROWS(name, squares, relu)                                                 \
  JAXMM_CLONES void name(                                                                   \
      const float* g, const float* x, const float* k, const float* a, const float* b,       \
      int64_t begin, int64_t end, int64_t c, double* s1, double* s2, float* f1,             \
      float* f2) {                                                                          \
    SumRows<squares, relu>(g, x, k, a, b, begin, end, c, s1, s2, f1, f2);                   \
  }
JAXMM_SUM_ROWS(MomentRows, true, false)
JAXMM_SUM_ROWS(GradRows, false, false)
JAXMM_SUM_ROWS(GradReluRows, false, true)

using RowsFn = void (*)(const float*, const float*, const float*, const float*, const float*,
                        int64_t, int64_t, int64_t, double*, double*, float*, float*);

// The column sums s1, s2 [C] (double) of all M rows, the rows split across threads.
void ColumnSums(RowsFn rows, const float* g, const float* x, const float* k, const float* a,
                const float* b, int64_t m, int64_t c, std::vector<double>& s1,
                std::vector<double>& s2) {
  s1.assign(c, 0.0);
  s2.assign(c, 0.0);
  int threads = 1;
#ifdef _OPENMP
  if (m * c >= kParallel) threads = std::max(1, std::min<int>(omp_get_max_threads(), m / kBlock));
#endif
  std::vector<double> partial(2 * c * threads, 0.0);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
  {
    int t = 0, n = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    n = omp_get_num_threads();
#endif
    std::vector<float> f(2 * c);
    const int64_t begin = m * t / n, end = m * (t + 1) / n;
    rows(g, x, k, a, b, begin, end, c, &partial[2 * c * t], &partial[2 * c * t + c], f.data(),
         f.data() + c);
  }
  for (int t = 0; t < threads; ++t) {
    for (int64_t j = 0; j < c; ++j) {
      s1[j] += partial[2 * c * t + j];
      s2[j] += partial[2 * c * t + c + j];
    }
  }
}

// M and C of an activation buffer (channels last); false if it has no channels axis.
bool RowsColumns(ffi::Span<const int64_t> dims, int64_t& m, int64_t& c) {
  if (dims.size() == 0 || dims.back() <= 0) return false;
  c = dims.back();
  m = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) m *= dims[i];
  return true;
}

ffi::Error Invalid(const char* what) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string("jaxmm batch norm: ") + what);
}

ffi::Error MomentsImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> out) {
  int64_t m, c;
  if (!RowsColumns(x.dimensions(), m, c) || out->element_count() != 2 * c)
    return Invalid("moments: x must be [..., C] and the result [2, C]");
  if (m == 0) return Invalid("moments of an empty batch");
  const auto turn = jaxmm::CallTurn(true);
  std::vector<double> s1, s2;
  const float* k = x.typed_data();  // the shift: x's first row
  ColumnSums(MomentRows, nullptr, x.typed_data(), k, nullptr, nullptr, m, c, s1, s2);
  float* o = out->typed_data();
  for (int64_t j = 0; j < c; ++j) {
    const double shifted_mean = s1[j] / m;
    o[j] = static_cast<float>(k[j] + shifted_mean);
    o[c + j] = static_cast<float>(std::max(s2[j] / m - shifted_mean * shifted_mean, 0.0));
  }
  return ffi::Error::Success();
}

ffi::Error GradSumsImpl(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> inv,
                        ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                        ffi::ResultBuffer<ffi::F32> out, int64_t relu) {
  int64_t m, c;
  if (!RowsColumns(x.dimensions(), m, c) || g.element_count() != x.element_count() ||
      mean.element_count() != c || inv.element_count() != c || a.element_count() != c ||
      b.element_count() != c || out->element_count() != 2 * c)
    return Invalid("gradient sums: g and x must be [..., C], mean, inv, a and b [C], the "
                   "result [2, C]");
  const auto turn = jaxmm::CallTurn(true);
  std::vector<double> s1, s2;
  ColumnSums(relu ? GradReluRows : GradRows, g.typed_data(), x.typed_data(),
             mean.typed_data(), a.typed_data(), b.typed_data(), m, c, s1, s2);
  const float* iv = inv.typed_data();
  float* o = out->typed_data();
  for (int64_t j = 0; j < c; ++j) {
    o[j] = static_cast<float>(s1[j]);
    o[c + j] = static_cast<float>(iv[j] * s2[j]);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmmBnMoments, MomentsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmmBnGradSums, GradSumsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("relu"));
