/*
 * queue/queue.h: the bounded per-device task queue.
 *
 * Design notes
 *   - Items are task pointers in a ck_ring used single-producer, multi-consumer: producers take
 *     push_lock, workers dequeue lock-free. ck_ring's own multi-producer enqueue makes each
 *     producer spin until earlier producers have published; with more submitting threads than
 *     cores a preempted producer then stalls all the others for whole time slices (we measured
 *     a stress test going from under a second to minutes). A mutex sleeps instead of spinning.
 *   - Under push_lock the ring's size can only be overestimated (workers only shrink it), so
 *     the user's capacity is enforced exactly: a full queue makes ab__queue_push block, fail
 *     with AB_EAGAIN or time out, as the caller asked.
 *   - Tasks released by their dependencies, parked tasks coming back, and re-routed tasks must
 *     never block (they are pushed from worker threads and callbacks), so they use
 *     ab__queue_push_always, which falls back to an unbounded overflow list when the ring is
 *     full. Workers pop the ring first, then the overflow.
 *   - Sleeping: idle workers wait on work_ec, a ck_ec event count that every push increments;
 *     ck_ec only makes the futex call when a waiter has flagged itself, so a push to a busy
 *     device costs one atomic add. Timed waits go through ab__ec_wait, which keeps ck_ec's
 *     growing sleep steps from running past the deadline (a worker's next retry, a submit's
 *     timeout). Submitters blocked on a full queue wait on space_ec. A pop
 *     increments it only when space_waiters says someone may be waiting: a waiter counts
 *     itself before it looks for room, a popper fences before it reads the count (both
 *     seq_cst), so either the waiter sees the room or the popper sees the waiter. (ck_ec's own
 *     waiter flag is set too late for that test: inside ck_ec32_wait, after the room check.)
 *   - ck_ring is invisible to ThreadSanitizer (inline assembly); the happens-before edge from
 *     a submitter to a worker is carried by the task's own state word (release on submit,
 *     acquire when the worker claims it), so TSan sees every real ordering.
 */
#ifndef AB_QUEUE_H
#define AB_QUEUE_H

#include <ck_ec.h>
#include <ck_ring.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "arraybridge.h"

typedef struct ab__qnode {
  struct ab__qnode *next;
} ab__qnode;

typedef struct {
  ck_ring_t ring;
  ck_ring_buffer_t *buf;
  unsigned int capacity;          /* ring slots, a power of two; holds capacity - 1 */
  unsigned int limit;             /* tasks a bounded push admits: the user's queue_capacity */
  struct ck_ec32 work_ec;         /* bumped on every push */
  struct ck_ec32 space_ec;        /* bumped on pops while submitters wait for space */
  _Atomic int space_waiters;      /* submitters between "no room" and their wake-up */
  pthread_mutex_t push_lock;      /* serialises producers; guards the overflow list; a leaf */
  ab__qnode *ovf_head, *ovf_tail;
  _Atomic uint32_t novf;
} ab__queue;

int ab__queue_init(ab__queue *q, unsigned int capacity, const ab_allocator *a);
void ab__queue_fini(ab__queue *q, const ab_allocator *a);
/* Bounded push. mode: AB_SUBMIT_BLOCK / AB_SUBMIT_TRY; deadline_ns absolute or < 0. full() is
 * an extra admission test (bytes in flight); it is re-checked after every wake-up. */
int ab__queue_push(ab__queue *q, void *item, int mode, int64_t deadline_ns, bool (*full)(void *),
                   void *full_arg);
/* Never fails, never blocks. node is the item's embedded link for the overflow list. */
void ab__queue_push_always(ab__queue *q, void *item, ab__qnode *node);
/* NULL when empty. */
void *ab__queue_pop(ab__queue *q, size_t node_offset);
/* A snapshot to pass to ab__queue_wait after finding the queue empty. */
uint32_t ab__queue_snapshot(ab__queue *q);
/* Sleeps until a push after the snapshot, a wake-up, or the deadline (absolute ns, < 0: none). */
void ab__queue_wait(ab__queue *q, uint32_t snapshot, int64_t deadline_ns);
void ab__queue_wake(ab__queue *q); /* wakes every waiting worker */
void ab__queue_signal_space(ab__queue *q);
uint64_t ab__queue_depth(ab__queue *q); /* a gauge, for statistics */

#endif
