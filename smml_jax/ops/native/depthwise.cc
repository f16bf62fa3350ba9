// Strided 2D depthwise convolution (channel-last, zero padding) as two XLA FFI CPU kernels.
//
// smml_depthwise2d_fwd: x (B, H, W, C), kernel (KH, KW, C), bias (C,) -> y (B, OH, OW, C),
//   y[b, i, j, c] = bias[c] + sum_{a, e} x[b, s i + a - p, s j + e - p, c] kernel[a, e, c].
// smml_depthwise2d_bwd: x, kernel, g = d loss / d y -> d x, d kernel, d bias.
//
// Why: the offset network's 6 x 6 stride-4 depthwise conv is a few MFLOP, but XLA's CPU backend
// runs the grouped convolution's gradient in ~0.6 s, and the selection-matmul formulation
// (ops/depthwise.py) spends ~100 ms per step transposing its (B, OH, KH, W, C) intermediate.
// Deterministic: per-batch-row partial sums of d kernel and d bias, reduced in row order.

#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using smml_native::ParallelFor;

struct ConvShape {
  int64_t b, h, w, c, kh, kw, oh, ow, stride, padding;
};

ffi::Error CheckConv(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& kernel,
                     int64_t stride, int64_t padding, ConvShape* s) {
  const auto xd = x.dimensions();
  const auto kd = kernel.dimensions();
  if (xd.size() != 4 || kd.size() != 3 || kd[2] != xd[3] || stride < 1 || padding < 0)
    return ffi::Error::InvalidArgument(
        "smml_depthwise2d: expected x (B, H, W, C), kernel (KH, KW, C), stride >= 1, padding >= 0");
  *s = ConvShape{xd[0], xd[1], xd[2], xd[3], kd[0], kd[1],
                 (xd[1] + 2 * padding - kd[0]) / stride + 1,
                 (xd[2] + 2 * padding - kd[1]) / stride + 1, stride, padding};
  if (s->oh < 1 || s->ow < 1)
    return ffi::Error::InvalidArgument("smml_depthwise2d: kernel larger than the padded input");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> bias,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t padding) {
  ConvShape s;
  if (ffi::Error e = CheckConv(x, kernel, stride, padding, &s); !e.success()) return e;
  if (bias.element_count() != static_cast<size_t>(s.c) ||
      y->element_count() != static_cast<size_t>(s.b * s.oh * s.ow * s.c))
    return ffi::Error::InvalidArgument("smml_depthwise2d_fwd: expected bias (C,), y (B, OH, OW, C)");
  const float* xp = x.typed_data();
  const float* kp = kernel.typed_data();
  const float* bp = bias.typed_data();
  float* yp = y->typed_data();
  ParallelFor(&pool, s.b, [&](int64_t b) {
    for (int64_t i = 0; i < s.oh; ++i)
      for (int64_t j = 0; j < s.ow; ++j) {
        float* out = yp + ((b * s.oh + i) * s.ow + j) * s.c;
        std::memcpy(out, bp, sizeof(float) * s.c);
        for (int64_t a = 0; a < s.kh; ++a) {
          const int64_t r = s.stride * i + a - s.padding;
          if (r < 0 || r >= s.h) continue;
          for (int64_t e = 0; e < s.kw; ++e) {
            const int64_t col = s.stride * j + e - s.padding;
            if (col < 0 || col >= s.w) continue;
            const float* in = xp + ((b * s.h + r) * s.w + col) * s.c;
            const float* k = kp + (a * s.kw + e) * s.c;
            for (int64_t c = 0; c < s.c; ++c) out[c] += in[c] * k[c];
          }
        }
      }
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> g,
                        ffi::ResultBuffer<ffi::F32> g_x, ffi::ResultBuffer<ffi::F32> g_kernel,
                        ffi::ResultBuffer<ffi::F32> g_bias, int64_t stride, int64_t padding) {
  ConvShape s;
  if (ffi::Error e = CheckConv(x, kernel, stride, padding, &s); !e.success()) return e;
  if (g.element_count() != static_cast<size_t>(s.b * s.oh * s.ow * s.c))
    return ffi::Error::InvalidArgument("smml_depthwise2d_bwd: expected g (B, OH, OW, C)");
  const float* xp = x.typed_data();
  const float* kp = kernel.typed_data();
  const float* gp = g.typed_data();
  float* gxp = g_x->typed_data();
  const int64_t kn = s.kh * s.kw * s.c;
  std::vector<float> g_kernel_rows(s.b * kn, 0.f), g_bias_rows(s.b * s.c, 0.f);
  ParallelFor(&pool, s.b, [&](int64_t b) {
    float* gx = gxp + b * s.h * s.w * s.c;
    std::memset(gx, 0, sizeof(float) * s.h * s.w * s.c);
    float* gk = g_kernel_rows.data() + b * kn;
    float* gb = g_bias_rows.data() + b * s.c;
    for (int64_t i = 0; i < s.oh; ++i)
      for (int64_t j = 0; j < s.ow; ++j) {
        const float* go = gp + ((b * s.oh + i) * s.ow + j) * s.c;
        for (int64_t c = 0; c < s.c; ++c) gb[c] += go[c];
        for (int64_t a = 0; a < s.kh; ++a) {
          const int64_t r = s.stride * i + a - s.padding;
          if (r < 0 || r >= s.h) continue;
          for (int64_t e = 0; e < s.kw; ++e) {
            const int64_t col = s.stride * j + e - s.padding;
            if (col < 0 || col >= s.w) continue;
            const int64_t at = (r * s.w + col) * s.c;
            const float* in = xp + b * s.h * s.w * s.c + at;
            const float* k = kp + (a * s.kw + e) * s.c;
            float* gkk = gk + (a * s.kw + e) * s.c;
            for (int64_t c = 0; c < s.c; ++c) {
              gx[at + c] += go[c] * k[c];
              gkk[c] += go[c] * in[c];
            }
          }
        }
      }
  });
  float* gk = g_kernel->typed_data();
  float* gb = g_bias->typed_data();
  for (int64_t k = 0; k < kn; ++k) {
    double sum = 0.0;
    for (int64_t b = 0; b < s.b; ++b) sum += g_kernel_rows[b * kn + k];
    gk[k] = static_cast<float>(sum);
  }
  for (int64_t c = 0; c < s.c; ++c) {
    double sum = 0.0;
    for (int64_t b = 0; b < s.b; ++b) sum += g_bias_rows[b * s.c + c];
    gb[c] = static_cast<float>(sum);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SmmlDepthwise2dForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SmmlDepthwise2dBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g_x
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g_kernel
                                  .Ret<ffi::Buffer<ffi::F32>>()  // g_bias
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding"));
