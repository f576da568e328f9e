/* client_eng: what the th_client facade (client.c) shares with its two engines, and nothing else
 * includes: client_h1.c (our HTTP/1.1 client for plain http://) and client_curl.c (libcurl).
 * Each engine's transfer record starts with a th_client_req, whose tag says which engine owns it. */
#ifndef TH_HTTP_CLIENT_ENG_H
#define TH_HTTP_CLIENT_ENG_H

#include "http/client.h"

struct th_client_req {
    th_client_engine engine; /* TH_CLIENT_ENGINE_H1 or TH_CLIENT_ENGINE_CURL */
};

typedef struct th_curlc th_curlc;
typedef struct th_curlc_req th_curlc_req;
th_curlc *th_curlc_new(uv_loop_t *loop, const th_client_conf *conf);
th_curlc_req *th_curlc_start(th_curlc *c, const th_client_opts *opts, const th_client_cb *cb);
void th_curlc_cancel(th_curlc_req *r);
void th_curlc_resume(th_curlc_req *r);
size_t th_curlc_inflight(const th_curlc *c);
void th_curlc_close(th_curlc *c, void (*done)(void *ud), void *ud);

typedef struct th_h1c th_h1c;
typedef struct th_h1c_req th_h1c_req;
th_h1c *th_h1c_new(uv_loop_t *loop, const th_client_conf *conf);
/** NULL on bad options or ENOMEM; *unsupported set (and NULL returned) for a URL this engine does not
 * take (not http://, or user info in it): the facade then hands it to curl. */
th_h1c_req *th_h1c_start(th_h1c *c, const th_client_opts *opts, const th_client_cb *cb, bool *unsupported);
void th_h1c_cancel(th_h1c_req *r);
void th_h1c_resume(th_h1c_req *r);
size_t th_h1c_inflight(const th_h1c *c);
void th_h1c_close(th_h1c *c, void (*done)(void *ud), void *ud);

#endif
