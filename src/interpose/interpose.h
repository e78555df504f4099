/* interpose.h: shared by the files that define intercepted symbols. */
#ifndef GS_INTERPOSE_H
#define GS_INTERPOSE_H

#include <cuda.h>

/* Our wrapper for an exported driver symbol name ("cuMemAlloc_v2"), or NULL. */
void *gs_intercept_by_name(const char *name);
/* Our wrapper for what cuGetProcAddress(symbol, version, flags) resolves to, or NULL. */
void *gs_intercept_for_proc(const char *symbol, int cuda_version, cuuint64_t flags);

#endif
