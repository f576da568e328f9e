/* router: method + path -> handler, with {param} segments and a trailing '*'. */
#ifndef TH_HTTP_ROUTER_H
#define TH_HTTP_ROUTER_H

#include "http/http.h"

typedef struct th_router th_router;

/** Called for 404 (no path matched) and 405 (path matched, method did not; allow lists the methods). */
typedef void (*th_router_miss_fn)(th_http_req *req, int status, const char *allow, void *ud);

th_router *th_router_new(th_router_miss_fn miss, void *ud);
void th_router_free(th_router *r);
/** pattern: "/api/voices/{id}", "/static/" + "*" (prefix). method "*" matches any. HEAD matches GET routes.
 * Returns 0, -1 on ENOMEM or a bad pattern. */
int th_router_add(th_router *r, const char *method, const char *pattern, th_http_handler h, void *ud);
/** Finds the route, sets path params on req, and calls its handler (or the miss function). */
void th_router_dispatch(th_router *r, th_http_req *req);

#endif
