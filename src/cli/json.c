/* json.c: a small strict JSON reader for `gpushim report` (RFC 8259: objects, arrays, strings
 * with every escape, numbers, true, false, null; nothing after the value but white space;
 * nesting at most 64 deep). Errors say where: line and column. */
#include "json.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct reader {
    const char *start, *p;
    char *err;
    size_t err_len;
    int depth;
} reader_t;

static json_t *fail_at(reader_t *r, const char *what)
{
    if (r->err[0] == '\0') {
        int line = 1, column = 1;
        for (const char *c = r->start; c < r->p; c++, column++)
            if (*c == '\n')
                line++, column = 0;
        snprintf(r->err, r->err_len, "line %d, column %d: %s", line, column,
                 *r->p ? what : "the text ends early (a truncated file?)");
    }
    return NULL;
}

static void skip_space(reader_t *r)
{
    while (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')
        r->p++;
}

static json_t *make(json_kind_t kind)
{
    json_t *v = calloc(1, sizeof *v);
    if (v)
        v->kind = kind;
    return v;
}

static void put_utf8(char *out, size_t *n, unsigned code)
{
    if (code < 0x80) {
        out[(*n)++] = (char)code;
    } else if (code < 0x800) {
        out[(*n)++] = (char)(0xc0 | code >> 6);
        out[(*n)++] = (char)(0x80 | (code & 0x3f));
    } else if (code < 0x10000) {
        out[(*n)++] = (char)(0xe0 | code >> 12);
        out[(*n)++] = (char)(0x80 | ((code >> 6) & 0x3f));
        out[(*n)++] = (char)(0x80 | (code & 0x3f));
    } else {
        out[(*n)++] = (char)(0xf0 | code >> 18);
        out[(*n)++] = (char)(0x80 | ((code >> 12) & 0x3f));
        out[(*n)++] = (char)(0x80 | ((code >> 6) & 0x3f));
        out[(*n)++] = (char)(0x80 | (code & 0x3f));
    }
}

static int hex4(const char *p, unsigned *out)
{
    *out = 0;
    for (int i = 0; i < 4; i++) {
        if (!isxdigit((unsigned char)p[i]))
            return -1;
        *out = *out * 16 + (unsigned)(isdigit((unsigned char)p[i]) ? p[i] - '0'
                                                                   : tolower((unsigned char)p[i]) - 'a' + 10);
    }
    return 0;
}

/* A string at r->p (its opening quote); the text, NUL-terminated, or NULL. */
static char *read_string(reader_t *r)
{
    r->p++;
    size_t capacity = 16, n = 0;
    char *out = malloc(capacity);
    while (out) {
        if (n + 8 > capacity) {
            char *grown = realloc(out, capacity *= 2);
            if (grown == NULL)
                break;
            out = grown;
        }
        unsigned char c = (unsigned char)*r->p;
        if (c == '"') {
            r->p++;
            out[n] = '\0';
            return out;
        }
        if (c < 0x20) {
            fail_at(r, "a control byte or the end of the text inside a string");
            break;
        }
        if (c != '\\') {
            out[n++] = (char)c;
            r->p++;
            continue;
        }
        char e = r->p[1];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            out[n++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            r->p += 2;
            continue;
        }
        unsigned code, low;
        if (e != 'u' || hex4(r->p + 2, &code) != 0) {
            fail_at(r, "a bad escape in a string");
            break;
        }
        r->p += 6;
        if (code >= 0xd800 && code < 0xdc00 && r->p[0] == '\\' && r->p[1] == 'u' &&
            hex4(r->p + 2, &low) == 0 && low >= 0xdc00 && low < 0xe000) {
            code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
            r->p += 6;
        }
        put_utf8(out, &n, code);
    }
    free(out);
    return NULL;
}

static json_t *read_value(reader_t *r);

static json_t *read_items(reader_t *r, bool object)
{
    json_t *v = make(object ? JSON_OBJECT : JSON_ARRAY);
    char close = object ? '}' : ']';
    r->p++;
    skip_space(r);
    if (*r->p == close) {
        r->p++;
        return v;
    }
    while (v) {
        char *key = NULL;
        skip_space(r);
        if (object) {
            if (*r->p != '"' || (key = read_string(r)) == NULL) {
                fail_at(r, "a key (a string) expected");
                break;
            }
            skip_space(r);
            if (*r->p != ':') {
                free(key);
                fail_at(r, "':' expected after a key");
                break;
            }
            r->p++;
        }
        json_t *item = read_value(r);
        if (item == NULL) {
            free(key);
            break;
        }
        json_t **items = realloc(v->items, (v->count + 1) * sizeof *items);
        char **keys = object ? realloc(v->keys, (v->count + 1) * sizeof *keys) : v->keys;
        if (items)
            v->items = items;
        if (keys)
            v->keys = keys;
        if (items == NULL || (object && keys == NULL)) {
            free(key);
            json_free(item);
            break;
        }
        v->items[v->count] = item;
        if (object)
            v->keys[v->count] = key;
        v->count++;
        skip_space(r);
        if (*r->p == close) {
            r->p++;
            return v;
        }
        if (*r->p != ',') {
            fail_at(r, object ? "',' or '}' expected" : "',' or ']' expected");
            break;
        }
        r->p++;
    }
    json_free(v);
    return NULL;
}

static json_t *read_number(reader_t *r)
{
    const char *p = r->p;
    if (*p == '-')
        p++;
    if (*p == '0')
        p++;
    else if (isdigit((unsigned char)*p))
        while (isdigit((unsigned char)*p))
            p++;
    else
        return fail_at(r, "a value expected");
    if (*p == '.') {
        if (!isdigit((unsigned char)*++p))
            return fail_at(r, "digits expected after '.'");
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!isdigit((unsigned char)*p))
            return fail_at(r, "digits expected in an exponent");
        while (isdigit((unsigned char)*p))
            p++;
    }
    json_t *v = make(JSON_NUMBER);
    if (v)
        v->number = strtod(r->p, NULL);
    r->p = p;
    return v;
}

static json_t *read_value(reader_t *r)
{
    skip_space(r);
    if (++r->depth > 64)
        return fail_at(r, "nested more than 64 deep");
    json_t *v = NULL;
    if (*r->p == '{' || *r->p == '[') {
        v = read_items(r, *r->p == '{');
    } else if (*r->p == '"') {
        char *text = read_string(r);
        if (text && (v = make(JSON_STRING)) != NULL)
            v->string = text;
        else
            free(text);
    } else if (strncmp(r->p, "true", 4) == 0 || strncmp(r->p, "false", 5) == 0) {
        if ((v = make(JSON_BOOL)) != NULL)
            v->boolean = r->p[0] == 't';
        r->p += r->p[0] == 't' ? 4 : 5;
    } else if (strncmp(r->p, "null", 4) == 0) {
        v = make(JSON_NULL);
        r->p += 4;
    } else {
        v = read_number(r);
    }
    r->depth--;
    return v;
}

json_t *json_parse(const char *text, char *err, size_t err_len)
{
    reader_t r = {.start = text, .p = text, .err = err, .err_len = err_len};
    err[0] = '\0';
    json_t *v = read_value(&r);
    if (v) {
        skip_space(&r);
        if (*r.p != '\0') {
            fail_at(&r, "text after the value");
            json_free(v);
            v = NULL;
        }
    }
    if (v == NULL && err[0] == '\0')
        snprintf(err, err_len, "out of memory");
    return v;
}

const json_t *json_get(const json_t *object, const char *key)
{
    if (object == NULL || object->kind != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < object->count; i++)
        if (strcmp(object->keys[i], key) == 0)
            return object->items[i];
    return NULL;
}

double json_number(const json_t *object, const char *key, double fallback)
{
    const json_t *v = json_get(object, key);
    return v && v->kind == JSON_NUMBER ? v->number : fallback;
}

const char *json_text(const json_t *object, const char *key)
{
    const json_t *v = json_get(object, key);
    return v && v->kind == JSON_STRING ? v->string : NULL;
}

void json_free(json_t *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < v->count; i++) {
        json_free(v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->string);
    free(v);
}
