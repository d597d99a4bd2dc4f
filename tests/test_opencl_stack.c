/*
 * test_opencl_stack.c: ab_stack onto an OpenCL device from host slices, slices on the same
 * device, on other OpenCL devices, and mixed, with dtype changes and stretch (one min/max range
 * over all slices), equal to ab_stack onto the host; ab_unstack of an OpenCL volume onto the same
 * device (zero-copy views) and elsewhere (copies).
 */
#include "test_opencl_common.c"

extern size_t ab__map_window_test; /* runtime/fill.c: windows this small, for the tests */

#define NSL 4
static const int64_t SL_SHAPE[2] = {5, 7};
static const int64_t SL_BSHAPE[2] = {15, 11};
static const int64_t SL_STRIDES[2] = {-2, 2 * 11}; /* a transposed-and-reversed view */

/* Slice k of the test: a host mirror (contiguous or strided) and the tensor actually stacked. */
typedef struct {
  ab_tensor *host[NSL];  /* host tensor with the data and layout of slice k */
  ab_tensor *src[NSL];   /* where the slice lies for the stack */
  ab_tensor *keep[2 * NSL];
  int nkeep;
} slices;

static void slices_free(slices *s) {
  for (int k = 0; k < NSL; k++) {
    ab_tensor_release(s->host[k]);
    ab_tensor_release(s->src[k]);
  }
  for (int k = 0; k < s->nkeep; k++) ab_tensor_release(s->keep[k]);
  memset(s, 0, sizeof *s);
}

/* where[k]: -1 host, else the OpenCL index; strided[k]: a negative-stride view. values(k, i)
 * come from toc_value(dt, set, i + 13k), or from `custom` when not NULL (float dtypes). */
static int slices_make(ab_runtime *rt, DLDataType dt, int set, const int *where, const bool *strided,
                       double (*custom)(int k, int64_t i), slices *s) {
  memset(s, 0, sizeof *s);
  size_t es = th_dt_size(dt);
  for (int k = 0; k < NSL; k++) {
    ab_tensor *h;
    if (strided[k]) {
      ab_tensor *base;
      CHECK_OK(toc_host_tensor(rt, dt, 2, SL_BSHAPE, set, 100 + k, &base));
      /* element (i, j) at base[2j][10 - 2i]: offset 10, strides (-2, 22) */
      CHECK_OK(ab_tensor_view(base, 2, SL_SHAPE, SL_STRIDES, 10, &h));
      s->keep[s->nkeep++] = base;
    } else {
      CHECK_OK(ab_tensor_alloc(rt, th_host(0), dt, 2, SL_SHAPE, &h));
    }
    const DLTensor *dl = ab_tensor_dl(h);
    int64_t n = 0;
    for (int64_t i = 0; i < SL_SHAPE[0]; i++)
      for (int64_t j = 0; j < SL_SHAPE[1]; j++, n++) {
        int64_t idx[2] = {i, j};
        void *p = th_elem(dl, idx);
        if (custom && dt.code == kDLFloat) {
          double v = custom(k, n);
          if (dt.bits == 32) {
            float f = (float)v;
            memcpy(p, &f, 4);
          } else {
            memcpy(p, &v, es);
          }
        } else {
          toc_value(dt, set, n + 13 * k, p);
        }
      }
    s->host[k] = h;
    if (where[k] < 0) {
      s->src[k] = ab_tensor_retain(h);
      continue;
    }
    /* the same layout on the device: upload the base (or the tensor) and take the same view */
    ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
    if (strided[k]) {
      ab_tensor *ob;
      CHECK_OK(toc_convert(rt, s->keep[s->nkeep - 1], toc_ocl(where[k]), &same, &ob));
      CHECK_OK(ab_tensor_view(ob, 2, SL_SHAPE, SL_STRIDES, 10, &s->src[k]));
      s->keep[s->nkeep++] = ob;
    } else {
      CHECK_OK(toc_convert(rt, h, toc_ocl(where[k]), &same, &s->src[k]));
    }
    CHECK_EQ_INT(ab_tensor_device(s->src[k]).kind, AB_OPENCL);
    CHECK_EQ_INT(ab_tensor_device(s->src[k]).index, where[k]);
  }
  return 0;
}

/* Stack s->src onto dst with o; compare with stacking the host mirrors onto the host. */
static int check_stack(ab_runtime *rt, slices *s, ab_device dst, const ab_convert_options *o, const char *label,
                       ab_tensor **keep_ref) {
  ab_convert_options ro = *o;
  ro.strict = false;
  ab_future *f = NULL;
  ab_tensor *ref = NULL, *got = NULL, *back = NULL;
  CHECK_OK(ab_stack(rt, s->host, NSL, th_host(0), &ro, &f));
  CHECK_OK(toc_take(f, &ref));
  CHECK_OK(ab_stack(rt, s->src, NSL, dst, o, &f));
  int rc = toc_take(f, &got);
  if (rc != 0) {
    fprintf(stderr, "# %s: stack failed: %d%s\n", label, rc, th_errstr(rc));
    ab_tensor_release(ref);
    return 1;
  }
  CHECK_EQ_INT(ab_tensor_device(got).kind, dst.kind);
  CHECK_EQ_INT(ab_tensor_device(got).index, dst.index);
  const DLTensor *g = ab_tensor_dl(got);
  CHECK_EQ_INT(g->ndim, 3);
  CHECK_EQ_INT(g->shape[0], NSL);
  CHECK_EQ_INT(g->shape[1], SL_SHAPE[0]);
  CHECK_EQ_INT(g->shape[2], SL_SHAPE[1]);
  CHECK(ab_tensor_is_contiguous(got));
  if (dst.kind == AB_HOST) back = ab_tensor_retain(got);
  else CHECK_OK(toc_to_host(rt, got, &back));
  int bad = toc_same(back, ref, label);
  if (keep_ref && !bad) *keep_ref = ab_tensor_retain(back);
  ab_tensor_release(ref);
  ab_tensor_release(got);
  ab_tensor_release(back);
  return bad;
}

static bool sel(int s, int d) {
  double sc = th_scale();
  if (sc >= 1) return true;
  int step = (int)(1.0 / sc + 0.5);
  return (s * TOC_NDT + d) % step == 0;
}

/* Every source placement mix, every dtype pair, both modes, onto opencl:0. */
static int test_stack_matrix(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 3);
  static const int where[5][NSL] = {
      {-1, -1, -1, -1}, /* host slices */
      {0, 0, 0, 0},     /* on the destination */
      {1, 1, 1, 1},     /* on another OpenCL device */
      {-1, 0, 1, 2},    /* mixed */
      {2, -1, 0, 1},
  };
  static const bool strided[5][NSL] = {
      {false, true, false, true}, {true, false, true, false}, {false, true, true, false},
      {true, true, false, false}, {false, false, true, true},
  };
  static const char *names[5] = {"host", "same", "other", "mixed", "mixed2"};
  int failures = 0, checks = 0;
  for (int s = 0; s < TOC_NDT; s++) {
    DLDataType sdt = toc_dt(s);
    for (int set = 0; set < (sdt.code == kDLFloat ? 2 : 1); set++)
      for (int m = 0; m < 5; m++) {
        slices sl;
        if (slices_make(rt, sdt, set, where[m], strided[m], NULL, &sl) != 0) {
          slices_free(&sl);
          return 1;
        }
        for (int d = 0; d < TOC_NDT; d++) {
          if (!sel(s, d) && d != s) continue;
          for (int mode = 0; mode < 2; mode++) {
            ab_convert_options o = toc_copt(toc_dt(d), mode);
            char label[96];
            snprintf(label, sizeof label, "stack %s slices %s->%s %s set %d", names[m], TOC_DT[s].name,
                     TOC_DT[d].name, mode ? "stretch" : "saturate", set);
            checks++;
            failures += check_stack(rt, &sl, toc_ocl(0), &o, label, NULL) != 0;
          }
        }
        slices_free(&sl);
      }
  }
  fprintf(stderr, "# %d checks, %d failed\n", checks, failures);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return failures != 0;
}

/* Slice k holds values in [10k - 5, 10k + 20] and a NaN: per-slice ranges differ. */
static double ranged(int k, int64_t i) {
  if (i == 3) return NAN;
  return 10.0 * k - 5.0 + (double)((i * 7) % 26);
}

/* Stretch uses ONE range over all slices: the global min maps to the target's min, the global
 * max to its max, and a slice that holds neither does not reach them. */
static int test_stack_stretch_one_range(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 3);
  static const int where[3][NSL] = {{-1, 0, 1, 2}, {0, 0, 0, 0}, {1, 2, 1, 2}};
  static const bool strided[NSL] = {true, false, true, false};
  for (int fs = 8; fs <= 9; fs++)
    for (int m = 0; m < 3; m++) {
      slices sl;
      CHECK_OK(slices_make(rt, toc_dt(fs), 0, where[m], strided, ranged, &sl));
      for (int d = 0; d < 8; d++) {
        ab_convert_options o = toc_copt(toc_dt(d), AB_CAST_STRETCH);
        char label[64];
        snprintf(label, sizeof label, "stretch %s->%s mix %d", TOC_DT[fs].name, TOC_DT[d].name, m);
        ab_tensor *res = NULL;
        CHECK_OK(check_stack(rt, &sl, toc_ocl(0), &o, label, &res));
        /* independent checks on the result: lo = -5 (slice 0), hi = 10*3 + 20 = 50 (slice 3) */
        const DLTensor *r = ab_tensor_dl(res);
        size_t es = th_dt_size(r->dtype);
        int64_t per = SL_SHAPE[0] * SL_SHAPE[1];
        bool sgn = TOC_DT[d].code == kDLInt;
        uint64_t tmax = es == 8 ? (sgn ? (uint64_t)INT64_MAX : UINT64_MAX)
                                : (sgn ? (1ull << (8 * es - 1)) - 1 : (1ull << (8 * es)) - 1);
        uint64_t tmin = sgn ? (uint64_t)(-(int64_t)(tmax)-1) : 0;
        if (es < 8) tmin &= (1ull << (8 * es)) - 1;
        for (int k = 0; k < NSL; k++) {
          bool has_min = false, has_max = false;
          for (int64_t i = 0; i < per; i++) {
            if (i == 3) continue; /* the NaN: 0 */
            uint64_t v = 0;
            memcpy(&v, (const char *)r->data + r->byte_offset + (size_t)(k * per + i) * es, es);
            has_min |= v == tmin;
            has_max |= v == tmax;
          }
          /* slice k's own range is [10k - 5, 10k + 20]: only slice 0 holds -5, only 3 holds 50 */
          CHECK_MSG(has_min == (k == 0), "%s: slice %d reaches the target min: %d", label, k, has_min);
          CHECK_MSG(has_max == (k == NSL - 1), "%s: slice %d reaches the target max: %d", label, k, has_max);
        }
        ab_tensor_release(res);
      }
      slices_free(&sl);
    }
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Stacking onto the host and onto another OpenCL device from device slices. */
static int test_stack_other_destinations(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 3);
  static const int where[NSL] = {0, 1, -1, 2};
  static const bool strided[NSL] = {true, false, true, false};
  for (int s = 0; s < TOC_NDT; s++) {
    slices sl;
    CHECK_OK(slices_make(rt, toc_dt(s), 1, where, strided, NULL, &sl));
    for (int d = 0; d < TOC_NDT; d++) {
      if (!sel(s, d)) continue;
      for (int mode = 0; mode < 2; mode++) {
        ab_convert_options o = toc_copt(toc_dt(d), mode);
        char label[64];
        snprintf(label, sizeof label, "stack->host %s->%s %d", TOC_DT[s].name, TOC_DT[d].name, mode);
        CHECK_OK(check_stack(rt, &sl, th_host(0), &o, label, NULL));
        snprintf(label, sizeof label, "stack->ocl2 %s->%s %d", TOC_DT[s].name, TOC_DT[d].name, mode);
        CHECK_OK(check_stack(rt, &sl, toc_ocl(2), &o, label, NULL));
      }
    }
    slices_free(&sl);
  }
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ab_unstack of an OpenCL volume: onto its own device, views (same cl_mem, byte_offset i *
 * slice bytes); onto the host and another device, copies with equal data; with a dtype change
 * onto its own device, copies equal to the host's conversion. */
static int test_unstack(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 2);
  const int64_t vshape[3] = {6, 4, 9};
  for (int s = 0; s < TOC_NDT; s++) {
    DLDataType dt = toc_dt(s);
    ab_tensor *hv = NULL, *ov = NULL;
    CHECK_OK(toc_host_tensor(rt, dt, 3, vshape, 0, s, &hv));
    ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
    CHECK_OK(toc_convert(rt, hv, toc_ocl(0), &same, &ov));
    const DLTensor *vd = ab_tensor_dl(ov);
    size_t slice_bytes = ab_tensor_nbytes(ov) / (size_t)vshape[0];
    ab_future *fs[6];
    /* same device: zero-copy views */
    CHECK_OK(ab_unstack(rt, ov, toc_ocl(0), NULL, fs));
    for (int i = 0; i < 6; i++) {
      ab_tensor *v = NULL;
      CHECK_OK(toc_take(fs[i], &v));
      const DLTensor *dl = ab_tensor_dl(v);
      CHECK_EQ_INT(ab_tensor_device(v).kind, AB_OPENCL);
      CHECK_EQ_INT(ab_tensor_device(v).index, 0);
      CHECK_EQ_PTR(dl->data, vd->data);
      CHECK_EQ_U64(dl->byte_offset, vd->byte_offset + (uint64_t)i * slice_bytes);
      CHECK_EQ_INT(dl->ndim, 2);
      CHECK_EQ_INT(dl->shape[0], 4);
      CHECK_EQ_INT(dl->shape[1], 9);
      CHECK(ab_tensor_is_contiguous(v));
      /* the view reads back as slice i of the host volume */
      ab_tensor *b = NULL, *hi = NULL, *hic = NULL;
      CHECK_OK(toc_to_host(rt, v, &b));
      CHECK_OK(ab_tensor_index(hv, i, &hi));
      CHECK_OK(toc_to_host(rt, hi, &hic));
      CHECK_OK(toc_same(b, hic, "unstack view"));
      ab_tensor_release(b);
      ab_tensor_release(hi);
      ab_tensor_release(hic);
      ab_tensor_release(v);
    }
    /* host and another device: copies */
    ab_device dsts[2] = {th_host(0), toc_ocl(1)};
    for (int k = 0; k < 2; k++) {
      CHECK_OK(ab_unstack(rt, ov, dsts[k], NULL, fs));
      for (int i = 0; i < 6; i++) {
        ab_tensor *v = NULL, *b = NULL, *hi = NULL, *hic = NULL;
        CHECK_OK(toc_take(fs[i], &v));
        CHECK_EQ_INT(ab_tensor_device(v).kind, dsts[k].kind);
        CHECK_EQ_INT(ab_tensor_device(v).index, dsts[k].index);
        CHECK(ab_tensor_dl(v)->data != vd->data);
        CHECK(ab_tensor_is_contiguous(v));
        if (k == 0) b = ab_tensor_retain(v);
        else CHECK_OK(toc_to_host(rt, v, &b));
        CHECK_OK(ab_tensor_index(hv, i, &hi));
        CHECK_OK(toc_to_host(rt, hi, &hic));
        CHECK_OK(toc_same(b, hic, "unstack copy"));
        ab_tensor_release(b);
        ab_tensor_release(hi);
        ab_tensor_release(hic);
        ab_tensor_release(v);
      }
    }
    /* dtype change on the same device: copies, as the host converts them */
    int d = (s + 3) % TOC_NDT;
    for (int mode = 0; mode < 2; mode++) {
      ab_convert_options o = toc_copt(toc_dt(d), mode);
      CHECK_OK(ab_unstack(rt, ov, toc_ocl(0), &o, fs));
      for (int i = 0; i < 6; i++) {
        ab_tensor *v = NULL, *b = NULL, *hi = NULL, *ref = NULL;
        CHECK_OK(toc_take(fs[i], &v));
        CHECK(ab_tensor_dl(v)->data != vd->data);
        CHECK_EQ_INT(ab_tensor_dl(v)->dtype.code, TOC_DT[d].code);
        CHECK_OK(toc_to_host(rt, v, &b));
        CHECK_OK(ab_tensor_index(hv, i, &hi));
        CHECK_OK(toc_convert(rt, hi, th_host(0), &o, &ref));
        CHECK_OK(toc_same(b, ref, "unstack with dtype"));
        ab_tensor_release(b);
        ab_tensor_release(hi);
        ab_tensor_release(ref);
        ab_tensor_release(v);
      }
    }
    /* the volume outlives its views and still reads back whole */
    ab_tensor *b = NULL;
    CHECK_OK(toc_to_host(rt, ov, &b));
    CHECK_OK(toc_same(b, hv, "volume after unstack"));
    ab_tensor_release(b);
    ab_tensor_release(ov);
    ab_tensor_release(hv);
  }
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- many host slices through mapped windows (the pipeline a GPU's DMA uses) ------------------ */
/* The volume (on any device) read back and compared with th_wval. */
static int window_check(ab_runtime *rt, ab_tensor *vol, int n, int64_t h, int64_t w) {
  ab_tensor *back;
  CHECK_OK(toc_to_host(rt, vol, &back));
  const uint16_t *p = ab_tensor_dl(back)->data;
  int bad = 0;
  for (int i = 0; i < n && !bad; i++)
    for (int64_t k = 0; k < h * w && !bad; k++)
      if (p[i * h * w + k] != th_wval(i, k)) {
        fprintf(stderr, "# slice %d element %lld: %u, want %u\n", i, (long long)k, p[i * h * w + k], th_wval(i, k));
        bad = 1;
      }
  ab_tensor_release(back);
  return bad;
}

enum { WN = 200, WH = 96, WW = 100 }; /* 3.8 MB, six windows of 640 KiB */

/* Stacking and converting onto opencl:0 window by window, each window mapped, filled by this
 * worker and the host's two, and unmapped; a copy fault at the second window fails the stack
 * cleanly (AB_EFAULT, its memory back) and the next one works. */
static int test_stream_in_windows(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 1);
  ab__map_window_test = 640 << 10;
  ab_tensor *sl[WN], *vol;
  CHECK_OK(th_window_slices(rt, WN, WH, WW, sl));
  ab_future *f;
  CHECK_OK(ab_stack(rt, sl, WN, toc_ocl(0), NULL, &f));
  CHECK_OK(toc_take(f, &vol));
  int bad = window_check(rt, vol, WN, WH, WW);
  /* one array, the same way (the conversion streams when the backend pipelines its maps) */
  ab_tensor *flat, *flat_dev;
  ab_convert_options fc = AB_CONVERT_OPTIONS_INIT;
  fc.force_copy = true;
  CHECK_OK(toc_convert(rt, vol, th_host(0), &fc, &flat));
  CHECK_OK(toc_convert(rt, flat, toc_ocl(0), &fc, &flat_dev));
  bad |= window_check(rt, flat_dev, WN, WH, WW);
  ab_tensor_release(flat_dev);
  ab_tensor_release(flat);
  ab_tensor_release(vol);
  /* copy faults: the stack's own check is the first, the first window's map the second */
  ab_fault_spec fs = {.op = AB_FAULT_COPY, .device = toc_ocl(0), .nth = 3, .count = 1};
  CHECK_OK(ab_runtime_fault(rt, &fs));
  CHECK_OK(ab_stack(rt, sl, WN, toc_ocl(0), NULL, &f));
  CHECK_EQ_INT(toc_take(f, NULL), AB_EFAULT);
  ab_fault_spec off = {0};
  CHECK_OK(ab_runtime_fault(rt, &off));
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_stack(rt, sl, WN, toc_ocl(0), NULL, &f));
  CHECK_OK(toc_take(f, &vol));
  bad |= window_check(rt, vol, WN, WH, WW);
  ab_tensor_release(vol);
  for (int i = 0; i < WN; i++) ab_tensor_release(sl[i]);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  ab__map_window_test = 0;
  return bad;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY_T(stream_in_windows, 120),
    TEST_ENTRY_T(stack_matrix, 150),
    TEST_ENTRY_T(stack_stretch_one_range, 60),
    TEST_ENTRY_T(stack_other_destinations, 120),
    TEST_ENTRY_T(unstack, 60),
    TEST_END,
};
AB_TEST_MAIN(tests)
