/* gpushim-options: prints the GPUSHIM_* variables from the options table, as help text or as the
 * README's markdown table (tests check that the README carries exactly this table). */
#include "gs.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--markdown") != 0 && strcmp(argv[1], "--help") != 0) {
        fprintf(stderr, "usage: gpushim-options [--markdown]\n");
        return 64;
    }
    gs_options_describe(STDOUT_FILENO, argc > 1 && strcmp(argv[1], "--markdown") == 0);
    return 0;
}
