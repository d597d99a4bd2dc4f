/*
 * runtime/ctx.c: the task context, what a task body sees of the runtime while a worker runs it
 * (ab_ctx_*): its device, stream and inputs, cancellation, scratch memory that lives until the
 * task ends (the worker frees it, worker.c), its output, and its failure message. Conversion and
 * stacking bodies use it too.
 */
#include "runtime/internal.h"

ab_device ab_ctx_device(ab_ctx *c) { return c ? c->w->dev->id : (ab_device){-1, -1}; }
void *ab_ctx_stream(ab_ctx *c) { return c && c->w->dev->ops->stream ? c->w->dev->ops->stream(c->w) : NULL; }
int ab_ctx_worker(ab_ctx *c) { return c ? c->w->index : AB_EINVAL; }
int ab_ctx_ninputs(ab_ctx *c) { return c ? c->task->nin : AB_EINVAL; }

ab_tensor *ab_ctx_input(ab_ctx *c, int i) {
  if (c == NULL || i < 0 || i >= c->task->nin) return NULL;
  return c->task->in[i].tensor;
}

bool ab_ctx_cancelled(ab_ctx *c) { return c && ab__cancel_asked(c->w, c->task); }

/* The text waits in the thread's device note (errors.c) until the task ends: the worker, on
 * this thread, makes it the future's message. */
int ab_ctx_fail(ab_ctx *c, int code, const char *fmt, ...) {
  if (c == NULL || fmt == NULL) return code;
  va_list ap;
  va_start(ap, fmt);
  ab__device_verror(fmt, ap);
  va_end(ap);
  return code;
}

_Thread_local const ab_future *ab__running_task;

/* A status that is not a failure code would leave a completed future looking unfinished
 * (AB_EPENDING) or unexplained (a positive number, a code outside the table): it is the body's
 * bug, and the future fails with AB_EINVAL saying what the body returned, and what it said. */
static int task_status(int rc) {
  if (rc == 0 || ab__is_failure(rc)) return rc;
  char said[200];
  snprintf(said, sizeof said, "%s", ab__device_error_peek());
  ab__device_error("the task returned %d%s, which is neither 0 nor an AB_E* failure code%s%s", rc,
                   rc == AB_EPENDING ? " (AB_EPENDING)" : "", said[0] ? ": " : "", said);
  return AB_EINVAL;
}

int ab__ctx_run(ab_ctx *c) {
  const ab_future *outer = ab__running_task;
  ab__running_task = c->task;
  int rc = c->task->fn(c, c->task->arg);
  ab__running_task = outer;
  return task_status(rc);
}

/* A free record slot: the inline block, or a new one chained after it. */
static int scratch_slot(ab_ctx *c, ab__scratch **out) {
  ab__scratch *s = &c->scratch;
  if (s->n == 8 && (s->next == NULL || s->next->n == 8)) {
    ab__scratch *more = ab__calloc(&c->w->dev->rt->alloc, sizeof *more);
    if (more == NULL) return AB_ENOMEM;
    more->next = s->next;
    s->next = more;
  }
  *out = s->n < 8 ? s : s->next;
  return 0;
}

int ab_ctx_alloc(ab_ctx *c, size_t bytes, void **ptr) {
  if (ptr == NULL) return AB_EINVAL;
  *ptr = NULL;
  if (c == NULL) return AB_EINVAL;
  ab__scratch *slot;
  int rc = scratch_slot(c, &slot);
  if (rc != 0) return rc;
  size_t size = bytes ? bytes : 1;
  void *base;
  if ((rc = ab__mem_alloc(c->w->dev, c->w, size, &base)) != 0) return rc;
  slot->blk[slot->n].base = base;
  slot->blk[slot->n].bytes = size;
  slot->n++;
  *ptr = base;
  return 0;
}

int ab_ctx_alloc_tensor(ab_ctx *c, DLDataType dt, int ndim, const int64_t *shape, ab_tensor **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (c == NULL) return AB_EINVAL;
  return ab__tensor_alloc_on(c->w->dev, c->w, dt, ndim, shape, out);
}

int ab_ctx_set_output(ab_ctx *c, ab_tensor *t) {
  if (c == NULL) return AB_EINVAL;
  ab_tensor_release(c->output);
  c->output = t;
  return 0;
}
