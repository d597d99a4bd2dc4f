/* A small program against the installed arraybridge: one runtime, one task, one tensor. */
#include <arraybridge.h>
#include <stdio.h>
#include <string.h>

static int add_one(ab_ctx *ctx, void *arg) {
  (void)ctx;
  ++*(int *)arg;
  return 0;
}

#define CHECK(call)                                                                           \
  do {                                                                                        \
    int rc_ = (call);                                                                         \
    if (rc_ != 0) {                                                                           \
      fprintf(stderr, "consumer: %s: %s (%d)\n", #call, ab_strerror(rc_), rc_);               \
      return 1;                                                                               \
    }                                                                                         \
  } while (0)

int main(void) {
  if (strcmp(ab_version(), AB_VERSION_STRING) != 0) {
    fprintf(stderr, "consumer: header says %s, library says %s\n", AB_VERSION_STRING, ab_version());
    return 1;
  }
  ab_runtime_options opt = AB_RUNTIME_OPTIONS_INIT;
  opt.kinds[AB_OPENCL].disabled = true;
  opt.kinds[AB_CUDA].disabled = true;
  ab_runtime *rt = NULL;
  CHECK(ab_runtime_create(&opt, &rt));

  int value = 41;
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = add_one;
  d.arg = &value;
  d.place.device.kind = AB_HOST;
  d.place.device.index = AB_ANY;
  ab_future *f = NULL;
  CHECK(ab_submit(rt, &d, &f));
  CHECK(ab_future_wait(f, -1));
  CHECK(ab_future_status(f));
  ab_future_release(f);

  int64_t shape[2] = {4, 8};
  DLDataType u16 = {kDLUInt, 16, 1};
  ab_device host = {AB_HOST, 0};
  ab_tensor *t = NULL;
  CHECK(ab_tensor_alloc(rt, host, u16, 2, shape, &t));
  size_t nbytes = ab_tensor_nbytes(t);
  ab_tensor_release(t);

  CHECK(ab_runtime_destroy(rt, AB_DRAIN));
  if (value != 42 || nbytes != 64) {
    fprintf(stderr, "consumer: value %d (want 42), nbytes %zu (want 64)\n", value, nbytes);
    return 1;
  }
  printf("consumer: arraybridge %s ok (%s)\n", ab_version(), ab_strerror(AB_ENOMEM));
  return 0;
}
