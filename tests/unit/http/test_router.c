#include "th_test.h"

#include "http/router.h"
#include "http_testlib.h"

typedef struct rstate {
    th_hstate hs; /* first */
    th_router *rt;
} rstate;

static void h_text(th_http_req *r, void *ud)
{
    char out[512];
    const char *id = th_http_param(r, "id");
    const char *rest = th_http_param(r, "*");
    int n = snprintf(out, sizeof out, "%s:%s:%s:%s", (const char *)ud, th_http_method(r), id ? id : "-",
                     rest ? rest : "-");
    th_http_respond(r, 200, "text/plain", out, (size_t)n);
}

static void miss(th_http_req *r, int status, const char *allow, void *ud)
{
    if (allow != NULL) th_http_set_header(r, "Allow", allow);
    th_http_respond(r, status, "text/plain", allow ? allow : "nf", allow ? strlen(allow) : 2);
}

static void dispatch(th_http_req *r, void *ud)
{
    rstate *st = ud;
    th_router_dispatch(st->rt, r);
}

static void get(harness *h, int *th__failed, const char *method, const char *path, int status,
                const char *body)
{
    char req[512];
    snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", method, path);
    resp r;
    clbuf b;
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, req);
    int rc = strcmp(method, "HEAD") == 0 ? cl_head(&b, &r) : cl_response(&b, &r);
    cl_close(&b);
    TH_REQUIRE(rc == 0);
    TH_CHECK_INT(r.status, status);
    if (body != NULL) {
        TH_CHECK_STR(r.body, body);
        if (r.body == NULL || strcmp(r.body, body) != 0) fprintf(stderr, "  (%s %s)\n", method, path);
    }
    if (status == 405) {
        char v[256];
        TH_CHECK(resp_header(&r, "Allow", v, sizeof v) && strcmp(v, body) == 0);
    }
    resp_free(&r);
}

static void c_router(harness *h, int *th__failed)
{
    get(h, th__failed, "GET", "/api/voices", 200, "list:GET:-:-");
    get(h, th__failed, "GET", "/api/voices/abc", 200, "voice:GET:abc:-");
    get(h, th__failed, "GET", "/api/voices/a%20b", 200, "voice:GET:a b:-");
    get(h, th__failed, "GET", "/api/voices/search", 200, "search:GET:-:-");
    get(h, th__failed, "GET", "/api/voices/abc?x=1", 200, "voice:GET:abc:-");
    get(h, th__failed, "DELETE", "/api/voices/abc", 200, "del:DELETE:abc:-");
    get(h, th__failed, "HEAD", "/api/voices/abc", 200, NULL);
    get(h, th__failed, "PUT", "/api/voices/abc", 405, "GET, HEAD, DELETE");
    get(h, th__failed, "GET", "/api/voices/abc/extra", 404, "nf");
    get(h, th__failed, "GET", "/api/voices/", 404, "nf");
    get(h, th__failed, "GET", "/nothing", 404, "nf");
    get(h, th__failed, "GET", "/static/css/a.css", 200, "static:GET:-:css/a.css");
    get(h, th__failed, "GET", "/static/", 200, "static:GET:-:");
    get(h, th__failed, "POST", "/api/nodes/n1/heartbeat", 200, "hb:POST:n1:-");
    get(h, th__failed, "GET", "/api/nodes/n1/heartbeat", 405, "POST");
    get(h, th__failed, "PATCH", "/any", 200, "any:PATCH:-:-");
    get(h, th__failed, "GET", "/", 200, "root:GET:-:-");
    get(h, th__failed, "HEAD", "/headonly", 200, NULL);
}

TH_TEST(router_dispatch)
{
    rstate st = {0};
    st.rt = th_router_new(miss, NULL);
    TH_REQUIRE(st.rt != NULL);
    TH_CHECK_INT(th_router_add(st.rt, "GET", "/api/voices", h_text, "list"), 0);
    TH_CHECK_INT(th_router_add(st.rt, "GET", "/api/voices/{id}", h_text, "voice"), 0);
    TH_CHECK_INT(th_router_add(st.rt, "DELETE", "/api/voices/{id}", h_text, "del"), 0);
    TH_CHECK_INT(th_router_add(st.rt, "GET", "/api/voices/search", h_text, "search"), 0);
    TH_CHECK_INT(th_router_add(st.rt, "GET", "/static/*", h_text, "static"), 0);
    TH_CHECK_INT(th_router_add(st.rt, "POST", "/api/nodes/{id}/heartbeat", h_text, "hb"), 0);
    TH_CHECK_INT(th_router_add(st.rt, "*", "/any", h_text, "any"), 0);
    TH_CHECK_INT(th_router_add(st.rt, "GET", "/", h_text, "root"), 0);
    TH_CHECK_INT(th_router_add(st.rt, "HEAD", "/headonly", h_text, "head"), 0);
    /* bad patterns */
    TH_CHECK(th_router_add(st.rt, "GET", "nostart", h_text, NULL) != 0);
    TH_CHECK(th_router_add(st.rt, "GET", "/a/*/b", h_text, NULL) != 0);
    TH_CHECK(th_router_add(st.rt, "GET", "/a/{}/b", h_text, NULL) != 0);
    TH_CHECK(th_router_add(st.rt, "GET", "/a/{x", h_text, NULL) != 0);
    TH_CHECK(th_router_add(st.rt, "", "/a", h_text, NULL) != 0);
    th_http_limits l = {0};
    TH_CHECK_INT(h_run(&l, dispatch, &st, c_router, th__failed, NULL), 0);
    th_router_free(st.rt);
}

TH_TEST_MAIN()
