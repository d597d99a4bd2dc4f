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
 *     0) first has steps 2-3 run for it, since the device's pools may hold what it lacks. A
 *     task submitted with AB_TASK_OOM_RETRY (its caller ran it out of memory) enters at step 5
 *     from the submit (ab__oom_enter), never through the queue.
 *   - A parked task goes back to PENDING (so it can still be cancelled) and onto the device's
 *     parked list with a retry time; frees on the device bump freed_gen, which makes parked
 *     tasks due at once (when their bytes could fit). The deadline is wall-clock time from the
 *     first failure (oom_deadline); the last retry before it is followed by the deadline itself.
 *   - A due retry is not queued behind the device's queue (seconds of work, maybe): a worker
 *     takes it off the list and runs it before popping the queue (ab__park_take), between any
 *     two tasks (ab__park_wants_poll: one relaxed load while nothing is parked; park_due holds
 *     the earliest retry time, 0 while more are due) or when idle. A task parked with an earlier
 *     retry than the sleepers know wakes them; a cancelled parked task makes the list due at
 *     once, so it is dropped (with its inputs) without waiting for its retry time.
 *   - A task whose deadline has come fails (step 7) or is re-routed (6) by whoever sweeps the
 *     list first: a worker, or the deadline keeper, a thread of the runtime that sleeps until
 *     the earliest deadline of all parked tasks. It exists for the device whose workers are all
 *     busy (a long task, a long batch): the task fails at its deadline, not when one is free.
 *     The keeper's target (keeper_due) sits under keeper_lock: a task parked with an earlier
 *     deadline lowers it and wakes the keeper, which sets it to INT64_MAX while it sweeps, so a
 *     task parked meanwhile wakes it too.
 *   - park_lock is a leaf lock: nothing else is taken while it is held. Tasks taken off the list
 *     are dropped, failed or re-routed after it is unlocked (a release may free memory, which
 *     wakes workers; a failure runs callbacks). keeper_lock is never held with another lock.
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
static void keeper_note(ab_runtime *rt, int64_t deadline);

/* Step 5: t goes onto d's parked list until its retry time, or until memory is freed. */
static void park(ab__device *d, ab_future *t) {
  int64_t until = t->park_until, deadline = t->oom_deadline; /* once listed, t may be taken */
  ab__lock(&d->park_lock, AB__RANK_PARK);
  t->park_next = d->parked;
  d->parked = t;
  atomic_fetch_add_explicit(&d->nparked, 1, memory_order_release); /* pairs with the sweep's acquire */
  /* relaxed: park_due is a hint for when to poll; the list itself is read under the lock */
  bool earlier = until < atomic_load_explicit(&d->park_due, memory_order_relaxed);
  if (earlier) atomic_store_explicit(&d->park_due, until, memory_order_relaxed);
  ab__unlock(&d->park_lock, AB__RANK_PARK);
  atomic_fetch_add_explicit(&d->stats.oom_parks, 1, memory_order_relaxed); /* stat */
  if (earlier) ab__wake_workers(d); /* sleeping workers wait for a later retry, or none */
  keeper_note(d->rt, deadline);
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

static bool is_due(ab__device *d, const ab_future *t, int64_t now, uint32_t gen) {
  return t->park_until <= now || (t->park_gen != gen && could_fit(d, t->park_need));
}

/* What a sweep of the parked list took off it, and what it left. */
typedef struct {
  ab_future *dropped;             /* cancelled while parked */
  ab_future *expired;             /* at or past their deadline */
  ab_future *taken;               /* the due task that waited longest (when asked for) */
  int64_t next_retry;             /* earliest retry or deadline left; 0: more are due */
  int64_t next_deadline;          /* earliest deadline left (INT64_MAX: none) */
} sweep;

static void move_to(ab_future **pp, ab_future **list) {
  ab_future *t = *pp;
  *pp = t->park_next;
  t->park_next = *list;
  *list = t;
}

/* Under park_lock: takes off the tasks cancelled meanwhile and those whose deadline has come,
 * and, with take, the due task whose retry was due first; then the hints for what is left. */
static void sweep_locked(ab__device *d, bool take, int64_t now, uint32_t gen, sweep *s) {
  ab_future **best = NULL, *alone = NULL;
  for (ab_future **pp = &d->parked; *pp;) {
    ab_future *t = *pp;
    /* parked tasks are waiting, or being (or been) cancelled: never claimed by a worker */
    AB__ASSERT((atomic_load_explicit(&t->state, memory_order_relaxed) & AB__PHASE) != AB__RUNNING);
    bool done = is_done(t);
    if (done || now >= t->oom_deadline) {
      move_to(pp, done ? &s->dropped : &s->expired); /* cancelled after this: expire drops it */
      continue;
    }
    /* best points at the link to the chosen task: later removals never touch that link */
    if (take && is_due(d, t, now, gen) && (best == NULL || t->park_until < (*best)->park_until)) best = pp;
    pp = &t->park_next;
  }
  if (best) move_to(best, &alone);
  s->taken = alone;
  s->next_retry = s->next_deadline = INT64_MAX;
  uint32_t n = 0;
  for (ab_future *t = d->parked; t; t = t->park_next, n++) {
    if (is_due(d, t, now, gen)) s->next_retry = 0;
    if (t->park_until < s->next_retry) s->next_retry = t->park_until;
    if (t->oom_deadline < s->next_deadline) s->next_deadline = t->oom_deadline;
  }
  atomic_store_explicit(&d->nparked, n, memory_order_relaxed); /* under the lock */
  /* relaxed: hints for the between-task check (see the design notes) */
  atomic_store_explicit(&d->park_due, s->next_retry, memory_order_relaxed);
  atomic_store_explicit(&d->park_seen_gen, gen, memory_order_relaxed);
}

static void expire(ab__device *d, ab_future *t);

/* Sweeps d's parked list and settles what it took off, after unlocking (dropping a task may
 * free memory, which wakes workers; failing one runs its callbacks). */
static void sweep_list(ab__device *d, bool take, sweep *s) {
  *s = (sweep){0};
  int64_t now = ab__now_ns();
  uint32_t gen = atomic_load_explicit(&d->freed_gen, memory_order_acquire);
  ab__lock(&d->park_lock, AB__RANK_PARK);
  sweep_locked(d, take, now, gen, s);
  ab__unlock(&d->park_lock, AB__RANK_PARK);
  if (s->next_retry == 0) ab__wake_workers(d); /* more are due: idle workers take them */
  while (s->dropped) {
    ab_future *t = s->dropped;
    s->dropped = t->park_next;
    ab__task_drop(t);
  }
  while (s->expired) {
    ab_future *t = s->expired;
    s->expired = t->park_next;
    expire(d, t);
  }
}

ab_future *ab__park_take(ab__device *d, int64_t *next) {
  if (next) *next = -1;
  if (atomic_load_explicit(&d->nparked, memory_order_acquire) == 0) return NULL;
  sweep s;
  sweep_list(d, true, &s);
  if (next && s.next_retry != INT64_MAX) *next = s.next_retry;
  ab_future *t = s.taken;
  if (t == NULL) return NULL;
  atomic_fetch_add_explicit(&d->stats.oom_retries, 1, memory_order_relaxed); /* stat */
  ab__task_account(d, t); /* as a queued task: the worker unaccounts it when it ends */
  return t;
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

/* ---- the deadline keeper -------------------------------------------------------------------- */
/* A parked task whose deadline comes while every worker of its device is busy (or while its
 * retry waits for one) must fail then, not when a worker is free: the keeper, a thread of the
 * runtime's own, sleeps until the earliest deadline of all parked tasks and sweeps the lists
 * then. A task parked with an earlier deadline than the keeper's sleep wakes it. */
static void keeper_note(ab_runtime *rt, int64_t deadline) {
  ab__lock(&rt->keeper_lock, AB__RANK_KEEPER);
  bool earlier = deadline < rt->keeper_due;
  if (earlier) {
    rt->keeper_due = deadline;
    atomic_fetch_add_explicit(&rt->keeper_word, 1, memory_order_relaxed); /* the lock orders it */
  }
  ab__unlock(&rt->keeper_lock, AB__RANK_KEEPER);
  if (earlier) ab__futex_wake_all(&rt->keeper_word);
}

static void *keeper_main(void *arg) {
  ab_runtime *rt = arg;
  for (;;) {
    /* keeper_due is INT64_MAX while the lists are swept: a task parked meanwhile lowers it */
    ab__lock(&rt->keeper_lock, AB__RANK_KEEPER);
    rt->keeper_due = INT64_MAX;
    ab__unlock(&rt->keeper_lock, AB__RANK_KEEPER);
    int64_t next = INT64_MAX;
    for (int i = 0; i < rt->ndevices; i++) {
      ab__device *d = &rt->devices[i];
      if (atomic_load_explicit(&d->nparked, memory_order_acquire) == 0) continue;
      sweep s;
      sweep_list(d, false, &s);
      if (s.next_deadline < next) next = s.next_deadline;
    }
    ab__lock(&rt->keeper_lock, AB__RANK_KEEPER);
    if (rt->keeper_due < next) next = rt->keeper_due;
    rt->keeper_due = next;
    /* acquire: pairs with ab__keeper_stop's bump, so a word read after it sees stopping */
    uint32_t word = atomic_load_explicit(&rt->keeper_word, memory_order_acquire);
    ab__unlock(&rt->keeper_lock, AB__RANK_KEEPER);
    if (atomic_load_explicit(&rt->stopping, memory_order_relaxed)) return NULL; /* after the word */
    ab__futex_wait(&rt->keeper_word, word, next == INT64_MAX ? -1 : next);
  }
}

int ab__keeper_start(ab_runtime *rt) {
  if (pthread_mutex_init(&rt->keeper_lock, NULL) != 0) return AB_ENOMEM;
  rt->keeper_lock_made = true;
  rt->keeper_due = INT64_MAX;
  pthread_attr_t a;
  if (pthread_attr_init(&a) != 0) return AB_ENOMEM;
  pthread_attr_setstacksize(&a, 256 * 1024); /* it sweeps lists and runs completion callbacks */
  int rc = pthread_create(&rt->keeper, &a, keeper_main, rt);
  pthread_attr_destroy(&a);
  if (rc != 0) return AB_ENOMEM;
  rt->keeper_started = true;
  return 0;
}

void ab__keeper_stop(ab_runtime *rt) {
  if (!rt->keeper_started) return;
  /* release: rt->stopping, set before, is seen by a keeper that reads the bumped word */
  atomic_fetch_add_explicit(&rt->keeper_word, 1, memory_order_release);
  ab__futex_wake_all(&rt->keeper_word);
  pthread_join(rt->keeper, NULL);
  rt->keeper_started = false;
}

/* ---- steps 5-7 ------------------------------------------------------------------------------ */
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

/* Step 6: another device of the same kind, when the policy allows and placement was not explicit.
 * running: t is claimed by the caller (a worker), else it is a parked task off its list. */
static bool try_reroute(ab__device *d, ab_future *t, bool running) {
  if (!t->oom.allow_reroute || t->place.policy == AB_PLACE_EXPLICIT) return false;
  ab_runtime *rt = d->rt;
  t->tried |= 1ull << (d - rt->devices);
  ab_place p = t->place;
  p.policy = AB_PLACE_LEAST_LOADED;
  int err;
  ab__device *nd = ab__place(rt, &p, NULL, 0, t->tried, &err);
  if (nd == NULL || (running && !unclaim(t))) return false;
  t->parks = 0;
  atomic_fetch_add_explicit(&d->stats.oom_reroutes, 1, memory_order_relaxed); /* stat */
  ab__task_requeue(nd, t); /* a cancelled one is dropped by the worker that pops it */
  return true;
}

/* Step 7's bookkeeping: the failure counted, the memory report as the future's message. */
static void fail_report(ab__device *d, ab_future *t) {
  if (t->message) return;
  count(&d->stats.oom_failures);
  t->message = report(d, t);
}

/* Step 7 for a task nobody has claimed (a parked one, or one entering the ladder at submit),
 * without running it again. A cancel that got there first leaves only the drop. */
static void fail_pending(ab__device *d, ab_future *t) {
  uint32_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
  /* acquire: as a worker's claim; ours now, so no canceller can complete it under us */
  while ((s & AB__PHASE) == AB__PENDING &&
         !atomic_compare_exchange_weak_explicit(&t->state, &s, (s & ~(uint32_t)AB__PHASE) | AB__RUNNING,
                                                memory_order_acquire, memory_order_relaxed)) {
  }
  if ((s & AB__PHASE) == AB__PENDING) { /* claimed */
    fail_report(d, t);
    ab__task_release_inputs(t); /* free them before anyone sees completion */
    ab__complete(t, AB_ENOMEM, NULL, AB__RUNNING);
  }
  ab__task_drop(t); /* parked tasks are unaccounted already */
}

/* A parked task whose deadline has come (off the list, not claimed): step 6, else step 7. */
static void expire(ab__device *d, ab_future *t) {
  if (!try_reroute(d, t, false)) fail_pending(d, t);
}

static int64_t add_sat(int64_t a, int64_t b) { return a > INT64_MAX - b ? INT64_MAX : a + b; }

/* Steps 5 and 6 for t, out of memory on d (7 is the caller's). running: claimed by the caller.
 * True: the task lives on (parked or re-routed). */
static bool park_or_reroute(ab__device *d, ab_future *t, uint64_t need, bool running) {
  if (atomic_load_explicit(&d->rt->cancelling, memory_order_relaxed)) return false;
  int64_t now = ab__now_ns();
  if (t->parks == 0) { /* its first failure (on this device): the deadline runs from now */
    t->oom_deadline = add_sat(now, deadline(&t->oom));
    t->backoff = backoff_initial(&t->oom);
  }
  if (!t->oom.no_wait && now < t->oom_deadline) {
    /* the last retry before the deadline, then the deadline itself: the task waits for it parked */
    t->park_until = t->backoff < t->oom_deadline - now ? now + t->backoff : t->oom_deadline;
    t->backoff = t->backoff * 2 < backoff_max(&t->oom) ? t->backoff * 2 : backoff_max(&t->oom);
    t->park_need = need;
    t->park_gen = atomic_load_explicit(&d->freed_gen, memory_order_acquire);
    t->parks++;
    if (running && !unclaim(t)) return false;
    park(d, t);
    return true;
  }
  return try_reroute(d, t, running);
}

void ab__oom_enter(ab__device *d, ab_future *t) {
  t->oom_retry = false; /* once: a re-routed or retried task is an ordinary one */
  count(&d->stats.oom_events);
  if (!park_or_reroute(d, t, 0, false)) fail_pending(d, t);
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
  if (park_or_reroute(d, t, need, true)) return true;
  fail_report(d, t); /* step 7 */
  return false;
}
