/* test_errors.c: the error table, ab_strerror, ab_err_name, ab_version; a backend's note about
 * a failed call reaching the failing task's future (ab_future_message) and, with AB_DEBUG,
 * stderr. */
#define _GNU_SOURCE
#include "harness.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* runtime/errors.c (internal: the static library shows it to the tests) */
void ab__device_error(const char *fmt, ...);
void ab__device_error_clear(void);
const char *ab__device_error_peek(void);

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

/* What a task body does: leave a note (or not) and return rc. */
typedef struct {
  const char *note;
  int rc;
} note_job;

static int note_task(ab_ctx *c, void *arg) {
  (void)c;
  const note_job *j = arg;
  if (j->note) ab__device_error("%s at line %d", j->note, 7);
  return j->rc;
}

static int run_note(ab_runtime *rt, const note_job *j, int *status, char *msg, size_t cap) {
  ab_future *f;
  CHECK_OK(th_submit_fn(rt, th_host(0), note_task, (void *)j, &f));
  CHECK_OK(ab_future_wait(f, -1));
  *status = ab_future_status(f);
  const char *m = ab_future_message(f);
  snprintf(msg, cap, "%s", m ? m : "(none)");
  ab_future_release(f);
  return 0;
}

/* A failing task's future carries what its backend said; a note never outlives its task, so a
 * later failure without one gets no message, and a task that succeeded leaves nothing behind. */
static int test_device_note_reaches_the_future(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1)); /* one worker: every task runs on the same thread */
  int st;
  char msg[256];
  CHECK_OK(run_note(rt, &(note_job){"cudaMemcpyAsync failed: cudaErrorInvalidValue", AB_EDEVICE}, &st, msg, sizeof msg));
  CHECK_EQ_INT(st, AB_EDEVICE);
  CHECK_MSG(strcmp(msg, "cudaMemcpyAsync failed: cudaErrorInvalidValue at line 7") == 0, "message: %s", msg);
  CHECK_OK(run_note(rt, &(note_job){NULL, AB_EDEVICE}, &st, msg, sizeof msg));
  CHECK_EQ_INT(st, AB_EDEVICE);
  CHECK_MSG(strcmp(msg, "(none)") == 0, "a note from an earlier task: %s", msg);
  CHECK_OK(run_note(rt, &(note_job){"ignored by its task", 0}, &st, msg, sizeof msg));
  CHECK_OK(st);
  CHECK_OK(run_note(rt, &(note_job){NULL, AB_EINVAL}, &st, msg, sizeof msg));
  CHECK_EQ_INT(st, AB_EINVAL);
  CHECK_MSG(strcmp(msg, "(none)") == 0, "the successful task's note: %s", msg);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* In a child with stderr on a pipe: AB_DEBUG=value (NULL: unset), one note; what it printed. */
static int debug_output(const char *value, char *out, size_t cap) {
  int p[2];
  CHECK_OK(pipe(p));
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    dup2(p[1], 2);
    close(p[0]);
    if (value) setenv("AB_DEBUG", value, 1);
    else unsetenv("AB_DEBUG");
    ab__device_error("cudaSetDevice failed: %s", "cudaErrorInvalidDevice");
    _exit(strcmp(ab__device_error_peek(), "cudaSetDevice failed: cudaErrorInvalidDevice") == 0 ? 0 : 3);
  }
  close(p[1]);
  ssize_t n, got = 0;
  while ((n = read(p[0], out + got, cap - 1 - (size_t)got)) > 0) got += n;
  out[got] = 0;
  close(p[0]);
  int status;
  CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  return 0;
}

/* A compute task explains its own failure. */
static int fail_task(ab_ctx *c, void *arg) { return ab_ctx_fail(c, AB_EINVAL, "bad %s of %d", (const char *)arg, 3); }

static int test_ctx_fail_sets_the_message(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  ab_future *f;
  CHECK_OK(th_submit_fn(rt, th_host(0), fail_task, "input", &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_EINVAL);
  CHECK_NOT_NULL(ab_future_message(f));
  CHECK_MSG(strcmp(ab_future_message(f), "bad input of 3") == 0, "message: %s", ab_future_message(f));
  ab_future_release(f);
  CHECK_EQ_INT(ab_ctx_fail(NULL, AB_EDEVICE, "no task"), AB_EDEVICE);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_device_note_on_stderr_with_ab_debug(void) {
  char out[512];
  CHECK_OK(debug_output("1", out, sizeof out));
  CHECK_MSG(strcmp(out, "arraybridge: cudaSetDevice failed: cudaErrorInvalidDevice\n") == 0, "stderr: '%s'", out);
  CHECK_OK(debug_output(NULL, out, sizeof out));
  CHECK_MSG(out[0] == 0, "stderr without AB_DEBUG: '%s'", out);
  CHECK_OK(debug_output("0", out, sizeof out));
  CHECK_MSG(out[0] == 0, "stderr with AB_DEBUG=0: '%s'", out);
  ab__device_error_clear();
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
    TEST_ENTRY(device_note_reaches_the_future), TEST_ENTRY(ctx_fail_sets_the_message),
    TEST_ENTRY(device_note_on_stderr_with_ab_debug),
    TEST_ENTRY(null_everywhere),
    TEST_END};
AB_TEST_MAIN(tests)
