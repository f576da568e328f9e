/* announce: operator announcements shown on the status page and pushed on the live feed.
 *
 * At most TH_ANNOUNCE_MAX at a time, each {id, message, level, created_at, expires_at?, type, title?} (type
 * and title are the voice-clone gateway's fields, accepted and shown for its clients); expired ones are
 * dropped when listed. Kept in each hub's memory. Loop thread only. */
#ifndef TH_HUB_ANNOUNCE_H
#define TH_HUB_ANNOUNCE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define TH_ANNOUNCE_MAX 100
#define TH_ANNOUNCE_TEXT_MAX 1000 /* code points */
#define TH_ANNOUNCE_TITLE_MAX 200 /* code points */

typedef struct th_announce th_announce;

typedef enum {
    TH_ANN_OK = 0,
    TH_ANN_INVALID, /* 400 */
    TH_ANN_FULL,    /* 409 */
    TH_ANN_UNKNOWN, /* 404 */
    TH_ANN_NOMEM,
} th_ann_rc;

th_announce *th_announce_new(void);
void th_announce_free(th_announce *a);
/** body: {message (1..TH_ANNOUNCE_TEXT_MAX code points), level? (info | warning | critical),
 * ttl_seconds? (1 .. 30 days)}, or the voice-clone gateway's {type? (info | warning | error | maintenance),
 * title?, message, expires_at? (Unix seconds)}; a level given beside a type wins. *out gets the new
 * announcement (new reference) on TH_ANN_OK. */
th_ann_rc th_announce_add(th_announce *a, const json_t *body, uint64_t now_wall, json_t **out, char *err,
                          size_t errlen);
th_ann_rc th_announce_remove(th_announce *a, const char *id);
/** The live announcements, oldest first (new reference); expired ones are dropped. */
json_t *th_announce_list(th_announce *a, uint64_t now_wall);

#endif
