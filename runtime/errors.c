/* runtime/errors.c: names and texts for AB_E* codes, generated from AB_ERRNO_MAP. */
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

_Noreturn void ab__panic(const char *file, int line, const char *what) {
  fprintf(stderr, "arraybridge: %s:%d: assertion failed: %s\n", file, line, what);
  abort();
}
