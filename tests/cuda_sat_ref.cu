/*
 * cuda_sat_ref.cu: devices/cuda/sat.cuh (the CUDA kernels' per-element conversions) run on the
 * host, for test_cuda_kernel_logic.c. Built by nvcc like kernels.cu, with --fmad=false.
 */
#include "devices/cuda/sat.cuh"

using namespace ab__cu;

namespace {

template <int S, int D> void one(const void *x, void *out, bool stretch, double lo, double span) {
  typename tr<S>::t v = *(const typename tr<S>::t *)x;
  typename tr<D>::t *o = (typename tr<D>::t *)out;
  if constexpr (!tr<S>::integer && tr<D>::integer && !tr<D>::boolean) {
    if (stretch) {
      *o = stretch_value<S, D>(v, lo, span, (double)tr<D>::umax - (double)tr<D>::imin);
      return;
    }
  }
  *o = sat<S, D>(v);
}

template <int S, int D = 0> int dispatch(int s, int d, const void *x, void *out, bool stretch, double lo, double span) {
  if constexpr (S >= 11) {
    return -1;
  } else if constexpr (D >= 11) {
    return dispatch<S + 1, 0>(s, d, x, out, stretch, lo, span);
  } else {
    if (s != S || d != D) return dispatch<S, D + 1>(s, d, x, out, stretch, lo, span);
    one<S, D>(x, out, stretch, lo, span);
    return 0;
  }
}

} // namespace

/* One element x of dtype index s converted to dtype index d as the CUDA kernels do; stretch
 * with (lo, span) where the kernels would. 0, or -1 for an unknown pair. */
extern "C" int tcu_kernel_value(int s, int d, const void *x, void *out, int stretch, double lo, double span) {
  return dispatch<0>(s, d, x, out, stretch != 0, lo, span);
}

/* Folds v into a stretch range as minmax_kernel does for each element it reads. */
extern "C" void tcu_range_add(double v, double *lo, double *hi, int *found) { range_add(v, *lo, *hi, *found); }
