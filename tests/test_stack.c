/* test_stack.c: ab_stack and ab_unstack on host devices. */
#include "harness.h"

#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

extern size_t ab__map_window_test; /* runtime/fill.c: windows this small, for the tests */

static void *data_of(ab_tensor *t) {
  const DLTensor *dl = ab_tensor_dl(t);
  return (char *)dl->data + dl->byte_offset;
}

static int wait_result(ab_future *f, ab_tensor **out) {
  int r = ab_future_wait(f, -1);
  if (r) return r;
  return ab_future_result(f, out);
}

/* n slices [3,4] f32 with value 100*s + 10*i + j */
static int make_slices(ab_runtime *rt, int n, ab_tensor **sl, int dev) {
  int64_t shape[2] = {3, 4};
  for (int s = 0; s < n; s++) {
    int r = ab_tensor_alloc(rt, th_host(dev), TH_F32, 2, shape, &sl[s]);
    if (r) return r;
    float *p = data_of(sl[s]);
    for (int i = 0; i < 3; i++)
      for (int j = 0; j < 4; j++) p[i * 4 + j] = (float)(100 * s + 10 * i + j);
  }
  return 0;
}

static int test_stack_contiguous(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 2));
  ab_tensor *sl[5];
  CHECK_OK(make_slices(rt, 5, sl, 0));
  /* slices on two devices, stacked on device 1 */
  ab_tensor *other[2];
  CHECK_OK(make_slices(rt, 2, other, 1));
  ab_tensor_release(sl[3]);
  sl[3] = other[1]; /* value 100*1 + ..., on device 1 */
  ab_tensor_release(other[0]);
  for (int dev = 0; dev < 2; dev++) {
    ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
    ab_future *f = NULL;
    CHECK_OK(ab_stack(rt, sl, 5, th_host(dev), &o, &f));
    ab_tensor *v = NULL;
    CHECK_OK(wait_result(f, &v));
    ab_future_release(f);
    const DLTensor *dl = ab_tensor_dl(v);
    CHECK_EQ_INT(dl->ndim, 3);
    CHECK_EQ_INT(dl->shape[0], 5);
    CHECK_EQ_INT(dl->shape[1], 3);
    CHECK_EQ_INT(dl->shape[2], 4);
    CHECK_EQ_INT(dl->dtype.code, kDLFloat);
    CHECK_EQ_INT(dl->dtype.bits, 32);
    CHECK(ab_tensor_is_contiguous(v));
    CHECK_EQ_INT(ab_tensor_device(v).index, dev);
    const float *p = data_of(v);
    for (int s = 0; s < 5; s++)
      for (int e = 0; e < 12; e++) {
        float want = (float)(100 * (s == 3 ? 1 : s) + 10 * (e / 4) + e % 4);
        CHECK_MSG(p[s * 12 + e] == want, "slice %d element %d: %g != %g", s, e, p[s * 12 + e], want);
      }
    ab_tensor_release(v);
  }
  for (int s = 0; s < 5; s++) ab_tensor_release(sl[s]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_stack_noncontiguous_and_convert(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  /* base [4,3] per slice; the slices are transposed views [3,4] */
  enum { N = 4 };
  ab_tensor *base[N], *sl[N];
  int64_t bshape[2] = {4, 3};
  for (int s = 0; s < N; s++) {
    CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, bshape, &base[s]));
    float *p = data_of(base[s]);
    for (int i = 0; i < 12; i++) p[i] = (float)(s * 1000 + i) - 1500.5f;
    int64_t vs[2] = {3, 4}, vst[2] = {1, 3};
    CHECK_OK(ab_tensor_view(base[s], 2, vs, vst, 0, &sl[s]));
    CHECK(!ab_tensor_is_contiguous(sl[s]));
  }
  /* a negative-stride slice in the mix */
  ab_tensor_release(sl[2]);
  int64_t rs[2] = {3, 4}, rst[2] = {-1, -3};
  CHECK_OK(ab_tensor_view(base[2], 2, rs, rst, 11, &sl[2]));

  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.dtype = th_dt(kDLInt, 16);
  o.cast = AB_CAST_SATURATE;
  ab_future *f = NULL;
  CHECK_OK(ab_stack(rt, sl, N, th_host(0), &o, &f));
  ab_tensor *v = NULL;
  CHECK_OK(wait_result(f, &v));
  ab_future_release(f);
  const DLTensor *dl = ab_tensor_dl(v);
  CHECK_EQ_INT(dl->ndim, 3);
  CHECK_EQ_INT(dl->shape[0], N);
  CHECK_EQ_INT(dl->dtype.code, kDLInt);
  CHECK_EQ_INT(dl->dtype.bits, 16);
  CHECK(ab_tensor_is_contiguous(v));
  const int16_t *q = data_of(v);
  for (int s = 0; s < N; s++)
    for (int i = 0; i < 3; i++)
      for (int j = 0; j < 4; j++) {
        int64_t idx[2] = {i, j};
        float x = *(float *)th_elem(ab_tensor_dl(sl[s]), idx);
        int16_t want = (int16_t)(x > 32767 ? 32767 : x < -32768 ? -32768 : (int)x);
        CHECK_MSG(q[(s * 3 + i) * 4 + j] == want, "slice %d (%d,%d): %d != %d (x=%g)", s, i, j,
                  q[(s * 3 + i) * 4 + j], want, x);
      }
  ab_tensor_release(v);
  for (int s = 0; s < N; s++) {
    ab_tensor_release(sl[s]);
    ab_tensor_release(base[s]);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Stretching a stack takes one range over the finite values of every slice: an infinity in one
 * slice neither moves it nor blanks the volume; it saturates, NaN becomes 0. Slices with no
 * finite value give no range; with none anywhere, the stack is a saturating cast. */
static int test_stack_stretch_infinities(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 2));
  int64_t shape[1] = {3};
  const float v[3][3] = {{0.0f, INFINITY, 1.0f}, {-INFINITY, 2.0f, NAN}, {NAN, INFINITY, -INFINITY}};
  ab_tensor *sl[3];
  for (int s = 0; s < 3; s++) {
    CHECK_OK(ab_tensor_alloc(rt, th_host(s % 2), TH_F32, 1, shape, &sl[s]));
    memcpy(data_of(sl[s]), v[s], sizeof v[s]);
  }
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.dtype = TH_U8;
  o.cast = AB_CAST_STRETCH;
  const uint8_t want[9] = {0, 255, 127, 0, 255, 0, 0, 255, 0}; /* [0, 2]: 1 -> 127.5 */
  const uint8_t want_none[3] = {0, 255, 0};
  for (int dev = 0; dev < 2; dev++) {
    ab_future *f = NULL;
    ab_tensor *t = NULL;
    CHECK_OK(ab_stack(rt, sl, 3, th_host(dev), &o, &f));
    CHECK_OK(wait_result(f, &t));
    for (int i = 0; i < 9; i++)
      CHECK_MSG(((const uint8_t *)data_of(t))[i] == want[i], "device %d element %d: %d != %d", dev, i,
                ((const uint8_t *)data_of(t))[i], want[i]);
    ab_tensor_release(t);
    ab_future_release(f);
    CHECK_OK(ab_stack(rt, &sl[2], 1, th_host(dev), &o, &f));
    CHECK_OK(wait_result(f, &t));
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(((const uint8_t *)data_of(t))[i], want_none[i]);
    ab_tensor_release(t);
    ab_future_release(f);
  }
  for (int s = 0; s < 3; s++) ab_tensor_release(sl[s]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_stack_rejects(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  ab_tensor *sl[3];
  CHECK_OK(make_slices(rt, 3, sl, 0));
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  ab_future *f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_stack(rt, sl, 0, th_host(0), &o, &f), AB_EINVAL);
  CHECK_NULL(f);
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_stack(rt, NULL, 3, th_host(0), &o, &f), AB_EINVAL);
  CHECK_NULL(f);
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_stack(NULL, sl, 3, th_host(0), &o, &f), AB_EINVAL);
  CHECK_NULL(f);
  ab_tensor *with_null[3] = {sl[0], NULL, sl[2]};
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_stack(rt, with_null, 3, th_host(0), &o, &f), AB_EINVAL);
  CHECK_NULL(f);
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_stack(rt, sl, 3, th_host(4), &o, &f), AB_ENODEV);
  CHECK_NULL(f);

  /* shape mismatch: [3,4] vs [4,3] vs [3,4,1] */
  int64_t s43[2] = {4, 3}, s341[3] = {3, 4, 1};
  ab_tensor *odd = NULL, *odd3 = NULL, *oddt = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, s43, &odd));
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 3, s341, &odd3));
  ab_tensor *mix[3] = {sl[0], odd, sl[2]};
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_stack(rt, mix, 3, th_host(0), &o, &f), AB_ESHAPE);
  CHECK_NULL(f);
  mix[1] = odd3;
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_stack(rt, mix, 3, th_host(0), &o, &f), AB_ESHAPE);
  CHECK_NULL(f);
  /* dtype mismatch */
  int64_t s34[2] = {3, 4};
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F64, 2, s34, &oddt));
  mix[1] = oddt;
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_stack(rt, mix, 3, th_host(0), &o, &f), AB_EDTYPE);
  CHECK_NULL(f);
  /* wrong options size */
  ab_convert_options b = o;
  b.size = 1;
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_stack(rt, sl, 3, th_host(0), &b, &f), AB_EINVAL);
  CHECK_NULL(f);
  ab_tensor_release(odd);
  ab_tensor_release(odd3);
  ab_tensor_release(oddt);
  for (int s = 0; s < 3; s++) {
    CHECK_EQ_U64(ab_tensor_nbytes(sl[s]), 48); /* still ours */
    ab_tensor_release(sl[s]);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A single slice and 0-d slices (-> a 1-d volume). */
static int test_stack_edge_shapes(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  ab_tensor *sc[3];
  for (int i = 0; i < 3; i++) {
    CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_I32, 0, NULL, &sc[i]));
    *(int32_t *)data_of(sc[i]) = 7 * i;
  }
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  ab_future *f = NULL;
  CHECK_OK(ab_stack(rt, sc, 3, th_host(0), &o, &f));
  ab_tensor *v = NULL;
  CHECK_OK(wait_result(f, &v));
  ab_future_release(f);
  CHECK_EQ_INT(ab_tensor_dl(v)->ndim, 1);
  CHECK_EQ_INT(ab_tensor_dl(v)->shape[0], 3);
  CHECK_EQ_INT(((int32_t *)data_of(v))[2], 14);
  ab_tensor_release(v);
  CHECK_OK(ab_stack(rt, sc, 1, th_host(0), &o, &f));
  CHECK_OK(wait_result(f, &v));
  ab_future_release(f);
  CHECK_EQ_INT(ab_tensor_dl(v)->shape[0], 1);
  CHECK_EQ_INT(((int32_t *)data_of(v))[0], 0);
  ab_tensor_release(v);
  for (int i = 0; i < 3; i++) ab_tensor_release(sc[i]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- unstack ------------------------------------------------------------------------------ */
static int test_unstack_views_same_device(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 2));
  int64_t shape[3] = {4, 2, 3};
  ab_tensor *vol = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U16, 3, shape, &vol));
  uint16_t *p = data_of(vol);
  for (int i = 0; i < 24; i++) p[i] = (uint16_t)(i * 3);
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  ab_future *fs[4] = {0};
  CHECK_OK(ab_unstack(rt, vol, th_host(0), &o, fs));
  ab_tensor *sl[4];
  for (int i = 0; i < 4; i++) {
    CHECK_OK(wait_result(fs[i], &sl[i]));
    ab_future_release(fs[i]);
    const DLTensor *dl = ab_tensor_dl(sl[i]);
    CHECK_EQ_INT(dl->ndim, 2);
    CHECK_EQ_INT(dl->shape[0], 2);
    CHECK_EQ_INT(dl->shape[1], 3);
    CHECK_EQ_INT(ab_tensor_device(sl[i]).index, 0);
    /* a view: its first element is the volume's element (i,0,0) */
    int64_t z[2] = {0, 0};
    CHECK_EQ_PTR(th_elem(dl, z), p + i * 6);
  }
  ab_tensor_release(vol); /* views keep it alive */
  p[1 * 6 + 5] = 999;     /* still valid memory: views share it */
  int64_t k[2] = {1, 2};
  CHECK_EQ_INT(*(uint16_t *)th_elem(ab_tensor_dl(sl[1]), k), 999);
  int64_t k2[2] = {1, 1};
  CHECK_EQ_INT(*(uint16_t *)th_elem(ab_tensor_dl(sl[3]), k2), (3 * 6 + 4) * 3);
  for (int i = 0; i < 4; i++) ab_tensor_release(sl[i]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_unstack_copies_other_device(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 2));
  int64_t shape[3] = {3, 2, 2};
  ab_tensor *vol = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 3, shape, &vol));
  float *p = data_of(vol);
  for (int i = 0; i < 12; i++) p[i] = (float)i + 0.5f;
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  ab_future *fs[3] = {0};
  CHECK_OK(ab_unstack(rt, vol, th_host(1), &o, fs));
  ab_tensor *sl[3];
  for (int i = 0; i < 3; i++) {
    CHECK_OK(wait_result(fs[i], &sl[i]));
    ab_future_release(fs[i]);
    CHECK_EQ_INT(ab_tensor_device(sl[i]).index, 1);
    CHECK(ab_tensor_is_contiguous(sl[i]));
    const float *q = data_of(sl[i]);
    CHECK(q < p || q >= p + 12); /* not inside the volume */
    for (int e = 0; e < 4; e++) CHECK(q[e] == (float)(i * 4 + e) + 0.5f);
  }
  p[0] = -1; /* copies are independent */
  CHECK(((float *)data_of(sl[0]))[0] == 0.5f);
  /* with a dtype change, even on the same device: copies */
  o.dtype = TH_U8;
  CHECK_OK(ab_unstack(rt, vol, th_host(0), &o, fs));
  for (int i = 0; i < 3; i++) {
    ab_tensor *t = NULL;
    CHECK_OK(wait_result(fs[i], &t));
    ab_future_release(fs[i]);
    CHECK_EQ_INT(ab_tensor_dl(t)->dtype.bits, 8);
    const uint8_t *q = data_of(t);
    CHECK_EQ_INT(q[1], i * 4 + 1);
    ab_tensor_release(t);
  }
  /* a 0-d volume has nothing to unstack */
  ab_tensor *s0 = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 0, NULL, &s0));
  o = (ab_convert_options)AB_CONVERT_OPTIONS_INIT;
  fs[0] = (ab_future *)(uintptr_t)1;
  CHECK_ERR_IN(ab_unstack(rt, s0, th_host(0), &o, fs), AB_EINVAL, AB_ESHAPE);
  CHECK_ERR_IN(ab_unstack(rt, NULL, th_host(0), &o, fs), AB_EINVAL);
  CHECK_ERR_IN(ab_unstack(rt, vol, th_host(9), &o, fs), AB_ENODEV);
  ab_tensor_release(s0);
  ab_tensor_release(vol);
  for (int i = 0; i < 3; i++) ab_tensor_release(sl[i]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* stack then unstack round trip */
static int test_round_trip(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  ab_tensor *sl[6];
  CHECK_OK(make_slices(rt, 6, sl, 0));
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  ab_future *f = NULL;
  CHECK_OK(ab_stack(rt, sl, 6, th_host(0), &o, &f));
  ab_tensor *v = NULL;
  CHECK_OK(wait_result(f, &v));
  ab_future_release(f);
  ab_future *fs[6];
  CHECK_OK(ab_unstack(rt, v, th_host(0), &o, fs));
  CHECK_OK(ab_future_wait_all(fs, 6, -1));
  for (int s = 0; s < 6; s++) {
    ab_tensor *t = NULL;
    CHECK_OK(ab_future_result(fs[s], &t));
    CHECK_EQ_INT(memcmp(data_of(t), data_of(sl[s]), 48), 0);
    ab_tensor_release(t);
    ab_future_release(fs[s]);
    ab_tensor_release(sl[s]);
  }
  ab_tensor_release(v);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- many slices, copied by a crew of threads in many windows ------------------------------- */
static int window_check(ab_tensor *vol, int n, int64_t h, int64_t w) {
  const uint16_t *p = data_of(vol);
  for (int i = 0; i < n; i++)
    for (int64_t k = 0; k < h * w; k++)
      if (p[i * h * w + k] != th_wval(i, k)) {
        fprintf(stderr, "# slice %d element %lld: %u, want %u\n", i, (long long)k, p[i * h * w + k], th_wval(i, k));
        return 1;
      }
  return 0;
}

/* 3.8 MB of slices in windows of 640 KiB: pieces straddle slices and windows, the host's other
 * worker helps, and the strided slices still land in their place. */
static int test_stack_in_windows(void) {
  enum { N = 200, H = 96, W = 100 };
  ab__map_window_test = 640 << 10;
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  ab_tensor *sl[N], *vol;
  CHECK_OK(th_window_slices(rt, N, H, W, sl));
  ab_future *f;
  CHECK_OK(ab_stack(rt, sl, N, th_host(0), NULL, &f));
  CHECK_OK(wait_result(f, &vol));
  ab_future_release(f);
  int bad = window_check(vol, N, H, W);
  ab_tensor_release(vol);
  for (int i = 0; i < N; i++) ab_tensor_release(sl[i]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  ab__map_window_test = 0;
  return bad;
}

/* ---- a host stack's helper that never runs -------------------------------------------------- */
/* A host stack copies half its slices itself and gives the other half to a helper task on
 * another host worker. A helper that fails without running must not leave its half unwritten:
 * the stack then copies it too (a status of 0 means every slice was written). */
enum { BIG_SLICES = 32, BIG_SIDE = 512 }; /* 256 KiB u8 slices: the helper gets 16 of them */

static int make_big_slices(ab_runtime *rt, ab_tensor **sl, int n, int side) {
  int64_t shape[2] = {side, side};
  for (int s = 0; s < n; s++) {
    int r = ab_tensor_alloc(rt, th_host(0), TH_U8, 2, shape, &sl[s]);
    if (r) return r;
    memset(data_of(sl[s]), 1 + s % 251, (size_t)side * (size_t)side);
  }
  return 0;
}

/* Every slice of v holds its own value; returns the index of the first that does not, or -1. */
static int bad_slice(ab_tensor *v, int n, int side) {
  const uint8_t *p = data_of(v);
  size_t slice = (size_t)side * (size_t)side;
  for (int s = 0; s < n; s++)
    for (size_t e = 0; e < slice; e += 997)
      if (p[(size_t)s * slice + e] != 1 + s % 251 || p[(size_t)s * slice + slice - 1] != 1 + s % 251) return s;
  return -1;
}

/* An injected launch fault fails the helper (a compute task) before it runs; the stack itself
 * is a copy, which the fault leaves alone. (It used to complete with 0 and half its slices
 * never written.) */
static int test_stack_helper_fails(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  ab_tensor *sl[BIG_SLICES];
  CHECK_OK(make_big_slices(rt, sl, BIG_SLICES, BIG_SIDE));
  ab_fault_spec fs = {.op = AB_FAULT_LAUNCH, .device = th_host(AB_ANY), .nth = 1, .count = -1};
  CHECK_OK(ab_runtime_fault(rt, &fs));
  int helper_failed = 0;
  for (int round = 0; round < 20; round++) {
    ab_device_stats before, after;
    CHECK_OK(th_stats(rt, th_host(0), &before));
    ab_future *f = NULL;
    CHECK_OK(ab_stack(rt, sl, BIG_SLICES, th_host(0), NULL, &f));
    CHECK_OK(ab_future_wait(f, -1));
    CHECK_OK(th_stats(rt, th_host(0), &after));
    helper_failed += after.faults_injected > before.faults_injected;
    ab_tensor *v = NULL;
    CHECK_OK(ab_future_result(f, &v));
    int bad = bad_slice(v, BIG_SLICES, BIG_SIDE);
    CHECK_MSG(bad < 0, "round %d: the stack completed with 0, but slice %d was not written", round, bad);
    ab_tensor_release(v);
    ab_future_release(f);
  }
  printf("# the helper failed before the stack took its half back in %d of 20 rounds\n", helper_failed);
  for (int s = 0; s < BIG_SLICES; s++) ab_tensor_release(sl[s]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Holds a worker until destroy(AB_CANCEL) asks it to stop, and notices at once. */
static atomic_int held;
static int hold_until_cancelled(ab_ctx *c, void *arg) {
  (void)arg;
  atomic_store(&held, 1);
  while (!ab_ctx_cancelled(c)) sched_yield();
  return AB_ECANCELED;
}

/* The field case: ab_runtime_destroy(AB_CANCEL) while a host stack copies its half. The other
 * worker, freed by the cancel, pops the helper and cancels it without running it. The stack
 * must still complete with every slice written (or fail): never 0 with half a volume. */
static int test_stack_destroy_cancel(void) {
  enum { N = 64, SIDE = 512 }; /* 256 KiB slices: copying our half takes a while */
  int helper_cancelled = 0, rounds = 8;
  for (int round = 0; round < rounds; round++) {
    ab_runtime *rt;
    CHECK_OK(th_runtime(&rt, 2, 1));
    ab_tensor **sl = calloc(N, sizeof *sl);
    CHECK_NOT_NULL(sl);
    CHECK_OK(make_big_slices(rt, sl, N, SIDE));
    atomic_store(&held, 0);
    ab_future *hold = NULL, *f = NULL;
    CHECK_OK(th_submit_fn(rt, th_host(0), hold_until_cancelled, NULL, &hold));
    while (!atomic_load(&held)) sched_yield();
    CHECK_OK(ab_stack(rt, sl, N, th_host(0), NULL, &f));
    /* the helper is queued (the hold, the stack, then it): cancel now, while we copy our half */
    ab_device_stats st;
    do CHECK_OK(th_stats(rt, th_host(0), &st));
    while (st.tasks_submitted < 3 && ab_future_status(f) == AB_EPENDING);
    CHECK_OK(ab_runtime_destroy(rt, AB_CANCEL));
    CHECK_OK(th_stats(rt, th_host(0), &st)); /* the counters outlive destroy until the futures go */
    helper_cancelled += st.tasks_canceled >= 2; /* the hold and the helper */
    int rc = ab_future_status(f);
    CHECK_MSG(rc == 0 || rc == AB_ECANCELED, "stack status %d%s", rc, th_errstr(rc));
    if (rc == 0) {
      ab_tensor *v = NULL;
      CHECK_OK(ab_future_result(f, &v));
      int bad = bad_slice(v, N, SIDE);
      CHECK_MSG(bad < 0, "round %d: the stack completed with 0, but slice %d was not written", round, bad);
      ab_tensor_release(v);
    }
    ab_future_release(f);
    ab_future_release(hold);
    for (int s = 0; s < N; s++) ab_tensor_release(sl[s]);
    free(sl);
  }
  printf("# the helper was cancelled without running in %d of %d rounds\n", helper_cancelled, rounds);
  return 0;
}

/* ---- empty tensors whose data is NULL (DLPack allows it) ---------------------------------------- */
static void no_release(void *ctx) { (void)ctx; }

static int wrap_empty(const int64_t *shape, int ndim, DLDataType dt, ab_tensor **out) {
  DLTensor dl = {.data = NULL, .device = {kDLCPU, 0}, .ndim = ndim, .dtype = dt, .shape = (int64_t *)shape};
  return ab_tensor_wrap(&dl, 0, no_release, NULL, out);
}

/* Converted, stacked and unstacked without ever touching the NULL pointer (the old copies
 * called memcpy(dst, NULL, 0), undefined behaviour that UBSan stops at). */
static int test_empty_null_data(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 2));
  int64_t shape[2] = {0, 4};
  ab_tensor *e[3];
  for (int i = 0; i < 3; i++) CHECK_OK(wrap_empty(shape, 2, TH_U16, &e[i]));
  CHECK_EQ_U64(ab_tensor_nbytes(e[0]), 0);
  static const struct {
    int dev;
    bool force;
    uint8_t code, bits;
    int cast;
  } cases[] = {
      {0, true, 0, 0, AB_CAST_SATURATE},           {1, false, 0, 0, AB_CAST_SATURATE},
      {0, false, kDLFloat, 32, AB_CAST_SATURATE}, {1, false, kDLUInt, 8, AB_CAST_SATURATE},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
    o.force_copy = cases[k].force;
    if (cases[k].bits) o.dtype = th_dt(cases[k].code, cases[k].bits);
    o.cast = cases[k].cast;
    ab_future *f = NULL;
    CHECK_OK(ab_convert(rt, e[0], th_host(cases[k].dev), &o, &f));
    ab_tensor *t = NULL;
    CHECK_OK(wait_result(f, &t));
    CHECK_EQ_INT(ab_tensor_dl(t)->shape[0], 0);
    CHECK_EQ_U64(ab_tensor_nbytes(t), 0);
    ab_tensor_release(t);
    ab_future_release(f);
    /* stacked: [3, 0, 4], here and on the other device, with and without a cast */
    CHECK_OK(ab_stack(rt, e, 3, th_host(cases[k].dev), &o, &f));
    CHECK_OK(wait_result(f, &t));
    CHECK_EQ_INT(ab_tensor_dl(t)->ndim, 3);
    CHECK_EQ_INT(ab_tensor_dl(t)->shape[0], 3);
    CHECK_EQ_INT(ab_tensor_dl(t)->shape[1], 0);
    ab_tensor_release(t);
    ab_future_release(f);
  }
  /* stretch over empty float slices: no range to find */
  ab_tensor *ef[2];
  for (int i = 0; i < 2; i++) CHECK_OK(wrap_empty(shape, 2, TH_F32, &ef[i]));
  ab_convert_options so = AB_CONVERT_OPTIONS_INIT;
  so.dtype = TH_U16;
  so.cast = AB_CAST_STRETCH;
  ab_future *f = NULL;
  ab_tensor *t = NULL;
  CHECK_OK(ab_stack(rt, ef, 2, th_host(1), &so, &f));
  CHECK_OK(wait_result(f, &t));
  CHECK_EQ_INT(ab_tensor_dl(t)->shape[0], 2);
  ab_tensor_release(t);
  ab_future_release(f);
  /* an empty volume [2, 0, 4] unstacked here (views) and on the other device (copies) */
  int64_t vshape[3] = {2, 0, 4};
  ab_tensor *vol = NULL;
  CHECK_OK(wrap_empty(vshape, 3, TH_U16, &vol));
  for (int dev = 0; dev < 2; dev++) {
    ab_future *fs[2] = {0};
    CHECK_OK(ab_unstack(rt, vol, th_host(dev), NULL, fs));
    for (int i = 0; i < 2; i++) {
      CHECK_OK(wait_result(fs[i], &t));
      CHECK_EQ_U64(ab_tensor_nbytes(t), 0);
      ab_tensor_release(t);
      ab_future_release(fs[i]);
    }
  }
  ab_tensor_release(vol);
  for (int i = 0; i < 2; i++) ab_tensor_release(ef[i]);
  for (int i = 0; i < 3; i++) ab_tensor_release(e[i]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- ab_unstack's out[] on failure ------------------------------------------------------------- */
#define SENT ((ab_future *)(uintptr_t)1)

static bool all_null(ab_future **fs, int n) {
  for (int i = 0; i < n; i++)
    if (fs[i] != NULL) return false;
  return true;
}

/* The header: "On failure ... out is all NULL". Every early error clears it too, whenever the
 * volume says how long it is (a NULL or 0-d volume has no entries to clear). */
static int test_unstack_errors_clear_out(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t shape[2] = {4, 3};
  ab_tensor *vol = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U8, 2, shape, &vol));
  ab_future *fs[4];
  ab_convert_options bad_size = AB_CONVERT_OPTIONS_INIT, bad_cast = AB_CONVERT_OPTIONS_INIT,
                     bad_dtype = AB_CONVERT_OPTIONS_INIT, bad_mode = AB_CONVERT_OPTIONS_INIT;
  bad_size.size = 3;
  bad_cast.cast = 7;
  bad_dtype.dtype = th_dt(kDLFloat, 12);
  bad_mode.place.mode = 9;
  struct {
    ab_runtime *rt;
    ab_device dst;
    const ab_convert_options *o;
    int rc;
  } cases[] = {
      {NULL, {AB_HOST, 0}, NULL, AB_EINVAL},   {rt, {AB_HOST, 5}, NULL, AB_ENODEV},
      {rt, {AB_CUDA, 0}, NULL, AB_ENODEV},     {rt, {7, 0}, NULL, AB_ENODEV},
      {rt, {AB_HOST, 0}, &bad_size, AB_EINVAL}, {rt, {AB_HOST, 0}, &bad_cast, AB_EINVAL},
      {rt, {AB_HOST, 0}, &bad_dtype, AB_EDTYPE}, {rt, {AB_HOST, 0}, &bad_mode, AB_EINVAL},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    for (int i = 0; i < 4; i++) fs[i] = SENT;
    int rc = ab_unstack(cases[k].rt, vol, cases[k].dst, cases[k].o, fs);
    CHECK_MSG(rc == cases[k].rc, "case %zu: %d%s", k, rc, th_errstr(rc));
    CHECK_MSG(all_null(fs, 4), "case %zu: out[] not cleared", k);
  }
  ab_tensor_release(vol);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {TEST_ENTRY(stack_contiguous),
                                      TEST_ENTRY(stack_in_windows),
                                      TEST_ENTRY(stack_noncontiguous_and_convert),
                                      TEST_ENTRY(stack_stretch_infinities),
                                      TEST_ENTRY(stack_rejects),
                                      TEST_ENTRY(stack_edge_shapes),
                                      TEST_ENTRY(unstack_views_same_device),
                                      TEST_ENTRY(unstack_copies_other_device),
                                      TEST_ENTRY(round_trip),
                                      TEST_ENTRY(stack_helper_fails),
                                      TEST_ENTRY(stack_destroy_cancel),
                                      TEST_ENTRY(empty_null_data),
                                      TEST_ENTRY(unstack_errors_clear_out),
                                      TEST_END};
AB_TEST_MAIN(tests)
