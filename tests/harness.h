/*
 * harness.h: a tiny libuv-style test harness.
 *
 * A test file defines `static int test_xxx(void)` functions, lists them in a table and ends with
 * AB_TEST_MAIN(table). main runs each test in a forked child under an alarm, so one crash or hang
 * does not hide the others, and prints TAP lines. A test returns 0 (pass), TEST_SKIP (77) or
 * anything else (fail); the CHECK macros print where and why and return 1.
 *
 * Environment:
 *   AB_TEST_NOFORK=1     run tests in-process (debuggers, TSan); a crash then stops the run
 *   AB_TEST_TIMEOUT=s    per-test alarm (default: the table's value, else 30 s)
 *   AB_TEST_SCALE=f      multiply iteration counts by f (e.g. 0.1 under TSan)
 *   AB_TEST_ONLY=a,b     run only these tests (CTest entries that share one executable)
 *   argv[1..]            run only the tests with these names
 *
 * Exit: 0 if every test ran passed, 77 if every test skipped, 1 otherwise.
 */
#ifndef AB_TEST_HARNESS_H
#define AB_TEST_HARNESS_H

#include <inttypes.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "arraybridge.h"

#define TEST_SKIP 77

typedef int (*ab_test_fn)(void);
typedef struct {
  const char *name;
  ab_test_fn fn;
  int timeout_s; /* 0: the default */
} ab_test_entry;

#define TEST_ENTRY(n) {#n, test_##n, 0}
#define TEST_ENTRY_T(n, secs) {#n, test_##n, (secs)}
#define TEST_END {NULL, NULL, 0}

int ab_test_main(const ab_test_entry *tests, int argc, char **argv);
#define AB_TEST_MAIN(table)                                                                     \
  int main(int argc, char **argv) { return ab_test_main(table, argc, argv); }

/* ---- checks ------------------------------------------------------------------------------- */
void th_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *th_errstr(long long v); /* "" for v >= 0, " (AB_Exxx: text)" otherwise */

#define CHECK(cond)                                                                             \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      th_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond);                                   \
      return 1;                                                                                 \
    }                                                                                           \
  } while (0)

#define CHECK_MSG(cond, ...)                                                                    \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      th_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond);                                   \
      th_fail(__FILE__, __LINE__, __VA_ARGS__);                                                 \
      return 1;                                                                                 \
    }                                                                                           \
  } while (0)

#define CHECK_EQ_INT(a, b)                                                                      \
  do {                                                                                          \
    long long th_a_ = (long long)(a), th_b_ = (long long)(b);                                   \
    if (th_a_ != th_b_) {                                                                       \
      th_fail(__FILE__, __LINE__, "CHECK_EQ_INT(%s, %s): %lld%s != %lld%s", #a, #b, th_a_,       \
              th_errstr(th_a_), th_b_, th_errstr(th_b_));                                       \
      return 1;                                                                                 \
    }                                                                                           \
  } while (0)

#define CHECK_OK(expr) CHECK_EQ_INT(expr, 0)

#define CHECK_EQ_U64(a, b)                                                                      \
  do {                                                                                          \
    uint64_t th_a_ = (uint64_t)(a), th_b_ = (uint64_t)(b);                                      \
    if (th_a_ != th_b_) {                                                                       \
      th_fail(__FILE__, __LINE__, "CHECK_EQ_U64(%s, %s): %" PRIu64 " != %" PRIu64, #a, #b,       \
              th_a_, th_b_);                                                                    \
      return 1;                                                                                 \
    }                                                                                           \
  } while (0)

/* a <= b, as unsigned 64-bit */
#define CHECK_LE_U64(a, b)                                                                      \
  do {                                                                                          \
    uint64_t th_a_ = (uint64_t)(a), th_b_ = (uint64_t)(b);                                      \
    if (!(th_a_ <= th_b_)) {                                                                    \
      th_fail(__FILE__, __LINE__, "CHECK_LE_U64(%s, %s): %" PRIu64 " > %" PRIu64, #a, #b,        \
              th_a_, th_b_);                                                                    \
      return 1;                                                                                 \
    }                                                                                           \
  } while (0)

#define CHECK_EQ_PTR(a, b)                                                                      \
  do {                                                                                          \
    const void *th_a_ = (const void *)(a), *th_b_ = (const void *)(b);                          \
    if (th_a_ != th_b_) {                                                                       \
      th_fail(__FILE__, __LINE__, "CHECK_EQ_PTR(%s, %s): %p != %p", #a, #b, th_a_, th_b_);      \
      return 1;                                                                                 \
    }                                                                                           \
  } while (0)

#define CHECK_NULL(p) CHECK_EQ_PTR(p, NULL)
#define CHECK_NOT_NULL(p) CHECK((p) != NULL)

/* expr must fail: return a negative code, one of the listed ones when given (up to 4). */
int th_code_in(int code, int n, const int *codes);
#define CHECK_ERR_IN(expr, ...)                                                                 \
  do {                                                                                          \
    int th_c_ = (int)(expr);                                                                    \
    const int th_set_[] = {__VA_ARGS__};                                                        \
    if (!th_code_in(th_c_, (int)(sizeof th_set_ / sizeof th_set_[0]), th_set_)) {               \
      th_fail(__FILE__, __LINE__, "CHECK_ERR_IN(%s, %s): got %d%s", #expr, #__VA_ARGS__, th_c_, \
              th_errstr(th_c_));                                                                \
      return 1;                                                                                 \
    }                                                                                           \
  } while (0)

/* ---- helpers shared by the tests ---------------------------------------------------------- */
double th_scale(void);               /* AB_TEST_SCALE, default 1 */
long th_scaled(long n);              /* max(1, n * scale) */
int64_t th_now_ns(void);             /* CLOCK_MONOTONIC */
void th_sleep_ns(int64_t ns);
#define TH_MS(x) ((int64_t)(x) * 1000000LL)
#define TH_SEC(x) ((int64_t)(x) * 1000000000LL)

/* Host-only options: OpenCL and CUDA disabled, size set. */
void th_options(ab_runtime_options *o);
/* A host-only runtime: `workers` per device, host split into `split` logical devices. */
int th_runtime(ab_runtime **rt, int workers, int split);
ab_device th_host(int index);
DLDataType th_dt(uint8_t code, uint8_t bits);
#define TH_F32 th_dt(kDLFloat, 32)
#define TH_F64 th_dt(kDLFloat, 64)
#define TH_U8 th_dt(kDLUInt, 8)
#define TH_U16 th_dt(kDLUInt, 16)
#define TH_I32 th_dt(kDLInt, 32)
size_t th_dt_size(DLDataType dt);
/* Address of element idx[] of a DLTensor (honours byte_offset; NULL strides = contiguous). */
void *th_elem(const DLTensor *dl, const int64_t *idx);
int64_t th_numel(const DLTensor *dl);
/* Slices for stacking tests that cross many windows: n host slices of h x w u16, element k of
 * slice i = th_wval(i, k); every 5th a transposed view of a [w, h] base (not plain: a stack
 * packs it on its own, apart from the windows). */
uint16_t th_wval(int i, int64_t k);
int th_window_slices(ab_runtime *rt, int n, int64_t h, int64_t w, ab_tensor **sl);
/* Stats of one device (0 on success). */
int th_stats(ab_runtime *rt, ab_device d, ab_device_stats *out);

/* A gate: th_gate_task posts `started`, then blocks until the test opens the gate (or, with
 * `honour_cancel`, until ab_ctx_cancelled turns true; it then returns AB_ECANCELED). */
typedef struct {
  sem_t started;
  sem_t release;
  atomic_int ran;        /* how many th_gate_task calls began */
  atomic_int open;       /* set by th_gate_open_all: every later wait passes */
  bool honour_cancel;
} th_gate;
void th_gate_init(th_gate *g);
void th_gate_destroy(th_gate *g);
int th_gate_task(ab_ctx *c, void *arg);
void th_gate_wait_started(th_gate *g);
void th_gate_open(th_gate *g, int n);  /* let n waiters pass */
void th_gate_open_all(th_gate *g);
/* Submit th_gate_task on device d (explicit) and wait until it runs. */
int th_submit_gate(ab_runtime *rt, ab_device d, th_gate *g, ab_future **out);

/* A trivial task: increments *(atomic_int *)arg when arg is not NULL; returns 0. */
int th_count_task(ab_ctx *c, void *arg);
/* Submit fn(arg) with explicit placement on d. */
int th_submit_fn(ab_runtime *rt, ab_device d, ab_task_fn fn, void *arg, ab_future **out);

#endif
