/*
 * arraybridge/dlpack.h: the DLPack ABI as arraybridge uses it.
 *
 * Installed, arraybridge carries the dlpack.h it was built with beside this file
 * (arraybridge/dlpack/dlpack.h, as frameworks ship theirs), so a consumer needs no DLPack
 * package; the quoted include finds that copy first, and in the source tree, which has no copy,
 * the build's dlpack include folder. The copy keeps DLPack's include guard: whichever dlpack.h
 * a translation unit includes first is the one it gets, and the layouts are the same.
 *
 * Debian ships dlpack.h 0.6, which lacks the 1.x additions (versioned managed tensors, flags,
 * kDLBool). They are ABI-stable plain structs, so we declare them here when the header does
 * not, exactly as DLPack 1.0 lays them out.
 */
#ifndef ARRAYBRIDGE_DLPACK_H
#define ARRAYBRIDGE_DLPACK_H

#include "dlpack/dlpack.h"
#include <stdint.h>

#ifndef DLPACK_MAJOR_VERSION
#define AB_DLPACK_COMPAT 1
#define DLPACK_MAJOR_VERSION 1
#define DLPACK_MINOR_VERSION 0

typedef struct {
  uint32_t major;
  uint32_t minor;
} DLPackVersion;

#define DLPACK_FLAG_BITMASK_READ_ONLY (1UL << 0UL)
#define DLPACK_FLAG_BITMASK_IS_COPIED (1UL << 1UL)

typedef struct DLManagedTensorVersioned {
  DLPackVersion version;
  void *manager_ctx;
  void (*deleter)(struct DLManagedTensorVersioned *self);
  uint64_t flags;
  DLTensor dl_tensor;
} DLManagedTensorVersioned;
#endif

/* kDLBool arrived in DLPack 0.8 as a type code; 0.6 headers lack it. */
#define AB_DL_BOOL 6U

#endif
