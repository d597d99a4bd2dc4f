/*
 * devices/cuda/sat.cuh: the value conversions of kernels.cu, one element at a time. Host and
 * device code alike, so that tests/cuda_sat_ref.cu can check them against the host kernels on
 * a machine without a GPU (the arithmetic is IEEE on both; only the instructions differ).
 */
#ifndef AB_DEVICES_CUDA_SAT_CUH
#define AB_DEVICES_CUDA_SAT_CUH

#include <stdint.h>

namespace ab__cu {

/* Dtype traits, indexed like ab__dtype_index: u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 bool. */
template <int T> struct tr;
#define AB_TRAIT(I, C, INT, SIGN, BOOL, MN, MX)                                                   \
  template <> struct tr<I> {                                                                     \
    typedef C t;                                                                                 \
    static constexpr bool integer = INT, sign = SIGN, boolean = BOOL;                            \
    static constexpr long long imin = (long long)(MN);                                           \
    static constexpr unsigned long long umax = (unsigned long long)(MX);                         \
  };
AB_TRAIT(0, uint8_t, true, false, false, 0, UINT8_MAX)
AB_TRAIT(1, uint16_t, true, false, false, 0, UINT16_MAX)
AB_TRAIT(2, uint32_t, true, false, false, 0, UINT32_MAX)
AB_TRAIT(3, uint64_t, true, false, false, 0, UINT64_MAX)
AB_TRAIT(4, int8_t, true, true, false, INT8_MIN, INT8_MAX)
AB_TRAIT(5, int16_t, true, true, false, INT16_MIN, INT16_MAX)
AB_TRAIT(6, int32_t, true, true, false, INT32_MIN, INT32_MAX)
AB_TRAIT(7, int64_t, true, true, false, INT64_MIN, INT64_MAX)
AB_TRAIT(8, float, false, true, false, 0, 0)
AB_TRAIT(9, double, false, true, false, 0, 0)
AB_TRAIT(10, uint8_t, true, false, true, 0, 1)
#undef AB_TRAIT
constexpr int NTYPES = 11;

/* The host's sat_S_D, line for line. */
template <int S, int D> __host__ __device__ __forceinline__ typename tr<D>::t sat(typename tr<S>::t x) {
  typedef typename tr<D>::t DT;
  if constexpr (tr<D>::boolean) {
    return x != 0;
  } else if constexpr (!tr<D>::integer) {
    return (DT)x;
  } else if constexpr (!tr<S>::integer) {
    if (x != x) return 0;
    if ((double)x <= (double)tr<D>::imin) return (DT)tr<D>::imin;
    if ((double)x >= (double)tr<D>::umax) return (DT)tr<D>::umax;
    return (DT)x;
  } else {
    if constexpr (tr<S>::sign) {
      if (x < 0) {
        if constexpr (!tr<D>::sign) return 0;
        if ((long long)x < tr<D>::imin) return (DT)tr<D>::imin;
        return (DT)x;
      }
    }
    if ((unsigned long long)x > tr<D>::umax) return (DT)tr<D>::umax;
    return (DT)x;
  }
}

/* stretch: ((double)x - lo) / span * range + MIN in double, each step rounded on its own
 * (--fmad=false), then saturated: devices/host/kernels.c's stretch_S_D. */
template <int S, int D>
__host__ __device__ __forceinline__ typename tr<D>::t stretch_value(typename tr<S>::t x, double lo, double span,
                                                                   double range) {
  return sat<9, D>(((double)x - lo) / span * range + (double)tr<D>::imin);
}

/* The stretch range: the smallest and largest finite value (devices/host/kernels.c's
 * visit_minmax). NaN and infinities are left out, as one infinity would make every (x - lo) /
 * span NaN or 0; stretch_value then takes -inf to MIN and +inf to MAX. v - v is 0 exactly when
 * v is finite (inf - inf and NaN - NaN are NaN), with no libm call on either side. */
__host__ __device__ __forceinline__ void range_add(double v, double &lo, double &hi, int &found) {
  if (!(v - v == 0.0)) return;
  if (!found || v < lo) lo = v;
  if (!found || v > hi) hi = v;
  found = 1;
}

} // namespace ab__cu
#endif
