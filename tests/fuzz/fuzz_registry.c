/* fuzz_registry: the worker registry on arbitrary JSON, as nodes (registrations, heartbeats) and other
 * hubs (records read back from Redis) send it, on behalf of callers with different credentials and
 * addresses (bits 4-5 of the first byte). The first byte picks the operation:
 *   0: register; 1: heartbeat of node "n1"; 2: apply as a shared record; 3: register, then read the node
 *   back as a record and apply it to a second registry.
 * Then the registry is listed, picked from, swept. Nothing may crash or leak; every node listed must have
 * the fields the API promises (a protocol, library_voices within max_node_voices). Bit 6 of the first byte
 * records a library voice as held by every listed node (seed-2 pushes), and picks prefer its holders. */
#include "http/body.h"
#include "cluster/registry.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static th_registry *reg_a, *reg_b; /* built once; the fuzzer's inputs accumulate in them */
static const char SHA[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    th_registry_conf c = {.heartbeat_interval_ms = 1000,
                          .dead_threshold_ms = 3000,
                          .remove_after_ms = 10000,
                          .max_capacity = 64,
                          .max_node_bytes = 4096,
                          .max_bytes = 65536,
                          .max_node_voices = 8};
    reg_a = th_registry_new(&c, NULL);
    reg_b = th_registry_new(&c, NULL);
    return reg_a && reg_b ? 0 : 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static uint64_t now = 1000; /* the clock moves with the inputs */
    now += data[0] >> 2;
    char err[256], id[TH_NODE_ID_MAX + 1] = "";
    json_t *j = th_json_parse_bounded(data + 1, size - 1, TH_JSON_MAX_DEPTH, err, sizeof err);
    static const th_reg_caller callers[4] = {{"token", "10.0.0.1", false, false},
                                             {"token", "10.0.0.2", false, false},
                                             {"trusted", "10.0.0.1", false, false},
                                             {"key:adm", "10.0.0.9", true, false}};
    const th_reg_caller *who = &callers[(data[0] >> 4) & 3];
    switch (data[0] & 3) {
    case 0:
        th_registry_register_as(reg_a, j, who, now, id, err, sizeof err);
        break;
    case 1:
        th_registry_heartbeat(reg_a, "n1", j, now, err, sizeof err);
        break;
    case 2:
        th_registry_apply(reg_b, j, now, 1700000000000ull + now);
        break;
    default:
        if (th_registry_register(reg_a, j, now, id, err, sizeof err) == TH_REG_OK) {
            json_t *rec = th_registry_record(reg_a, id, now, 1700000000000ull + now);
            if (rec == NULL) abort();
            th_registry_apply(reg_b, rec, now, 1700000000000ull + now);
            json_decref(rec);
            json_t *back = th_registry_node_json(reg_b, id, now); /* a record round-trips */
            if (back == NULL) abort();
            json_decref(back);
        }
        break;
    }
    json_decref(j);
    th_registry *regs[2] = {reg_a, reg_b};
    for (int k = 0; k < 2; k++) {
        json_t *l = th_registry_list_json(regs[k], NULL, NULL, now);
        size_t i;
        json_t *n;
        json_array_foreach(json_object_get(l, "nodes"), i, n)
        {
            json_t *url = json_object_get(n, "url");
            const char *proto = json_string_value(json_object_get(n, "protocol"));
            json_t *held = json_object_get(n, "library_voices");
            if (proto == NULL || (strcmp(proto, "ttshub") != 0 && strcmp(proto, "seed2") != 0) ||
                !json_is_array(held) || json_array_size(held) > 8)
                abort();
            if ((data[0] & 64) && json_is_string(url)) {
                char vid[16];
                snprintf(vid, sizeof vid, "v%u", (unsigned)(now % 11));
                th_registry_voice_set(regs[k], json_string_value(url), vid, SHA, true);
            }
            if (!json_is_string(json_object_get(n, "node_id")) || !json_is_string(url) ||
                !json_is_integer(json_object_get(n, "capacity")))
                abort();
            /* whatever came in, a node URL is scheme, host, port and a plain prefix; capacity is clamped */
            char host[256];
            int port = 0;
            const char *u = json_string_value(url);
            if (!th_node_url_parse(u, strlen(u), host, sizeof host, &port) || strpbrk(u, "?#@%\\ ") != NULL ||
                port < 1 || port > 65535 || json_integer_value(json_object_get(n, "capacity")) > 64)
                abort();
        }
        json_decref(l);
        th_node *p = (data[0] & 64) ? th_registry_pick_for(regs[k], NULL, (data[0] & 128) ? 1 : -1, "v3", SHA,
                                                           (th_node_pick)(data[0] % 3), now)
                                    : th_registry_pick(regs[k], NULL, (th_node_pick)(data[0] % 3), now);
        th_registry_release(regs[k], p, (data[0] & 8) != 0, now);
        th_registry_sweep(regs[k], now);
        if (th_registry_bytes(regs[k]) > 65536) abort(); /* registry.max_bytes holds */
    }
    return 0;
}
