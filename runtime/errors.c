/*
 * runtime/errors.c: names and texts for AB_E* codes, generated from AB_ERRNO_MAP, and the
 * thread's last device error.
 *
 * A backend call that fails deep inside a task (a CUDA copy, a kernel launch) can only return a
 * code; what the driver said goes into a note of the calling thread (which call, where, the
 * driver's name for the error), and the worker attaches the note to the failing task's future
 * as its message. The note is thread-local because backends are called on the thread that runs
 * the task (or completes it), so no lock is needed. AB_DEBUG (set, not "0") also prints every
 * note on stderr as it is made, for failures on threads that have no future to carry them.
 */
#include <stdarg.h>
#include <string.h>

#include "runtime/internal.h"

const char *ab_strerror(int code) {
  if (code == 0) return "success";
  switch (code) {
#define AB__ERR_TEXT(name, val, text) \
  case AB_##name: return text;
    AB_ERRNO_MAP(AB__ERR_TEXT)
#undef AB__ERR_TEXT
  }
  return "unknown error";
}

const char *ab_err_name(int code) {
  if (code == 0) return "OK";
  switch (code) {
#define AB__ERR_NAME(name, val, text) \
  case AB_##name: return "AB_" #name;
    AB_ERRNO_MAP(AB__ERR_NAME)
#undef AB__ERR_NAME
  }
  return "AB_EUNKNOWN";
}

const char *ab_version(void) { return AB_VERSION_STRING; }

bool ab__is_failure(int code) {
  switch (code) {
#define AB__ERR_CASE(name, val, text) case AB_##name:
    AB_ERRNO_MAP(AB__ERR_CASE)
#undef AB__ERR_CASE
    return code != AB_EPENDING; /* a status saying "not complete yet" fails nothing */
  }
  return false;
}

/* ---- the thread's last device error --------------------------------------------------------- */
static _Thread_local char device_note[320];

/* Read on every call: notes are made on failures only, and a test (or a debugger) may set the
 * variable while the process runs. */
bool ab__debug_env(void) {
  const char *v = getenv("AB_DEBUG");
  return v && *v && strcmp(v, "0") != 0;
}

void ab__device_verror(const char *fmt, va_list ap) {
  vsnprintf(device_note, sizeof device_note, fmt, ap);
  if (ab__debug_env()) fprintf(stderr, "arraybridge: %s\n", device_note);
}

void ab__device_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ab__device_verror(fmt, ap);
  va_end(ap);
}

void ab__device_error_clear(void) { device_note[0] = 0; }

const char *ab__device_error_peek(void) { return device_note; }

char *ab__device_error_take(const ab_allocator *a) {
  if (device_note[0] == 0) return NULL;
  size_t n = strlen(device_note) + 1;
  char *m = ab__malloc(a, n);
  if (m) memcpy(m, device_note, n);
  device_note[0] = 0;
  return m;
}
