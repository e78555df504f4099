/* load.c: the library's constructor and destructor; everything they do lives in the core. */
#include "gs.h"

#include <unistd.h>

extern char **environ;

__attribute__((constructor)) static void gs_load(void)
{
    gs_start(environ);
}

/* Runs at exit() from any thread, after the program's atexit handlers (the CUDA runtime's among
 * them): the report must not call CUDA, and gs_finish prints it once. */
__attribute__((destructor)) static void gs_unload(void)
{
    gs_finish();
}
