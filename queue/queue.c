/* queue/queue.c: see queue.h for the design notes. */
#include "queue/queue.h"

#include <errno.h>
#include <string.h>

#include "platform/platform.h"

int ab__queue_init(ab__queue *q, unsigned int capacity, const ab_allocator *a) {
  unsigned int cap = 4;
  while (cap < capacity + 1u && cap < (1u << 30)) cap <<= 1; /* ck_ring holds capacity - 1 */
  memset(q, 0, sizeof *q);
  q->buf = ab__calloc(a, sizeof(ck_ring_buffer_t) * cap);
  if (q->buf == NULL) return AB_ENOMEM;
  if (pthread_mutex_init(&q->push_lock, NULL) != 0) {
    ab__free(a, q->buf);
    return AB_ENOMEM;
  }
  q->capacity = cap;
  q->limit = capacity;
  ck_ring_init(&q->ring, cap);
  ck_ec32_init(&q->work_ec, 0);
  ck_ec32_init(&q->space_ec, 0);
  return 0;
}

void ab__queue_fini(ab__queue *q, const ab_allocator *a) {
  if (q->buf == NULL) return;
  pthread_mutex_destroy(&q->push_lock);
  ab__free(a, q->buf);
  q->buf = NULL;
}

static bool has_room(ab__queue *q) { return ck_ring_size(&q->ring) < q->limit; }

static bool try_push(ab__queue *q, void *item) {
  ab__lock(&q->push_lock, AB__RANK_PUSH);
  bool ok = has_room(q) && ck_ring_enqueue_spmc(&q->ring, q->buf, item);
  ab__unlock(&q->push_lock, AB__RANK_PUSH);
  if (ok) ck_ec32_inc(&q->work_ec, ab__ec_mode());
  return ok;
}

static int wait_for_space(ab__queue *q, int64_t deadline_ns, bool (*full)(void *), void *arg) {
  atomic_fetch_add(&q->space_waiters, 1); /* seq_cst: see the design notes */
  uint32_t snap = ck_ec32_value(&q->space_ec);
  int rc = 0;
  if (!has_room(q) || (full && full(arg))) {
    if (deadline_ns >= 0 && ab__now_ns() >= deadline_ns) rc = AB_ETIMEDOUT;
    else rc = ab__ec_wait(&q->space_ec, snap, deadline_ns);
  }
  atomic_fetch_sub(&q->space_waiters, 1);
  return rc;
}

int ab__queue_push(ab__queue *q, void *item, int mode, int64_t deadline_ns, bool (*full)(void *),
                   void *full_arg) {
  for (;;) {
    if (!(full && full(full_arg)) && try_push(q, item)) return 0;
    if (mode == AB_SUBMIT_TRY) return AB_EAGAIN;
    int rc = wait_for_space(q, deadline_ns, full, full_arg);
    if (rc != 0) return rc;
  }
}

void ab__queue_push_always(ab__queue *q, void *item, ab__qnode *node) {
  ab__lock(&q->push_lock, AB__RANK_PUSH);
  /* Keep FIFO order with earlier overflowed items: the ring only when the overflow is empty. */
  if (q->ovf_head != NULL || !ck_ring_enqueue_spmc(&q->ring, q->buf, item)) {
    node->next = NULL;
    if (q->ovf_tail) q->ovf_tail->next = node;
    else q->ovf_head = node;
    q->ovf_tail = node;
    atomic_fetch_add_explicit(&q->novf, 1, memory_order_release); /* pairs with pop's acquire */
  }
  ab__unlock(&q->push_lock, AB__RANK_PUSH);
  ck_ec32_inc(&q->work_ec, ab__ec_mode());
}

static void *pop_overflow(ab__queue *q, size_t node_offset) {
  if (atomic_load_explicit(&q->novf, memory_order_acquire) == 0) return NULL;
  ab__lock(&q->push_lock, AB__RANK_PUSH);
  ab__qnode *n = q->ovf_head;
  if (n) {
    q->ovf_head = n->next;
    if (q->ovf_head == NULL) q->ovf_tail = NULL;
    atomic_fetch_sub_explicit(&q->novf, 1, memory_order_relaxed); /* under the lock */
  }
  ab__unlock(&q->push_lock, AB__RANK_PUSH);
  return n ? (char *)n - node_offset : NULL;
}

void *ab__queue_pop(ab__queue *q, size_t node_offset) {
  void *item = NULL;
  if (!ck_ring_dequeue_spmc(&q->ring, q->buf, &item)) item = pop_overflow(q, node_offset);
  if (item == NULL) return NULL;
  ab__queue_signal_space(q);
  return item;
}

void ab__queue_signal_space(ab__queue *q) {
  atomic_thread_fence(memory_order_seq_cst); /* the pop (or freed bytes) before the count */
  if (atomic_load_explicit(&q->space_waiters, memory_order_relaxed) > 0) ck_ec32_inc(&q->space_ec, ab__ec_mode());
}

uint32_t ab__queue_snapshot(ab__queue *q) { return ck_ec32_value(&q->work_ec); }

void ab__queue_wait(ab__queue *q, uint32_t snapshot, int64_t deadline_ns) {
  ab__ec_wait(&q->work_ec, snapshot, deadline_ns);
}

void ab__queue_wake(ab__queue *q) { ck_ec32_inc(&q->work_ec, ab__ec_mode()); }

uint64_t ab__queue_depth(ab__queue *q) {
  return ck_ring_size(&q->ring) + atomic_load_explicit(&q->novf, memory_order_relaxed);
}
