/*
 * platform/platform.h: what every layer of the library takes from the machine, and nothing of
 * the runtime's own: clocks, futexes and ck_ec sleeping, the allocation hook, the debug checks
 * and the lock ranks. The queue (queue/) stands on this alone; the runtime (runtime/internal.h)
 * builds on it.
 */
#ifndef AB_PLATFORM_H
#define AB_PLATFORM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arraybridge.h"

struct ck_ec32;
struct ck_ec_mode;

/* Debug checks (AB__ASSERT) always compile, so they cannot rot; whether they run is a constant
 * the compiler folds away, as jemalloc's config_debug. AB_DEBUG=1 turns them on (every tree
 * that builds the tests does: tests/CMakeLists.txt), AB_DEBUG=0 off; without AB_DEBUG they run
 * unless NDEBUG is defined. The invariants they check are those the design notes state. */
#if defined(AB_DEBUG)
static const bool ab__debug = AB_DEBUG;
#elif defined(NDEBUG)
static const bool ab__debug = false;
#else
static const bool ab__debug = true;
#endif

_Noreturn void ab__panic(const char *file, int line, const char *what);
#define AB__ASSERT(e)                                                                         \
  do {                                                                                       \
    if (ab__debug && !(e)) ab__panic(__FILE__, __LINE__, #e);                                \
  } while (0)
#define AB__NOT_REACHED() ab__panic(__FILE__, __LINE__, "not reached")

/* Lock ranks. A thread takes the runtime's locks in increasing rank only, so no two threads can
 * deadlock on them; park_lock's rank leaves only the queue's push_lock below it (runtime/oom.c), and
 * nothing is taken while push_lock or a pool's grow_lock is held. xfer_lock, trace_lock and the
 * OOM deadline keeper's lock share a rank: none is ever taken with another. Debug builds check
 * this with a mask per thread of the ranks held. */
enum {
  AB__RANK_XFER = 0,
  AB__RANK_TRACE = 0,
  AB__RANK_KEEPER = 0,
  AB__RANK_PARK = 1,
  AB__RANK_PUSH = 2,
  AB__RANK_GROW = 3
};
extern _Thread_local uint32_t ab__ranks_held;
static inline void ab__lock(pthread_mutex_t *m, int rank) {
  AB__ASSERT((ab__ranks_held >> rank) == 0); /* nothing of this rank or above is held */
  pthread_mutex_lock(m);
  if (ab__debug) ab__ranks_held |= 1u << rank;
}
static inline void ab__unlock(pthread_mutex_t *m, int rank) {
  AB__ASSERT(ab__ranks_held & (1u << rank));
  if (ab__debug) ab__ranks_held &= ~(1u << rank);
  pthread_mutex_unlock(m);
}

/* ---- platform.c ---------------------------------------------------------------------------- */
/* fork(): how many forks separate this process from the one the library was loaded in. A
 * runtime records it when made; where it differs, the runtime's threads are in an ancestor
 * process and nothing of it may be waited for or locked here. ab__fork_watch starts counting
 * (once per process; AB_ENOMEM if the handler cannot be registered). */
extern _Atomic uint32_t ab__fork_generation;
int ab__fork_watch(void);
static inline uint32_t ab__fork_gen(void) {
  return atomic_load_explicit(&ab__fork_generation, memory_order_relaxed); /* see platform.c */
}

int64_t ab__now_ns(void);
/* Sleeps while *addr == expected, until deadline_ns (absolute, ab__now_ns clock; < 0: none). */
void ab__futex_wait(const _Atomic uint32_t *addr, uint32_t expected, int64_t deadline_ns);
void ab__futex_wake_all(const _Atomic uint32_t *addr);
void ab__sleep_ns(int64_t ns);
static inline void ab__cpu_relax(void) { __builtin_ia32_pause(); }
const struct ck_ec_mode *ab__ec_mode(void);
/* Sleeps while ec's value is old, until deadline_ns (absolute, ab__now_ns clock; < 0: none):
 * 0 once it moved, AB_ETIMEDOUT at the deadline, kept to the futex's precision. */
int ab__ec_wait(struct ck_ec32 *ec, uint32_t old, int64_t deadline_ns);
int64_t ab__deadline_after(int64_t timeout_ns); /* -1 when timeout_ns < 0 */
void *ab__malloc(const ab_allocator *a, size_t n);
void *ab__calloc(const ab_allocator *a, size_t n);
void ab__free(const ab_allocator *a, void *p);
int ab__ncpu(void);
uint64_t ab__host_memory(void);
void ab__copy_stream(void *dst, const void *src, size_t n); /* memcpy, bypassing the cache */

#endif
