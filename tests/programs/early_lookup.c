/* early_lookup.c: a library of runtime_like whose constructor looks cuLaunchKernel up before the
 * preloaded shim's constructor has run (the loader initializes a program's libraries before the
 * preloaded ones), as a C++ library whose static initializer calls into CUDA would. Only with
 * GS_EARLY_LOOKUP=1; early_launch() returns the pointer (or NULL). */
#include <cuda.h>
#include <dlfcn.h>
#include <stdlib.h>

static void *looked_up;

__attribute__((visibility("default"))) void *early_launch(void)
{
    return looked_up;
}

__attribute__((constructor)) static void look_up_early(void)
{
    if (getenv("GS_EARLY_LOOKUP") == NULL)
        return;
    void *driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (driver == NULL)
        return;
    CUresult (*get_proc)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *) =
        (CUresult(*)(const char *, void **, int, cuuint64_t,
                     CUdriverProcAddressQueryResult *))dlsym(driver, "cuGetProcAddress_v2");
    if (get_proc)
        get_proc("cuLaunchKernel", &looked_up, 13000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, NULL);
}
