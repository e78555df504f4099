/* dlsym.c: our dlsym. The CUDA runtime (static or shared), CuPy and JAX never call an exported
 * cudaMalloc: they dlopen libcuda.so.1, dlsym "cuGetProcAddress_v2" and take every driver entry
 * point from it. So a lookup of an intercepted name in a library handle returns our wrapper.
 *
 * Hazard, why this entry is assembly: glibc resolves RTLD_NEXT and RTLD_DEFAULT relative to the
 * *caller's* object (its return address). A C wrapper would make every such lookup relative to
 * libgpushim.so: RTLD_NEXT would find the wrong "next" (another preload library could get its
 * own symbol back and recurse forever), and RTLD_DEFAULT would lose the caller's local scope. So
 * those two go to the real dlsym by a tail jump that keeps the caller's return address; only
 * lookups in an explicit handle come through C. Our own exports are found by RTLD_DEFAULT anyway,
 * since we are preloaded. An unversioned definition in a preloaded library catches both
 * dlsym@GLIBC_2.34 (static binaries) and dlsym@GLIBC_2.2.5 (libcudart.so). */
#include "gs.h"
#include "interpose.h"

#include <dlfcn.h>

/* Lookups in an explicit handle. Side effect of going through us: glibc records the found object
 * as a dependency of libgpushim.so rather than of the caller, so it stays loaded after dlclose. */
__attribute__((used)) void *gs_dlsym_in_handle(void *handle, const char *name)
{
    void *symbol = gs_resolve_real_dlsym()(handle, name);
    /* Reentrancy: inside the driver (gs_depth > 0) every lookup is the driver's own business. */
    if (symbol == NULL || gs_depth > 0 || name[0] != 'c' || name[1] != 'u')
        return symbol;
    void *wrapper = gs_intercept_by_name(name);
    return wrapper ? wrapper : gs_work_wrap(name, symbol, true);
}

__attribute__((used)) void *gs_dlsym_real_for_caller(void)
{
    return (void *)gs_resolve_real_dlsym();
}

#if defined(__x86_64__)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym, @function\n"
        ".p2align 4\n"
        "dlsym:\n"
        "    .cfi_startproc\n"
        "    endbr64\n"
        "    test %rdi, %rdi\n" /* RTLD_DEFAULT */
        "    je 1f\n"
        "    cmp $-1, %rdi\n" /* RTLD_NEXT */
        "    je 1f\n"
        "    jmp gs_dlsym_in_handle\n"
        "1:  push %rdi\n"
        "    .cfi_adjust_cfa_offset 8\n"
        "    push %rsi\n"
        "    .cfi_adjust_cfa_offset 8\n"
        "    sub $8, %rsp\n" /* keep the stack 16-byte aligned for the call */
        "    .cfi_adjust_cfa_offset 8\n"
        "    call gs_dlsym_real_for_caller\n"
        "    add $8, %rsp\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    pop %rsi\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    pop %rdi\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    jmp *%rax\n" /* the real dlsym sees our caller's return address */
        "    .cfi_endproc\n"
        ".size dlsym, .-dlsym\n");
#else
/* Other architectures: a C wrapper. RTLD_NEXT/RTLD_DEFAULT are then resolved relative to
 * libgpushim.so (see the hazard above); port the trampoline before relying on them. */
GS_EXPORT void *dlsym(void *handle, const char *name)
{
    if (handle == RTLD_DEFAULT || handle == RTLD_NEXT)
        return gs_resolve_real_dlsym()(handle, name);
    return gs_dlsym_in_handle(handle, name);
}
#endif
