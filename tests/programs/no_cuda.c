/* no_cuda.c: a program that never touches CUDA; under the shim it must see no libcuda and the
 * shim must print nothing. */
#include <stdio.h>
#include <string.h>

int main(void)
{
    char line[4096];
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps)
        return 3;
    while (fgets(line, sizeof line, maps)) {
        if (strstr(line, "libcuda")) {
            printf("libcuda is loaded: %s", line);
            return 1;
        }
    }
    fclose(maps);
    printf("ok no-cuda\n");
    return 0;
}
