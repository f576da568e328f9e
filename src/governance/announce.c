/* announce: operator announcements, see announce.h. */
#include "governance/announce.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/str.h"
#include "core/uuid.h"

#define TTL_MAX_S (30 * 24 * 3600)

typedef struct ann {
    char id[TH_UUID_LEN + 1];
    json_t *obj;         /* what is listed */
    uint64_t expires_ms; /* wall; 0 = never */
} ann;

struct th_announce {
    ann items[TH_ANNOUNCE_MAX];
    size_t n;
};

th_announce *th_announce_new(void)
{
    return calloc(1, sizeof(th_announce));
}

void th_announce_free(th_announce *a)
{
    if (a == NULL) return;
    for (size_t i = 0; i < a->n; i++)
        json_decref(a->items[i].obj);
    free(a);
}

static void drop(th_announce *a, size_t i)
{
    json_decref(a->items[i].obj);
    memmove(&a->items[i], &a->items[i + 1], (a->n - i - 1) * sizeof a->items[0]);
    a->n--;
}

static void expire(th_announce *a, uint64_t now)
{
    for (size_t i = 0; i < a->n;) {
        if (a->items[i].expires_ms != 0 && a->items[i].expires_ms <= now)
            drop(a, i);
        else
            i++;
    }
}

/* The voice-clone gateway's announcement type for a level, and the level for its type. */
static const char *type_of_level(const char *level)
{
    return strcmp(level, "critical") == 0 ? "error" : level;
}

static const char *level_of_type(const char *type)
{
    if (strcmp(type, "info") == 0) return "info";
    if (strcmp(type, "warning") == 0 || strcmp(type, "maintenance") == 0) return "warning";
    if (strcmp(type, "error") == 0) return "critical";
    return NULL;
}

/* expires: from ttl_seconds, or from the voice-clone gateway's expires_at (Unix seconds); 0 = never. */
static th_ann_rc parse_expiry(const json_t *body, uint64_t now_wall, uint64_t *expires, char *err,
                              size_t errlen)
{
    *expires = 0;
    json_t *t = json_object_get(body, "ttl_seconds");
    json_t *at = json_object_get(body, "expires_at");
    if (t != NULL && !json_is_null(t) && at != NULL && !json_is_null(at)) {
        snprintf(err, errlen, "give 'ttl_seconds' or 'expires_at', not both");
        return TH_ANN_INVALID;
    }
    if (t != NULL && !json_is_null(t)) {
        if (!json_is_integer(t) || json_integer_value(t) < 1 || json_integer_value(t) > TTL_MAX_S) {
            snprintf(err, errlen, "'ttl_seconds' must be an integer from 1 to %d", TTL_MAX_S);
            return TH_ANN_INVALID;
        }
        *expires = now_wall + (uint64_t)json_integer_value(t) * 1000;
    } else if (at != NULL && !json_is_null(at)) {
        double s = json_is_number(at) ? json_number_value(at) : -1;
        double now_s = (double)now_wall / 1000.0;
        if (!(s > now_s && s <= now_s + TTL_MAX_S)) {
            snprintf(err, errlen, "'expires_at' must be Unix seconds in the next %d days", TTL_MAX_S / 86400);
            return TH_ANN_INVALID;
        }
        *expires = (uint64_t)(s * 1000.0);
    }
    return TH_ANN_OK;
}

th_ann_rc th_announce_add(th_announce *a, const json_t *body, uint64_t now_wall, json_t **out, char *err,
                          size_t errlen)
{
    *out = NULL;
    json_t *m = json_object_get(body, "message");
    int64_t cps = json_is_string(m) ? th_utf8_count(json_string_value(m), json_string_length(m)) : -1;
    if (cps < 1 || cps > TH_ANNOUNCE_TEXT_MAX) {
        snprintf(err, errlen, "'message' is required: 1 to %d characters of valid UTF-8",
                 TH_ANNOUNCE_TEXT_MAX);
        return TH_ANN_INVALID;
    }
    const char *level = "info";
    json_t *ty = json_object_get(body, "type");
    if (ty != NULL && !json_is_null(ty)) {
        level = json_is_string(ty) ? level_of_type(json_string_value(ty)) : NULL;
        if (level == NULL) {
            snprintf(err, errlen, "'type' must be info, warning, error or maintenance");
            return TH_ANN_INVALID;
        }
    }
    json_t *title = json_object_get(body, "title");
    if (title != NULL && !json_is_null(title)) {
        int64_t n =
            json_is_string(title) ? th_utf8_count(json_string_value(title), json_string_length(title)) : -1;
        if (n < 0 || n > TH_ANNOUNCE_TITLE_MAX) {
            snprintf(err, errlen, "'title' must be at most %d characters of valid UTF-8",
                     TH_ANNOUNCE_TITLE_MAX);
            return TH_ANN_INVALID;
        }
    } else {
        title = NULL;
    }
    json_t *l = json_object_get(body, "level");
    if (l != NULL && !json_is_null(l)) {
        level = json_string_value(l);
        if (level == NULL ||
            (strcmp(level, "info") != 0 && strcmp(level, "warning") != 0 && strcmp(level, "critical") != 0)) {
            snprintf(err, errlen, "'level' must be info, warning or critical");
            return TH_ANN_INVALID;
        }
    }
    uint64_t expires = 0;
    th_ann_rc rc = parse_expiry(body, now_wall, &expires, err, errlen);
    if (rc != TH_ANN_OK) return rc;
    const char *type = ty != NULL && !json_is_null(ty) ? json_string_value(ty) : type_of_level(level);
    expire(a, now_wall);
    if (a->n >= TH_ANNOUNCE_MAX) {
        snprintf(err, errlen, "there are already %d announcements: delete one first", TH_ANNOUNCE_MAX);
        return TH_ANN_FULL;
    }
    ann *x = &a->items[a->n];
    th_uuid_v4(x->id);
    char created[40], exp[40];
    th_rfc3339(now_wall, created, sizeof created);
    if (expires) th_rfc3339(expires, exp, sizeof exp);
    x->obj = json_pack("{s:s,s:s,s:s,s:s,s:s?,s:s,s:s*}", "id", x->id, "message", json_string_value(m),
                       "level", level, "created_at", created, "expires_at", expires ? exp : NULL, "type",
                       type, "title", title ? json_string_value(title) : NULL);
    if (x->obj == NULL) return TH_ANN_NOMEM;
    x->expires_ms = expires;
    a->n++;
    *out = json_incref(x->obj);
    return TH_ANN_OK;
}

th_ann_rc th_announce_remove(th_announce *a, const char *id)
{
    for (size_t i = 0; id != NULL && i < a->n; i++)
        if (strcmp(a->items[i].id, id) == 0) {
            drop(a, i);
            return TH_ANN_OK;
        }
    return TH_ANN_UNKNOWN;
}

json_t *th_announce_list(th_announce *a, uint64_t now_wall)
{
    expire(a, now_wall);
    json_t *arr = json_array();
    for (size_t i = 0; arr != NULL && i < a->n; i++)
        json_array_append(arr, a->items[i].obj);
    return arr;
}
