/*
 * test_opencl_convert.c: every conversion path touching an OpenCL device, for every dtype pair
 * and both cast modes, bit for bit against the host device; zero-copy, force_copy, 0-d and
 * empty tensors, the strict option.
 *
 * Paths: host -> opencl:0 (contiguous and negative-stride sources), opencl:0 -> host,
 * opencl:0 -> opencl:0 (same device, dtype change), opencl:0 -> opencl:1 (host staging).
 */
#include "test_opencl_common.c"

#define ROWS 6
#define COLS 10
#define BROWS 13
#define BCOLS 21

/* The sources of one (dtype, value set): a contiguous [6,10] host tensor, and a [6,10] view of a
 * [13,21] host base with strides (-42, -2) holding the same kind of values. */
typedef struct {
  ab_tensor *hc;    /* host, contiguous */
  ab_tensor *hbase; /* host, the base of the strided view */
  ab_tensor *hv;    /* host, strided view with negative strides */
  ab_tensor *oc;    /* opencl:0 copy of hc */
  ab_tensor *obase; /* opencl:0 copy of hbase */
  ab_tensor *ov;    /* the same view of obase */
} sources;

static const int64_t SHAPE[2] = {ROWS, COLS};
static const int64_t BSHAPE[2] = {BROWS, BCOLS};
static const int64_t VSTRIDES[2] = {-2 * BCOLS, -2};
static const int64_t VOFFSET = (BROWS - 1) * BCOLS + (BCOLS - 1);

static void sources_free(sources *s) {
  ab_tensor_release(s->hc);
  ab_tensor_release(s->hbase);
  ab_tensor_release(s->hv);
  ab_tensor_release(s->oc);
  ab_tensor_release(s->obase);
  ab_tensor_release(s->ov);
  memset(s, 0, sizeof *s);
}

static int sources_make(ab_runtime *rt, DLDataType dt, int set, bool on_device, sources *s) {
  memset(s, 0, sizeof *s);
  CHECK_OK(toc_host_tensor(rt, dt, 2, SHAPE, set, 0, &s->hc));
  CHECK_OK(toc_host_tensor(rt, dt, 2, BSHAPE, set, 17, &s->hbase));
  CHECK_OK(ab_tensor_view(s->hbase, 2, SHAPE, VSTRIDES, VOFFSET, &s->hv));
  CHECK(!ab_tensor_is_contiguous(s->hv));
  const DLTensor *v = ab_tensor_dl(s->hv);
  int64_t k = 0;
  for (int64_t i = 0; i < ROWS; i++)
    for (int64_t j = 0; j < COLS; j++) {
      int64_t idx[2] = {i, j};
      toc_value(dt, set, k++, th_elem(v, idx)); /* every special value lands in the view */
    }
  if (!on_device) return 0;
  ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
  CHECK_OK(toc_convert(rt, s->hc, toc_ocl(0), &same, &s->oc));
  CHECK_OK(toc_convert(rt, s->hbase, toc_ocl(0), &same, &s->obase));
  CHECK_EQ_INT(ab_tensor_device(s->oc).kind, AB_OPENCL);
  CHECK_EQ_INT(ab_tensor_device(s->obase).kind, AB_OPENCL);
  CHECK_OK(ab_tensor_view(s->obase, 2, SHAPE, VSTRIDES, VOFFSET, &s->ov));
  CHECK(!ab_tensor_is_contiguous(s->ov));
  return 0;
}

/* src (wherever it is) -> dst with o, against ref_src (a host tensor with the same data and
 * layout) -> host with o. */
static int check_path(ab_runtime *rt, ab_tensor *src, ab_tensor *ref_src, ab_device dst, const ab_convert_options *o,
                      const char *label) {
  ab_convert_options ro = *o;
  ro.force_copy = true;
  ro.strict = false;
  ab_tensor *ref = NULL, *got = NULL, *back = NULL;
  CHECK_OK(toc_convert(rt, ref_src, th_host(0), &ro, &ref));
  int rc = toc_convert(rt, src, dst, o, &got);
  if (rc != 0) {
    fprintf(stderr, "# %s: conversion failed: %d%s\n", label, rc, th_errstr(rc));
    ab_tensor_release(ref);
    return 1;
  }
  ab_device gd = ab_tensor_device(got);
  CHECK_MSG(gd.kind == dst.kind && gd.index == dst.index, "%s: result on %d:%d", label, gd.kind, gd.index);
  CHECK_MSG(ab_tensor_is_contiguous(got), "%s: result not contiguous", label);
  DLDataType want = o->dtype.bits ? o->dtype : ab_tensor_dl(src)->dtype;
  CHECK(ab_tensor_dl(got)->dtype.code == want.code && ab_tensor_dl(got)->dtype.bits == want.bits);
  if (dst.kind == AB_HOST) {
    back = ab_tensor_retain(got);
  } else {
    CHECK_OK(toc_to_host(rt, got, &back));
  }
  int bad = toc_same(back, ref, label);
  ab_tensor_release(ref);
  ab_tensor_release(got);
  ab_tensor_release(back);
  return bad;
}

/* With AB_TEST_SCALE < 1 (TSan) only every step-th (source, target) pair runs. */
static bool pair_selected(int s, int d, int mode) {
  double sc = th_scale();
  if (sc >= 1) return true;
  int step = (int)(1.0 / sc + 0.5);
  return ((s * TOC_NDT + d) + mode * 5) % step == 0;
}

typedef enum { P_UPLOAD, P_DOWNLOAD, P_LOCAL, P_CROSS } path_kind;

static int matrix(path_kind path) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, path == P_CROSS ? 2 : 1);
  int failures = 0, checks = 0;
  for (int s = 0; s < TOC_NDT; s++) {
    DLDataType sdt = toc_dt(s);
    int nsets = sdt.code == kDLFloat ? 2 : 1;
    for (int set = 0; set < nsets; set++) {
      sources src;
      if (sources_make(rt, sdt, set, path != P_UPLOAD, &src) != 0) {
        sources_free(&src);
        ab_runtime_destroy(rt, AB_DRAIN);
        return 1;
      }
      for (int d = 0; d < TOC_NDT; d++)
        for (int mode = AB_CAST_SATURATE; mode <= AB_CAST_STRETCH; mode++) {
          if (!pair_selected(s, d, mode)) continue;
          ab_convert_options o = toc_copt(toc_dt(d), mode);
          char label[96];
          for (int strided = 0; strided < 2; strided++) {
            snprintf(label, sizeof label, "%s %s->%s %s set %d %s", path == P_UPLOAD ? "upload" : path == P_DOWNLOAD ? "download" : path == P_LOCAL ? "local" : "cross",
                     TOC_DT[s].name, TOC_DT[d].name, mode ? "stretch" : "saturate", set, strided ? "strided" : "contiguous");
            ab_tensor *ref_src = strided ? src.hv : src.hc;
            int bad = 0;
            switch (path) {
            case P_UPLOAD: bad = check_path(rt, ref_src, ref_src, toc_ocl(0), &o, label); break;
            case P_DOWNLOAD: bad = check_path(rt, strided ? src.ov : src.oc, ref_src, th_host(0), &o, label); break;
            case P_LOCAL: bad = check_path(rt, strided ? src.ov : src.oc, ref_src, toc_ocl(0), &o, label); break;
            case P_CROSS: bad = check_path(rt, strided ? src.ov : src.oc, ref_src, toc_ocl(1), &o, label); break;
            }
            checks++;
            failures += bad != 0;
          }
        }
      sources_free(&src);
    }
  }
  fprintf(stderr, "# %d checks, %d failed\n", checks, failures);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return failures != 0;
}

static int test_upload_matrix(void) { return matrix(P_UPLOAD); }
static int test_download_matrix(void) { return matrix(P_DOWNLOAD); }
static int test_local_matrix(void) { return matrix(P_LOCAL); }
static int test_cross_device_matrix(void) { return matrix(P_CROSS); }

/* Converting to where the tensor already is, same dtype, contiguous: the same ab_tensor. */
static int test_zero_copy_and_force_copy(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 2);
  sources s;
  CHECK_OK(sources_make(rt, TH_F32, 0, true, &s));
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  ab_tensor *r = NULL;
  /* explicit index, AB_ANY index, and the dtype named explicitly: all zero-copy */
  CHECK_OK(toc_convert(rt, s.oc, toc_ocl(0), &o, &r));
  CHECK_EQ_PTR(r, s.oc);
  ab_tensor_release(r);
  ab_device any = {AB_OPENCL, AB_ANY};
  CHECK_OK(toc_convert(rt, s.oc, any, &o, &r));
  CHECK_EQ_PTR(r, s.oc);
  ab_tensor_release(r);
  o.dtype = TH_F32;
  CHECK_OK(toc_convert(rt, s.oc, toc_ocl(0), &o, &r));
  CHECK_EQ_PTR(r, s.oc);
  ab_tensor_release(r);
  o.dtype.bits = 0;
  /* not zero-copy: another device, a strided source, a dtype change, force_copy */
  CHECK_OK(toc_convert(rt, s.oc, toc_ocl(1), &o, &r));
  CHECK(r != s.oc);
  CHECK_EQ_INT(ab_tensor_device(r).index, 1);
  ab_tensor_release(r);
  CHECK_OK(toc_convert(rt, s.ov, toc_ocl(0), &o, &r));
  CHECK(r != s.ov && r != s.obase);
  CHECK(ab_tensor_is_contiguous(r));
  ab_tensor_release(r);
  o.force_copy = true;
  CHECK_OK(toc_convert(rt, s.oc, toc_ocl(0), &o, &r));
  CHECK(r != s.oc);
  CHECK_EQ_INT(ab_tensor_device(r).kind, AB_OPENCL);
  CHECK_EQ_INT(ab_tensor_device(r).index, 0);
  CHECK(ab_tensor_dl(r)->data != ab_tensor_dl(s.oc)->data); /* a new cl_mem */
  CHECK(ab_tensor_flags(r) & AB_TENSOR_IS_COPIED);
  ab_tensor *a = NULL, *b = NULL;
  CHECK_OK(toc_to_host(rt, r, &a));
  CHECK_OK(toc_to_host(rt, s.oc, &b));
  CHECK_OK(toc_same(a, b, "force_copy"));
  CHECK_OK(toc_same(a, s.hc, "force_copy vs source"));
  ab_tensor_release(a);
  ab_tensor_release(b);
  ab_tensor_release(r);
  /* the source of a zero-copy keeps working after the result is released */
  CHECK_OK(toc_to_host(rt, s.oc, &a));
  CHECK_OK(toc_same(a, s.hc, "source after zero-copy"));
  ab_tensor_release(a);
  sources_free(&s);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* 0-d (one element) and empty tensors on every path. */
static int test_zero_d_and_empty(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 2);
  const int64_t empty_shapes[3][2] = {{0, 5}, {4, 0}, {0, 0}};
  for (int s = 0; s < TOC_NDT; s++)
    for (int d = 0; d < TOC_NDT; d++) {
      if (!pair_selected(s, d, 0) && !(s == 8 && d == 0)) continue;
      for (int mode = 0; mode < 2; mode++) {
        ab_convert_options o = toc_copt(toc_dt(d), mode);
        char label[64];
        /* 0-d */
        ab_tensor *h = NULL, *oc = NULL;
        CHECK_OK(toc_host_tensor(rt, toc_dt(s), 0, NULL, 0, s + d, &h));
        CHECK_EQ_INT(ab_tensor_nbytes(h), th_dt_size(toc_dt(s)));
        ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
        CHECK_OK(toc_convert(rt, h, toc_ocl(0), &same, &oc));
        CHECK_EQ_INT(ab_tensor_dl(oc)->ndim, 0);
        snprintf(label, sizeof label, "0-d %s->%s up", TOC_DT[s].name, TOC_DT[d].name);
        CHECK_OK(check_path(rt, h, h, toc_ocl(0), &o, label));
        snprintf(label, sizeof label, "0-d %s->%s down", TOC_DT[s].name, TOC_DT[d].name);
        CHECK_OK(check_path(rt, oc, h, th_host(0), &o, label));
        snprintf(label, sizeof label, "0-d %s->%s local", TOC_DT[s].name, TOC_DT[d].name);
        CHECK_OK(check_path(rt, oc, h, toc_ocl(0), &o, label));
        snprintf(label, sizeof label, "0-d %s->%s cross", TOC_DT[s].name, TOC_DT[d].name);
        CHECK_OK(check_path(rt, oc, h, toc_ocl(1), &o, label));
        ab_tensor_release(h);
        ab_tensor_release(oc);
        /* empty */
        for (int e = 0; e < 3; e++) {
          CHECK_OK(toc_host_tensor(rt, toc_dt(s), 2, empty_shapes[e], 0, 0, &h));
          CHECK_EQ_INT(ab_tensor_nbytes(h), 0);
          CHECK_OK(toc_convert(rt, h, toc_ocl(0), &same, &oc));
          CHECK_EQ_INT(ab_tensor_nbytes(oc), 0);
          CHECK_EQ_INT(ab_tensor_device(oc).kind, AB_OPENCL);
          ab_device dsts[3] = {toc_ocl(0), th_host(0), toc_ocl(1)};
          for (int k = 0; k < 3; k++) {
            ab_tensor *r = NULL;
            CHECK_OK(toc_convert(rt, k == 0 ? h : oc, dsts[k], &o, &r));
            CHECK_EQ_INT(ab_tensor_nbytes(r), 0);
            CHECK_EQ_INT(ab_tensor_dl(r)->ndim, 2);
            CHECK_EQ_INT(ab_tensor_dl(r)->shape[0], empty_shapes[e][0]);
            CHECK_EQ_INT(ab_tensor_dl(r)->shape[1], empty_shapes[e][1]);
            CHECK_EQ_INT(ab_tensor_dl(r)->dtype.code, TOC_DT[d].code);
            CHECK_EQ_INT(ab_tensor_device(r).kind, dsts[k].kind);
            CHECK_EQ_INT(ab_tensor_device(r).index, dsts[k].index);
            ab_tensor_release(r);
          }
          ab_tensor_release(h);
          ab_tensor_release(oc);
        }
      }
    }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* strict: opencl:0 -> opencl:1 would stage through the host: AB_EPERM as the future's status.
 * host <-> opencl and opencl:0 -> opencl:0 are still allowed. */
static int test_strict(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 2);
  sources s;
  CHECK_OK(sources_make(rt, TH_F64, 1, true, &s));
  for (int d = 0; d < TOC_NDT; d++) {
    ab_convert_options o = toc_copt(toc_dt(d), d % 2);
    o.strict = true;
    for (int strided = 0; strided < 2; strided++) {
      ab_tensor *src = strided ? s.ov : s.oc;
      ab_future *f = NULL;
      CHECK_OK(ab_convert(rt, src, toc_ocl(1), &o, &f));
      CHECK_OK(ab_future_wait(f, -1));
      CHECK_EQ_INT(ab_future_status(f), AB_EPERM);
      ab_tensor *r = (ab_tensor *)1;
      CHECK_EQ_INT(ab_future_result(f, &r), AB_EPERM);
      ab_future_release(f);
      /* the same with force_copy and the same dtype */
      ab_convert_options o2 = o;
      o2.force_copy = true;
      o2.dtype.bits = 0;
      CHECK_OK(ab_convert(rt, src, toc_ocl(1), &o2, &f));
      CHECK_EQ_INT(toc_take(f, NULL), AB_EPERM);
      /* allowed paths still convert correctly */
      char label[64];
      snprintf(label, sizeof label, "strict up ->%s", TOC_DT[d].name);
      CHECK_OK(check_path(rt, strided ? s.hv : s.hc, strided ? s.hv : s.hc, toc_ocl(1), &o, label));
      snprintf(label, sizeof label, "strict down ->%s", TOC_DT[d].name);
      CHECK_OK(check_path(rt, src, strided ? s.hv : s.hc, th_host(0), &o, label));
      snprintf(label, sizeof label, "strict local ->%s", TOC_DT[d].name);
      CHECK_OK(check_path(rt, src, strided ? s.hv : s.hc, toc_ocl(0), &o, label));
    }
  }
  /* strict stacking across OpenCL devices is refused too; onto host it is allowed */
  ab_tensor *sl[2] = {s.oc, s.hc};
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.strict = true;
  ab_future *f = NULL;
  CHECK_OK(ab_stack(rt, sl, 2, toc_ocl(1), &o, &f));
  CHECK_EQ_INT(toc_take(f, NULL), AB_EPERM);
  CHECK_OK(ab_stack(rt, sl, 2, th_host(0), &o, &f));
  CHECK_OK(toc_take(f, NULL));
  /* the source is intact */
  ab_tensor *a = NULL;
  CHECK_OK(toc_to_host(rt, s.oc, &a));
  CHECK_OK(toc_same(a, s.hc, "strict source intact"));
  ab_tensor_release(a);
  sources_free(&s);
  /* nothing is left allocated on the devices */
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Many chains in flight at once, nothing waited for until the end: host -> opencl:0 (dtype
 * change) -> opencl:1 -> opencl:1 strided-free copy -> host, two workers per device, buffers
 * recycled between tasks while others are pending. Every chain equals the host's conversion. */
static int test_async_pipeline(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  opt.kinds[AB_OPENCL].workers_per_device = 2;
  TOC_RUNTIME(&rt, &opt, 2);
  int ndev = toc_count(rt, AB_OPENCL);
  enum { MAXCH = 2 * 11 * 11 * 2 };
  static ab_future *last[MAXCH];
  static ab_tensor *refs[MAXCH];
  static char labels[MAXCH][64];
  int nch = 0;
  for (int rep = 0; rep < (th_scale() < 1 ? 1 : 2); rep++)
    for (int s = 0; s < TOC_NDT; s++) {
      sources src;
      CHECK_OK(sources_make(rt, toc_dt(s), toc_dt(s).code == kDLFloat ? rep : 0, false, &src));
      for (int d = 0; d < TOC_NDT; d++)
        for (int mode = 0; mode < 2; mode++) {
          if (!pair_selected(s, d, mode)) continue;
          ab_tensor *h = (d + mode + rep) % 2 ? src.hv : src.hc;
          ab_convert_options o = toc_copt(toc_dt(d), mode);
          ab_convert_options ro = o, same = AB_CONVERT_OPTIONS_INIT, fc = AB_CONVERT_OPTIONS_INIT;
          ro.force_copy = true;
          fc.force_copy = true;
          CHECK_OK(toc_convert(rt, h, th_host(0), &ro, &refs[nch]));
          ab_future *a = NULL, *b = NULL, *c = NULL;
          CHECK_OK(ab_convert(rt, h, toc_ocl((s + d) % ndev), &o, &a));
          CHECK_OK(ab_convert_after(rt, a, toc_ocl((s + d + 1) % ndev), &same, &b));
          CHECK_OK(ab_convert_after(rt, b, toc_ocl((s + d + 1) % ndev), &fc, &c));
          ab_future_release(a);
          ab_future_release(b);
          CHECK_OK(ab_convert_after(rt, c, th_host(0), &same, &last[nch]));
          ab_future_release(c);
          snprintf(labels[nch], sizeof labels[nch], "async %s->%s %s rep %d", TOC_DT[s].name, TOC_DT[d].name,
                   mode ? "stretch" : "saturate", rep);
          nch++;
        }
      sources_free(&src);
    }
  CHECK_OK(ab_future_wait_all(last, (size_t)nch, TH_SEC(120)));
  int bad = 0;
  for (int i = 0; i < nch; i++) {
    ab_tensor *got = NULL;
    int rc = toc_take(last[i], &got);
    if (rc != 0) {
      fprintf(stderr, "# %s: %d%s\n", labels[i], rc, th_errstr(rc));
      bad++;
    } else {
      bad += toc_same(got, refs[i], labels[i]) != 0;
    }
    ab_tensor_release(got);
    ab_tensor_release(refs[i]);
  }
  fprintf(stderr, "# %d chains, %d bad\n", nch, bad);
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY_T(async_pipeline, 120),
    TEST_ENTRY_T(upload_matrix, 120),
    TEST_ENTRY_T(download_matrix, 120),
    TEST_ENTRY_T(local_matrix, 120),
    TEST_ENTRY_T(cross_device_matrix, 120),
    TEST_ENTRY_T(zero_copy_and_force_copy, 60),
    TEST_ENTRY_T(zero_d_and_empty, 120),
    TEST_ENTRY_T(strict, 60),
    TEST_END,
};
AB_TEST_MAIN(tests)
