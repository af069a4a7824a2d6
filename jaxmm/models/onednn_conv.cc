// oneDNN convolutions as XLA FFI custom calls for jaxmm on CPU (see onednn_conv.py).
//
// Three handlers, float32, activations NHWC and kernels HWIO as jaxmm's models hold them:
//   jaxmm_onednn_conv_fwd          y  = conv(x, w)           (x, w)   -> y
//   jaxmm_onednn_conv_bwd_data     dx = d conv / d x . g     (g, w)   -> dx
//   jaxmm_onednn_conv_bwd_weights  dw = d conv / d w . g     (x, g)   -> dw
// Attributes: stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, exclusive (int64;
// 1: the call runs alone, jaxmm::CallTurn).
// Activations stay in the caller's NHWC buffers; kernels are reordered to (from) the layout the
// chosen oneDNN implementation wants on every call, as PyTorch does for channels_last training
// (the forward kernels by a plain copy of runs of O, CopyToBlocked, the others by oneDNN).
// Primitives are built once per shape and kept; each call brings its own scratchpad; calls
// from several XLA threads run one at a time (jaxmm::CallTurn).
#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace jaxmm {
// A custom call's turn: the library's one lock, held (exclusive) or not, for as long as the
// call keeps what this returns. batch_norm.cc and max_pool.cc always take it, these
// convolutions when their attribute `exclusive` is 1. XLA starts independent custom calls at
// once, and on one device two of them, each spreading over all cores on its own OpenMP
// threads, slowed each other down (ResNet-18 training step, batch 16, 2-core Xeon: 0.65 ->
// 0.61 s one at a time). Over several devices in one process, the devices' convolutions
// overlapped run faster (22.3 images/s against 19.5 one at a time): there `exclusive` is 0.
std::unique_lock<std::mutex> CallTurn(bool exclusive) {
  static std::mutex mu;
  return exclusive ? std::unique_lock<std::mutex>(mu)
                   : std::unique_lock<std::mutex>(mu, std::defer_lock);
}
}  // namespace jaxmm

namespace {

// A grow-only byte buffer: it zeroes only what it adds. (std::vector's resize also zeroes
// again whatever a smaller call gave up: with scratchpads and kernels of different sizes layer
// after layer, that was 13% of a ResNet-18 training step.)
class Bytes {
 public:
  uint8_t* Get(size_t size) {
    if (size > data_.size()) data_.resize(size);
    return data_.data();
  }

 private:
  std::vector<uint8_t> data_;
};

// N, C (in), H, W, O (out), KH, KW, OH, OW, stride h/w, pad top/bottom/left/right.
using Key = std::array<int64_t, 15>;

struct Conv {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::primitive fwd, data, weights;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

enum class Part { kForward, kInputGradient, kKernelGradient };

// Builds the forward pd eagerly (the backward ones need it as a hint) and each backward
// primitive on first use, under the lock.
Conv& Lookup(const Key& k, Part part) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Conv>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[k];
  const memory::dims src{k[0], k[1], k[2], k[3]}, wei{k[4], k[1], k[5], k[6]},
      dst{k[0], k[4], k[7], k[8]}, strides{k[9], k[10]}, pad_l{k[11], k[13]},
      pad_r{k[12], k[14]};
  const memory::desc src_md(src, memory::data_type::f32, tag::nhwc);
  const memory::desc dst_md(dst, memory::data_type::f32, tag::nhwc);
  const memory::desc wei_any(wei, memory::data_type::f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (!slot) {
    slot = std::make_unique<Conv>();
    slot->fwd_pd = dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
        src_md, wei_any, dst_md, strides, pad_l, pad_r, attr);
    slot->fwd = dnnl::convolution_forward(slot->fwd_pd);
  }
  Conv& c = *slot;
  if (part == Part::kInputGradient && !c.data) {
    c.data_pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src_md, wei_any, dst_md, strides, pad_l,
        pad_r, c.fwd_pd, attr);
    c.data = dnnl::convolution_backward_data(c.data_pd);
  }
  if (part == Part::kKernelGradient && !c.weights) {
    c.weights_pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src_md, wei_any, dst_md, strides,
        pad_l, pad_r, c.fwd_pd, attr);
    c.weights = dnnl::convolution_backward_weights(c.weights_pd);
  }
  return c;
}

Key MakeKey(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
            ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
            int64_t pl, int64_t pr) {
  // x [N, H, W, C], w [KH, KW, C, O], y [N, OH, OW, O].
  return Key{x[0], x[3], x[1], x[2], w[3], w[0], w[1], y[1], y[2], sh, sw, pt, pb, pl, pr};
}

ffi::Error Check(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                 ffi::Span<const int64_t> y) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4 || x[3] != w[2] || y[3] != w[3] ||
      x[0] != y[0]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxmm oneDNN conv: expected x [N,H,W,C], w [KH,KW,C,O], y [N,OH,OW,O]");
  }
  return ffi::Error::Success();
}

// Runs `prim` with `args` plus a scratchpad of the size `pd` asks for.
void Execute(const dnnl::primitive& prim, const dnnl::primitive_desc& pd,
             std::unordered_map<int, memory> args) {
  thread_local Bytes scratchpad;
  const memory::desc sp = pd.scratchpad_desc();
  args.insert({DNNL_ARG_SCRATCHPAD, memory(sp, Engine(), scratchpad.Get(sp.get_size()))});
  dnnl::stream stream(Engine());
  prim.execute(stream, args);
  stream.wait();
}

void Reorder(memory& from, memory& to) {
  dnnl::stream stream(Engine());
  dnnl::reorder(from, to).execute(stream, from, to);
  stream.wait();
}

// Where each element of a kernel [O, I, KH, KW] lives in a oneDNN blocked layout: the offset of
// logical position pos = {o, i, kh, kw} is the outer blocks' strides plus the place inside the
// inner blocks (listed outermost first, as oneDNN's format tags write them: Acdb64a has one
// inner block, (O, 64); ABcd16b16a has (I, 16) then (O, 16)).
struct Blocking {
  std::array<int64_t, 4> strides{}, padded{};
  std::vector<int64_t> blks, idxs;

  int64_t Offset(const std::array<int64_t, 4>& pos) const {
    std::array<int64_t, 4> div{1, 1, 1, 1};
    int64_t inner = 0, size = 1;
    for (int k = static_cast<int>(blks.size()) - 1; k >= 0; --k) {
      const int64_t d = idxs[k];
      inner += (pos[d] / div[d] % blks[k]) * size;
      div[d] *= blks[k];
      size *= blks[k];
    }
    int64_t outer = 0;
    for (int d = 0; d < 4; ++d) outer += pos[d] / div[d] * strides[d];
    return outer + inner;
  }
};

// The blocking of `md` if its innermost block runs along O (the forward kernels' Acdb16a ..
// Acdb64a on AVX-512): then a block is a contiguous run of O there as in HWIO. Else none.
std::optional<Blocking> ORuns(const memory::desc& md) {
  if (md.get_format_kind() != memory::format_kind::blocked || md.get_ndims() != 4)
    return std::nullopt;
  for (int64_t offset : md.get_padded_offsets())
    if (offset != 0) return std::nullopt;
  Blocking b;
  const memory::dims strides = md.get_strides(), padded = md.get_padded_dims();
  std::copy(strides.begin(), strides.end(), b.strides.begin());
  std::copy(padded.begin(), padded.end(), b.padded.begin());
  const int n = md.get_inner_nblks();
  b.blks = md.get_inner_blks();
  b.idxs = md.get_inner_idxs();
  b.blks.resize(n);
  b.idxs.resize(n);
  if (n == 0 ? strides[0] != 1 : b.idxs.back() != 0) return std::nullopt;
  return b;
}

// Copies HWIO kernel `hwio` of convolution `k` into `blocked` (laid out as `b`, padding
// zeroed): a plain copy of each run of O, (kh, kw, i) rows split across OpenMP threads when
// the kernel is large. oneDNN's reorder does the same with cold caches at half the speed: 11
// -> 6 ms a ResNet-18 step, most of it in the 3x3 kernels of 256 and 512 channels.
void CopyToBlocked(const Key& k, const Blocking& b, const float* hwio, float* blocked,
                   size_t blocked_floats) {
  const int64_t O = k[4], I = k[1], KH = k[5], KW = k[6];
  if (b.padded[0] != O || b.padded[1] != I) std::fill(blocked, blocked + blocked_floats, 0.0f);
  const int64_t run = b.blks.empty() ? O : b.blks.back(), rows = KH * KW * I;
#pragma omp parallel for if (rows * O > (1 << 18)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t kh = r / (KW * I), kw = r / I % KW, i = r % I;
    const float* row = hwio + r * O;
    for (int64_t o = 0; o < O; o += run)
      std::copy(row + o, row + std::min(o + run, O), blocked + b.Offset({o, i, kh, kw}));
  }
}

// The HWIO kernel buffer of convolution `k` as oneDNN memory.
memory Hwio(const Key& k, float* data) {
  return memory(memory::desc({k[4], k[1], k[5], k[6]}, memory::data_type::f32, tag::hwio),
                Engine(), data);
}

// The kernel in the layout `want` asks for: the HWIO buffer itself, or a copy in `buffer`.
memory KernelIn(const memory::desc& want, const Key& k, float* hwio, Bytes& buffer) {
  memory user = Hwio(k, hwio);
  if (want == user.get_desc()) return user;
  float* data = reinterpret_cast<float*>(buffer.Get(want.get_size()));
  memory out(want, Engine(), data);
  if (const std::optional<Blocking> b = ORuns(want))
    CopyToBlocked(k, *b, hwio, data, want.get_size() / sizeof(float));
  else
    Reorder(user, out);
  return out;
}

ffi::Error Fail(const std::exception& e) {
  return ffi::Error(ffi::ErrorCode::kInternal, std::string("jaxmm oneDNN conv: ") + e.what());
}

ffi::Error ConvFwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr, int64_t exclusive) {
  if (auto err = Check(x.dimensions(), w.dimensions(), y->dimensions()); err.failure())
    return err;
  const auto turn = jaxmm::CallTurn(exclusive);
  try {
    const Key k = MakeKey(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl,
                          pr);
    Conv& c = Lookup(k, Part::kForward);
    thread_local Bytes kernel;
    memory wm = KernelIn(c.fwd_pd.weights_desc(), k, w.typed_data(), kernel);
    Execute(c.fwd, c.fwd_pd,
            {{DNNL_ARG_SRC, memory(c.fwd_pd.src_desc(), Engine(), x.typed_data())},
             {DNNL_ARG_WEIGHTS, wm},
             {DNNL_ARG_DST, memory(c.fwd_pd.dst_desc(), Engine(), y->typed_data())}});
  } catch (const std::exception& e) {
    return Fail(e);
  }
  return ffi::Error::Success();
}

ffi::Error ConvBwdDataImpl(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> w,
                           ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                           int64_t pb, int64_t pl, int64_t pr, int64_t exclusive) {
  if (auto err = Check(dx->dimensions(), w.dimensions(), g.dimensions()); err.failure())
    return err;
  const auto turn = jaxmm::CallTurn(exclusive);
  try {
    const Key k = MakeKey(dx->dimensions(), w.dimensions(), g.dimensions(), sh, sw, pt, pb, pl,
                          pr);
    Conv& c = Lookup(k, Part::kInputGradient);
    thread_local Bytes kernel;
    memory wm = KernelIn(c.data_pd.weights_desc(), k, w.typed_data(), kernel);
    Execute(c.data, c.data_pd,
            {{DNNL_ARG_DIFF_DST, memory(c.data_pd.diff_dst_desc(), Engine(), g.typed_data())},
             {DNNL_ARG_WEIGHTS, wm},
             {DNNL_ARG_DIFF_SRC,
              memory(c.data_pd.diff_src_desc(), Engine(), dx->typed_data())}});
  } catch (const std::exception& e) {
    return Fail(e);
  }
  return ffi::Error::Success();
}

ffi::Error ConvBwdWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                              ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw,
                              int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                              int64_t exclusive) {
  if (auto err = Check(x.dimensions(), dw->dimensions(), g.dimensions()); err.failure())
    return err;
  const auto turn = jaxmm::CallTurn(exclusive);
  try {
    const Key k = MakeKey(x.dimensions(), dw->dimensions(), g.dimensions(), sh, sw, pt, pb, pl,
                          pr);
    Conv& c = Lookup(k, Part::kKernelGradient);
    memory user = Hwio(k, dw->typed_data());
    const memory::desc want = c.weights_pd.diff_weights_desc();
    thread_local Bytes kernel;
    memory out = user;
    if (want != user.get_desc()) out = memory(want, Engine(), kernel.Get(want.get_size()));
    Execute(c.weights, c.weights_pd,
            {{DNNL_ARG_SRC, memory(c.weights_pd.src_desc(), Engine(), x.typed_data())},
             {DNNL_ARG_DIFF_DST,
              memory(c.weights_pd.diff_dst_desc(), Engine(), g.typed_data())},
             {DNNL_ARG_DIFF_WEIGHTS, out}});
    if (want != user.get_desc()) Reorder(out, user);
  } catch (const std::exception& e) {
    return Fail(e);
  }
  return ffi::Error::Success();
}

}  // namespace

#define JAXMM_CONV_ATTRS                                                              \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")       \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right") \
      .Attr<int64_t>("exclusive")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmmConvFwd, ConvFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXMM_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmmConvBwdData, ConvBwdDataImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXMM_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmmConvBwdWeights, ConvBwdWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXMM_CONV_ATTRS);

