/* next_user.c: calls random(), which a preloaded library wraps with dlsym(RTLD_NEXT). */
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
    srandom(1);
    long value = random();
    printf("ok next %s\n", value >= 0 ? "value" : "negative");
    return 0;
}
