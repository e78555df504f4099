/* ptrmap.c: blocks by base address: the live allocations of pass-through and managed, and every
 * block of the pool (with a pointer to the pool's record). Sharded by address hash so threads
 * rarely share a lock; each shard is an open-addressing table with backward-shift deletion (no
 * tombstones). */
#include "gs.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define GS_PTRMAP_SHARDS 64

typedef struct gs_ptrmap_shard {
    pthread_mutex_t lock;
    gs_block_t *slots; /* base == 0: empty */
    size_t capacity;   /* power of two, or 0 */
    size_t count;
    char pad[16];
} gs_ptrmap_shard_t;

static gs_ptrmap_shard_t gs_ptrmap[GS_PTRMAP_SHARDS] = {
    [0 ... GS_PTRMAP_SHARDS - 1] = {.lock = PTHREAD_MUTEX_INITIALIZER}};

static inline uint64_t hash(CUdeviceptr base)
{
    /* Allocations are at least 256-byte aligned: drop the zero bits, then mix. */
    uint64_t h = (uint64_t)base >> 8;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static inline gs_ptrmap_shard_t *shard_of(uint64_t h)
{
    return &gs_ptrmap[h % GS_PTRMAP_SHARDS];
}

static size_t probe(const gs_ptrmap_shard_t *s, CUdeviceptr base, uint64_t h)
{
    size_t mask = s->capacity - 1;
    size_t i = (h / GS_PTRMAP_SHARDS) & mask;
    while (s->slots[i].base != 0 && s->slots[i].base != base)
        i = (i + 1) & mask;
    return i;
}

static int grow(gs_ptrmap_shard_t *s)
{
    size_t capacity = s->capacity ? s->capacity * 2 : 64;
    gs_block_t *slots = calloc(capacity, sizeof *slots);
    if (slots == NULL)
        return -ENOMEM;
    gs_block_t *old = s->slots;
    size_t old_capacity = s->capacity;
    s->slots = slots;
    s->capacity = capacity;
    for (size_t i = 0; i < old_capacity; i++) {
        if (old[i].base != 0)
            s->slots[probe(s, old[i].base, hash(old[i].base))] = old[i];
    }
    free(old);
    return 0;
}

int gs_ptrmap_insert(const gs_block_t *block)
{
    uint64_t h = hash(block->base);
    gs_ptrmap_shard_t *s = shard_of(h);
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    if ((s->count + 1) * 4 > s->capacity * 3)
        rc = grow(s);
    if (rc == 0) {
        size_t i = probe(s, block->base, h);
        if (s->slots[i].base == block->base) {
            rc = -EEXIST;
        } else {
            s->slots[i] = *block;
            s->count++;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int gs_ptrmap_insert_fresh(const gs_block_t *block, gs_block_t *stale)
{
    stale->base = 0;
    int rc = gs_ptrmap_insert(block);
    if (rc != -EEXIST)
        return rc;
    gs_ptrmap_remove(block->base, stale);
    return gs_ptrmap_insert(block);
}

int gs_ptrmap_find(CUdeviceptr base, gs_block_t *out)
{
    uint64_t h = hash(base);
    gs_ptrmap_shard_t *s = shard_of(h);
    int rc = -ENOENT;
    pthread_mutex_lock(&s->lock);
    if (s->capacity && base != 0) {
        size_t i = probe(s, base, h);
        if (s->slots[i].base == base) {
            if (out)
                *out = s->slots[i];
            rc = 0;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* Empties slot i, pulling later entries of its cluster back into the hole (no tombstones). */
static void remove_at(gs_ptrmap_shard_t *s, size_t i)
{
    size_t mask = s->capacity - 1;
    s->count--;
    for (size_t j = (i + 1) & mask; s->slots[j].base != 0; j = (j + 1) & mask) {
        size_t home = (hash(s->slots[j].base) / GS_PTRMAP_SHARDS) & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            s->slots[i] = s->slots[j];
            i = j;
        }
    }
    memset(&s->slots[i], 0, sizeof s->slots[i]);
}

int gs_ptrmap_remove(CUdeviceptr base, gs_block_t *out)
{
    uint64_t h = hash(base);
    gs_ptrmap_shard_t *s = shard_of(h);
    int rc = -ENOENT;
    pthread_mutex_lock(&s->lock);
    if (s->capacity && base != 0) {
        size_t i = probe(s, base, h);
        if (s->slots[i].base == base) {
            if (out)
                *out = s->slots[i];
            remove_at(s, i);
            rc = 0;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void gs_ptrmap_drop_device(int device, void (*fn)(void *ctx, const gs_block_t *block), void *ctx)
{
    for (int k = 0; k < GS_PTRMAP_SHARDS; k++) {
        gs_ptrmap_shard_t *s = &gs_ptrmap[k];
        pthread_mutex_lock(&s->lock);
        /* A removal only moves entries into the hole from later in the cluster, or from slots
         * already passed (after a wrap): re-checking slot i sees every entry once. */
        for (size_t i = 0; i < s->capacity; i++)
            while (s->slots[i].base != 0 && s->slots[i].device == device) {
                if (fn)
                    fn(ctx, &s->slots[i]);
                remove_at(s, i);
            }
        pthread_mutex_unlock(&s->lock);
    }
}

size_t gs_ptrmap_count(void)
{
    size_t total = 0;
    for (int i = 0; i < GS_PTRMAP_SHARDS; i++) {
        pthread_mutex_lock(&gs_ptrmap[i].lock);
        total += gs_ptrmap[i].count;
        pthread_mutex_unlock(&gs_ptrmap[i].lock);
    }
    return total;
}

void gs_ptrmap_each(void (*fn)(void *ctx, const gs_block_t *block), void *ctx)
{
    for (int i = 0; i < GS_PTRMAP_SHARDS; i++) {
        pthread_mutex_lock(&gs_ptrmap[i].lock);
        for (size_t k = 0; k < gs_ptrmap[i].capacity; k++)
            if (gs_ptrmap[i].slots[k].base != 0)
                fn(ctx, &gs_ptrmap[i].slots[k]);
        pthread_mutex_unlock(&gs_ptrmap[i].lock);
    }
}

/* Fork child and tests: the parent's allocations mean nothing here. Locks are re-made, since
 * another thread may have held one at the moment of fork. */
void gs_ptrmap_clear(void)
{
    for (int i = 0; i < GS_PTRMAP_SHARDS; i++) {
        pthread_mutex_init(&gs_ptrmap[i].lock, NULL);
        free(gs_ptrmap[i].slots);
        gs_ptrmap[i].slots = NULL;
        gs_ptrmap[i].capacity = 0;
        gs_ptrmap[i].count = 0;
    }
}
