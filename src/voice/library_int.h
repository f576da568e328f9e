/* library_int: the voice library's internals shared by library.c (index, cache, fs) and
 * library_redis.c (the redis backend). Not for other modules. */
#ifndef TH_VOICE_LIBRARY_INT_H
#define TH_VOICE_LIBRARY_INT_H

#include "voice/library.h"

enum { VL_LIVE = 0, VL_MAKING, VL_DELETING };

typedef struct th_vlib_blob th_vlib_blob; /* counted audio bytes */

typedef struct vl_waiter {
    th_vlib_use_cb cb;
    void *ud;
} vl_waiter;

typedef struct vl_load {
    uv_work_t work;
    struct th_vlib *l;
    th_vlib_meta m; /* the record the audio must match */
    vl_waiter *w;
    size_t nw;
    th_vlib_blob *audio;
    uint8_t *data; /* fs: read on the thread pool */
    size_t len;
    int rc;
    bool entry_gone;
} vl_load;

typedef struct vl_entry {
    struct vl_entry *hnext;
    struct vl_entry *lprev, *lnext; /* LRU of resident audio */
    th_vlib_meta m;
    int state;
    th_vlib_blob *audio; /* resident, or NULL */
    vl_load *loading;
    bool seen; /* redis sync: present in the last read-back */
} vl_entry;

struct fs_op;
struct vl_redis;

struct th_vlib {
    uv_loop_t *loop;
    th_log *log;
    char dir[1024];
    bool redis_mode;
    vl_entry **buckets;
    size_t nb, n;
    vl_entry *lru_head, *lru_tail;
    uint64_t cached, cache_cap;
    size_t max_voices;
    int pending; /* loads and backend operations whose completion has not run */
    bool closing, timer_closed;
    struct fs_op *fs_head, *fs_tail;
    bool fs_busy;
    unsigned long fs_seq; /* fs operations queued so far */
    struct vl_redis *rs;
    uv_fs_event_t *watch; /* fs: the directory, for changes made by another process */
    int members_fd;       /* fs: voices/.members, flocked shared while this process uses the directory */
    bool alone_at_start;  /* fs: no other process used the directory when this one scanned it */
    uint64_t gen;         /* bumped by every change applied here */
    void (*on_removed)(void *ud, const th_voice_ref *ref);
    void *on_removed_ud;
};

vl_entry *vl_find_any(const th_vlib *l, const char *id);
vl_entry *vl_add(th_vlib *l, const char *id, int state);
void vl_remove(th_vlib *l, vl_entry *e);
void vl_drop_audio(th_vlib *l, vl_entry *e);
void vl_set_audio(th_vlib *l, vl_entry *e, th_vlib_blob *b);
void vl_load_done(vl_load *ld, uint8_t *data, size_t len, th_vlib_rc rc);
void vl_maybe_free(th_vlib *l);
th_vlib_blob *th_vlib_blob_new(uint8_t *data, size_t len);
void th_vlib_blob_release(th_vlib_blob *b);
const uint8_t *th_vlib_blob_data(const th_vlib_blob *b, size_t *len);

/* library_redis.c */
int vl_redis_start(th_vlib *l, th_redis *redis, const char *prefix);
void vl_redis_stop(th_vlib *l);
void vl_redis_load(th_vlib *l, vl_load *ld);
void vl_redis_create(th_vlib *l, const th_vlib_meta *m, th_vlib_blob *wav, size_t max_per_tenant,
                     th_vlib_done_cb cb, void *ud);
void vl_redis_update(th_vlib *l, const th_vlib_meta *nm, th_vlib_done_cb cb, void *ud);
void vl_redis_delete(th_vlib *l, vl_entry *e, th_vlib_done_cb cb, void *ud);

#endif
