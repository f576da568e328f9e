#include "th_test.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cluster/registry.h"

static const th_registry_conf CONF = {
    .heartbeat_interval_ms = 1000, .dead_threshold_ms = 3000, .remove_after_ms = 10000};

typedef struct events {
    char log[1024];
} events;

static void on_event(void *ud, const char *event, const char *id, const char *status)
{
    events *e = ud;
    size_t n = strlen(e->log);
    snprintf(e->log + n, sizeof e->log - n, "%s:%s:%s;", event, id, status);
}

/* registers from a JSON text; returns the rc, id in id */
static th_reg_rc reg(th_registry *r, const char *json, uint64_t now, char *id)
{
    json_error_t je;
    json_t *b = json_loads(json, 0, &je);
    char err[256] = "";
    th_reg_rc rc = th_registry_register(r, b, now, id, err, sizeof err);
    json_decref(b);
    return rc;
}

static th_reg_rc beat(th_registry *r, const char *id, const char *json, uint64_t now)
{
    json_t *b = json ? json_loads(json, 0, NULL) : NULL;
    char err[256] = "";
    th_reg_rc rc = th_registry_heartbeat(r, id, b, now, err, sizeof err);
    json_decref(b);
    return rc;
}

static const char *status_of(th_registry *r, const char *id, uint64_t now, char *buf, size_t n)
{
    json_t *o = th_registry_node_json(r, id, now);
    if (o == NULL) return "(none)";
    snprintf(buf, n, "%s", json_string_value(json_object_get(o, "status")));
    json_decref(o);
    return buf;
}

TH_TEST(registry_register_validates)
{
    th_registry *r = th_registry_new(&CONF, NULL);
    TH_REQUIRE(r);
    char id[TH_NODE_ID_MAX + 1];
    TH_CHECK_INT(reg(r, "{\"url\":\"http://h:1\"}", 0, id), TH_REG_INVALID);
    TH_CHECK_INT(reg(r, "{\"engine_type\":\"xtts\"}", 0, id), TH_REG_INVALID);
    TH_CHECK_INT(reg(r, "{\"engine_type\":\"xtts\",\"url\":\"gopher://h\"}", 0, id), TH_REG_INVALID);
    TH_CHECK_INT(reg(r, "{\"engine_type\":\"xtts\",\"url\":\"http://\"}", 0, id), TH_REG_INVALID);
    TH_CHECK_INT(reg(r, "{\"engine_type\":\"xtts\",\"url\":\"http://h:1\",\"capacity\":0}", 0, id),
                 TH_REG_INVALID);
    TH_CHECK_INT(reg(r, "{\"engine_type\":\"xtts\",\"url\":\"http://h:1\",\"node_id\":\"a/b\"}", 0, id),
                 TH_REG_INVALID);
    TH_CHECK_INT(reg(r, "{\"engine_type\":\"xtts\",\"url\":\"http://h:1\",\"status\":\"on line\"}", 0, id),
                 TH_REG_INVALID);
    TH_CHECK_INT(reg(r, "[1]", 0, id), TH_REG_INVALID);
    size_t total = 9;
    th_registry_counts(r, NULL, &total, NULL);
    TH_CHECK_INT(total, 0);
    /* host + port, IPv6 in brackets, engine lower-cased */
    TH_CHECK_INT(
        reg(r, "{\"engine_type\":\"XTTS\",\"host\":\"::1\",\"port\":9000,\"node_id\":\"n6\"}", 0, id),
        TH_REG_OK);
    TH_CHECK_STR(id, "n6");
    TH_CHECK_STR(th_registry_url(r, "n6"), "http://[::1]:9000");
    json_t *o = th_registry_node_json(r, "n6", 0);
    TH_CHECK_STR(json_string_value(json_object_get(o, "engine_type")), "xtts");
    json_decref(o);
    th_registry_free(r);
}

TH_TEST(registry_node_urls_are_plain)
{
    char host[256];
    int port = 0;
    static const char *const good[] = {"http://a:1",        "http://10.0.0.1:9000", "https://node.example",
                                       "http://[::1]:8080", "http://h:1/prefix/v1", "http://h:1/a-b_c.d/~e"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        TH_CHECK(th_node_url_parse(good[i], strlen(good[i]), host, sizeof host, &port));
    TH_CHECK(th_node_url_parse("https://node.example", 20, host, sizeof host, &port) && port == 443);
    TH_CHECK(th_node_url_parse("http://[::1]:8080", 17, host, sizeof host, &port) && port == 8080);
    TH_CHECK_STR(host, "::1");
    static const char *const bad[] = {
        "http://h:1/x?y=",  "http://h:1#f",    "http://u@h:1",      "http://u:p@h:1", "http://h:1/../x",
        "http://h:1/a/./b", "http://h:1/a/..", "http://h:1/%2e%2e", "http://h:1//x",  "http://h:1/a;b",
        "ftp://h:1",        "http://:1",       "http://h:0",        "http://h:65536", "http://h:1x",
        "http://[::1",      "http://[zz::]:1", "http://h h:1",      "http://h:1/a b", "http://",
        "http://h:123456",  "http://h\\@e:1",  "http://h:1\\x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (th_node_url_parse(bad[i], strlen(bad[i]), host, sizeof host, &port))
            fprintf(stderr, "accepted: %s\n", bad[i]);
        TH_CHECK(!th_node_url_parse(bad[i], strlen(bad[i]), host, sizeof host, &port));
    }
}

TH_TEST(registry_nodes_are_bound_to_their_owner)
{
    th_registry_conf c = CONF;
    c.max_capacity = 8;
    c.max_node_bytes = 64;
    c.max_bytes = 100;
    th_registry *r = th_registry_new(&c, NULL);
    char id[TH_NODE_ID_MAX + 1], err[256];
    th_reg_caller owner = {"token", "10.0.0.1", false, false},
                  other_addr = {"token", "10.0.0.2", false, false},
                  trusted = {"trusted", "10.0.0.1", false, false}, admin = {"key:a", "10.9.9.9", true, false};
    json_t *b = json_loads("{\"node_id\":\"n1\",\"engine_type\":\"xtts\",\"url\":\"http://10.0.0.1:9\","
                           "\"capacity\":5000}",
                           0, NULL);
    TH_CHECK_INT(th_registry_register_as(r, b, &owner, 1000, id, err, sizeof err), TH_REG_OK);
    json_t *n = th_registry_node_json(r, "n1", 1000);
    TH_CHECK_INT((int)json_integer_value(json_object_get(n, "capacity")), 8); /* clamped */
    json_decref(n);
    json_t *evil =
        json_loads("{\"node_id\":\"n1\",\"engine_type\":\"xtts\",\"url\":\"http://10.6.6.6:9\"}", 0, NULL);
    TH_CHECK_INT(th_registry_register_as(r, evil, &other_addr, 1100, id, err, sizeof err), TH_REG_FORBIDDEN);
    TH_CHECK_INT(th_registry_register_as(r, evil, &trusted, 1100, id, err, sizeof err), TH_REG_FORBIDDEN);
    TH_CHECK_STR(th_registry_url(r, "n1"), "http://10.0.0.1:9");
    TH_CHECK_INT(th_registry_check_owner(r, "n1", &other_addr, 1100, err, sizeof err), TH_REG_FORBIDDEN);
    TH_CHECK_INT(th_registry_check_owner(r, "n1", &owner, 1100, err, sizeof err), TH_REG_OK);
    TH_CHECK_INT(th_registry_check_owner(r, "n1", &admin, 1100, err, sizeof err), TH_REG_OK);
    /* a dry run changes nothing */
    th_reg_caller dry = admin;
    dry.dry_run = true;
    TH_CHECK_INT(th_registry_register_as(r, evil, &dry, 1100, id, err, sizeof err), TH_REG_OK);
    TH_CHECK_STR(th_registry_url(r, "n1"), "http://10.0.0.1:9");
    /* an admin may move it; the owner stays */
    TH_CHECK_INT(th_registry_register_as(r, evil, &admin, 1200, id, err, sizeof err), TH_REG_OK);
    TH_CHECK_STR(th_registry_url(r, "n1"), "http://10.6.6.6:9");
    TH_CHECK_INT(th_registry_check_owner(r, "n1", &owner, 1100, err, sizeof err), TH_REG_OK);
    /* once silent past dead_threshold, the same credential may take it from a new address */
    TH_CHECK_INT(
        th_registry_register_as(r, b, &other_addr, 1200 + CONF.dead_threshold_ms + 1, id, err, sizeof err),
        TH_REG_OK);
    /* byte caps: one node, then the whole registry */
    json_t *big = json_loads("{\"engine_type\":\"xtts\",\"url\":\"http://10.0.0.3:9\",\"voices\":"
                             "[\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]}",
                             0, NULL);
    TH_CHECK_INT(th_registry_register_as(r, big, &owner, 1300, id, err, sizeof err), TH_REG_INVALID);
    for (int i = 0; i < 3; i++) {
        char j[200];
        snprintf(j, sizeof j,
                 "{\"engine_type\":\"xtts\",\"url\":\"http://10.0.1.%d:9\",\"voices\":[\"%040d\"]}", i, i);
        json_t *x = json_loads(j, 0, NULL);
        th_reg_rc rc = th_registry_register_as(r, x, &owner, 1300, id, err, sizeof err);
        TH_CHECK_INT(rc, i < 2 ? TH_REG_OK : TH_REG_FULL);
        json_decref(x);
    }
    TH_CHECK(th_registry_bytes(r) <= 100);
    json_decref(big);
    json_decref(evil);
    json_decref(b);
    th_registry_free(r);
}

TH_TEST(registry_liveness_events)
{
    events ev = {{0}};
    th_registry *r = th_registry_new(&CONF, NULL);
    TH_REQUIRE(r);
    th_registry_set_listener(r, on_event, &ev);
    char id[TH_NODE_ID_MAX + 1], st[40];
    TH_CHECK_INT(reg(r, "{\"node_id\":\"a\",\"engine_type\":\"xtts\",\"url\":\"http://a:1/\"}", 0, id),
                 TH_REG_OK);
    TH_CHECK_STR(th_registry_url(r, "a"), "http://a:1"); /* trailing '/' dropped */
    TH_CHECK_INT(beat(r, "a", "{\"status\":\"busy\",\"cpu_percent\":5}", 1000), TH_REG_OK);
    TH_CHECK_INT(beat(r, "zz", "{}", 1000), TH_REG_UNKNOWN);
    TH_CHECK_INT(beat(r, "a", "{\"status\":7}", 1000), TH_REG_INVALID);
    th_registry_sweep(r, 3999); /* 2999 ms silent: still alive */
    TH_CHECK_STR(status_of(r, "a", 3999, st, sizeof st), "busy");
    th_registry_sweep(r, 4001);
    TH_CHECK_STR(status_of(r, "a", 4001, st, sizeof st), "offline");
    TH_CHECK_INT(beat(r, "a", NULL, 5000), TH_REG_OK); /* back */
    TH_CHECK_STR(status_of(r, "a", 5000, st, sizeof st), "busy");
    th_registry_sweep(r, 8001);
    th_registry_sweep(r, 15001); /* offline for 10 s: removed */
    TH_CHECK(th_registry_node_json(r, "a", 15001) == NULL);
    TH_CHECK_STR(ev.log, "node_online:a:online;node_status_changed:a:busy;node_offline:a:offline;"
                         "node_online:a:busy;node_offline:a:offline;node_removed:a:offline;");
    th_registry_free(r);
}

TH_TEST(registry_round_robin_skips_ineligible)
{
    th_registry *r = th_registry_new(&CONF, NULL);
    TH_REQUIRE(r);
    char id[TH_NODE_ID_MAX + 1];
    reg(r, "{\"node_id\":\"a\",\"engine_type\":\"xtts\",\"url\":\"http://a:1\",\"capacity\":2}", 0, id);
    reg(r, "{\"node_id\":\"f\",\"engine_type\":\"fish\",\"url\":\"http://f:1\"}", 0, id);
    reg(r, "{\"node_id\":\"b\",\"engine_type\":\"xtts\",\"url\":\"http://b:1\",\"capacity\":2}", 0, id);
    reg(r, "{\"node_id\":\"s\",\"engine_type\":\"xtts\",\"url\":\"http://s:1\",\"status\":\"standby\"}", 0,
        id);
    reg(r, "{\"node_id\":\"m\",\"engine_type\":\"xtts\",\"url\":\"http://m:1\",\"model_loaded\":false}", 0,
        id);
    th_node *p[4];
    for (int i = 0; i < 4; i++)
        p[i] = th_registry_pick(r, "xtts", TH_NODE_PICK_ROUND_ROBIN, 10);
    TH_REQUIRE(p[0] && p[1] && p[2] && p[3]);
    TH_CHECK_STR(th_node_id(p[0]), "a");
    TH_CHECK_STR(th_node_id(p[1]), "b");
    TH_CHECK_STR(th_node_id(p[2]), "a");
    TH_CHECK_STR(th_node_id(p[3]), "b");
    /* both at capacity 2 */
    TH_CHECK(th_registry_pick(r, "xtts", TH_NODE_PICK_ROUND_ROBIN, 10) == NULL);
    th_registry_release(r, p[1], true, 10);
    th_node *q = th_registry_pick(r, "xtts", TH_NODE_PICK_ROUND_ROBIN, 10);
    TH_REQUIRE(q);
    TH_CHECK_STR(th_node_id(q), "b");
    th_registry_release(r, q, true, 10);
    for (int i = 0; i < 4; i++)
        if (i != 1) th_registry_release(r, p[i], true, 10);
    /* any engine */
    th_node *f = NULL;
    for (int i = 0; i < 3 && f == NULL; i++) {
        th_node *x = th_registry_pick(r, NULL, TH_NODE_PICK_ROUND_ROBIN, 10);
        if (x && strcmp(th_node_id(x), "f") == 0) f = x;
        th_registry_release(r, x, true, 10);
    }
    TH_CHECK(f != NULL);
    /* standby by command, then active again */
    TH_CHECK_INT(th_registry_set_status(r, "a", "standby"), TH_REG_OK);
    for (int i = 0; i < 3; i++) {
        th_node *x = th_registry_pick(r, "xtts", TH_NODE_PICK_ROUND_ROBIN, 10);
        TH_REQUIRE(x);
        TH_CHECK_STR(th_node_id(x), "b");
        th_registry_release(r, x, true, 10);
    }
    /* a node not swept yet but silent past dead_threshold gets nothing */
    TH_CHECK(th_registry_pick(r, "xtts", TH_NODE_PICK_ROUND_ROBIN, 3011) == NULL);
    th_registry_free(r);
}

TH_TEST(registry_least_load_and_failures)
{
    th_registry *r = th_registry_new(&CONF, NULL);
    TH_REQUIRE(r);
    char id[TH_NODE_ID_MAX + 1];
    reg(r, "{\"node_id\":\"big\",\"engine_type\":\"xtts\",\"url\":\"http://big:1\",\"capacity\":4}", 0, id);
    reg(r, "{\"node_id\":\"small\",\"engine_type\":\"xtts\",\"url\":\"http://small:1\",\"capacity\":1}", 0,
        id);
    th_node *h[5];
    int big = 0, small = 0;
    for (int i = 0; i < 5; i++) {
        h[i] = th_registry_pick(r, "xtts", TH_NODE_PICK_LEAST_LOAD, 10);
        TH_REQUIRE(h[i]);
        if (strcmp(th_node_id(h[i]), "big") == 0)
            big++;
        else
            small++;
    }
    TH_CHECK_INT(big, 4);
    TH_CHECK_INT(small, 1);
    TH_CHECK(th_registry_pick(r, "xtts", TH_NODE_PICK_LEAST_LOAD, 10) == NULL);
    for (int i = 0; i < 5; i++)
        th_registry_release(r, h[i], true, 10);
    /* random covers both */
    int seen_big = 0, seen_small = 0;
    for (int i = 0; i < 200; i++) {
        th_node *y = th_registry_pick(r, "xtts", TH_NODE_PICK_RANDOM, 10);
        TH_REQUIRE(y);
        if (strcmp(th_node_id(y), "big") == 0) seen_big++;
        if (strcmp(th_node_id(y), "small") == 0) seen_small++;
        th_registry_release(r, y, true, 10);
    }
    TH_CHECK(seen_big + seen_small == 200);
    TH_CHECK(seen_big > 40 && seen_small > 40);
    /* a failed node goes last while another has room */
    th_node *x = th_registry_pick(r, "xtts", TH_NODE_PICK_ROUND_ROBIN, 10);
    TH_REQUIRE(x);
    char failed[TH_NODE_ID_MAX + 1];
    snprintf(failed, sizeof failed, "%s", th_node_id(x));
    th_registry_release(r, x, false, 10);
    for (int i = 0; i < 3; i++) {
        th_node *y = th_registry_pick(r, "xtts", TH_NODE_PICK_ROUND_ROBIN, 10);
        TH_REQUIRE(y);
        TH_CHECK(strcmp(th_node_id(y), failed) != 0);
        th_registry_release(r, y, true, 10);
    }
    json_t *o = th_registry_node_json(r, failed, 10);
    TH_CHECK_INT(json_integer_value(json_object_get(o, "failures")), 1);
    json_decref(o);
    th_registry_free(r);
}

TH_TEST(registry_removed_node_lives_until_released)
{
    th_registry *r = th_registry_new(&CONF, NULL);
    TH_REQUIRE(r);
    char id[TH_NODE_ID_MAX + 1];
    reg(r, "{\"engine_type\":\"xtts\",\"url\":\"http://a:1\"}", 0, id);
    TH_CHECK(strncmp(id, "xtts-", 5) == 0 && strlen(id) == 17);
    th_node *n = th_registry_pick(r, "xtts", TH_NODE_PICK_ROUND_ROBIN, 10);
    TH_REQUIRE(n);
    TH_CHECK_INT(th_registry_remove(r, id), TH_REG_OK);
    TH_CHECK_INT(th_registry_remove(r, id), TH_REG_UNKNOWN);
    TH_CHECK_STR(th_node_url(n), "http://a:1"); /* still valid: ASan would catch a use after free */
    th_registry_free(r);
    th_registry_release(NULL, n, true, 10); /* the last reference frees it */
    /* re-registering the same URL without an id takes the old entry's place */
    r = th_registry_new(&CONF, NULL);
    TH_REQUIRE(r);
    char id2[TH_NODE_ID_MAX + 1];
    reg(r, "{\"engine_type\":\"xtts\",\"url\":\"http://a:1\"}", 0, id);
    reg(r, "{\"engine_type\":\"xtts\",\"url\":\"http://a:1\",\"capacity\":3}", 5, id2);
    TH_CHECK_STR(id, id2);
    size_t total = 0;
    th_registry_counts(r, "xtts", &total, NULL);
    TH_CHECK_INT(total, 1);
    json_t *l = th_registry_list_json(r, "xtts", NULL, 5);
    TH_CHECK_INT(json_integer_value(json_object_get(l, "count")), 1);
    json_decref(l);
    th_registry_free(r);
}

TH_TEST(registry_records_apply_and_retain)
{
    th_registry *a = th_registry_new(&CONF, NULL), *b = th_registry_new(&CONF, NULL);
    TH_REQUIRE(a && b);
    events ev = {{0}};
    th_registry_set_listener(b, on_event, &ev);
    char id[TH_NODE_ID_MAX + 1], st[40];
    reg(a, "{\"node_id\":\"n\",\"engine_type\":\"xtts\",\"url\":\"http://n:1\",\"voices\":[\"v\"]}", 1000,
        id);
    /* hub b's mono clock differs; wall clocks agree */
    json_t *rec = th_registry_record(a, "n", 1500, 100000);
    TH_REQUIRE(rec);
    TH_CHECK_INT(json_integer_value(json_object_get(rec, "last_seen_ms")), 99500);
    th_registry_apply(b, rec, 50000, 100000);
    TH_CHECK_STR(status_of(b, "n", 50000, st, sizeof st), "online");
    TH_CHECK_STR(th_registry_url(b, "n"), "http://n:1");
    th_node *p = th_registry_pick(b, "xtts", TH_NODE_PICK_ROUND_ROBIN, 50000);
    TH_CHECK(p != NULL);
    th_registry_release(b, p, true, 50000);
    /* seen 0.5 s before it was applied: alive; silent 3.5 s at b's sweep: offline */
    th_registry_sweep(b, 53000);
    TH_CHECK_STR(status_of(b, "n", 53000, st, sizeof st), "offline");
    /* a newer record (a heartbeat through another hub) brings it back */
    beat(a, "n", "{\"status\":\"busy\"}", 5000);
    json_decref(rec);
    rec = th_registry_record(a, "n", 5000, 103600);
    th_registry_apply(b, rec, 53100, 103600);
    TH_CHECK_STR(status_of(b, "n", 53100, st, sizeof st), "busy");
    json_decref(rec);
    /* a record that is garbage is ignored */
    json_t *bad =
        json_pack("{s:s,s:s,s:s,s:s,s:i,s:I}", "node_id", "../x", "engine_type", "xtts", "url", "http://x",
                  "status", "online", "capacity", 1, "last_seen_ms", (json_int_t)100000);
    th_registry_apply(b, bad, 53100, 100000);
    json_decref(bad);
    size_t total = 0;
    th_registry_counts(b, NULL, &total, NULL);
    TH_CHECK_INT(total, 1);
    /* retain: gone from the shared list -> removed, unless changed here since the list was read */
    const char *none[] = {"other"};
    th_registry_retain(b, none, 1, 60000);
    TH_CHECK(th_registry_node_json(b, "n", 53100) == NULL);
    reg(b, "{\"node_id\":\"local\",\"engine_type\":\"xtts\",\"url\":\"http://l:1\"}", 61000, id);
    th_registry_retain(b, none, 1, 60000); /* registered here after the read began: kept */
    th_registry_counts(b, NULL, &total, NULL);
    TH_CHECK_INT(total, 1);
    th_registry_retain(b, NULL, 0, 62000);
    th_registry_counts(b, NULL, &total, NULL);
    TH_CHECK_INT(total, 0);
    TH_CHECK(strstr(ev.log, "node_online:n:online;") == ev.log);
    TH_CHECK(strstr(ev.log, "node_removed:n:") != NULL);
    th_registry_free(a);
    th_registry_free(b);
}

/* ---- seed-2 workers ---- */

static const char *S2_INFO =
    "{\"node_id\":\"s2-a\",\"engine_type\":\"xtts\",\"host\":\"127.0.0.1\",\"port\":8001,"
    "\"status\":\"standby\",\"model_loaded\":false,\"registered_at\":1.5,"
    "\"last_heartbeat\":1.5,\"cpu_percent\":0.0,\"request_count\":0}";

static int ready_calls;
static char ready_last[TH_NODE_ID_MAX + 1];

static void on_ready(void *ud, const char *id)
{
    (void)ud;
    ready_calls++;
    snprintf(ready_last, sizeof ready_last, "%s", id);
}

static const char *field(th_registry *r, const char *id, const char *key, char *buf, size_t n)
{
    json_t *o = th_registry_node_json(r, id, 0);
    json_t *v = json_object_get(o, key);
    if (json_is_string(v))
        snprintf(buf, n, "%s", json_string_value(v));
    else if (json_is_boolean(v))
        snprintf(buf, n, "%s", json_is_true(v) ? "true" : "false");
    else if (json_is_array(v)) {
        buf[0] = 0;
        size_t i;
        json_t *it;
        json_array_foreach(v, i, it)
        {
            size_t l = strlen(buf);
            snprintf(buf + l, n - l, "%s%s", i ? "," : "", json_string_value(it));
        }
    } else
        snprintf(buf, n, "(none)");
    json_decref(o);
    return buf;
}

TH_TEST(registry_seed2_shape_readiness_and_protocol)
{
    th_registry *r = th_registry_new(&CONF, NULL);
    TH_REQUIRE(r);
    th_registry_set_ready_listener(r, on_ready, NULL);
    ready_calls = 0;
    char id[TH_NODE_ID_MAX + 1], b[256];
    TH_CHECK_INT(reg(r, S2_INFO, 0, id), TH_REG_OK);
    TH_CHECK_STR(id, "s2-a");
    TH_CHECK_STR(field(r, id, "protocol", b, sizeof b), "seed2");
    TH_CHECK_STR(field(r, id, "url", b, sizeof b), "http://127.0.0.1:8001");
    TH_CHECK_STR(field(r, id, "model_loaded", b, sizeof b), "false");
    TH_CHECK(th_registry_pick(r, "xtts", TH_NODE_PICK_ROUND_ROBIN, 0) == NULL);
    TH_CHECK_INT(ready_calls, 0);
    /* a NodeMetrics heartbeat: status ready, no model_loaded: the status says it is loaded */
    TH_CHECK_INT(
        beat(r, id, "{\"node_id\":\"s2-a\",\"timestamp\":2.0,\"status\":\"ready\",\"queue_size\":0}", 100),
        TH_REG_OK);
    TH_CHECK_STR(field(r, id, "model_loaded", b, sizeof b), "true");
    TH_CHECK_INT(ready_calls, 1);
    TH_CHECK_STR(ready_last, "s2-a");
    th_node *n =
        th_registry_pick_for(r, "xtts", TH_NODE_PROTO_SEED2, NULL, NULL, TH_NODE_PICK_ROUND_ROBIN, 100);
    TH_REQUIRE(n != NULL);
    TH_CHECK(th_node_protocol(n) == TH_NODE_PROTO_SEED2);
    th_registry_release(r, n, true, 100);
    /* a provider speaking ttshub never gets it */
    TH_CHECK(th_registry_pick_for(r, "xtts", TH_NODE_PROTO_TTSHUB, NULL, NULL, TH_NODE_PICK_ROUND_ROBIN,
                                  100) == NULL);
    /* a heartbeat with the same status is no new readiness; standby (a command) takes it away */
    TH_CHECK_INT(beat(r, id, "{\"status\":\"ready\"}", 200), TH_REG_OK);
    TH_CHECK_INT(ready_calls, 1);
    TH_CHECK_INT(th_registry_set_status(r, id, "standby"), TH_REG_OK);
    TH_CHECK_STR(field(r, id, "model_loaded", b, sizeof b), "false");
    TH_CHECK_INT(th_registry_set_status(r, id, "ready"), TH_REG_OK);
    TH_CHECK_INT(ready_calls, 2);
    /* the explicit protocol wins over the shape; a url is never the seed-2 shape */
    TH_CHECK_INT(reg(r,
                     "{\"engine_type\":\"xtts\",\"host\":\"h\",\"port\":1,\"registered_at\":1,\"protocol\":"
                     "\"ttshub\"}",
                     0, id),
                 TH_REG_OK);
    TH_CHECK_STR(field(r, id, "protocol", b, sizeof b), "ttshub");
    TH_CHECK_INT(reg(r, "{\"engine_type\":\"xtts\",\"url\":\"http://u:2\",\"registered_at\":1}", 0, id),
                 TH_REG_OK);
    TH_CHECK_STR(field(r, id, "protocol", b, sizeof b), "ttshub");
    TH_CHECK_INT(reg(r, "{\"engine_type\":\"xtts\",\"url\":\"http://u:3\",\"protocol\":\"grpc\"}", 0, id),
                 TH_REG_INVALID);
    /* a plain registration with a status and no model_loaded: loaded as before */
    TH_CHECK_INT(reg(r, "{\"engine_type\":\"xtts\",\"url\":\"http://u:4\",\"status\":\"online\"}", 0, id),
                 TH_REG_OK);
    TH_CHECK_STR(field(r, id, "model_loaded", b, sizeof b), "true");
    th_registry_free(r);
}

TH_TEST(registry_held_voices_bounded_and_preferred)
{
    th_registry_conf c = CONF;
    c.max_node_voices = 2;
    th_registry *r = th_registry_new(&c, NULL);
    TH_REQUIRE(r);
    char a[TH_NODE_ID_MAX + 1], bid[TH_NODE_ID_MAX + 1], buf[256];
    const char *sha1 = "1111111111111111111111111111111111111111111111111111111111111111";
    const char *sha2 = "2222222222222222222222222222222222222222222222222222222222222222";
    TH_CHECK_INT(
        reg(r,
            "{\"node_id\":\"a\",\"engine_type\":\"xtts\",\"url\":\"http://a:1\",\"protocol\":\"seed2\","
            "\"status\":\"ready\"}",
            0, a),
        TH_REG_OK);
    TH_CHECK_INT(
        reg(r,
            "{\"node_id\":\"b\",\"engine_type\":\"xtts\",\"url\":\"http://b:1\",\"protocol\":\"seed2\","
            "\"status\":\"ready\"}",
            0, bid),
        TH_REG_OK);
    th_registry_voice_set(r, "http://b:1", "v1", sha1, true);
    TH_CHECK(th_registry_voice_held(r, "http://b:1", "v1", sha1));
    TH_CHECK(!th_registry_voice_held(r, "http://b:1", "v1", sha2)); /* other content: not held */
    TH_CHECK(!th_registry_voice_held(r, "http://a:1", "v1", sha1));
    /* round robin would alternate; the holder goes first every time */
    for (int i = 0; i < 4; i++) {
        th_node *n =
            th_registry_pick_for(r, "xtts", TH_NODE_PROTO_SEED2, "v1", sha1, TH_NODE_PICK_ROUND_ROBIN, 1);
        TH_REQUIRE(n != NULL);
        TH_CHECK_STR(th_node_id(n), "b");
        th_registry_release(r, n, true, 1);
    }
    /* without a holder with room, a node without it (it gets the voice pushed first) */
    th_registry_voice_set(r, "http://b:1", "v1", NULL, false);
    th_node *n =
        th_registry_pick_for(r, "xtts", TH_NODE_PROTO_SEED2, "v1", sha1, TH_NODE_PICK_ROUND_ROBIN, 1);
    TH_REQUIRE(n != NULL);
    th_registry_release(r, n, true, 1);
    /* bounded: the oldest record goes */
    th_registry_voice_set(r, "http://a:1", "v1", sha1, true);
    th_registry_voice_set(r, "http://a:1", "v2", sha2, true);
    th_registry_voice_set(r, "http://a:1", "v3", sha2, true);
    TH_CHECK_STR(field(r, a, "library_voices", buf, sizeof buf), "v2,v3");
    /* the same id again moves to the newest place; a deleted voice leaves every node */
    th_registry_voice_set(r, "http://a:1", "v2", sha2, true);
    TH_CHECK_STR(field(r, a, "library_voices", buf, sizeof buf), "v3,v2");
    th_registry_voice_set(r, "http://b:1", "v2", sha2, true);
    th_registry_voice_set(r, NULL, "v2", NULL, false);
    TH_CHECK_STR(field(r, a, "library_voices", buf, sizeof buf), "v3");
    TH_CHECK_STR(field(r, bid, "library_voices", buf, sizeof buf), "");
    /* a registration (a restart) forgets what the node held */
    TH_CHECK_INT(
        reg(r,
            "{\"node_id\":\"a\",\"engine_type\":\"xtts\",\"url\":\"http://a:1\",\"protocol\":\"seed2\","
            "\"status\":\"standby\"}",
            5, a),
        TH_REG_OK);
    TH_CHECK_STR(field(r, a, "library_voices", buf, sizeof buf), "");
    th_registry_free(r);
}

TH_TEST_MAIN()
