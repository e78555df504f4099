/* next_lib.c: a second preload library that wraps random() with dlsym(RTLD_NEXT), as profilers
 * and other shims do. If our dlsym resolved RTLD_NEXT relative to itself, this would get its
 * own random() back and recurse until the stack overflows. */
#include <dlfcn.h>
#include <stdlib.h>

__attribute__((visibility("default"))) long random(void)
{
    static long (*next)(void);
    if (next == NULL)
        next = (long (*)(void))dlsym(RTLD_NEXT, "random");
    return next() + 0;
}
