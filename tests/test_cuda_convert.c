/*
 * test_cuda_convert.c: conversions to, from and between CUDA devices, every dtype pair and both
 * cast modes, contiguous and strided, each checked against the host device's result bit for
 * bit (NaN payloads aside, see tcu_same). Skips (77) without enough CUDA devices.
 *
 * Paths: pageable host -> GPU (the staging ring), pinned host -> GPU (direct DMA), GPU -> host,
 * on one GPU (the cast kernels on a strided device view), between two logical devices of one
 * GPU (a device-to-device copy, allowed under strict), and between two GPUs (peer copy, or host
 * staging where peers are not allowed).
 */
#include "test_cuda_common.c"

#define ROWS 37
#define COLS 29
#define BROWS (2 * ROWS)
#define BCOLS (2 * COLS)

typedef struct {
  ab_tensor *hc, *hbase, *hv; /* host: contiguous, the base of the view, the strided view */
  ab_tensor *pc;              /* pinned copy of hc */
  ab_tensor *gc, *gbase, *gv; /* cuda:0 copies of hc and hbase, and the same view */
} sources;

static const int64_t SHAPE[2] = {ROWS, COLS};
static const int64_t BSHAPE[2] = {BROWS, BCOLS};
static const int64_t VSTRIDES[2] = {-2 * BCOLS, -2};
static const int64_t VOFFSET = (BROWS - 1) * BCOLS + (BCOLS - 1);

static void sources_free(sources *s) {
  ab_tensor *all[] = {s->hc, s->hbase, s->hv, s->pc, s->gc, s->gbase, s->gv};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ab_tensor_release(all[i]);
  memset(s, 0, sizeof *s);
}

static int sources_make(ab_runtime *rt, DLDataType dt, int set, sources *s) {
  memset(s, 0, sizeof *s);
  CHECK_OK(toc_host_tensor(rt, dt, 2, SHAPE, set, 0, &s->hc));
  CHECK_OK(toc_host_tensor(rt, dt, 2, BSHAPE, set, 17, &s->hbase));
  CHECK_OK(ab_tensor_view(s->hbase, 2, SHAPE, VSTRIDES, VOFFSET, &s->hv));
  const DLTensor *v = ab_tensor_dl(s->hv);
  int64_t k = 0;
  for (int64_t i = 0; i < ROWS; i++)
    for (int64_t j = 0; j < COLS; j++) {
      int64_t idx[2] = {i, j};
      toc_value(dt, set, k++, th_elem(v, idx)); /* every special value lands in the view */
    }
  CHECK_OK(ab_tensor_alloc_pinned(rt, dt, 2, SHAPE, &s->pc));
  CHECK_EQ_INT(ab_tensor_dl(s->pc)->device.device_type, kDLCUDAHost); /* a GPU is here: pinned */
  memcpy(ab_tensor_dl(s->pc)->data, ab_tensor_dl(s->hc)->data, ab_tensor_nbytes(s->hc));
  ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
  CHECK_OK(toc_convert(rt, s->hc, tcu_dev(0), &same, &s->gc));
  CHECK_OK(toc_convert(rt, s->hbase, tcu_dev(0), &same, &s->gbase));
  CHECK_EQ_INT(ab_tensor_device(s->gc).kind, AB_CUDA);
  CHECK_OK(ab_tensor_view(s->gbase, 2, SHAPE, VSTRIDES, VOFFSET, &s->gv));
  CHECK(!ab_tensor_is_contiguous(s->gv));
  return 0;
}

/* src -> dst with o, against ref_src -> host with o. */
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
  if (dst.kind == AB_HOST) back = ab_tensor_retain(got);
  else CHECK_OK(toc_to_host(rt, got, &back));
  int bad = tcu_same(back, ref, label);
  ab_tensor_release(ref);
  ab_tensor_release(got);
  ab_tensor_release(back);
  return bad;
}

typedef enum { P_PAGEABLE, P_PINNED, P_DOWNLOAD, P_LOCAL, P_LOGICAL, P_PEER } path_kind;
static const char *const PATH_NAMES[] = {"pageable", "pinned", "download", "local", "logical", "peer"};

static int one_source(ab_runtime *rt, path_kind path, sources *src, int s, int set, int *checks) {
  int failures = 0;
  for (int d = 0; d < TOC_NDT; d++)
    for (int mode = AB_CAST_SATURATE; mode <= AB_CAST_STRETCH; mode++)
      for (int strided = 0; strided < 2; strided++) {
        if (path == P_PINNED && strided) continue; /* the pinned source is contiguous */
        ab_convert_options o = toc_copt(toc_dt(d), mode);
        o.strict = path == P_LOGICAL; /* one GPU: no host memory on the way */
        char label[96];
        snprintf(label, sizeof label, "%s %s->%s %s set %d %s", PATH_NAMES[path], TOC_DT[s].name, TOC_DT[d].name,
                 mode ? "stretch" : "saturate", set, strided ? "strided" : "contiguous");
        ab_tensor *ref_src = strided ? src->hv : src->hc, *dev_src = strided ? src->gv : src->gc;
        ab_tensor *from = path == P_PAGEABLE ? ref_src : path == P_PINNED ? src->pc : dev_src;
        ab_device to = path == P_DOWNLOAD ? th_host(0) : path == P_LOGICAL || path == P_PEER ? tcu_dev(1) : tcu_dev(0);
        failures += check_path(rt, from, ref_src, to, &o, label) != 0;
        (*checks)++;
      }
  return failures;
}

static int matrix(path_kind path) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, path == P_LOGICAL ? 2 : 1);
  TCU_RUNTIME(&rt, &opt, path == P_LOGICAL || path == P_PEER ? 2 : 1, path == P_PEER ? 2 : 1);
  int failures = 0, checks = 0;
  for (int s = 0; s < TOC_NDT; s++) {
    int nsets = toc_dt(s).code == kDLFloat ? 2 : 1;
    for (int set = 0; set < nsets; set++) {
      sources src;
      if (sources_make(rt, toc_dt(s), set, &src) != 0) {
        sources_free(&src);
        ab_runtime_destroy(rt, AB_DRAIN);
        return 1;
      }
      failures += one_source(rt, path, &src, s, set, &checks);
      sources_free(&src);
    }
  }
  fprintf(stderr, "# %d checks, %d failed\n", checks, failures);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return failures != 0;
}

static int test_pageable_matrix(void) { return matrix(P_PAGEABLE); }
static int test_pinned_matrix(void) { return matrix(P_PINNED); }
static int test_download_matrix(void) { return matrix(P_DOWNLOAD); }
static int test_local_matrix(void) { return matrix(P_LOCAL); }
static int test_logical_matrix(void) { return matrix(P_LOGICAL); }
static int test_peer_matrix(void) { return matrix(P_PEER); }

/* Sizes around the staging ring's 4 MiB chunks and its 3-chunk cycle, odd sizes among them, up
 * and back down, from pageable and from pinned memory: every byte must survive. */
static int test_staging_ring_sizes(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 1);
  TCU_RUNTIME(&rt, &opt, 1, 1);
  const size_t MiB = (size_t)1 << 20;
  const size_t sizes[] = {1, 255, 257, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 8 * MiB + 12345, 12 * MiB, 13 * MiB + 7,
                          3 * 4 * MiB * 2 + 999};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
    for (int pinned = 0; pinned < 2; pinned++) {
      ab_tensor *h, *g, *back;
      CHECK_OK(tcu_bytes(rt, sizes[k], pinned, &h));
      ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
      CHECK_OK(toc_convert(rt, h, tcu_dev(0), &o, &g));
      CHECK_OK(toc_to_host(rt, g, &back));
      char label[64];
      snprintf(label, sizeof label, "%zu bytes, %s", sizes[k], pinned ? "pinned" : "pageable");
      CHECK_OK(toc_same(back, h, label));
      ab_tensor_release(h);
      ab_tensor_release(g);
      ab_tensor_release(back);
    }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Many small uploads in flight at once share ring chunks: each must land whole, in its own
 * tensor, while the pieces before it are still being copied. */
static int test_many_small_uploads(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 1);
  TCU_RUNTIME(&rt, &opt, 1, 1);
  enum { N = 64 };
  ab_tensor *h[N];
  ab_future *f[N];
  int64_t shape[1] = {300000};
  for (int i = 0; i < N; i++) {
    CHECK_OK(toc_host_tensor(rt, TH_U16, 1, shape, 0, i * 7, &h[i]));
    CHECK_OK(ab_convert(rt, h[i], tcu_dev(0), NULL, &f[i]));
  }
  for (int i = 0; i < N; i++) {
    ab_tensor *g, *back;
    CHECK_OK(toc_take(f[i], &g));
    CHECK_OK(toc_to_host(rt, g, &back));
    CHECK_OK(toc_same(back, h[i], "small upload"));
    ab_tensor_release(g);
    ab_tensor_release(back);
    ab_tensor_release(h[i]);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* strict: refused only where host memory would be on the way. Logical devices of one GPU copy
 * directly; host <-> GPU is always allowed (the host is an end, not a stop). */
static int test_strict(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 2);
  TCU_RUNTIME(&rt, &opt, 2, 1);
  int64_t shape[1] = {1000};
  ab_tensor *h, *g0, *g1, *back;
  CHECK_OK(toc_host_tensor(rt, TH_F32, 1, shape, 1, 3, &h));
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.strict = true;
  CHECK_OK(toc_convert(rt, h, tcu_dev(0), &o, &g0));
  CHECK_OK(toc_convert(rt, g0, tcu_dev(1), &o, &g1));
  CHECK_OK(toc_to_host(rt, g1, &back));
  CHECK_OK(toc_same(back, h, "strict logical"));
  ab_tensor_release(h);
  ab_tensor_release(g0);
  ab_tensor_release(g1);
  ab_tensor_release(back);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A compute task gets the worker's stream, scratch from the pool, and a result that the next
 * task (on the other worker's stream) sees complete. */
static int fill_task(ab_ctx *c, void *arg) {
  (void)arg;
  if (ab_ctx_stream(c) == NULL) return AB_EINVAL;
  void *scratch;
  int rc = ab_ctx_alloc(c, 1 << 20, &scratch);
  if (rc != 0) return rc;
  ab_tensor *in = ab_ctx_input(c, 0), *out;
  const int64_t *shape = ab_tensor_dl(in)->shape;
  if ((rc = ab_ctx_alloc_tensor(c, TH_U8, 1, shape, &out)) != 0) return rc;
  return ab_ctx_set_output(c, out);
}

static int test_ctx_stream_and_alloc(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 1);
  TCU_RUNTIME(&rt, &opt, 1, 1);
  ab_tensor *h, *g;
  CHECK_OK(tcu_bytes(rt, 4096, false, &h));
  CHECK_OK(toc_convert(rt, h, tcu_dev(0), NULL, &g));
  ab_input in = {.tensor = g};
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = fill_task;
  d.inputs = &in;
  d.ninputs = 1;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = tcu_dev(0);
  ab_future *f;
  CHECK_OK(ab_submit(rt, &d, &f));
  ab_tensor *out;
  CHECK_OK(toc_take(f, &out));
  CHECK_EQ_INT(ab_tensor_device(out).kind, AB_CUDA);
  CHECK_EQ_U64(ab_tensor_nbytes(out), 4096);
  ab_tensor_release(out);
  ab_tensor_release(g);
  ab_tensor_release(h);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_CUDA, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY_T(pageable_matrix, 240),
    TEST_ENTRY_T(pinned_matrix, 240),
    TEST_ENTRY_T(download_matrix, 240),
    TEST_ENTRY_T(local_matrix, 240),
    TEST_ENTRY_T(logical_matrix, 240),
    TEST_ENTRY_T(peer_matrix, 240),
    TEST_ENTRY_T(staging_ring_sizes, 120),
    TEST_ENTRY_T(many_small_uploads, 120),
    TEST_ENTRY_T(strict, 60),
    TEST_ENTRY_T(ctx_stream_and_alloc, 60),
    TEST_END,
};

AB_TEST_MAIN(tests)
