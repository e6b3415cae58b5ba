// AdamW as one pass over memory through jax.ffi, for benchmarks/native_adamw.py: an experiment,
// not part of gradx. It measures how far a native CPU kernel takes Optax's AdamW, in two forms:
//   GradxAdamw        params, mu and nu updated in place (the optimizer applies the update);
//   GradxAdamwUpdate  mu and nu in place, the update written out for the caller's apply_updates.
// Formula as optax.adamw: mu = b1 mu + (1-b1) g; nu = b2 nu + (1-b2) g^2;
// u = -lr ((mu / bc1) / (sqrt(nu / bc2) + eps) + wd p), with bc1 = 1 - b1^t, bc2 = 1 - b2^t.
#include <cmath>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Hyper {
  float b1, b2, eps, wd, lr, bc1, bc2;
};

// One element: updates m and v in place and returns the update to add to p.
inline float Step(const Hyper& h, float g, float p, float& m, float& v) {
  m = h.b1 * m + (1.0f - h.b1) * g;
  v = h.b2 * v + (1.0f - h.b2) * g * g;
  return -h.lr * ((m / h.bc1) / (std::sqrt(v / h.bc2) + h.eps) + h.wd * p);
}

Hyper Read(ffi::Buffer<ffi::F32> scalars, float b1, float b2, float eps, float wd) {
  const float* s = scalars.typed_data();  // lr, bc1, bc2: they change from step to step
  return {b1, b2, eps, wd, s[0], s[1], s[2]};
}

// The outputs alias the inputs (in place): the loop reads and writes through the output pointers
// only, and distinct arrays never overlap (__restrict), so the compiler vectorises it. kApply:
// the first output is the params, updated in place; otherwise it is the update, written out.
template <bool kApply>
ffi::Error Run(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32>,
               ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32> scalars,
               ffi::ResultBuffer<ffi::F32> first_out, ffi::ResultBuffer<ffi::F32> m_out,
               ffi::ResultBuffer<ffi::F32> v_out, float b1, float b2, float eps, float wd) {
  const Hyper h = Read(scalars, b1, b2, eps, wd);
  const int64_t n = p.element_count();
  const float* __restrict gp = g.typed_data();
  const float* __restrict pp = p.typed_data();  // read only without kApply (else it is out)
  float* __restrict out = first_out->typed_data();
  float* __restrict mp = m_out->typed_data();
  float* __restrict vp = v_out->typed_data();
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    float m = mp[i], v = vp[i];
    const float param = kApply ? out[i] : pp[i];
    const float u = Step(h, gp[i], param, m, v);
    out[i] = kApply ? param + u : u;
    mp[i] = m;
    vp[i] = v;
  }
  return ffi::Error::Success();
}

// (p, g, mu, nu, [lr, bc1, bc2]) -> 3 buffers; b1, b2, eps, wd as attributes.
auto Binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
      .Attr<float>("b1").Attr<float>("b2").Attr<float>("eps").Attr<float>("wd");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GradxAdamw, Run<true>, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(GradxAdamwUpdate, Run<false>, Binding());
