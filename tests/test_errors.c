/* test_errors.c: the error table, ab_strerror, ab_err_name, ab_version. */
#include "harness.h"

#include <stdlib.h>

typedef struct {
  int code;
  const char *name;
  const char *text;
} err_row;

static const err_row rows[] = {
#define ROW(name, code, text) {code, #name, text},
    AB_ERRNO_MAP(ROW)
#undef ROW
};
#define NROWS ((int)(sizeof rows / sizeof rows[0]))

static int test_strerror_every_code(void) {
  for (int i = 0; i < NROWS; i++) {
    const char *s = ab_strerror(rows[i].code);
    CHECK_NOT_NULL(s);
    CHECK_MSG(strcmp(s, rows[i].text) == 0, "ab_strerror(%d) = \"%s\", want \"%s\"", rows[i].code,
              s, rows[i].text);
  }
  return 0;
}

static int test_err_name_every_code(void) {
  for (int i = 0; i < NROWS; i++) {
    const char *s = ab_err_name(rows[i].code);
    CHECK_NOT_NULL(s);
    /* "EINVAL" or "AB_EINVAL" */
    CHECK_MSG(strstr(s, rows[i].name) != NULL, "ab_err_name(%d) = \"%s\", want it to name %s",
              rows[i].code, s, rows[i].name);
  }
  return 0;
}

static int test_codes_distinct_and_negative(void) {
  for (int i = 0; i < NROWS; i++) {
    CHECK(rows[i].code < 0);
    for (int j = i + 1; j < NROWS; j++) CHECK(rows[i].code != rows[j].code);
  }
  /* the values the header promises (errno-compatible where an errno exists) */
  CHECK_EQ_INT(AB_EINVAL, -22);
  CHECK_EQ_INT(AB_ENOMEM, -12);
  CHECK_EQ_INT(AB_ETIMEDOUT, -110);
  CHECK_EQ_INT(AB_ECANCELED, -125);
  return 0;
}

static int test_unknown_and_zero(void) {
  /* never NULL, never crash */
  int odd[] = {0, 1, -2, -9999, 12345, INT32_MIN, INT32_MAX};
  for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
    CHECK_NOT_NULL(ab_strerror(odd[i]));
    CHECK_NOT_NULL(ab_err_name(odd[i]));
  }
  /* an unknown code must not masquerade as a known one */
  const char *u = ab_strerror(-9999);
  for (int i = 0; i < NROWS; i++) CHECK(strcmp(u, rows[i].text) != 0);
  return 0;
}

static int test_version(void) {
  const char *v = ab_version();
  CHECK_NOT_NULL(v);
  CHECK_MSG(strcmp(v, AB_VERSION_STRING) == 0, "ab_version() = %s, header says %s", v,
            AB_VERSION_STRING);
  char buf[32];
  snprintf(buf, sizeof buf, "%d.%d.%d", AB_VERSION_MAJOR, AB_VERSION_MINOR, AB_VERSION_PATCH);
  CHECK(strcmp(buf, v) == 0);
  return 0;
}

/* NULL is accepted by every function: fallible ones return AB_EINVAL, the others a neutral
 * value (the header says which). ab_tensor_device, the retain functions and ab_ctx_* crashed. */
static int test_null_everywhere(void) {
  ab_device d = ab_tensor_device(NULL);
  CHECK_EQ_INT(d.kind, -1);
  CHECK_EQ_INT(d.index, -1);
  CHECK_NULL(ab_tensor_retain(NULL));
  CHECK_NULL(ab_future_retain(NULL));
  ab_tensor_release(NULL);
  ab_future_release(NULL);
  CHECK_NULL(ab_tensor_dl(NULL));
  CHECK_EQ_INT(ab_tensor_flags(NULL), 0);
  CHECK_EQ_U64(ab_tensor_nbytes(NULL), 0);
  CHECK(!ab_tensor_is_contiguous(NULL));
  d = ab_ctx_device(NULL);
  CHECK_EQ_INT(d.kind, -1);
  CHECK_EQ_INT(d.index, -1);
  CHECK_NULL(ab_ctx_stream(NULL));
  CHECK_EQ_INT(ab_ctx_worker(NULL), AB_EINVAL);
  CHECK_EQ_INT(ab_ctx_ninputs(NULL), AB_EINVAL);
  CHECK_NULL(ab_ctx_input(NULL, 0));
  CHECK(!ab_ctx_cancelled(NULL));
  void *p = (void *)(uintptr_t)1;
  CHECK_EQ_INT(ab_ctx_alloc(NULL, 8, &p), AB_EINVAL);
  CHECK_NULL(p);
  ab_tensor *t = (ab_tensor *)(uintptr_t)1;
  CHECK_EQ_INT(ab_ctx_alloc_tensor(NULL, th_dt(kDLFloat, 32), 0, NULL, &t), AB_EINVAL);
  CHECK_NULL(t);
  CHECK_EQ_INT(ab_ctx_set_output(NULL, NULL), AB_EINVAL);
  CHECK_EQ_INT(ab_future_status(NULL), AB_EINVAL);
  CHECK_EQ_INT(ab_future_wait(NULL, 0), AB_EINVAL);
  CHECK_EQ_INT(ab_future_cancel(NULL), AB_EINVAL);
  CHECK_NULL(ab_future_message(NULL));
  CHECK_EQ_INT(ab_runtime_destroy(NULL, AB_DRAIN), 0);
  CHECK_EQ_INT(ab_runtime_devices(NULL, NULL, 0), AB_EINVAL);
  CHECK_EQ_INT(ab_runtime_stats(NULL, NULL, 0), AB_EINVAL);
  CHECK_EQ_INT(ab_runtime_fault(NULL, NULL), AB_EINVAL);
  CHECK_EQ_INT(ab_trace_start(NULL, NULL), AB_EINVAL);
  CHECK_EQ_INT(ab_trace_stop(NULL), AB_EINVAL);
  CHECK_EQ_INT(ab_trace_write(NULL, NULL), AB_EINVAL);
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY(strerror_every_code), TEST_ENTRY(err_name_every_code),
    TEST_ENTRY(codes_distinct_and_negative), TEST_ENTRY(unknown_and_zero), TEST_ENTRY(version),
    TEST_ENTRY(null_everywhere),
    TEST_END};
AB_TEST_MAIN(tests)
