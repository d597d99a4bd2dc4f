/*
 * platform/platform.c: what the library needs from the operating system (Linux).
 *
 * Futexes let futures and queues sleep on the words they already use for state, so an idle
 * runtime makes no system calls and a busy one makes a wake-up call only when someone sleeps.
 */
#include <ck_ec.h>
#include <errno.h>
#include <linux/futex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "platform/platform.h"

int64_t ab__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t ab__deadline_after(int64_t timeout_ns) {
  if (timeout_ns < 0) return -1;
  return ab__now_ns() + timeout_ns;
}

static void to_timespec(struct timespec *ts, int64_t ns) {
  ts->tv_sec = ns / 1000000000;
  ts->tv_nsec = ns % 1000000000;
}

void ab__futex_wait(const _Atomic uint32_t *addr, uint32_t expected, int64_t deadline_ns) {
  struct timespec ts, *tsp = NULL;
  if (deadline_ns >= 0) {
    to_timespec(&ts, deadline_ns);
    tsp = &ts;
  }
  /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, which is what we hold. */
  syscall(SYS_futex, addr, FUTEX_WAIT_BITSET_PRIVATE, expected, tsp, NULL, FUTEX_BITSET_MATCH_ANY);
}

void ab__futex_wake_all(const _Atomic uint32_t *addr) {
  syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

void ab__sleep_ns(int64_t ns) {
  struct timespec ts;
  to_timespec(&ts, ns);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ---- fork ---------------------------------------------------------------------------------- */
/* Bumped in the child of every fork(), by the one thread the child starts with, before fork
 * returns there: every later load in the child (that thread's, or a thread it creates) sees it,
 * and nothing else ever writes it, so loads are relaxed. A getpid() per call would do the same
 * with a system call (glibc no longer caches the pid) where this is a load of a line nobody
 * writes. */
_Atomic uint32_t ab__fork_generation;

static void on_fork_child(void) { atomic_fetch_add_explicit(&ab__fork_generation, 1, memory_order_relaxed); }

static pthread_mutex_t fork_lock = PTHREAD_MUTEX_INITIALIZER;
static bool fork_watched;

int ab__fork_watch(void) {
  pthread_mutex_lock(&fork_lock);
  if (!fork_watched) fork_watched = pthread_atfork(NULL, NULL, on_fork_child) == 0;
  bool ok = fork_watched;
  pthread_mutex_unlock(&fork_lock);
  return ok ? 0 : AB_ENOMEM;
}

/* ---- ck_ec over futexes -------------------------------------------------------------------- */
static int ec_gettime(const struct ck_ec_ops *ops, struct timespec *out) {
  (void)ops;
  return clock_gettime(CLOCK_MONOTONIC, out);
}

static void ec_wait32(const struct ck_ec_wait_state *st, const uint32_t *addr, uint32_t expected,
                      const struct timespec *deadline) {
  (void)st;
  syscall(SYS_futex, addr, FUTEX_WAIT_BITSET_PRIVATE, expected, deadline, NULL,
          FUTEX_BITSET_MATCH_ANY);
}

static void ec_wake32(const struct ck_ec_ops *ops, const uint32_t *addr) {
  (void)ops;
  syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

static const struct ck_ec_ops ec_ops = {
    .gettime = ec_gettime,
    .wait32 = ec_wait32,
    .wake32 = ec_wake32,
    .busy_loop_iter = 64,
    .initial_wait_ns = 1000000, /* re-check every 1 ms at first, then back off */
    .wait_scale_factor = 4,
    .wait_shift_count = 0,
};
static const struct ck_ec_mode ec_mode = {.ops = &ec_ops, .single_producer = false};

const struct ck_ec_mode *ab__ec_mode(void) { return &ec_mode; }

/* ck_ec sleeps in steps that grow from when the wait began (1, 4, 16, 64 ms... with the ops
 * above) and compares the clock with the caller's deadline only between steps: a 20 ms
 * deadline returned after 64 ms, a parked task's 2 ms retry came after 4. Its predicate may
 * shorten each step: cut it at the deadline (ck_ec's own step, st->data's deadline). */
static int cut_step_at_deadline(const struct ck_ec_wait_state *st, struct timespec *step) {
  const struct timespec *dl = st->data;
  if (dl && (step->tv_sec > dl->tv_sec || (step->tv_sec == dl->tv_sec && step->tv_nsec > dl->tv_nsec)))
    *step = *dl;
  return 0;
}

int ab__ec_wait(struct ck_ec32 *ec, uint32_t old, int64_t deadline_ns) {
  struct timespec ts, *tsp = NULL;
  if (deadline_ns >= 0) {
    to_timespec(&ts, deadline_ns);
    tsp = &ts;
  }
  return ck_ec32_wait_pred(ec, &ec_mode, old, cut_step_at_deadline, tsp, tsp) == 0 ? 0 : AB_ETIMEDOUT;
}

/* ---- debug checks and lock ranks ----------------------------------------------------------- */
/* Locks held by this thread, by rank (platform.h); kept only when debug checks run. */
_Thread_local uint32_t ab__ranks_held;

_Noreturn void ab__panic(const char *file, int line, const char *what) {
  fprintf(stderr, "arraybridge: %s:%d: assertion failed: %s\n", file, line, what);
  abort();
}

/* ---- the allocation hook ------------------------------------------------------------------- */
void *ab__malloc(const ab_allocator *a, size_t n) {
  if (a && a->malloc_fn) return a->malloc_fn(n, a->arg);
  return malloc(n);
}

void *ab__calloc(const ab_allocator *a, size_t n) {
  void *p = ab__malloc(a, n);
  if (p) memset(p, 0, n);
  return p;
}

void ab__free(const ab_allocator *a, void *p) {
  if (p == NULL) return;
  if (a && a->free_fn) a->free_fn(p, a->arg);
  else free(p);
}

int ab__ncpu(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

uint64_t ab__host_memory(void) {
  long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
  return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

/* A copy whose destination will not be read soon (a volume being filled slice by slice): on
 * x86-64, non-temporal stores skip the read-for-ownership of every destination line, a third
 * less memory traffic than memcpy for blocks that fit in cache (memcpy only streams blocks
 * larger than the cache). Elsewhere, memcpy. */
#if defined(__x86_64__)
#include <emmintrin.h>
void ab__copy_stream(void *dst, const void *src, size_t n) {
  char *d = dst;
  const char *s = src;
  size_t head = (size_t)(-(uintptr_t)d & 15);
  if (n < 4096 || head > n) {
    memcpy(d, s, n);
    return;
  }
  memcpy(d, s, head);
  d += head, s += head, n -= head;
  for (; n >= 64; d += 64, s += 64, n -= 64) {
    __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 16)),
            c = _mm_loadu_si128((const __m128i *)(s + 32)), e = _mm_loadu_si128((const __m128i *)(s + 48));
    _mm_stream_si128((__m128i *)d, a);
    _mm_stream_si128((__m128i *)(d + 16), b);
    _mm_stream_si128((__m128i *)(d + 32), c);
    _mm_stream_si128((__m128i *)(d + 48), e);
  }
  memcpy(d, s, n);
  _mm_sfence(); /* streaming stores are weakly ordered: complete them before anyone reads */
}
#else
void ab__copy_stream(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
#endif
