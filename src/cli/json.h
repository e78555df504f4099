/* json.h: the JSON reader of the gpushim command (json.c). */
#ifndef GS_JSON_H
#define GS_JSON_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_kind_t;

typedef struct json {
    json_kind_t kind;
    bool boolean;
    double number;
    char *string;       /* JSON_STRING, UTF-8 */
    struct json **items; /* JSON_ARRAY, JSON_OBJECT: count of them */
    char **keys;        /* JSON_OBJECT */
    size_t count;
} json_t;

/* The value of the whole text, or NULL with where and why in err. */
json_t *json_parse(const char *text, char *err, size_t err_len);
/* An object's member (the first of that key), or NULL. */
const json_t *json_get(const json_t *object, const char *key);
double json_number(const json_t *object, const char *key, double fallback);
const char *json_text(const json_t *object, const char *key); /* a string member, or NULL */
void json_free(json_t *value);

#endif
