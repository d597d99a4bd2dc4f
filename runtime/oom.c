/*
 * runtime/oom.c: the out-of-memory ladder, all seven steps, and the parked tasks it keeps
 * (the steps as the README's "Memory budgets and the OOM ladder" lists them for users).
 *
 * Design notes
 *   - Steps 1-4 run inline in the allocating thread (ab__mem_alloc): the arena (inside
 *     ops->alloc, after the budget: memory.c), trim the worker's cache, drain the frees still
 *     pending on the device's streams, the user's spill callback. A failed walk leaves the
 *     bytes it lacked in the worker's oom_need, a hint for parking.
 *   - Steps 5-7 (park, re-route, fail) need the task: the worker hands a body's AB_ENOMEM to
 *     ab__oom_task. A body that ran out of memory by itself (a framework inside it: oom_need is
 *     0) first has steps 2-3 run for it, since the device's pools may hold what it lacks.
 *   - A parked task goes back to PENDING (so it can still be cancelled) and onto the device's
 *     parked list with a retry time; frees on the device bump freed_gen and wake a worker,
 *     which sends parked tasks back to the queue at once. Past the deadline: re-route if
 *     allowed, else fail with AB_ENOMEM and a memory report.
 *   - Retries keep their schedule however busy the device is: park_due holds the earliest retry
 *     time, and a worker looks at it between tasks (ab__park_wants_poll: one relaxed load while
 *     nothing is parked), not only when its queue runs dry. A task parked with an earlier retry
 *     than the sleepers know wakes them; a cancelled parked task makes the list due at once, so
 *     it is dropped (with its inputs) without waiting for its retry time.
 *   - park_lock is a leaf lock: nothing else is taken while it is held, except the queue's
 *     overflow lock (leaf below it) when a task is sent back. Tasks dropped from the list are
 *     released after it is unlocked (a release may free memory, which wakes workers).
 *   - The policy's zero fields mean the defaults the header gives; they are read here, where
 *     the ladder uses them, and the task keeps the caller's policy as it was given.
 */
#include <inttypes.h>

#include "runtime/internal.h"

static void count(_Atomic uint64_t *c) { atomic_fetch_add_explicit(c, 1, memory_order_relaxed); /* stat */ }

/* ---- the policy ----------------------------------------------------------------------------- */
static int64_t or_default(int64_t ns, int64_t def) { return ns > 0 ? ns : def; }
bool ab__oom_policy_ok(const ab_oom_policy *p) {
  return p->backoff_initial_ns >= 0 && p->backoff_max_ns >= 0 && p->deadline_ns >= 0;
}

static int64_t backoff_initial(const ab_oom_policy *p) { return or_default(p->backoff_initial_ns, 1000000); }
static int64_t backoff_max(const ab_oom_policy *p) { return or_default(p->backoff_max_ns, 100000000); }
static int64_t deadline(const ab_oom_policy *p) { return or_default(p->deadline_ns, 10000000000); }

/* ---- steps 1-4: in the allocating thread ---------------------------------------------------- */
/* Step 1: the budget, then the backend's allocator (the worker's arena or pool). */
static int try_alloc(ab__device *d, ab__worker *w, size_t bytes, void **ptr) {
  if (ab__fault_hit(d, AB_FAULT_ALLOC)) return AB_ENOMEM;
  int rc = ab__mem_reserve(d, bytes);
  if (rc != 0) return rc;
  rc = d->ops->alloc(w, bytes, ptr);
  if (rc != 0) ab__mem_unreserve(d, bytes);
  return rc;
}

/* Step 2: the worker's cached blocks go back. False: the backend caches nothing. */
static bool trim(ab__device *d, ab__worker *w) {
  if (!d->ops->trim) return false;
  d->ops->trim(w);
  count(&d->stats.oom_trims);
  return true;
}

/* Step 3: frees still pending on the device's streams land. False: the backend has none. */
static bool drain(ab__device *d) {
  if (!d->ops->drain_frees) return false;
  d->ops->drain_frees(d);
  count(&d->stats.oom_syncs);
  return true;
}

int ab__mem_alloc(ab__device *d, ab__worker *w, size_t bytes, void **ptr) {
  int rc = try_alloc(d, w, bytes, ptr);
  if (rc != AB_ENOMEM) return rc;
  count(&d->stats.oom_events);
  if (trim(d, w) && (rc = try_alloc(d, w, bytes, ptr)) != AB_ENOMEM) return rc;
  if (drain(d) && (rc = try_alloc(d, w, bytes, ptr)) != AB_ENOMEM) return rc;
  ab_runtime *rt = d->rt;
  for (int i = 0; i < 4 && rt->opt.spill; i++) { /* step 4: the user frees something */
    count(&d->stats.oom_spills);
    if (!rt->opt.spill(bytes, d->id, rt->opt.spill_arg)) break;
    if ((rc = try_alloc(d, w, bytes, ptr)) != AB_ENOMEM) return rc;
  }
  if (w) atomic_store_explicit(&w->oom_need, bytes, memory_order_relaxed); /* a hint (ab__oom_task) */
  return AB_ENOMEM;
}

/* Step 7's message: the device's memory and ladder totals (malloc'd, or NULL). */
static char *report(ab__device *d, const ab_future *t) {
  char *msg = ab__malloc(&d->rt->alloc, 512);
  if (msg == NULL) return NULL;
  uint64_t used = atomic_load_explicit(&d->used, memory_order_relaxed);
  uint64_t peak = atomic_load_explicit(&d->peak, memory_order_relaxed);
  char budget[32];
  if (d->budget == UINT64_MAX) snprintf(budget, sizeof budget, "unlimited");
  else snprintf(budget, sizeof budget, "%" PRIu64, d->budget);
  snprintf(msg, 512,
           "out of memory on %s:%d (%s): budget %s bytes, in use %" PRIu64 ", peak %" PRIu64
           "; device ladder totals: %" PRIu64 " trims, %" PRIu64 " syncs, %" PRIu64 " spills; this task parked %u times%s",
           ab_kind_name(d->id.kind), d->id.index, d->name, budget, used, peak, (uint64_t)atomic_load(&d->stats.oom_trims),
           (uint64_t)atomic_load(&d->stats.oom_syncs), (uint64_t)atomic_load(&d->stats.oom_spills),
           t ? t->parks : 0u, t && t->oom.no_wait ? " (policy: no wait)" : "");
  return msg;
}

/* ---- the parked list ------------------------------------------------------------------------ */
/* Step 5: t goes onto d's parked list until its retry time, or until memory is freed. */
static void park(ab__device *d, ab_future *t) {
  ab__lock(&d->park_lock, AB__RANK_PARK);
  t->park_next = d->parked;
  d->parked = t;
  atomic_fetch_add_explicit(&d->nparked, 1, memory_order_release); /* pairs with poll's acquire */
  /* relaxed: park_due is a hint for when to poll; the list itself is read under the lock */
  bool earlier = t->park_until < atomic_load_explicit(&d->park_due, memory_order_relaxed);
  if (earlier) atomic_store_explicit(&d->park_due, t->park_until, memory_order_relaxed);
  ab__unlock(&d->park_lock, AB__RANK_PARK);
  atomic_fetch_add_explicit(&d->stats.oom_parks, 1, memory_order_relaxed); /* stat */
  if (earlier) ab__wake_workers(d); /* sleeping workers wait for a later retry, or none */
}

/* Whether a task short of `need` bytes may succeed now. A free wakes the parked tasks early only
 * when the budget has room for them: otherwise tasks whose failed attempts free memory (a
 * partial stack, scratch) would wake one another for ever, thousands of retries a millisecond.
 * need 0 (unknown, or the backend's own OOM below the budget): any free may help. */
static bool could_fit(ab__device *d, uint64_t need) {
  if (need == 0 || d->budget == UINT64_MAX) return true;
  uint64_t used = atomic_load_explicit(&d->used, memory_order_relaxed); /* a gauge */
  return used <= d->budget && d->budget - used >= need;
}

static bool is_done(const ab_future *t) {
  /* acquire: a task cancelled while parked is dropped, and its completer's writes are seen */
  return (atomic_load_explicit(&t->state, memory_order_acquire) & AB__PHASE) == AB__DONE;
}

int64_t ab__park_poll(ab__device *d) {
  if (atomic_load_explicit(&d->nparked, memory_order_acquire) == 0) return -1;
  int64_t now = ab__now_ns(), next = -1;
  uint32_t gen = atomic_load_explicit(&d->freed_gen, memory_order_acquire);
  ab_future *dropped = NULL;
  ab__lock(&d->park_lock, AB__RANK_PARK);
  ab_future **pp = &d->parked;
  while (*pp) {
    ab_future *t = *pp;
    bool done = is_done(t);
    /* parked tasks are waiting, or being (or been) cancelled: never claimed by a worker */
    AB__ASSERT((atomic_load_explicit(&t->state, memory_order_relaxed) & AB__PHASE) != AB__RUNNING);
    if (done || t->park_until <= now || (t->park_gen != gen && could_fit(d, t->park_need))) {
      *pp = t->park_next;
      atomic_fetch_sub_explicit(&d->nparked, 1, memory_order_relaxed); /* under the lock */
      if (done) { /* cancelled while parked: nothing to retry */
        t->park_next = dropped;
        dropped = t;
        continue;
      }
      /* The deadline counts time parked, up to when the retry was due: not the time it waited
       * for a worker after that (workers busy with a long queue poll parked tasks late). */
      t->park_left -= (t->park_until < now ? t->park_until : now) - t->park_since;
      atomic_fetch_add_explicit(&d->stats.oom_retries, 1, memory_order_relaxed); /* stat */
      ab__task_requeue(d, t);
      continue;
    }
    if (next < 0 || t->park_until < next) next = t->park_until;
    pp = &t->park_next;
  }
  /* relaxed: hints for the between-task check (see the design notes) */
  atomic_store_explicit(&d->park_due, next < 0 ? INT64_MAX : next, memory_order_relaxed);
  atomic_store_explicit(&d->park_seen_gen, gen, memory_order_relaxed);
  ab__unlock(&d->park_lock, AB__RANK_PARK);
  while (dropped) {
    ab_future *t = dropped;
    dropped = t->park_next;
    ab__task_drop(t);
  }
  return next;
}

bool ab__park_wants_poll(ab__device *d) {
  if (atomic_load_explicit(&d->nparked, memory_order_relaxed) == 0) return false; /* a hint */
  return atomic_load_explicit(&d->freed_gen, memory_order_relaxed) !=
             atomic_load_explicit(&d->park_seen_gen, memory_order_relaxed) ||
         ab__now_ns() >= atomic_load_explicit(&d->park_due, memory_order_relaxed);
}

void ab__park_cancelled(ab_future *t) {
  ab__device *d = ab__task_dev(t);
  if (d == NULL || atomic_load_explicit(&d->nparked, memory_order_relaxed) == 0) return;
  atomic_store_explicit(&d->park_due, 0, memory_order_relaxed); /* it may be parked: poll now */
  ab__wake_workers(d);
}

void ab__park_flush(ab__device *d, int status) {
  ab__lock(&d->park_lock, AB__RANK_PARK);
  ab_future *list = d->parked;
  d->parked = NULL;
  atomic_store_explicit(&d->nparked, 0, memory_order_relaxed); /* under the lock */
  ab__unlock(&d->park_lock, AB__RANK_PARK);
  while (list) {
    ab_future *t = list;
    list = t->park_next;
    ab__complete(t, status, NULL, AB__PENDING);
    ab__task_drop(t);
  }
}

/* ---- steps 5-7: in the worker, for the task ------------------------------------------------- */
/* RUNNING -> PENDING, unless a cancel was asked meanwhile (then false). */
static bool unclaim(ab_future *t) {
  uint32_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
  for (;;) {
    AB__ASSERT((s & AB__PHASE) == AB__RUNNING); /* only the worker running it unclaims it */
    if (s & AB__CANCEL_REQ) return false;
    uint32_t ns = (s & ~(uint32_t)AB__PHASE) | AB__PENDING;
    /* release: the task's ladder fields before a canceller or the next worker claims it */
    if (atomic_compare_exchange_weak_explicit(&t->state, &s, ns, memory_order_release, memory_order_relaxed))
      return true;
  }
}

/* Step 6: another device of the same kind, when the policy allows and placement was not explicit. */
static bool try_reroute(ab__device *d, ab_future *t) {
  if (!t->oom.allow_reroute || t->place.policy == AB_PLACE_EXPLICIT) return false;
  ab_runtime *rt = d->rt;
  t->tried |= 1ull << (d - rt->devices);
  ab_place p = t->place;
  p.policy = AB_PLACE_LEAST_LOADED;
  int err;
  ab__device *nd = ab__place(rt, &p, NULL, 0, t->tried, &err);
  if (nd == NULL || !unclaim(t)) return false;
  t->parks = 0;
  atomic_fetch_add_explicit(&d->stats.oom_reroutes, 1, memory_order_relaxed); /* stat */
  ab__task_requeue(nd, t);
  return true;
}

/* Steps 5 and 6 (7 is the caller's). True: the task lives on (parked or re-routed). */
static bool on_enomem(ab__device *d, ab_future *t, uint64_t need) {
  if (atomic_load_explicit(&d->rt->cancelling, memory_order_relaxed)) return false;
  t->park_need = need;
  int64_t now = ab__now_ns();
  if (!t->oom.no_wait) {
    if (t->parks == 0) {
      t->park_left = deadline(&t->oom);
      t->backoff = backoff_initial(&t->oom);
    }
    /* Time spent waiting for a worker between attempts does not count: behind a long queue a
     * retry could otherwise find its deadline gone after one short park. */
    if (t->park_left > 0) {
      t->park_since = now;
      t->park_until = now + (t->backoff < t->park_left ? t->backoff : t->park_left);
      t->backoff = t->backoff * 2 < backoff_max(&t->oom) ? t->backoff * 2 : backoff_max(&t->oom);
      t->park_gen = atomic_load_explicit(&d->freed_gen, memory_order_acquire);
      t->parks++;
      if (!unclaim(t)) return false;
      park(d, t);
      return true;
    }
  }
  return try_reroute(d, t);
}

/* A task's own out-of-memory (a framework inside it ran out: the runtime's ladder did not fail,
 * or need would say how much it lacked): what the device's pools cache may be what that
 * framework lacks, so it goes back to the driver before the task waits for its retry. */
static void give_back(ab__device *d, ab__worker *w) {
  trim(d, w);
  drain(d);
}

bool ab__oom_task(ab__worker *w, ab_future *t) {
  ab__device *d = w->dev;
  uint64_t need = atomic_exchange_explicit(&w->oom_need, 0, memory_order_relaxed);
  if (need == 0 && t->kind == AB__TASK_COMPUTE) give_back(d, w);
  if (on_enomem(d, t, need)) return true;
  if (!t->message) { /* step 7 */
    count(&d->stats.oom_failures);
    t->message = report(d, t);
  }
  return false;
}
