/* quota: character quotas per tenant and UTC day / month window (see quota.h).
 *
 * Windows. A window is named by its UTC date: day = YYYYMMDD, month = YYYYMM (both grow with time). Each
 * tenant keeps counters for its latest day and latest month only; when a reservation sees a newer date,
 * that window starts again from zero and the old one is dropped. A reservation belongs to the windows of
 * the time it was made (now_ms of th_quota_reserve): its commit adds to those windows if they are still
 * the current ones and is otherwise dropped for the rolled-over window (the month usually still counts).
 * "used" in a refusal is committed + reserved, i.e. what counts against the limit.
 *
 * Local backend files under data_dir:
 *   usage.log       one line per commit: "{seq} {ts_ms} {tenant} {chars}\n". seq grows by one per commit
 *                   and never restarts; ts_ms is the reservation's wall time (it picks the windows); the
 *                   tenant is escaped (bytes outside [A-Za-z0-9._-] as %XX) so it holds no space or newline.
 *   usage.snapshot  "ttshub-usage-snapshot 1 {seq}\n", then per tenant
 *                   "{tenant} {day} {day_chars} {day_requests} {month} {month_chars} {month_requests}\n",
 *                   then "end {n_tenants}\n". Written to usage.snapshot.tmp, fdatasync'd, renamed over the
 *                   old one and the directory fsync'd; only then is usage.log replaced by an empty one
 *                   (usage.log.tmp renamed over it: the log is rotated, never truncated in place). A crash
 *                   between the two renames is harmless: replay skips lines whose seq <= the snapshot's.
 *   usage.lock      an empty file whose flock orders the writers (see "Several processes");
 *   usage.members   each process holds a shared flock on it for its lifetime;
 *   usage.knock     touched by a process that waits for usage.lock.
 * Start: load the snapshot, replay the log. A last line without its '\n' (torn by a crash during a write)
 * is ignored and cut off, so the next append starts on a line of its own; any other malformed line is
 * corruption and th_quota_new fails.
 *
 * Several processes on one data_dir (a blue/green restart with --reuse-port, or an upgrade of the binary)
 * share the log. Appends, snapshots and rotations happen under an exclusive flock of usage.lock. A process
 * alone on data_dir ("solo", the usual case) holds that lock for as long as it stays alone, so its requests
 * cost no extra system call. A second process joins usage.members, then touches usage.knock; the solo one
 * sees the knock through the loop (inotify), lets the lock go, and both go "shared": each append takes the
 * lock for one write, first reads what the others appended since it last looked (so seq stays one
 * sequence, in file order), then appends. A once-a-second tick returns a process to solo when it finds
 * itself the only member again. A rotation by another process shows as our log fd's file having no name
 * left (st_nlink == 0): then the snapshot is reloaded (it holds every line of the rotated log) and the new
 * log read from its start. In shared mode reservations read the others' new lines too (an fstat, and a read
 * only when the log grew), so committed usage is shared exactly; in-flight reservations are each process's
 * own, so while two processes overlap a tenant can pass its limit by at most what the other process has in
 * flight at that moment. Start needs no lock: the log is opened before the snapshot is read, so a rotation
 * in between only means lines the snapshot already holds. A process of an older version, which holds an
 * exclusive flock on usage.log itself, is detected at start and refused.
 *
 * Durability. th_quota_commit write(2)s the whole line before it returns (the API layer finishes the
 * response after commit), so once a client can have seen success the line is in the kernel's page cache:
 * kill -9 of the hub loses no committed unit. Against power loss or a kernel crash the log is fdatasync'd
 * in batches: a one-shot 100 ms timer is armed by the first unsynced commit, and the fdatasync runs on the
 * libuv threadpool (on a dup of the fd) so the loop never waits for the disk; at most the last ~100 ms of
 * commits can be lost to a power cut. th_quota_free fdatasyncs synchronously. A snapshot is written
 * every TH_QUOTA_SNAPSHOT_EVERY commits, or by a repeating (unref'd) timer when unsnapshotted commits
 * are older than TH_QUOTA_SNAPSHOT_MS; it is a small synchronous write + fsync + rename on the loop thread
 * (a few KB per hundred tenants), a deliberate trade for simplicity.
 *
 * Redis backend (redis != NULL): hashes {prefix}quota:{tenant}:d:{YYYYMMDD} and
 * {prefix}quota:{tenant}:m:{YYYYMM} with fields used, reserved, requests, expiring a day after their window
 * ends. Reserve is one Lua script that checks both windows (used + reserved + chars <= limit) and then
 * HINCRBYs reserved in both; commit moves reserved to used (and counts the request) with a second script;
 * refund decrements reserved. Commit and refund are fire-and-forget: if Redis is down then, the usage is lost
 * and the reservation stays counted until the key expires (logged). On TH_REDIS_DOWN / TIMEOUT / ERROR during
 * a reservation, rate_limit.on_backend_error decides: open = allowed, degraded, no reservation; closed =
 * refused with window "backend", retry_after_s 1. */
#include "governance/quota.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/hash.h"
#include "core/str.h"

#define DAY_MS 86400000ULL
#define SYNC_DELAY_MS 100
#define MAX_LINE 4096
#define REDIS_EXTRA_TTL_S 86400 /* keys live a day past the end of their window */
#define LOCK_WAIT_MS 2000       /* another process holds usage.lock for one write or one snapshot */
#define MEMBER_WAIT_MS 2000 /* a member's "am I alone" test holds usage.members exclusively for a moment */
#define SOLO_TICK_MS 1000   /* how often a shared process checks whether it is alone again */

typedef struct tenant_rec {
    th_hnode hn; /* in the tenant map */
    char *name;
    uint32_t day, month; /* window ids, 0 = none yet */
    uint64_t d_used, d_resv, d_req;
    uint64_t m_used, m_resv, m_req;
} tenant_rec;

typedef struct pending pending; /* a Redis command in flight */

typedef struct sync_req {
    uv_fs_t req;
    th_quota *q; /* NULL once the quota is freed */
    int fd;      /* a dup of the log fd, closed by the callback */
} sync_req;

struct th_quota {
    uv_loop_t *loop;
    th_log *log;
    th_config *cfg; /* a reference: "all tenants" of a Redis usage query */
    th_redis *redis;
    char *prefix;
    bool fail_open;

    /* local backend */
    char *log_path, *snap_path, *snap_tmp, *dir, *lock_path, *log_tmp, *members_path, *knock_path;
    int log_fd, lock_fd, members_fd, knock_fd;
    bool solo;            /* alone on data_dir: holds usage.lock until another process knocks */
    uv_fs_event_t knock;  /* usage.knock changed: another process waits for the lock */
    uv_timer_t solo_tick; /* repeating, unref'd: back to solo when alone again */
    off_t log_off;        /* the end of the last complete line of usage.log counted here */
    uint64_t log_lines;   /* lines of usage.log before log_off (for error messages) */
    uint64_t seq;         /* the last commit's seq */
    uint64_t snap_seq;    /* the seq the snapshot on disk covers */
    uint64_t since_snap;
    uint64_t snap_mono_ms; /* when the last snapshot was written (or the quota was made) */
    th_htab tenants;       /* tenant_rec by name */
    uv_timer_t timer;      /* one-shot: the batched fdatasync */
    uv_timer_t
        snap_timer; /* repeating, unref'd: a snapshot when commits are older than TH_QUOTA_SNAPSHOT_MS */
    int handles;    /* open uv handles; q is freed when the last one is closed */
    bool timer_armed, dirty;
    sync_req *syncing;
    pending *pend; /* Redis commands in flight */
};

struct th_quota_resv {
    tenant_rec *rec; /* local */
    uint64_t ts_ms, chars;
    uint32_t day, month;
    char *dkey, *mkey; /* Redis */
};

/* ---- UTC calendar arithmetic (days since 1970-01-01; H. Hinnant's algorithms) ---- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

typedef struct win {
    uint32_t day, month;   /* YYYYMMDD, YYYYMM */
    int64_t day_reset_s;   /* seconds until the next UTC midnight (>= 1) */
    int64_t month_reset_s; /* seconds until the first of the next month, 00:00 UTC (>= 1) */
} win;

static int64_t ceil_s(uint64_t ms)
{
    int64_t s = (int64_t)((ms + 999) / 1000);
    return s < 1 ? 1 : s;
}

static win window_of(uint64_t now_ms)
{
    win w;
    int64_t days = (int64_t)(now_ms / DAY_MS), y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    w.day = (uint32_t)(y * 10000 + m * 100 + d);
    w.month = (uint32_t)(y * 100 + m);
    w.day_reset_s = ceil_s((uint64_t)(days + 1) * DAY_MS - now_ms);
    int64_t next = m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1);
    w.month_reset_s = ceil_s((uint64_t)next * DAY_MS - now_ms);
    return w;
}

/* ---- tenant records ---- */

static tenant_rec *tenant_find(const th_quota *q, const char *name)
{
    th_hnode *n = th_htab_find(&q->tenants, name);
    return n ? TH_HT_OF(n, tenant_rec, hn) : NULL;
}

/* Finds or creates; NULL on ENOMEM. */
static tenant_rec *tenant_get(th_quota *q, const char *name)
{
    tenant_rec *t = tenant_find(q, name);
    if (t) return t;
    t = calloc(1, sizeof *t);
    if (t == NULL) return NULL;
    t->name = th_strndup(name, strlen(name));
    if (t->name == NULL) {
        free(t);
        return NULL;
    }
    th_htab_add(&q->tenants, &t->hn, t->name);
    return t;
}

/* Moves the record to the windows of w when they are newer (never backwards). */
static void advance(tenant_rec *t, uint32_t day, uint32_t month)
{
    if (day > t->day) {
        t->day = day;
        t->d_used = t->d_resv = t->d_req = 0;
    }
    if (month > t->month) {
        t->month = month;
        t->m_used = t->m_resv = t->m_req = 0;
    }
}

/* Counts a committed line (live or replayed). */
static void account(tenant_rec *t, uint32_t day, uint32_t month, uint64_t chars, bool reserved)
{
    advance(t, day, month);
    if (t->day == day) {
        if (reserved) t->d_resv -= chars < t->d_resv ? chars : t->d_resv;
        t->d_used += chars;
        t->d_req++;
    }
    if (t->month == month) {
        if (reserved) t->m_resv -= chars < t->m_resv ? chars : t->m_resv;
        t->m_used += chars;
        t->m_req++;
    }
}

/* ---- escaping and parsing ---- */

static bool plain(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static int append_escaped(th_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    if (*s == '\0') return th_buf_append_str(b, "%");
    for (; *s; s++) {
        uint8_t c = (uint8_t)*s;
        int rc = plain(c) ? th_buf_append_byte(b, c) : th_buf_appendf(b, "%%%c%c", hex[c >> 4], hex[c & 15]);
        if (rc != TH_BUF_OK) return rc;
    }
    return TH_BUF_OK;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Unescapes n bytes into out (outlen >= n + 1). -1 when malformed. A lone "%" is the empty name. */
static int unescape(const char *s, size_t n, char *out)
{
    size_t o = 0;
    if (n == 1 && s[0] == '%') {
        out[0] = '\0';
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) return -1;
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) return -1;
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (plain((uint8_t)s[i])) {
            out[o++] = s[i];
        } else {
            return -1;
        }
    }
    out[o] = '\0';
    return 0;
}

/* Splits line (no '\n') at single spaces into exactly nf fields. */
static int split(const char *line, size_t len, const char **f, size_t *fl, size_t nf)
{
    size_t k = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || line[i] == ' ') {
            if (i == start || k == nf) return -1;
            f[k] = line + start;
            fl[k] = i - start;
            k++;
            start = i + 1;
        }
    }
    return k == nf ? 0 : -1;
}

static int field_u64(const char *s, size_t n, uint64_t *out)
{
    int64_t v;
    if (n == 0 || n > 19 || s[0] == '-' || s[0] == '+') return -1;
    if (th_strn_to_i64(s, n, 0, INT64_MAX, &v) != 0) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* ---- files ---- */

static char *path_join(const char *dir, const char *name)
{
    th_buf b;
    th_buf_init(&b, 0); /* a path from the config */
    if (th_buf_appendf(&b, "%s/%s", dir, name) != TH_BUF_OK || th_buf_cstr(&b) == NULL) {
        th_buf_free(&b);
        return NULL;
    }
    size_t n;
    return (char *)th_buf_steal(&b, &n);
}

static int mkdir_p(const char *path)
{
    char tmp[4096];
    size_t n = th_strlcpy(tmp, path, sizeof tmp);
    if (n == 0 || n >= sizeof tmp) return -1;
    for (size_t i = 1; i <= n; i++) {
        if (tmp[i] != '/' && tmp[i] != '\0') continue;
        char c = tmp[i];
        tmp[i] = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        tmp[i] = c;
    }
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *d = p;
    while (n > 0) {
        ssize_t w = write(fd, d, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        d += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads a whole (small) file into b, at most max bytes. 1 if missing, 0 ok, -1 error. */
static int read_file(const char *path, th_buf *b)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 1 : -1;
    int rc = -1;
    uint8_t chunk[65536];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) goto out;
        if (r == 0) break;
        if (th_buf_append(b, chunk, (size_t)r) != TH_BUF_OK) goto out;
    }
    rc = 0;
out:
    close(fd);
    return rc;
}

static int load_snapshot(th_quota *q, char *err, size_t errlen)
{
    th_buf b;
    th_buf_init(&b, 0); /* the hub's own snapshot file in data_dir */
    int rc = -1, lineno = 0;
    char *name = NULL;
    int r = read_file(q->snap_path, &b);
    if (r == 1) {
        rc = 0;
        goto out;
    }
    if (r != 0) {
        snprintf(err, errlen, "%s: %s", q->snap_path, strerror(errno));
        goto out;
    }
    name = malloc(b.len + 1);
    if (name == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    const char *p = (const char *)b.data, *end = p + b.len;
    bool ended = false;
    size_t count = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL || ended) goto corrupt;
        size_t len = (size_t)(nl - p);
        const char *f[7];
        size_t fl[7];
        uint64_t v[6];
        lineno++;
        if (lineno == 1) {
            if (split(p, len, f, fl, 3) != 0 || fl[0] != 21 ||
                memcmp(f[0], "ttshub-usage-snapshot", 21) != 0 || fl[1] != 1 || f[1][0] != '1' ||
                field_u64(f[2], fl[2], &q->snap_seq) != 0)
                goto corrupt;
        } else if (len >= 4 && memcmp(p, "end ", 4) == 0) {
            if (field_u64(p + 4, len - 4, &v[0]) != 0 || v[0] != count) goto corrupt;
            ended = true;
        } else {
            if (split(p, len, f, fl, 7) != 0 || unescape(f[0], fl[0], name) != 0) goto corrupt;
            for (int i = 0; i < 6; i++)
                if (field_u64(f[i + 1], fl[i + 1], &v[i]) != 0) goto corrupt;
            if (v[0] > UINT32_MAX || v[3] > UINT32_MAX) goto corrupt;
            tenant_rec *t = tenant_get(q, name);
            if (t == NULL) {
                snprintf(err, errlen, "out of memory");
                goto out;
            }
            /* Committed counts come from the snapshot; reservations of this process stay where their
             * window is still the record's (on a reload after another process rotated the log). */
            advance(t, (uint32_t)v[0], (uint32_t)v[3]);
            if (t->day == v[0]) {
                t->d_used = v[1];
                t->d_req = v[2];
            }
            if (t->month == v[3]) {
                t->m_used = v[4];
                t->m_req = v[5];
            }
            count++;
        }
        p = nl + 1;
    }
    if (!ended) goto corrupt;
    q->seq = q->snap_seq;
    rc = 0;
    goto out;
corrupt:
    snprintf(err, errlen, "%s: corrupt at line %d", q->snap_path, lineno);
out:
    free(name);
    th_buf_free(&b);
    return rc;
}

/* Counts one line of usage.log (unless the snapshot already holds it). 0, -1 malformed, -2 out of memory. */
static int apply_line(th_quota *q, const char *p, size_t len, char *name)
{
    const char *f[4];
    size_t fl[4];
    uint64_t seq, ts, chars;
    if (split(p, len, f, fl, 4) != 0 || field_u64(f[0], fl[0], &seq) != 0 ||
        field_u64(f[1], fl[1], &ts) != 0 || unescape(f[2], fl[2], name) != 0 ||
        field_u64(f[3], fl[3], &chars) != 0)
        return -1;
    if (seq > q->snap_seq) {
        tenant_rec *t = tenant_get(q, name);
        if (t == NULL) return -2;
        win w = window_of(ts);
        account(t, w.day, w.month, chars, false);
    }
    if (seq > q->seq) q->seq = seq;
    return 0;
}

/* Counts the complete lines of usage.log past log_off (all of it at start). With usage.lock held no writer
 * can be in the middle of a line, so an unfinished last line was torn by a crash: it is cut off, and the
 * next append starts on a line of its own. Without the lock it is left for the next look. */
static int read_log(th_quota *q, bool locked, char *err, size_t errlen)
{
    struct stat st;
    if (fstat(q->log_fd, &st) != 0) {
        snprintf(err, errlen, "%s: %s", q->log_path, strerror(errno));
        return -1;
    }
    if (st.st_size <= q->log_off) {
        q->log_off = st.st_size; /* shorter only if a starting process cut a torn line */
        return 0;
    }
    th_buf b;
    th_buf_init(&b, MAX_LINE + 65536); /* one line and one read */
    int rc = -1;
    char *name = malloc(MAX_LINE + 1);
    uint8_t chunk[65536];
    off_t pos = q->log_off;
    if (name == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    while (pos < st.st_size) {
        ssize_t r = pread(q->log_fd, chunk, sizeof chunk, pos);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: %s", q->log_path, strerror(errno));
            goto out;
        }
        if (r == 0) break;
        pos += r;
        if (th_buf_append(&b, chunk, (size_t)r) != TH_BUF_OK) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        uint8_t *nl;
        while ((nl = memchr(b.data, '\n', b.len)) != NULL) {
            size_t len = (size_t)(nl - b.data);
            int ar = len > MAX_LINE ? -1 : apply_line(q, (const char *)b.data, len, name);
            if (ar != 0) {
                if (ar == -2)
                    snprintf(err, errlen, "out of memory");
                else
                    snprintf(err, errlen, "%s: corrupt at line %llu", q->log_path,
                             (unsigned long long)q->log_lines + 1);
                goto out;
            }
            q->log_off += (off_t)len + 1;
            q->log_lines++;
            th_buf_consume(&b, len + 1);
        }
        if (b.len > MAX_LINE) {
            snprintf(err, errlen, "%s: line %llu is too long", q->log_path,
                     (unsigned long long)q->log_lines + 1);
            goto out;
        }
    }
    if (b.len > 0 && locked) {
        TH_LOG(q->log, TH_LOG_WARN, "quota: %s: ignoring a torn last line (%zu bytes)", q->log_path, b.len);
        if (ftruncate(q->log_fd, q->log_off) != 0) {
            snprintf(err, errlen, "%s: truncate: %s", q->log_path, strerror(errno));
            goto out;
        }
    }
    rc = 0;
out:
    free(name);
    th_buf_free(&b);
    return rc;
}

/* flock with a deadline: try at once, then poll (the holder keeps it for one write or one snapshot). A
 * first failure on usage.lock knocks, so a solo holder lets it go. */
static int flock_wait(th_quota *q, int fd, int op, uint64_t wait_ms)
{
    uint64_t deadline = th_mono_ms() + wait_ms;
    bool knocked = fd != q->lock_fd;
    for (;;) {
        if (flock(fd, op | LOCK_NB) == 0) return 0;
        if (errno != EWOULDBLOCK && errno != EINTR) return -1;
        if (!knocked) {
            knocked = true;
            if (futimens(q->knock_fd, NULL) != 0)
                TH_LOG(q->log, TH_LOG_WARN, "quota: touching %s: %s", q->knock_path, strerror(errno));
        }
        if (th_mono_ms() >= deadline) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct timespec ts = {0, 200 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* usage.lock for one operation (a solo process holds it already). */
static int lock_wait(th_quota *q, uint64_t wait_ms)
{
    return q->solo ? 0 : flock_wait(q, q->lock_fd, LOCK_EX, wait_ms);
}

static void unlock(th_quota *q)
{
    if (!q->solo && flock(q->lock_fd, LOCK_UN) != 0)
        TH_LOG(q->log, TH_LOG_ERROR, "quota: unlock %s: %s", q->lock_path, strerror(errno));
}

/* After another process rotated the log: its snapshot holds every line we had not read yet, so committed
 * counts come from it, then the new log is read from its start. */
static int reload(th_quota *q, char *err, size_t errlen)
{
    int fd = open(q->log_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", q->log_path, strerror(errno));
        return -1;
    }
    (void)flock(fd, LOCK_SH | LOCK_NB); /* see th_quota_new */
    close(q->log_fd);
    q->log_fd = fd;
    q->log_off = 0;
    q->log_lines = 0;
    q->dirty = false; /* what we wrote to the old log is in the snapshot, synced */
    TH_HTAB_EACH(&q->tenants, h)
    {
        tenant_rec *t = TH_HT_OF(h, tenant_rec, hn);
        t->d_used = t->d_req = t->m_used = t->m_req = 0;
    }
    if (load_snapshot(q, err, errlen) != 0) return -1;
    return read_log(q, true, err, errlen);
}

/* Catches up with the other processes on this data_dir: reloads after a rotation, reads new lines. */
static int sync_log(th_quota *q, bool locked)
{
    char err[256];
    struct stat st;
    int rc = -1;
    if (q->solo) return 0; /* nobody else can have written */
    if (fstat(q->log_fd, &st) != 0) {
        snprintf(err, sizeof err, "%s: %s", q->log_path, strerror(errno));
    } else if (st.st_nlink > 0 && st.st_size <= q->log_off) {
        return 0; /* the common case: nothing new */
    } else if (st.st_nlink > 0) {
        rc = read_log(q, locked, err, sizeof err);
    } else if (locked) {
        rc = reload(q, err, sizeof err);
    } else if (lock_wait(q, LOCK_WAIT_MS) != 0) {
        snprintf(err, sizeof err, "%s: %s", q->lock_path, strerror(errno));
    } else {
        rc = reload(q, err, sizeof err);
        unlock(q);
    }
    if (rc != 0) TH_LOG(q->log, TH_LOG_ERROR, "quota: reading the usage log: %s", err);
    return rc;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* ---- solo and shared ---- */

/* True if no other process is a member. Converting the shared flock to exclusive and back is not atomic:
 * a failed conversion holds nothing for a moment, and another process's test may then see itself alone
 * and go solo; our next append then knocks, and it shares again. */
static bool alone(th_quota *q)
{
    bool one = flock(q->members_fd, LOCK_EX | LOCK_NB) == 0;
    if (flock_wait(q, q->members_fd, LOCK_SH, MEMBER_WAIT_MS) != 0)
        TH_LOG(q->log, TH_LOG_ERROR, "quota: %s: %s", q->members_path, strerror(errno));
    return one;
}

/* Takes usage.lock for good when alone and it is free. */
static void try_solo(th_quota *q)
{
    if (q->solo || !alone(q) || flock(q->lock_fd, LOCK_EX | LOCK_NB) != 0) return;
    if (sync_log(q, true) != 0) {
        flock(q->lock_fd, LOCK_UN);
        return;
    }
    q->solo = true;
    TH_LOG(q->log, TH_LOG_INFO, "quota: alone on %s: usage.log is this process's", q->dir);
}

static void on_knock(uv_fs_event_t *h, const char *name, int events, int status)
{
    (void)name;
    (void)events;
    th_quota *q = h->data;
    if (status < 0 || !q->solo) return;
    q->solo = false;
    if (flock(q->lock_fd, LOCK_UN) != 0)
        TH_LOG(q->log, TH_LOG_ERROR, "quota: unlock %s: %s", q->lock_path, strerror(errno));
    TH_LOG(q->log, TH_LOG_INFO, "quota: another process uses %s: usage.log is shared", q->dir);
}

static void on_solo_tick(uv_timer_t *t)
{
    try_solo(t->data);
}

/* Joins the processes on data_dir and watches for knocks. */
static int join(th_quota *q, char *err, size_t errlen)
{
    q->members_fd = open(q->members_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    q->knock_fd = open(q->knock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (q->members_fd < 0 || q->knock_fd < 0 || flock_wait(q, q->members_fd, LOCK_SH, MEMBER_WAIT_MS) != 0) {
        snprintf(err, errlen, "%s: %s", q->members_fd < 0 ? q->members_path : q->knock_path, strerror(errno));
        return -1;
    }
    if (futimens(q->knock_fd, NULL) != 0) { /* a solo process lets usage.lock go */
        snprintf(err, errlen, "%s: %s", q->knock_path, strerror(errno));
        return -1;
    }
    if (uv_fs_event_init(q->loop, &q->knock) != 0) {
        snprintf(err, errlen, "cannot watch %s", q->knock_path);
        return -1;
    }
    q->knock.data = q;
    q->handles++;
    int rc = uv_fs_event_start(&q->knock, on_knock, q->knock_path, 0);
    if (rc != 0) {
        snprintf(err, errlen, "watching %s: %s", q->knock_path, uv_strerror(rc));
        return -1;
    }
    uv_unref((uv_handle_t *)&q->knock);
    uv_timer_start(&q->solo_tick, on_solo_tick, SOLO_TICK_MS, SOLO_TICK_MS);
    uv_unref((uv_handle_t *)&q->solo_tick);
    return 0;
}

/* A new empty log replaces the one the snapshot covers. Others see their fd's file lose its name. */
static void rotate(th_quota *q)
{
    int fd = open(q->log_tmp, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || rename(q->log_tmp, q->log_path) != 0) {
        /* The old log stays: every line in it is <= the snapshot's seq and skipped on replay. */
        TH_LOG(q->log, TH_LOG_WARN, "quota: rotating %s: %s", q->log_path, strerror(errno));
        if (fd >= 0) close(fd);
        return;
    }
    if (fsync_dir(q->dir) != 0) TH_LOG(q->log, TH_LOG_WARN, "quota: fsync %s: %s", q->dir, strerror(errno));
    (void)flock(fd, LOCK_SH | LOCK_NB); /* see th_quota_new */
    close(q->log_fd);
    q->log_fd = fd;
    q->log_off = 0;
    q->log_lines = 0;
    q->dirty = false;
}

int th_quota_snapshot(th_quota *q)
{
    if (q == NULL || q->log_fd < 0) return -1;
    if (lock_wait(q, LOCK_WAIT_MS) != 0) {
        TH_LOG(q->log, TH_LOG_ERROR, "quota: snapshot: locking %s: %s", q->lock_path, strerror(errno));
        return -1;
    }
    th_buf b;
    th_buf_init(&b, 0); /* the snapshot we write */
    int rc = -1, fd = -1;
    size_t count = 0;
    if (sync_log(q, true) != 0) goto out;
    if (th_buf_appendf(&b, "ttshub-usage-snapshot 1 %llu\n", (unsigned long long)q->seq) != TH_BUF_OK)
        goto out;
    TH_HTAB_EACH(&q->tenants, h)
    {
        const tenant_rec *t = TH_HT_OF(h, tenant_rec, hn);
        if (append_escaped(&b, t->name) != TH_BUF_OK ||
            th_buf_appendf(&b, " %u %llu %llu %u %llu %llu\n", (unsigned)t->day,
                           (unsigned long long)t->d_used, (unsigned long long)t->d_req, (unsigned)t->month,
                           (unsigned long long)t->m_used, (unsigned long long)t->m_req) != TH_BUF_OK)
            goto out;
        count++;
    }
    if (th_buf_appendf(&b, "end %zu\n", count) != TH_BUF_OK) goto out;
    fd = open(q->snap_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, b.data, b.len) != 0 || fdatasync(fd) != 0) goto out;
    if (close(fd) != 0) {
        fd = -1;
        goto out;
    }
    fd = -1;
    if (rename(q->snap_tmp, q->snap_path) != 0 || fsync_dir(q->dir) != 0) goto out;
    q->snap_seq = q->seq;
    q->since_snap = 0;
    q->snap_mono_ms = th_mono_ms();
    /* The snapshot holds every line now: the log starts again (a crash before this is harmless). */
    rotate(q);
    rc = 0;
out:
    if (rc != 0) TH_LOG(q->log, TH_LOG_ERROR, "quota: snapshot %s failed: %s", q->snap_path, strerror(errno));
    if (fd >= 0) close(fd);
    unlock(q);
    th_buf_free(&b);
    return rc;
}

/* ---- batched fdatasync ---- */

static void on_synced(uv_fs_t *req)
{
    sync_req *s = (sync_req *)req;
    if (s->q) {
        if (req->result < 0)
            TH_LOG(s->q->log, TH_LOG_ERROR, "quota: fdatasync %s: %s", s->q->log_path,
                   uv_strerror((int)req->result));
        s->q->syncing = NULL;
    }
    uv_fs_req_cleanup(req);
    close(s->fd);
    free(s);
}

static void on_timer(uv_timer_t *t);

static void arm_timer(th_quota *q)
{
    if (q->timer_armed) return;
    q->timer_armed = true;
    uv_timer_start(&q->timer, on_timer, SYNC_DELAY_MS, 0);
}

static void on_timer(uv_timer_t *t)
{
    th_quota *q = t->data;
    q->timer_armed = false;
    if (!q->dirty) return;
    if (q->syncing) { /* the previous one is still running: try again later */
        arm_timer(q);
        return;
    }
    sync_req *s = calloc(1, sizeof *s);
    if (s == NULL) goto retry;
    s->q = q;
    s->fd = dup(q->log_fd);
    if (s->fd < 0 || uv_fs_fdatasync(q->loop, &s->req, s->fd, on_synced) != 0) {
        if (s->fd >= 0) close(s->fd);
        free(s);
        goto retry;
    }
    q->syncing = s;
    q->dirty = false;
    return;
retry:
    TH_LOG(q->log, TH_LOG_WARN, "quota: cannot start an fdatasync; retrying");
    arm_timer(q);
}

static void on_snap_timer(uv_timer_t *t)
{
    th_quota *q = t->data;
    if (q->since_snap > 0 && th_mono_ms() - q->snap_mono_ms >= TH_QUOTA_SNAPSHOT_MS) th_quota_snapshot(q);
}

/* ---- Redis backend ---- */

struct pending {
    pending *prev, *next;
    th_quota *q; /* NULL once the quota is freed */
    int kind;    /* 0 reserve, 1 commit/refund, 2 usage */
    th_quota_cb cb;
    th_quota_usage_cb ucb;
    void *ud;
    th_quota_resv *resv; /* reserve: handed out when allowed */
    win w;
    char **tenants; /* usage */
    size_t ntenants;
};

static void pend_link(th_quota *q, pending *p)
{
    p->q = q;
    p->prev = NULL;
    p->next = q->pend;
    if (q->pend) q->pend->prev = p;
    q->pend = p;
}

static void pend_unlink(pending *p)
{
    if (p->q == NULL) return;
    if (p->prev)
        p->prev->next = p->next;
    else
        p->q->pend = p->next;
    if (p->next) p->next->prev = p->prev;
    p->q = NULL;
}

static void resv_free(th_quota_resv *r)
{
    if (r == NULL) return;
    free(r->dkey);
    free(r->mkey);
    free(r);
}

static const char RESERVE_LUA[] = "local n = tonumber(ARGV[1])\n"
                                  "local function get(k)\n"
                                  "  local v = redis.call('HMGET', k, 'used', 'reserved')\n"
                                  "  return (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)\n"
                                  "end\n"
                                  "local dl, ml = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
                                  "local du = get(KEYS[1])\n"
                                  "if dl > 0 and du + n > dl then return {0, 'day', dl, du} end\n"
                                  "local mu = get(KEYS[2])\n"
                                  "if ml > 0 and mu + n > ml then return {0, 'month', ml, mu} end\n"
                                  "redis.call('HINCRBY', KEYS[1], 'reserved', n)\n"
                                  "redis.call('EXPIRE', KEYS[1], ARGV[4])\n"
                                  "redis.call('HINCRBY', KEYS[2], 'reserved', n)\n"
                                  "redis.call('EXPIRE', KEYS[2], ARGV[5])\n"
                                  "return {1}\n";

/* ARGV[1] chars, ARGV[2] 1 = commit (reserved -> used, one more request), 0 = refund. */
static const char SETTLE_LUA[] = "local n = tonumber(ARGV[1])\n"
                                 "for i = 1, 2 do\n"
                                 "  if redis.call('EXISTS', KEYS[i]) == 1 then\n"
                                 "    local r = tonumber(redis.call('HGET', KEYS[i], 'reserved')) or 0\n"
                                 "    if r < n then n = r end\n"
                                 "    redis.call('HINCRBY', KEYS[i], 'reserved', -n)\n"
                                 "    n = tonumber(ARGV[1])\n"
                                 "  end\n"
                                 "  if ARGV[2] == '1' then\n"
                                 "    redis.call('HINCRBY', KEYS[i], 'used', n)\n"
                                 "    redis.call('HINCRBY', KEYS[i], 'requests', 1)\n"
                                 "    redis.call('EXPIRE', KEYS[i], ARGV[i + 2])\n"
                                 "  end\n"
                                 "end\n"
                                 "return 1\n";

/* used and requests of each key. */
static const char USAGE_LUA[] = "local r = {}\n"
                                "for i, k in ipairs(KEYS) do\n"
                                "  local v = redis.call('HMGET', k, 'used', 'requests')\n"
                                "  r[#r + 1] = tonumber(v[1]) or 0\n"
                                "  r[#r + 1] = tonumber(v[2]) or 0\n"
                                "end\n"
                                "return r\n";

static char *redis_key(const th_quota *q, const char *tenant, bool day, uint32_t id)
{
    th_buf b;
    th_buf_init(&b, 0); /* a key of bounded parts */
    if (th_buf_appendf(&b, "%squota:%s:%s:%u", q->prefix, tenant, day ? "d" : "m", (unsigned)id) !=
            TH_BUF_OK ||
        th_buf_cstr(&b) == NULL) {
        th_buf_free(&b);
        return NULL;
    }
    size_t n;
    return (char *)th_buf_steal(&b, &n);
}

static void backend_error(const th_quota *q, th_quota_cb cb, void *ud, bool fail_open)
{
    th_quota_result res = {0};
    if (fail_open) {
        res.allowed = true;
        res.degraded = true;
    } else {
        res.window = "backend";
        res.retry_after_s = 1;
    }
    cb(ud, &res);
}

static void on_reserve_reply(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    pending *p = ud;
    th_quota *q = p->q;
    bool open = q ? q->fail_open : false;
    pend_unlink(p);
    if (st != TH_REDIS_OK || rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
        q == NULL) {
        if (q)
            TH_LOG(q->log, TH_LOG_WARN, "quota: redis reserve failed (%d%s%.*s), failing %s", (int)st,
                   rep && rep->str ? ": " : "", rep && rep->str ? (int)rep->len : 0,
                   rep && rep->str ? rep->str : "", open ? "open" : "closed");
        backend_error(q, p->cb, p->ud, open);
        goto out;
    }
    th_quota_result res = {0};
    if (rep->element[0].integer == 1) {
        res.allowed = true;
        res.resv = p->resv;
        p->resv = NULL;
    } else if (rep->elements >= 4) {
        bool day = rep->element[1].len == 3 && memcmp(rep->element[1].str, "day", 3) == 0;
        res.window = day ? "day" : "month";
        res.limit = (uint64_t)rep->element[2].integer;
        res.used = (uint64_t)rep->element[3].integer;
        res.retry_after_s = day ? p->w.day_reset_s : p->w.month_reset_s;
    } else {
        backend_error(q, p->cb, p->ud, open);
        goto out;
    }
    p->cb(p->ud, &res);
out:
    resv_free(p->resv);
    free(p);
}

static void redis_reserve(th_quota *q, const char *tenant, const th_tenant_conf *tconf, uint64_t chars, win w,
                          uint64_t now_ms, th_quota_cb cb, void *ud)
{
    pending *p = calloc(1, sizeof *p);
    th_quota_resv *r = calloc(1, sizeof *r);
    if (p == NULL || r == NULL) goto fail;
    r->chars = chars;
    r->ts_ms = now_ms;
    r->day = w.day;
    r->month = w.month;
    r->dkey = redis_key(q, tenant, true, w.day);
    r->mkey = redis_key(q, tenant, false, w.month);
    if (r->dkey == NULL || r->mkey == NULL) goto fail;
    char a[5][24];
    snprintf(a[0], sizeof a[0], "%llu", (unsigned long long)chars);
    snprintf(a[1], sizeof a[1], "%llu", (unsigned long long)tconf->chars_per_day);
    snprintf(a[2], sizeof a[2], "%llu", (unsigned long long)tconf->chars_per_month);
    snprintf(a[3], sizeof a[3], "%lld", (long long)(w.day_reset_s + REDIS_EXTRA_TTL_S));
    snprintf(a[4], sizeof a[4], "%lld", (long long)(w.month_reset_s + REDIS_EXTRA_TTL_S));
    const char *argv[7] = {r->dkey, r->mkey, a[0], a[1], a[2], a[3], a[4]};
    size_t argvlen[7];
    for (int i = 0; i < 7; i++)
        argvlen[i] = strlen(argv[i]);
    p->cb = cb;
    p->ud = ud;
    p->resv = r;
    p->w = w;
    pend_link(q, p);
    if (th_redis_eval(q->redis, on_reserve_reply, p, RESERVE_LUA, 2, 7, argv, argvlen) != 0) {
        pend_unlink(p);
        goto fail;
    }
    return;
fail:
    resv_free(r);
    free(p);
    backend_error(q, cb, ud, q->fail_open);
}

static void on_settle_reply(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    pending *p = ud;
    if (p->q && st != TH_REDIS_OK)
        TH_LOG(p->q->log, TH_LOG_ERROR, "quota: redis %s failed (%d); the usage is lost",
               p->kind == 1 ? "commit" : "refund", (int)st);
    pend_unlink(p);
    free(p);
}

static void redis_settle(th_quota *q, th_quota_resv *r, bool commit)
{
    pending *p = calloc(1, sizeof *p);
    if (p == NULL) {
        TH_LOG(q->log, TH_LOG_ERROR, "quota: out of memory settling a reservation");
        return;
    }
    p->kind = commit ? 1 : 3;
    win w = window_of(r->ts_ms);
    char a[4][24];
    snprintf(a[0], sizeof a[0], "%llu", (unsigned long long)r->chars);
    snprintf(a[1], sizeof a[1], "%d", commit ? 1 : 0);
    snprintf(a[2], sizeof a[2], "%lld", (long long)(w.day_reset_s + REDIS_EXTRA_TTL_S));
    snprintf(a[3], sizeof a[3], "%lld", (long long)(w.month_reset_s + REDIS_EXTRA_TTL_S));
    const char *argv[6] = {r->dkey, r->mkey, a[0], a[1], a[2], a[3]};
    size_t argvlen[6];
    for (int i = 0; i < 6; i++)
        argvlen[i] = strlen(argv[i]);
    pend_link(q, p);
    if (th_redis_eval(q->redis, on_settle_reply, p, SETTLE_LUA, 2, 6, argv, argvlen) != 0) {
        pend_unlink(p);
        free(p);
        TH_LOG(q->log, TH_LOG_ERROR, "quota: out of memory settling a reservation");
    }
}

/* ---- public ---- */

th_quota *th_quota_new(uv_loop_t *loop, const th_config *cfg, th_redis *redis, th_log *log, char *err,
                       size_t errlen)
{
    th_quota *q = calloc(1, sizeof *q);
    if (q == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    q->loop = loop;
    q->log = log;
    q->redis = redis;
    q->log_fd = -1;
    q->lock_fd = q->members_fd = q->knock_fd = -1;
    q->cfg = th_config_ref((th_config *)cfg);
    q->fail_open =
        cfg->rate_limit.on_backend_error == NULL || strcmp(cfg->rate_limit.on_backend_error, "closed") != 0;
    int hrc = th_htab_init(&q->tenants, 64);
    const char *prefix = cfg->redis.prefix ? cfg->redis.prefix : "";
    q->prefix = th_strndup(prefix, strlen(prefix));
    if (hrc != 0 || q->prefix == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    uv_timer_init(loop, &q->timer);
    q->timer.data = q;
    uv_timer_init(loop, &q->snap_timer);
    q->snap_timer.data = q;
    uv_timer_init(loop, &q->solo_tick);
    q->solo_tick.data = q;
    q->handles = 3;
    q->snap_mono_ms = th_mono_ms();
    if (redis) return q; /* the Redis backend keeps nothing on disk */
    uv_timer_start(&q->snap_timer, on_snap_timer, TH_QUOTA_SNAPSHOT_MS / 4, TH_QUOTA_SNAPSHOT_MS / 4);
    uv_unref((uv_handle_t *)&q->snap_timer);

    const char *dir = cfg->data_dir && cfg->data_dir[0] ? cfg->data_dir : ".";
    q->dir = th_strndup(dir, strlen(dir));
    q->log_path = path_join(dir, "usage.log");
    q->snap_path = path_join(dir, "usage.snapshot");
    q->snap_tmp = path_join(dir, "usage.snapshot.tmp");
    q->lock_path = path_join(dir, "usage.lock");
    q->log_tmp = path_join(dir, "usage.log.tmp");
    q->members_path = path_join(dir, "usage.members");
    q->knock_path = path_join(dir, "usage.knock");
    if (q->dir == NULL || q->log_path == NULL || q->snap_path == NULL || q->snap_tmp == NULL ||
        q->lock_path == NULL || q->log_tmp == NULL || q->members_path == NULL || q->knock_path == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (mkdir_p(dir) != 0) {
        snprintf(err, errlen, "data_dir %s: %s", dir, strerror(errno));
        goto fail;
    }
    q->log_fd = open(q->log_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (q->log_fd < 0) {
        snprintf(err, errlen, "%s: %s", q->log_path, strerror(errno));
        goto fail;
    }
    /* An older ttshub holds usage.log exclusively for its lifetime and would not see our lines; our shared
     * flock, kept, makes an older one refuse to start beside us in turn. */
    if (flock(q->log_fd, LOCK_SH | LOCK_NB) != 0) {
        snprintf(err, errlen, "%s: in use by a process that does not share it (%s)", q->log_path,
                 strerror(errno));
        goto fail;
    }
    q->lock_fd = open(q->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (q->lock_fd < 0) {
        snprintf(err, errlen, "%s: %s", q->lock_path, strerror(errno));
        goto fail;
    }
    if (join(q, err, errlen) != 0) goto fail;
    /* usage.log is open before the snapshot is read: see "Several processes" */
    if (load_snapshot(q, err, errlen) != 0 || read_log(q, false, err, errlen) != 0) goto fail;
    try_solo(q); /* then a torn last line is cut off at once */
    return q;
fail:
    th_quota_free(q);
    return NULL;
}

static void on_close(uv_handle_t *h)
{
    th_quota *q = h->data;
    if (--q->handles == 0) free(q);
}

void th_quota_free(th_quota *q)
{
    if (q == NULL) return;
    if (q->log_fd >= 0) {
        if (q->dirty && fdatasync(q->log_fd) != 0)
            TH_LOG(q->log, TH_LOG_ERROR, "quota: fdatasync %s: %s", q->log_path, strerror(errno));
        close(q->log_fd);
    }
    if (q->lock_fd >= 0) close(q->lock_fd); /* lets usage.lock go if solo */
    if (q->members_fd >= 0) close(q->members_fd);
    if (q->knock_fd >= 0) close(q->knock_fd);
    if (q->syncing) q->syncing->q = NULL; /* it finishes on the threadpool and frees itself */
    while (q->pend)
        pend_unlink(q->pend); /* Redis replies still to come free their own state */
    for (size_t i = 0; q->tenants.b && i < q->tenants.nb; i++) {
        th_hnode *h = q->tenants.b[i];
        while (h) {
            th_hnode *next = h->next;
            tenant_rec *t = TH_HT_OF(h, tenant_rec, hn);
            free(t->name);
            free(t);
            h = next;
        }
    }
    th_htab_free(&q->tenants);
    free(q->prefix);
    free(q->dir);
    free(q->log_path);
    free(q->snap_path);
    free(q->snap_tmp);
    free(q->lock_path);
    free(q->log_tmp);
    free(q->members_path);
    free(q->knock_path);
    th_config_unref(q->cfg);
    if (q->handles > 0) { /* q is freed when its handles are closed */
        uv_close((uv_handle_t *)&q->timer, on_close);
        uv_close((uv_handle_t *)&q->snap_timer, on_close);
        uv_close((uv_handle_t *)&q->solo_tick, on_close);
        if (q->handles > 3) uv_close((uv_handle_t *)&q->knock, on_close);
    } else {
        free(q);
    }
}

void th_quota_reserve(th_quota *q, const char *tenant, const th_tenant_conf *tconf, uint64_t chars,
                      uint64_t now_ms, th_quota_cb cb, void *ud)
{
    th_quota_result res = {0};
    if (tconf == NULL || (tconf->chars_per_day == 0 && tconf->chars_per_month == 0)) {
        res.allowed = true;
        cb(ud, &res);
        return;
    }
    win w = window_of(now_ms);
    if (q->redis) {
        redis_reserve(q, tenant, tconf, chars, w, now_ms, cb, ud);
        return;
    }
    sync_log(q, false); /* what other processes on this data_dir committed (logged on failure) */
    tenant_rec *t = tenant_get(q, tenant);
    th_quota_resv *r = t ? calloc(1, sizeof *r) : NULL;
    if (r == NULL) {
        TH_LOG(q->log, TH_LOG_ERROR, "quota: out of memory reserving for %s", tenant);
        free(r);
        backend_error(q, cb, ud, q->fail_open);
        return;
    }
    advance(t, w.day, w.month);
    uint64_t dused = t->day == w.day ? t->d_used + t->d_resv : 0;
    uint64_t mused = t->month == w.month ? t->m_used + t->m_resv : 0;
    if (tconf->chars_per_day > 0 && dused + chars > tconf->chars_per_day) {
        res.window = "day";
        res.limit = tconf->chars_per_day;
        res.used = dused;
        res.retry_after_s = w.day_reset_s;
    } else if (tconf->chars_per_month > 0 && mused + chars > tconf->chars_per_month) {
        res.window = "month";
        res.limit = tconf->chars_per_month;
        res.used = mused;
        res.retry_after_s = w.month_reset_s;
    } else {
        r->rec = t;
        r->chars = chars;
        r->ts_ms = now_ms;
        r->day = w.day;
        r->month = w.month;
        if (t->day == w.day) t->d_resv += chars;
        if (t->month == w.month) t->m_resv += chars;
        res.allowed = true;
        res.resv = r;
        r = NULL;
    }
    free(r);
    cb(ud, &res);
}

void th_quota_commit(th_quota *q, th_quota_resv *r)
{
    if (r == NULL) return;
    if (q->redis) {
        redis_settle(q, r, true);
        resv_free(r);
        return;
    }
    th_buf b;
    th_buf_init(&b, MAX_LINE);
    bool locked = lock_wait(q, LOCK_WAIT_MS) == 0;
    if (locked) sync_log(q, true); /* our seq follows every line already in the log */
    uint64_t seq = q->seq + 1;
    if (!locked) {
        /* Counted in memory anyway; only this line is not durable. */
        TH_LOG(q->log, TH_LOG_ERROR, "quota: locking %s: %s", q->lock_path, strerror(errno));
    } else if (th_buf_appendf(&b, "%llu %llu ", (unsigned long long)seq, (unsigned long long)r->ts_ms) !=
                   TH_BUF_OK ||
               append_escaped(&b, r->rec->name) != TH_BUF_OK ||
               th_buf_appendf(&b, " %llu\n", (unsigned long long)r->chars) != TH_BUF_OK) {
        TH_LOG(q->log, TH_LOG_ERROR, "quota: cannot format the usage line of %s", r->rec->name);
    } else if (write_all(q->log_fd, b.data, b.len) != 0) {
        TH_LOG(q->log, TH_LOG_ERROR, "quota: write %s: %s", q->log_path, strerror(errno));
    } else {
        q->seq = seq;
        q->log_off += (off_t)b.len;
        q->log_lines++;
        q->dirty = true;
        q->since_snap++;
        arm_timer(q);
    }
    if (locked) unlock(q);
    th_buf_free(&b);
    account(r->rec, r->day, r->month, r->chars, true);
    resv_free(r);
    if (q->since_snap >= TH_QUOTA_SNAPSHOT_EVERY) th_quota_snapshot(q);
}

void th_quota_refund(th_quota *q, th_quota_resv *r)
{
    if (r == NULL) return;
    if (q->redis) {
        redis_settle(q, r, false);
    } else {
        tenant_rec *t = r->rec;
        if (t->day == r->day) t->d_resv -= r->chars < t->d_resv ? r->chars : t->d_resv;
        if (t->month == r->month) t->m_resv -= r->chars < t->m_resv ? r->chars : t->m_resv;
    }
    resv_free(r);
}

static bool is_day(const char *window)
{
    return window == NULL || strcmp(window, "month") != 0;
}

static void fill_row(th_usage_row *row, const tenant_rec *t, const char *name, bool day, win w)
{
    memset(row, 0, sizeof *row);
    th_strlcpy(row->tenant, name, sizeof row->tenant);
    if (t == NULL) return;
    if (day && t->day == w.day) {
        row->chars = t->d_used;
        row->requests = t->d_req;
    } else if (!day && t->month == w.month) {
        row->chars = t->m_used;
        row->requests = t->m_req;
    }
}

th_usage_row *th_quota_usage(th_quota *q, const char *window, const char *tenant, uint64_t now_ms, size_t *n)
{
    *n = 0;
    bool day = is_day(window);
    win w = window_of(now_ms);
    if (!q->redis && q->log_fd >= 0) sync_log(q, false);
    if (tenant) {
        th_usage_row *rows = malloc(sizeof *rows);
        if (rows == NULL) return NULL;
        fill_row(rows, q->redis ? NULL : tenant_find(q, tenant), tenant, day, w);
        *n = 1;
        return rows;
    }
    th_usage_row *rows = calloc(q->tenants.n ? q->tenants.n : 1, sizeof *rows);
    if (rows == NULL) return NULL;
    if (!q->redis) TH_HTAB_EACH(&q->tenants, h)
        {
            const tenant_rec *t = TH_HT_OF(h, tenant_rec, hn);
            fill_row(&rows[*n], t, t->name, day, w);
            if (rows[*n].requests > 0) (*n)++;
        }
    return rows;
}

static void on_usage_reply(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    pending *p = ud;
    th_usage_row *rows = NULL;
    size_t n = 0;
    bool ok = st == TH_REDIS_OK && rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 * p->ntenants;
    pend_unlink(p);
    if (ok && p->ntenants > 0) {
        rows = calloc(p->ntenants, sizeof *rows);
        ok = rows != NULL;
    }
    for (size_t i = 0; ok && i < p->ntenants; i++) {
        th_usage_row *row = &rows[n];
        th_strlcpy(row->tenant, p->tenants[i], sizeof row->tenant);
        row->chars = (uint64_t)rep->element[2 * i].integer;
        row->requests = (uint64_t)rep->element[2 * i + 1].integer;
        if (row->requests > 0 || p->ntenants == 1) n++;
    }
    p->ucb(p->ud, ok ? rows : NULL, n, ok);
    free(rows);
    for (size_t i = 0; i < p->ntenants; i++)
        free(p->tenants[i]);
    free(p->tenants);
    free(p);
}

void th_quota_usage_fetch(th_quota *q, const char *window, const char *tenant, uint64_t now_ms,
                          th_quota_usage_cb cb, void *ud)
{
    if (q->redis == NULL) {
        size_t n;
        th_usage_row *rows = th_quota_usage(q, window, tenant, now_ms, &n);
        cb(ud, rows, rows ? n : 0, rows != NULL);
        free(rows);
        return;
    }
    bool day = is_day(window);
    win w = window_of(now_ms);
    size_t nt = tenant ? 1 : q->cfg->n_tenants, nk = 0;
    pending *p = calloc(1, sizeof *p);
    char **keys = calloc(nt ? nt : 1, sizeof *keys);
    size_t *lens = calloc(nt ? nt : 1, sizeof *lens);
    if (p == NULL || keys == NULL || lens == NULL) goto fail;
    p->tenants = calloc(nt ? nt : 1, sizeof *p->tenants);
    if (p->tenants == NULL) goto fail;
    for (size_t i = 0; i < nt; i++) {
        const char *name = tenant ? tenant : q->cfg->tenants[i].name;
        p->tenants[i] = th_strndup(name, strlen(name));
        if (p->tenants[i] == NULL) goto fail;
        p->ntenants++;
        keys[i] = redis_key(q, name, day, day ? w.day : w.month);
        if (keys[i] == NULL) goto fail;
        lens[i] = strlen(keys[i]);
        nk++;
    }
    p->kind = 2;
    p->ucb = cb;
    p->ud = ud;
    pend_link(q, p);
    if (th_redis_eval(q->redis, on_usage_reply, p, USAGE_LUA, (int)nk, (int)nk, (const char **)keys, lens) !=
        0) {
        pend_unlink(p);
        goto fail;
    }
    for (size_t i = 0; i < nk; i++)
        free(keys[i]);
    free(keys);
    free(lens);
    return;
fail:
    for (size_t i = 0; i < nk; i++)
        free(keys[i]);
    free(keys);
    free(lens);
    if (p) {
        for (size_t i = 0; i < p->ntenants; i++)
            free(p->tenants[i]);
        free(p->tenants);
        free(p);
    }
    cb(ud, NULL, 0, false);
}

void th_quota_set_config(th_quota *q, const th_config *cfg)
{
    if (q == NULL || cfg == NULL) return;
    th_config *old = q->cfg;
    q->cfg = th_config_ref((th_config *)cfg);
    th_config_unref(old);
    q->fail_open =
        cfg->rate_limit.on_backend_error == NULL || strcmp(cfg->rate_limit.on_backend_error, "closed") != 0;
}

/* ---- one round trip (governance/policy.c) ---- */

struct th_quota_call {
    th_quota_resv *resv;
    win w;
    char a[5][24];
    const char *argv[7];
    size_t lens[7];
};

const char *th_quota_lua_reserve(void)
{
    return RESERVE_LUA;
}

const char *th_quota_lua_settle(void)
{
    return SETTLE_LUA;
}

bool th_quota_redis_needed(const th_quota *q, const th_tenant_conf *tconf)
{
    return q != NULL && q->redis != NULL && tconf != NULL &&
           (tconf->chars_per_day > 0 || tconf->chars_per_month > 0);
}

th_quota_call *th_quota_call_new(th_quota *q, const char *tenant, const th_tenant_conf *tconf, uint64_t chars,
                                 uint64_t now_ms)
{
    if (!th_quota_redis_needed(q, tconf)) return NULL;
    th_quota_call *k = calloc(1, sizeof *k);
    th_quota_resv *r = calloc(1, sizeof *r);
    if (k == NULL || r == NULL) goto fail;
    k->resv = r;
    k->w = window_of(now_ms);
    r->chars = chars;
    r->ts_ms = now_ms;
    r->day = k->w.day;
    r->month = k->w.month;
    r->dkey = redis_key(q, tenant, true, k->w.day);
    r->mkey = redis_key(q, tenant, false, k->w.month);
    if (r->dkey == NULL || r->mkey == NULL) goto fail;
    snprintf(k->a[0], sizeof k->a[0], "%llu", (unsigned long long)chars);
    snprintf(k->a[1], sizeof k->a[1], "%llu", (unsigned long long)tconf->chars_per_day);
    snprintf(k->a[2], sizeof k->a[2], "%llu", (unsigned long long)tconf->chars_per_month);
    snprintf(k->a[3], sizeof k->a[3], "%lld", (long long)(k->w.day_reset_s + REDIS_EXTRA_TTL_S));
    snprintf(k->a[4], sizeof k->a[4], "%lld", (long long)(k->w.month_reset_s + REDIS_EXTRA_TTL_S));
    const char *argv[7] = {r->dkey, r->mkey, k->a[0], k->a[1], k->a[2], k->a[3], k->a[4]};
    for (int i = 0; i < 7; i++) {
        k->argv[i] = argv[i];
        k->lens[i] = strlen(argv[i]);
    }
    return k;
fail:
    th_quota_call_free(k);
    if (k == NULL) resv_free(r);
    return NULL;
}

void th_quota_call_args(const th_quota_call *k, const char *const **argv, const size_t **lens)
{
    *argv = k->argv;
    *lens = k->lens;
}

void th_quota_call_finish(th_quota *q, th_quota_call *k, th_redis_status st, const th_redis_reply *rep,
                          th_quota_result *res)
{
    memset(res, 0, sizeof *res);
    bool ok = st == TH_REDIS_OK && rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
              rep->element[0].type == REDIS_REPLY_INTEGER;
    if (ok && rep->element[0].integer == 1) {
        res->allowed = true;
        res->resv = k->resv;
        k->resv = NULL;
    } else if (ok && rep->elements >= 4) {
        bool day = rep->element[1].len == 3 && memcmp(rep->element[1].str, "day", 3) == 0;
        res->window = day ? "day" : "month";
        res->limit = (uint64_t)rep->element[2].integer;
        res->used = (uint64_t)rep->element[3].integer;
        res->retry_after_s = day ? k->w.day_reset_s : k->w.month_reset_s;
    } else {
        TH_LOG(q->log, TH_LOG_WARN, "quota: redis reserve failed (%d%s%.*s), failing %s", (int)st,
               rep && rep->str ? ": " : "", rep && rep->str ? (int)rep->len : 0,
               rep && rep->str ? rep->str : "", q->fail_open ? "open" : "closed");
        if (q->fail_open) {
            res->allowed = true;
            res->degraded = true;
        } else {
            res->window = "backend";
            res->retry_after_s = 1;
        }
    }
    th_quota_call_free(k);
}

void th_quota_call_free(th_quota_call *k)
{
    if (k == NULL) return;
    resv_free(k->resv);
    free(k);
}

bool th_quota_resv_is_redis(const th_quota_resv *r)
{
    return r != NULL && r->dkey != NULL;
}

int th_quota_resv_detach(th_quota_resv *r, bool commit, char **keys, char args[4][24])
{
    if (r == NULL || r->dkey == NULL || r->mkey == NULL) {
        resv_free(r);
        return -1;
    }
    win w = window_of(r->ts_ms);
    snprintf(args[0], 24, "%llu", (unsigned long long)r->chars);
    snprintf(args[1], 24, "%d", commit ? 1 : 0);
    snprintf(args[2], 24, "%lld", (long long)(w.day_reset_s + REDIS_EXTRA_TTL_S));
    snprintf(args[3], 24, "%lld", (long long)(w.month_reset_s + REDIS_EXTRA_TTL_S));
    keys[0] = r->dkey;
    keys[1] = r->mkey;
    r->dkey = r->mkey = NULL;
    resv_free(r);
    return 0;
}
