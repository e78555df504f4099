/* work.c: wrappers for every driver entry point that issues GPU work (kernel and graph launches,
 * copies, memsets, stream memory operations, prefetches, decompression): after the driver has
 * queued the work they tell core/work.c, so the pool knows when nothing can be in flight and a
 * freed block is safe at once (GPUSHIM_POOL_IDLE_REUSE). The names a program can link or look up
 * are exported (GS_WORK_NAMES, from cuda.h); what cuGetProcAddress or dlsym in a handle resolves
 * for a work-issuing name gets a wrapper too, by the function it resolved to.
 *
 * Hazard, why the wrappers are assembly: there are over a hundred signatures, and a wrapper must
 * run code after the call, so it cannot be a tail jump. Each is one thunk for any signature: it
 * copies the six stack slots above its frame (arguments 7 to 12; cuLaunchKernel has 11, no other
 * more), calls the real function with the argument registers untouched, tells the core, and
 * returns the real result. If a name's function is not known yet (a program linked to us by
 * name), a stub saves the argument registers, looks it up in libcuda and starts over. */
#include "gs.h"
#include "interpose.h"

#include <string.h>

/* Every work-issuing function cuda.h (CUDA 13.0) declares or maps a per-thread name to. */
/* clang-format off */
#define GS_WORK_NAMES(X)                                                                           \
    X(cuGraphLaunch) X(cuGraphLaunch_ptsz) X(cuGraphUpload) X(cuGraphUpload_ptsz) X(cuLaunch)      \
    X(cuLaunchCooperativeKernel) X(cuLaunchCooperativeKernelMultiDevice)                           \
    X(cuLaunchCooperativeKernel_ptsz) X(cuLaunchGrid) X(cuLaunchGridAsync) X(cuLaunchHostFunc)     \
    X(cuLaunchHostFunc_ptsz) X(cuLaunchKernel) X(cuLaunchKernelEx) X(cuLaunchKernelEx_ptsz)        \
    X(cuLaunchKernel_ptsz) X(cuMemBatchDecompressAsync) X(cuMemBatchDecompressAsync_ptsz)          \
    X(cuMemDiscardAndPrefetchBatchAsync) X(cuMemDiscardAndPrefetchBatchAsync_ptsz)                 \
    X(cuMemDiscardBatchAsync) X(cuMemDiscardBatchAsync_ptsz) X(cuMemMapArrayAsync)                 \
    X(cuMemMapArrayAsync_ptsz) X(cuMemPrefetchAsync) X(cuMemPrefetchAsync_ptsz)                    \
    X(cuMemPrefetchAsync_v2) X(cuMemPrefetchAsync_v2_ptsz) X(cuMemPrefetchBatchAsync)              \
    X(cuMemPrefetchBatchAsync_ptsz) X(cuMemcpy) X(cuMemcpy2D) X(cuMemcpy2DAsync)                   \
    X(cuMemcpy2DAsync_v2) X(cuMemcpy2DAsync_v2_ptsz) X(cuMemcpy2DUnaligned)                        \
    X(cuMemcpy2DUnaligned_v2) X(cuMemcpy2DUnaligned_v2_ptds) X(cuMemcpy2D_v2)                      \
    X(cuMemcpy2D_v2_ptds) X(cuMemcpy3D) X(cuMemcpy3DAsync) X(cuMemcpy3DAsync_v2)                   \
    X(cuMemcpy3DAsync_v2_ptsz) X(cuMemcpy3DBatchAsync) X(cuMemcpy3DBatchAsync_ptsz)                \
    X(cuMemcpy3DBatchAsync_v2) X(cuMemcpy3DBatchAsync_v2_ptsz) X(cuMemcpy3DPeer)                   \
    X(cuMemcpy3DPeerAsync) X(cuMemcpy3DPeerAsync_ptsz) X(cuMemcpy3DPeer_ptds) X(cuMemcpy3D_v2)     \
    X(cuMemcpy3D_v2_ptds) X(cuMemcpyAsync) X(cuMemcpyAsync_ptsz) X(cuMemcpyAtoA)                   \
    X(cuMemcpyAtoA_v2) X(cuMemcpyAtoA_v2_ptds) X(cuMemcpyAtoD) X(cuMemcpyAtoD_v2)                  \
    X(cuMemcpyAtoD_v2_ptds) X(cuMemcpyAtoH) X(cuMemcpyAtoHAsync) X(cuMemcpyAtoHAsync_v2)           \
    X(cuMemcpyAtoHAsync_v2_ptsz) X(cuMemcpyAtoH_v2) X(cuMemcpyAtoH_v2_ptds) X(cuMemcpyBatchAsync)  \
    X(cuMemcpyBatchAsync_ptsz) X(cuMemcpyBatchAsync_v2) X(cuMemcpyBatchAsync_v2_ptsz)              \
    X(cuMemcpyDtoA) X(cuMemcpyDtoA_v2) X(cuMemcpyDtoA_v2_ptds) X(cuMemcpyDtoD)                     \
    X(cuMemcpyDtoDAsync) X(cuMemcpyDtoDAsync_v2) X(cuMemcpyDtoDAsync_v2_ptsz) X(cuMemcpyDtoD_v2)   \
    X(cuMemcpyDtoD_v2_ptds) X(cuMemcpyDtoH) X(cuMemcpyDtoHAsync) X(cuMemcpyDtoHAsync_v2)           \
    X(cuMemcpyDtoHAsync_v2_ptsz) X(cuMemcpyDtoH_v2) X(cuMemcpyDtoH_v2_ptds) X(cuMemcpyHtoA)        \
    X(cuMemcpyHtoAAsync) X(cuMemcpyHtoAAsync_v2) X(cuMemcpyHtoAAsync_v2_ptsz) X(cuMemcpyHtoA_v2)   \
    X(cuMemcpyHtoA_v2_ptds) X(cuMemcpyHtoD) X(cuMemcpyHtoDAsync) X(cuMemcpyHtoDAsync_v2)           \
    X(cuMemcpyHtoDAsync_v2_ptsz) X(cuMemcpyHtoD_v2) X(cuMemcpyHtoD_v2_ptds) X(cuMemcpyPeer)        \
    X(cuMemcpyPeerAsync) X(cuMemcpyPeerAsync_ptsz) X(cuMemcpyPeer_ptds) X(cuMemcpy_ptds)           \
    X(cuMemsetD16) X(cuMemsetD16Async) X(cuMemsetD16Async_ptsz) X(cuMemsetD16_v2)                  \
    X(cuMemsetD16_v2_ptds) X(cuMemsetD2D16) X(cuMemsetD2D16Async) X(cuMemsetD2D16Async_ptsz)       \
    X(cuMemsetD2D16_v2) X(cuMemsetD2D16_v2_ptds) X(cuMemsetD2D32) X(cuMemsetD2D32Async)            \
    X(cuMemsetD2D32Async_ptsz) X(cuMemsetD2D32_v2) X(cuMemsetD2D32_v2_ptds) X(cuMemsetD2D8)        \
    X(cuMemsetD2D8Async) X(cuMemsetD2D8Async_ptsz) X(cuMemsetD2D8_v2) X(cuMemsetD2D8_v2_ptds)      \
    X(cuMemsetD32) X(cuMemsetD32Async) X(cuMemsetD32Async_ptsz) X(cuMemsetD32_v2)                  \
    X(cuMemsetD32_v2_ptds) X(cuMemsetD8) X(cuMemsetD8Async) X(cuMemsetD8Async_ptsz)                \
    X(cuMemsetD8_v2) X(cuMemsetD8_v2_ptds) X(cuSignalExternalSemaphoresAsync)                      \
    X(cuSignalExternalSemaphoresAsync_ptsz) X(cuStreamBatchMemOp) X(cuStreamBatchMemOp_ptsz)       \
    X(cuStreamBatchMemOp_v2) X(cuStreamBatchMemOp_v2_ptsz) X(cuStreamWaitValue32)                  \
    X(cuStreamWaitValue32_ptsz) X(cuStreamWaitValue32_v2) X(cuStreamWaitValue32_v2_ptsz)           \
    X(cuStreamWaitValue64) X(cuStreamWaitValue64_ptsz) X(cuStreamWaitValue64_v2)                   \
    X(cuStreamWaitValue64_v2_ptsz) X(cuStreamWriteValue32) X(cuStreamWriteValue32_ptsz)            \
    X(cuStreamWriteValue32_v2) X(cuStreamWriteValue32_v2_ptsz) X(cuStreamWriteValue64)             \
    X(cuStreamWriteValue64_ptsz) X(cuStreamWriteValue64_v2) X(cuStreamWriteValue64_v2_ptsz)        \
    X(cuWaitExternalSemaphoresAsync) X(cuWaitExternalSemaphoresAsync_ptsz)
/* clang-format on */

static const char *const gs_work_names[] = {
#define GS_WORK_NAME(name) #name,
    GS_WORK_NAMES(GS_WORK_NAME)
#undef GS_WORK_NAME
};

#define NAMED (sizeof gs_work_names / sizeof gs_work_names[0])
#define ANONYMOUS 256  /* the .rept count below */
#define THUNK_SLOT 128 /* bytes per thunk: the .org below (and the shift in the stub) */

/* The real function of each thunk: NAMED by name, then ANONYMOUS handed out by gs_work_wrap. */
__attribute__((used, visibility("hidden"))) void *_Atomic gs_work_real[NAMED + ANONYMOUS];
static _Atomic unsigned gs_work_anonymous;

/* Called by the thunks after the real function has returned. */
__attribute__((used)) void gs_work_after_call(void)
{
    gs_work_enqueued();
}

/* A named thunk called before any lookup told us its function: look it up in libcuda. */
__attribute__((used)) void *gs_work_resolve(unsigned index)
{
    if (index >= NAMED)
        return NULL;
    gs_driver(); /* loads libcuda, which sets gs_driver_handle */
    if (gs_driver_handle == NULL)
        return NULL;
    void *real = gs_resolve_real_dlsym()(gs_driver_handle, gs_work_names[index]);
    void *expected = NULL;
    if (real == NULL)
        return NULL;
    if (atomic_compare_exchange_strong(&gs_work_real[index], &expected, real))
        gs_work_note_wrapper();
    else
        real = expected; /* another thread was first */
    return real;
}

#if defined(__x86_64__)
#define GS_WORK_ASM(name) "GS_WORK_THUNK " #name ", 1\n"
__asm__(".pushsection .text\n"
        ".macro GS_WORK_THUNK name, global\n"
        "    .if \\global\n"
        "    .globl \\name\n"
        "    .endif\n"
        "    .type \\name, @function\n"
        "\\name:\n"
        "    .cfi_startproc\n"
        "    endbr64\n"
        "    push %rbp\n"
        "    .cfi_def_cfa_offset 16\n"
        "    .cfi_offset %rbp, -16\n"
        "    mov %rsp, %rbp\n"
        "    .cfi_def_cfa_register %rbp\n"
        "    mov gs_work_real+8*gs_work_index(%rip), %r11\n"
        "    test %r11, %r11\n"
        "    jz 2f\n"
        "    sub $48, %rsp\n" /* arguments 7 to 12, where the real function looks for them */
        "    mov 16(%rbp), %r10\n"
        "    mov %r10, 0(%rsp)\n"
        "    mov 24(%rbp), %r10\n"
        "    mov %r10, 8(%rsp)\n"
        "    mov 32(%rbp), %r10\n"
        "    mov %r10, 16(%rsp)\n"
        "    mov 40(%rbp), %r10\n"
        "    mov %r10, 24(%rsp)\n"
        "    mov 48(%rbp), %r10\n"
        "    mov %r10, 32(%rsp)\n"
        "    mov 56(%rbp), %r10\n"
        "    mov %r10, 40(%rsp)\n"
        "    call *%r11\n"
        "    mov %rax, (%rsp)\n"
        "    call gs_work_after_call\n"
        "    mov (%rsp), %rax\n"
        "    .cfi_remember_state\n"
        "    leave\n"
        "    .cfi_def_cfa %rsp, 8\n"
        "    ret\n"
        "    .cfi_restore_state\n"
        "2:  mov $gs_work_index, %r11d\n"
        "    jmp gs_work_resolve_stub\n"
        "    .cfi_endproc\n"
        "    .size \\name, .-\\name\n"
        "    .org \\name + 128, 0xcc\n" /* THUNK_SLOT; an error if the thunk is larger */
        "    .set gs_work_index, gs_work_index + 1\n"
        ".endm\n"
        ".macro GS_WORK_ANONYMOUS\n"
        "    GS_WORK_THUNK gs_work_anonymous_\\@, 0\n"
        ".endm\n"
        /* Entered from a thunk's frame with its index in r11. */
        "    .p2align 4\n"
        "    .type gs_work_resolve_stub, @function\n"
        "gs_work_resolve_stub:\n"
        "    .cfi_startproc\n"
        "    .cfi_def_cfa %rbp, 16\n"
        "    .cfi_offset %rbp, -16\n"
        "    push %rdi\n"
        "    push %rsi\n"
        "    push %rdx\n"
        "    push %rcx\n"
        "    push %r8\n"
        "    push %r9\n"
        "    push %rax\n"
        "    push %r11\n" /* eight pushes: the stack stays 16-byte aligned */
        "    mov %r11d, %edi\n"
        "    call gs_work_resolve\n"
        "    mov %rax, %r10\n"
        "    pop %r11\n"
        "    pop %rax\n"
        "    pop %r9\n"
        "    pop %r8\n"
        "    pop %rcx\n"
        "    pop %rdx\n"
        "    pop %rsi\n"
        "    pop %rdi\n"
        "    test %r10, %r10\n"
        "    jz 1f\n"
        "    leave\n"
        "    .cfi_def_cfa %rsp, 8\n"
        "    shl $7, %r11\n" /* THUNK_SLOT */
        "    lea gs_work_thunks(%rip), %r10\n"
        "    add %r10, %r11\n"
        "    jmp *%r11\n"      /* the thunk again, now with its function */
        "1:  mov $500, %eax\n" /* CUDA_ERROR_NOT_FOUND: libcuda lacks the name */
        "    leave\n"
        "    ret\n"
        "    .cfi_endproc\n"
        "    .size gs_work_resolve_stub, .-gs_work_resolve_stub\n"
        /* The thunks, in index order: the named ones, then the anonymous ones. */
        /* clang-format off */
        "    .p2align 7\n"
        "    .globl gs_work_thunks\n"
        "    .hidden gs_work_thunks\n"
        "gs_work_thunks:\n"
        "    .set gs_work_index, 0\n"
        GS_WORK_NAMES(GS_WORK_ASM)
        "    .rept 256\n"
        "    GS_WORK_ANONYMOUS\n"
        "    .endr\n"
        ".popsection\n");
/* clang-format on */

extern const char gs_work_thunks[];

static void *thunk(size_t index)
{
    return (void *)(gs_work_thunks + index * THUNK_SLOT);
}
#endif

/* A name that may issue GPU work: the named ones, and by pattern any function a newer CUDA adds
 * (not the graph-building ones, which only describe work). */
static bool work_name(const char *name)
{
    static const char *const verbs[] = {
        "Memcpy",    "Memset",     "Launch",          "Prefetch",      "Discard",    "WriteValue",
        "WaitValue", "BatchMemOp", "SemaphoresAsync", "MapArrayAsync", "Decompress", "GraphUpload"};
    if (name[0] != 'c' || name[1] != 'u' || name[2] < 'A' || name[2] > 'Z' || /* cudbg...: data */
        strstr(name, "Node") || strstr(name, "Params") || strncmp(name, "cuGraphAdd", 10) == 0)
        return false;
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        if (strstr(name, verbs[i]))
            return true;
    return false;
}

void *gs_work_wrap(const char *name, void *real, bool exact)
{
    /* Nobody needs to know, unless the options are not read yet (a library's constructor looks
     * the driver up before ours has run): then wrap, a forwarding thunk is harmless. The cheap
     * tests first: in other modes a lookup costs no name matching. */
    if (real == NULL || name == NULL || !gs_work_watched() ||
        (atomic_load(&gs_started) && !gs_work_wanted()) ||
        !work_name(name))
        return real;
#if defined(__x86_64__)
    for (size_t i = 0; i < NAMED + ANONYMOUS; i++)
        if (atomic_load_explicit(&gs_work_real[i], memory_order_relaxed) == real)
            return thunk(i);
    /* A named thunk may take the function of its exact name only: cuGetProcAddress resolves a
     * base name to a variant (_v2, _ptsz), which a program linking the base name must not get. */
    for (size_t i = 0; exact && i < NAMED; i++) {
        void *expected = NULL;
        if (strcmp(gs_work_names[i], name) == 0) {
            if (atomic_compare_exchange_strong(&gs_work_real[i], &expected, real)) {
                gs_work_note_wrapper();
                return thunk(i);
            }
            break; /* its name's thunk calls another function: an anonymous one */
        }
    }
    unsigned k = atomic_fetch_add(&gs_work_anonymous, 1);
    if (k < ANONYMOUS) {
        atomic_store(&gs_work_real[NAMED + k], real);
        gs_work_note_wrapper();
        return thunk(NAMED + k);
    }
    gs_work_blind("the program looked up more work-issuing driver functions than the shim has "
                  "wrappers for (256)");
#else
    gs_work_blind("the shim watches GPU work only on x86-64");
#endif
    return real;
}
