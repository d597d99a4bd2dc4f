// The public header, compiled as C++: catches C-only constructs in it.
#include <arraybridge.h>

int consumer_cxx_header_check() {
  ab_runtime_options o = AB_RUNTIME_OPTIONS_INIT;
  ab_task_desc d = AB_TASK_DESC_INIT;
  return static_cast<int>(o.size + d.size) + AB_ENOMEM;
}
