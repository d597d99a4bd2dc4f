/*
 * test_stress.c: many submitters, chains, random cancels, destroy mid-flight. Every accepted
 * future must complete exactly once (counted by then-callbacks) with a status from the allowed
 * set. Iteration counts scale with AB_TEST_SCALE (0.1 under TSan).
 */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

static uint32_t xorshift(uint32_t *s) {
  uint32_t x = *s;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *s = x ? x : 0x9e3779b9u;
}

/* Per-task bookkeeping, shared by all the tests below. */
typedef struct {
  atomic_int started;   /* the task function began */
  atomic_int done;      /* then-callbacks that ran */
  atomic_int status;    /* the status the callback saw */
  atomic_int cancel_rc; /* 1 + the last ab_future_cancel result, 0: never cancelled */
  atomic_int cancel_ok; /* some cancel returned 0 */
  int dep;              /* index of the task it depends on, -1: none */
} slot;

typedef struct {
  slot *slots;
  atomic_int bad_status_in_cb;
  atomic_int spin; /* tasks spin this many yields, checking ab_ctx_cancelled */
  int ndev;        /* logical host devices, for explicit placement (0 counts as 1) */
} book;

typedef struct {
  book *b;
  int id;
} targ;

static int tracked_task(ab_ctx *c, void *arg) {
  targ *a = arg;
  atomic_fetch_add(&a->b->slots[a->id].started, 1);
  int spin = atomic_load(&a->b->spin);
  for (int i = 0; i < spin; i++) {
    if (ab_ctx_cancelled(c)) return AB_ECANCELED;
    sched_yield();
  }
  return 0;
}

static void tracked_cb(ab_future *f, void *arg) {
  targ *a = arg;
  int st = ab_future_status(f);
  if (st == AB_EPENDING) atomic_fetch_add(&a->b->bad_status_in_cb, 1);
  atomic_store(&a->b->slots[a->id].status, st);
  atomic_fetch_add(&a->b->slots[a->id].done, 1);
}

/* Submits task `id` (depending on `dep` if given) and registers the callback. */
static int submit_tracked(ab_runtime *rt, book *b, targ *args, int id, ab_future *dep,
                          int policy, int mode, ab_future **out) {
  args[id].b = b;
  args[id].id = id;
  ab_input in = {NULL, dep};
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = tracked_task;
  d.arg = &args[id];
  d.inputs = dep ? &in : NULL;
  d.ninputs = dep ? 1 : 0;
  d.place.policy = policy;
  d.place.device = th_host(policy == AB_PLACE_EXPLICIT ? id % (b->ndev > 0 ? b->ndev : 1) : AB_ANY);
  d.place.mode = mode;
  int r = ab_submit(rt, &d, out);
  if (r) return r;
  r = ab_future_then(*out, tracked_cb, &args[id]);
  if (r) {
    th_fail(__FILE__, __LINE__, "then: %d%s", r, th_errstr(r));
    return r;
  }
  return 0;
}

/* Common end-of-test checks. allow_cancel: AB_ECANCELED is a legal status. */
static int check_book(book *b, int n, bool allow_cancel) {
  int errors = 0;
  if (atomic_load(&b->bad_status_in_cb)) {
    fprintf(stderr, "# %d callbacks saw AB_EPENDING\n", atomic_load(&b->bad_status_in_cb));
    errors++;
  }
  for (int i = 0; i < n && errors < 10; i++) {
    slot *s = &b->slots[i];
    int done = atomic_load(&s->done), st = atomic_load(&s->status);
    int started = atomic_load(&s->started);
    if (done != 1) {
      fprintf(stderr, "# task %d: callback ran %d times\n", i, done);
      errors++;
      continue;
    }
    if (!(st == 0 || (allow_cancel && st == AB_ECANCELED))) {
      fprintf(stderr, "# task %d: status %d%s\n", i, st, th_errstr(st));
      errors++;
    }
    if (started > 1) {
      fprintf(stderr, "# task %d ran %d times\n", i, started);
      errors++;
    }
    if (st == 0 && !started) {
      fprintf(stderr, "# task %d: status 0 but it never ran\n", i);
      errors++;
    }
    if (atomic_load(&s->cancel_ok) && (st != AB_ECANCELED || started)) {
      fprintf(stderr, "# task %d: cancel returned 0, yet status %d, started %d\n", i, st, started);
      errors++;
    }
    if (s->dep >= 0) {
      int ds = atomic_load(&b->slots[s->dep].status);
      if (ds != 0 && (st != ds || started)) {
        fprintf(stderr, "# task %d: input %d failed with %d, yet status %d, started %d\n", i,
                s->dep, ds, st, started);
        errors++;
      }
    }
  }
  return errors;
}

/* ---- 8 submitters x thousands of tasks ------------------------------------------------------- */
enum { NTHREADS = 8 };

typedef struct {
  ab_runtime *rt;
  book *b;
  targ *args;
  int first, count;
  int failed;
} submitter;

static void *submit_many(void *arg) {
  submitter *s = arg;
  static const int policies[4] = {AB_PLACE_AUTO, AB_PLACE_ROUND_ROBIN, AB_PLACE_LEAST_LOADED,
                                  AB_PLACE_EXPLICIT};
  ab_future **keep = calloc((size_t)s->count, sizeof *keep);
  int nkeep = 0;
  ab_future *prev = NULL;
  for (int k = 0; k < s->count; k++) {
    int id = s->first + k;
    ab_future *dep = (k % 7 == 3) ? prev : NULL; /* some short chains */
    s->b->slots[id].dep = dep ? id - 1 : -1;
    ab_future *f = NULL;
    int r = submit_tracked(s->rt, s->b, s->args, id, dep, policies[k % 4], AB_SUBMIT_BLOCK, &f);
    if (r) {
      th_fail(__FILE__, __LINE__, "submit %d: %d%s", id, r, th_errstr(r));
      s->failed = 1;
      break;
    }
    if (prev) ab_future_release(prev);
    prev = ab_future_retain(f);
    if (k % 2)
      ab_future_release(f); /* fire and forget: the callback still counts it */
    else
      keep[nkeep++] = f;
  }
  if (prev) ab_future_release(prev);
  if (nkeep && ab_future_wait_all(keep, (size_t)nkeep, -1) != 0) s->failed = 1;
  for (int i = 0; i < nkeep; i++) {
    if (ab_future_status(keep[i]) != 0) s->failed = 1;
    ab_future_release(keep[i]);
  }
  free(keep);
  return NULL;
}

static int many_submitters_round(int workers, int split, uint32_t capacity) {
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = workers;
  o.kinds[AB_HOST].logical_split = split;
  o.queue_capacity = capacity; /* small: submitters block on full queues */
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  /* tiny queues make every submit a hand-off: fewer tasks there */
  int per = (int)th_scaled(capacity <= 8 ? 5000 : 25000), n = per * NTHREADS;
  book b;
  memset(&b, 0, sizeof b);
  b.ndev = split;
  b.slots = calloc((size_t)n, sizeof(slot));
  targ *args = calloc((size_t)n, sizeof(targ));
  CHECK(b.slots && args);
  submitter s[NTHREADS];
  pthread_t th[NTHREADS];
  for (int t = 0; t < NTHREADS; t++) {
    s[t] = (submitter){rt, &b, args, t * per, per, 0};
    CHECK_OK(pthread_create(&th[t], NULL, submit_many, &s[t]));
  }
  for (int t = 0; t < NTHREADS; t++) {
    pthread_join(th[t], NULL);
    CHECK_EQ_INT(s[t].failed, 0);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_EQ_INT(check_book(&b, n, false), 0);
  free(b.slots);
  free(args);
  return 0;
}

static int test_many_submitters(void) {
  static const struct {
    int workers, split;
    uint32_t capacity;
  } cfg[] = {{2, 2, 64}, {1, 4, 8}, {4, 1, 4096}, {1, 1, 1}};
  for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
    if (many_submitters_round(cfg[i].workers, cfg[i].split, cfg[i].capacity)) {
      fprintf(stderr, "# config %zu: workers %d, split %d, capacity %u\n", i, cfg[i].workers,
              cfg[i].split, cfg[i].capacity);
      return 1;
    }
  }
  return 0;
}

/* ---- chains: each task depends on the previous, passing a tensor along ------------------------ */
typedef struct {
  atomic_int next;  /* the index the chain expects to run next */
  atomic_int errors;
} chain;

typedef struct {
  chain *c;
  int idx;
} link_arg;

static int chain_link(ab_ctx *ctx, void *arg) {
  link_arg *a = arg;
  if (atomic_load(&a->c->next) != a->idx) atomic_fetch_add(&a->c->errors, 1);
  if (a->idx > 0) {
    ab_tensor *in = ab_ctx_input(ctx, 0);
    if (!in) {
      atomic_fetch_add(&a->c->errors, 1);
    } else {
      const DLTensor *dl = ab_tensor_dl(in);
      int64_t v = *(int64_t *)((char *)dl->data + dl->byte_offset);
      if (v != a->idx - 1) atomic_fetch_add(&a->c->errors, 1);
    }
  }
  int64_t shape[1] = {1};
  ab_tensor *t = NULL;
  int r = ab_ctx_alloc_tensor(ctx, th_dt(kDLInt, 64), 1, shape, &t);
  if (r) return r;
  *(int64_t *)((char *)ab_tensor_dl(t)->data + ab_tensor_dl(t)->byte_offset) = a->idx;
  atomic_store(&a->c->next, a->idx + 1);
  return ab_ctx_set_output(ctx, t);
}

typedef struct {
  ab_runtime *rt;
  chain *chains;
  link_arg *links;
  int nchains, len;
  int failed;
} chain_builder;

static void *build_chains(void *arg) {
  chain_builder *cb = arg;
  ab_future **tails = calloc((size_t)cb->nchains, sizeof *tails);
  /* interleave the chains: link k of every chain, then link k+1 */
  for (int k = 0; k < cb->len && !cb->failed; k++) {
    for (int c = 0; c < cb->nchains; c++) {
      link_arg *la = &cb->links[c * cb->len + k];
      la->c = &cb->chains[c];
      la->idx = k;
      ab_input in = {NULL, tails[c]};
      ab_task_desc d = AB_TASK_DESC_INIT;
      d.fn = chain_link;
      d.arg = la;
      d.inputs = tails[c] ? &in : NULL;
      d.ninputs = tails[c] ? 1 : 0;
      d.place.policy = (k % 3 == 0) ? AB_PLACE_ROUND_ROBIN : AB_PLACE_AUTO;
      d.place.device = th_host(AB_ANY);
      ab_future *f = NULL;
      int r = ab_submit(cb->rt, &d, &f);
      if (r) {
        th_fail(__FILE__, __LINE__, "submit: %d%s", r, th_errstr(r));
        cb->failed = 1;
        break;
      }
      ab_future_release(tails[c]); /* the dependent holds what it needs */
      tails[c] = f;
    }
  }
  for (int c = 0; c < cb->nchains; c++) {
    if (!tails[c]) continue;
    if (ab_future_wait(tails[c], -1) || ab_future_status(tails[c]) != 0) cb->failed = 1;
    ab_future_release(tails[c]);
  }
  free(tails);
  return NULL;
}

static int test_chains(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 3));
  int nchains = 8, len = (int)th_scaled(2000);
  chain_builder cb[NTHREADS];
  pthread_t th[NTHREADS];
  chain *chains = calloc((size_t)(NTHREADS * nchains), sizeof(chain));
  link_arg *links = calloc((size_t)(NTHREADS * nchains * len), sizeof(link_arg));
  CHECK(chains && links);
  for (int t = 0; t < NTHREADS; t++) {
    cb[t] = (chain_builder){rt, chains + t * nchains, links + (size_t)t * nchains * len, nchains,
                            len, 0};
    CHECK_OK(pthread_create(&th[t], NULL, build_chains, &cb[t]));
  }
  for (int t = 0; t < NTHREADS; t++) {
    pthread_join(th[t], NULL);
    CHECK_EQ_INT(cb[t].failed, 0);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  for (int c = 0; c < NTHREADS * nchains; c++) {
    CHECK_EQ_INT(atomic_load(&chains[c].errors), 0);
    CHECK_EQ_INT(atomic_load(&chains[c].next), len);
  }
  free(chains);
  free(links);
  return 0;
}

/* ---- random cancels while queued and running ---------------------------------------------------- */
typedef struct {
  ab_runtime *rt;
  book *b;
  targ *args;
  ab_future **futs; /* published futures, kept until the end */
  atomic_int *published;
  int first, count;
  int failed;
  atomic_int progress; /* how many of this submitter's futures are published */
} csubmitter;

static void *submit_cancellable(void *arg) {
  csubmitter *s = arg;
  uint32_t seed = 0x1234567u + (uint32_t)s->first;
  for (int k = 0; k < s->count; k++) {
    int id = s->first + k;
    ab_future *dep = NULL;
    if (k > 0 && xorshift(&seed) % 3 == 0) dep = s->futs[id - 1];
    s->b->slots[id].dep = dep ? id - 1 : -1;
    ab_future *f = NULL;
    int r = submit_tracked(s->rt, s->b, s->args, id, dep, AB_PLACE_ROUND_ROBIN, AB_SUBMIT_BLOCK, &f);
    if (r) {
      s->failed = 1;
      break;
    }
    __atomic_store_n(&s->futs[id], f, __ATOMIC_RELEASE); /* the canceller reads it */
    atomic_fetch_add(s->published, 1);
    atomic_store(&s->progress, k + 1);
  }
  return NULL;
}

typedef struct {
  book *b;
  ab_future **futs;
  csubmitter *subs;
  int nsubs;
  atomic_int *stop;
  uint32_t seed;
  int bad_rc;
  int tries;
} canceller;

/* Cancels recent futures (most likely queued, parked on an input, or running) at random. */
static void *cancel_randomly(void *arg) {
  canceller *c = arg;
  uint32_t seed = c->seed;
  while (!atomic_load(c->stop)) {
    csubmitter *s = &c->subs[xorshift(&seed) % (uint32_t)c->nsubs];
    int k = atomic_load(&s->progress) - 1 - (int)(xorshift(&seed) % 48);
    if (k < 0) {
      sched_yield();
      continue;
    }
    int id = s->first + k;
    ab_future *f = __atomic_load_n(&c->futs[id], __ATOMIC_ACQUIRE);
    if (!f) continue;
    int r = ab_future_cancel(f);
    c->tries++;
    if (r == 0)
      atomic_store(&c->b->slots[id].cancel_ok, 1);
    else if (r != AB_EBUSY && r != AB_EALREADY)
      c->bad_rc = r;
    atomic_store(&c->b->slots[id].cancel_rc, 1 + r);
    for (int i = 0; i < (int)(xorshift(&seed) % 8); i++) sched_yield();
  }
  return NULL;
}

static int test_random_cancels(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 2));
  enum { NSUB = 4 };
  int per = (int)th_scaled(25000), n = per * NSUB;
  book b;
  memset(&b, 0, sizeof b);
  atomic_store(&b.spin, 20);
  b.slots = calloc((size_t)n, sizeof(slot));
  targ *args = calloc((size_t)n, sizeof(targ));
  ab_future **futs = calloc((size_t)n, sizeof *futs);
  CHECK(b.slots && args && futs);
  atomic_int published = 0, stop = 0;
  csubmitter s[NSUB];
  pthread_t th[NSUB], ct[2];
  canceller c[2];
  for (int t = 0; t < NSUB; t++) {
    s[t] = (csubmitter){rt, &b, args, futs, &published, t * per, per, 0, 0};
    atomic_init(&s[t].progress, 0);
  }
  for (int i = 0; i < 2; i++) {
    c[i] = (canceller){&b, futs, s, NSUB, &stop, 0x9e3779b9u * (uint32_t)(i + 1), 0, 0};
    CHECK_OK(pthread_create(&ct[i], NULL, cancel_randomly, &c[i]));
  }
  for (int t = 0; t < NSUB; t++) CHECK_OK(pthread_create(&th[t], NULL, submit_cancellable, &s[t]));
  for (int t = 0; t < NSUB; t++) {
    pthread_join(th[t], NULL);
    CHECK_EQ_INT(s[t].failed, 0);
  }
  CHECK_OK(ab_future_wait_all(futs, (size_t)n, -1));
  atomic_store(&stop, 1);
  for (int i = 0; i < 2; i++) {
    pthread_join(ct[i], NULL);
    CHECK_EQ_INT(c[i].bad_rc, 0);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  int cancelled = 0;
  for (int i = 0; i < n; i++) {
    /* the future's own status agrees with what the callback saw */
    CHECK_EQ_INT(ab_future_status(futs[i]), atomic_load(&b.slots[i].status));
    cancelled += ab_future_status(futs[i]) == AB_ECANCELED;
  }
  fprintf(stderr, "# %d of %d tasks cancelled (%d cancel calls)\n", cancelled, n,
          c[0].tries + c[1].tries);
  CHECK_EQ_INT(check_book(&b, n, true), 0);
  for (int i = 0; i < n; i++) ab_future_release(futs[i]);
  free(b.slots);
  free(args);
  free(futs);
  return 0;
}

/* ---- destroy(AB_CANCEL) mid-flight, many rounds ------------------------------------------------- */
static int test_destroy_cancel_midflight(void) {
  int rounds = (int)th_scaled(200), per = 600;
  for (int round = 0; round < rounds; round++) {
    ab_runtime *rt;
    CHECK_OK(th_runtime(&rt, 2, 1 + round % 3));
    book b;
    memset(&b, 0, sizeof b);
    atomic_store(&b.spin, round % 2 ? 200 : 0);
    b.slots = calloc((size_t)per, sizeof(slot));
    targ *args = calloc((size_t)per, sizeof(targ));
    ab_future **futs = calloc((size_t)per, sizeof *futs);
    CHECK(b.slots && args && futs);
    for (int i = 0; i < per; i++) {
      ab_future *dep = (i % 5 == 4) ? futs[i - 1] : NULL;
      b.slots[i].dep = dep ? i - 1 : -1;
      CHECK_OK(submit_tracked(rt, &b, args, i, dep, i % 2 ? AB_PLACE_ROUND_ROBIN : AB_PLACE_AUTO,
                              AB_SUBMIT_BLOCK, &futs[i]));
    }
    if (round % 4 == 1) /* some releases before destroy */
      for (int i = 0; i < per; i += 3) {
        ab_future_release(futs[i]);
        futs[i] = NULL;
      }
    CHECK_OK(ab_runtime_destroy(rt, AB_CANCEL));
    for (int i = 0; i < per; i++) {
      if (futs[i]) {
        int st = ab_future_status(futs[i]);
        CHECK(st != AB_EPENDING);
        CHECK_EQ_INT(st, atomic_load(&b.slots[i].status));
        ab_future_release(futs[i]);
      }
    }
    if (round == 0 || round == rounds - 1) {
      int ran = 0;
      for (int i = 0; i < per; i++) ran += atomic_load(&b.slots[i].status) == 0;
      fprintf(stderr, "# round %d: %d of %d ran before the cancel\n", round, ran, per);
    }
    if (check_book(&b, per, true)) {
      fprintf(stderr, "# round %d\n", round);
      return 1;
    }
    free(b.slots);
    free(args);
    free(futs);
  }
  return 0;
}

/* ---- blocking submitters racing a TRY submitter on a tiny queue --------------------------------- */
typedef struct {
  ab_runtime *rt;
  book *b;
  targ *args;
  int first, count;
  atomic_int *accepted;
  int failed;
  ab_future **futs;
} trier;

static void *try_submit(void *arg) {
  trier *t = arg;
  for (int k = 0; k < t->count; k++) {
    int id = t->first + k;
    t->b->slots[id].dep = -1;
    ab_future *f = NULL;
    int r = submit_tracked(t->rt, t->b, t->args, id, NULL, AB_PLACE_EXPLICIT,
                           k % 2 ? AB_SUBMIT_TRY : AB_SUBMIT_BLOCK, &f);
    if (r == AB_EAGAIN) {
      if (f) t->failed = 1;
      /* never accepted: make its bookkeeping look complete */
      atomic_store(&t->b->slots[id].done, 1);
      atomic_store(&t->b->slots[id].started, 1);
      continue;
    }
    if (r) {
      t->failed = 1;
      break;
    }
    atomic_fetch_add(t->accepted, 1);
    t->futs[id] = f;
  }
  return NULL;
}

static int try_and_block_round(void);
static int test_try_and_block_race(void) {
  for (int r = 0; r < 5; r++)
    if (try_and_block_round()) {
      fprintf(stderr, "# round %d\n", r);
      return 1;
    }
  return 0;
}

static int try_and_block_round(void) {
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = 1;
  o.kinds[AB_HOST].logical_split = 2;
  o.queue_capacity = 8;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  enum { NT = 4 };
  int per = (int)th_scaled(20000), n = per * NT;
  book b;
  memset(&b, 0, sizeof b);
  b.ndev = 2;
  b.slots = calloc((size_t)n, sizeof(slot));
  targ *args = calloc((size_t)n, sizeof(targ));
  ab_future **futs = calloc((size_t)n, sizeof *futs);
  CHECK(b.slots && args && futs);
  atomic_int accepted = 0;
  trier t[NT];
  pthread_t th[NT];
  for (int i = 0; i < NT; i++) {
    t[i] = (trier){rt, &b, args, i * per, per, &accepted, 0, futs};
    CHECK_OK(pthread_create(&th[i], NULL, try_submit, &t[i]));
  }
  for (int i = 0; i < NT; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(t[i].failed, 0);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_EQ_INT(check_book(&b, n, false), 0);
  int ran = 0;
  for (int i = 0; i < n; i++)
    if (futs[i]) {
      ran++;
      ab_future_release(futs[i]);
    }
  CHECK_EQ_INT(ran, atomic_load(&accepted));
  fprintf(stderr, "# %d of %d accepted\n", ran, n);
  free(b.slots);
  free(args);
  free(futs);
  return 0;
}

/* ---- destroy that never returns: bounded ------------------------------------------------------ */
typedef struct {
  ab_runtime *rt;
  int how, rc;
} destroyer;

static void *destroy_thread(void *arg) {
  destroyer *d = arg;
  d->rc = ab_runtime_destroy(d->rt, d->how);
  return NULL;
}

/* ab_runtime_destroy on another thread, given `secs` to return: a hang fails the test (the
 * hung thread dies with the test's process). */
static int destroy_within(ab_runtime *rt, int how, int secs) {
  destroyer d = {rt, how, -1};
  pthread_t th;
  CHECK_OK(pthread_create(&th, NULL, destroy_thread, &d));
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += secs;
  int jr = pthread_timedjoin_np(th, NULL, &ts);
  CHECK_MSG(jr == 0, "ab_runtime_destroy did not return within %d s", secs);
  CHECK_OK(d.rc);
  return 0;
}

/* ---- a conversion that turns out zero-copy, cancelled as its input completes ------------------ */
static int small_output(ab_ctx *c, void *arg) {
  (void)arg;
  int64_t n = 16;
  ab_tensor *t = NULL;
  int r = ab_ctx_alloc_tensor(c, TH_U8, 1, &n, &t);
  return r ? r : ab_ctx_set_output(c, t);
}

/* ab_convert_after on a host tensor, to the host: zero-copy once the input is known. The test
 * cancels it the moment its input completes, while the worker's completion of the input is
 * deciding that. Exactly one of the two completes it; destroy then returns. (The runtime's
 * in-flight count used to be given back by both: it went negative and destroy hung.) */
static int test_convert_after_cancel_race(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int n = (int)th_scaled(40000), zero_copy = 0, cancelled = 0;
  for (int i = 0; i < n; i++) {
    ab_future *in = NULL, *conv = NULL;
    CHECK_OK(th_submit_fn(rt, th_host(0), small_output, NULL, &in));
    CHECK_OK(ab_convert_after(rt, in, th_host(0), NULL, &conv));
    while (ab_future_status(in) == AB_EPENDING) {
    }
    int crc = ab_future_cancel(conv);
    CHECK_OK(ab_future_wait(conv, -1));
    int st = ab_future_status(conv);
    CHECK_MSG(st == 0 || st == AB_ECANCELED, "iteration %d: status %d%s", i, st, th_errstr(st));
    CHECK_EQ_INT(crc == 0, st == AB_ECANCELED); /* cancel said 0 exactly when it won */
    if (st == 0) {
      ab_tensor *a = NULL, *b = NULL;
      CHECK_OK(ab_future_result(in, &a));
      CHECK_OK(ab_future_result(conv, &b));
      CHECK_EQ_PTR(a, b); /* zero-copy: the input's own tensor */
      ab_tensor_release(a);
      ab_tensor_release(b);
    }
    zero_copy += st == 0;
    cancelled += st == AB_ECANCELED;
    ab_future_release(in);
    ab_future_release(conv);
  }
  fprintf(stderr, "# %d conversions: %d zero-copy, %d cancelled\n", n, zero_copy, cancelled);
  return destroy_within(rt, AB_DRAIN, 20);
}

/* ---- cancelling parked tasks while workers send them back to the queue ------------------------- */
static int oom_task(ab_ctx *c, void *arg) {
  (void)c;
  atomic_fetch_add((atomic_int *)arg, 1);
  return AB_ENOMEM;
}

/* Tasks out of memory on every try, parked with a 20-50 us backoff, so that workers requeue
 * them all the time; the test cancels each once it has run, at a random moment. Every one
 * completes exactly once with AB_ECANCELED (or AB_ENOMEM past its deadline) and nothing stays
 * parked. Under ThreadSanitizer this checks the cancel against the requeue. */
static int test_cancel_parked_race(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  int rounds = (int)th_scaled(100);
  enum { PER = 64 };
  ab_oom_policy p = {.backoff_initial_ns = 20000, .backoff_max_ns = 50000, .deadline_ns = TH_SEC(5)};
  uint32_t seed = 12345;
  atomic_int runs[PER];
  int counts[2] = {0}, attempts = 0;
  for (int r = 0; r < rounds; r++) {
    ab_future *fs[PER];
    for (int i = 0; i < PER; i++) {
      atomic_init(&runs[i], 0);
      ab_task_desc d = AB_TASK_DESC_INIT;
      d.fn = oom_task;
      d.arg = &runs[i];
      d.place.device = th_host(AB_ANY);
      d.place.oom = &p;
      CHECK_OK(ab_submit(rt, &d, &fs[i]));
    }
    for (int i = 0; i < PER; i++) {
      while (atomic_load(&runs[i]) == 0) sched_yield(); /* parked at least once */
      for (uint32_t k = xorshift(&seed) % 32; k > 0; k--) sched_yield();
      int crc = ab_future_cancel(fs[i]);
      CHECK_MSG(crc == 0 || crc == AB_EBUSY || crc == AB_EALREADY, "cancel: %d%s", crc, th_errstr(crc));
    }
    CHECK_OK(ab_future_wait_all(fs, PER, TH_SEC(20)));
    for (int i = 0; i < PER; i++) {
      int st = ab_future_status(fs[i]);
      CHECK_MSG(st == AB_ECANCELED || st == AB_ENOMEM, "status %d%s", st, th_errstr(st));
      counts[st == AB_ECANCELED]++;
      attempts += atomic_load(&runs[i]);
      ab_future_release(fs[i]);
    }
  }
  /* the cancelled ones leave the parked list (a worker drops them): nothing stays there */
  ab_device_stats st;
  for (int i = 0; i < 2000; i++) {
    CHECK_OK(th_stats(rt, th_host(0), &st));
    if (st.parked == 0) break;
    th_sleep_ns(TH_MS(1));
  }
  CHECK_EQ_U64(st.parked, 0);
  CHECK_OK(destroy_within(rt, AB_DRAIN, 20));
  fprintf(stderr, "# %d tasks: %d cancelled, %d out of memory, %d attempts\n", rounds * PER, counts[1],
          counts[0], attempts);
  return 0;
}

static const ab_test_entry tests[] = {TEST_ENTRY_T(many_submitters, 110),
                                      TEST_ENTRY_T(chains, 110),
                                      TEST_ENTRY_T(random_cancels, 110),
                                      TEST_ENTRY_T(destroy_cancel_midflight, 110),
                                      TEST_ENTRY_T(try_and_block_race, 110),
                                      TEST_ENTRY_T(convert_after_cancel_race, 110),
                                      TEST_ENTRY_T(cancel_parked_race, 110),
                                      TEST_END};
AB_TEST_MAIN(tests)
