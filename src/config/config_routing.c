/* config_routing: the sections router (strategy, retries, hedging, breaker, routes) and voices (the
 * public catalogue), and the check that both name existing providers. */
#include "config/config_int.h"

#include <stdio.h>

static const char *const e_strategy[] = {"weighted", "round_robin", "least_load", "random", "priority", NULL};

static const key_def k_breaker[] = {
    KINT(th_config, router.breaker.failures, "failures", "5", 1, 100000, 0),
    KDBL(th_config, router.breaker.failure_ratio, "failure_ratio", "0.5", 0.0, 1.0),
    KDUR(th_config, router.breaker.window_ms, "window", "30s", 1 * SEC, 1 * HOUR),
    KDUR(th_config, router.breaker.open_for_ms, "open_for", "30s", 1 * SEC, 1 * HOUR),
    KINT(th_config, router.breaker.half_open_probes, "half_open_probes", "1", 1, 1000, 0),
};
static const section_def s_breaker = SECTION(k_breaker);

static const key_def k_match[] = {
    KSTR(th_route_conf, tenant, "tenant", "", NULL, 0, 0),
    KSTR(th_route_conf, voice, "voice", "", NULL, 0, 0),
    KSTR(th_route_conf, model, "model", "", NULL, 0, 0),
};
static const section_def s_match = SECTION(k_match);

static const key_def k_route[] = {
    KSEC("match", s_match),
    KSTRLIST(th_route_conf, providers, n_providers, "providers", NULL, F_REQ),
};
static const section_def s_route = SECTION(k_route);

static const key_def k_router[] = {
    KENUM(th_config, router.strategy, "strategy", "weighted", e_strategy),
    KINT(th_config, router.retries, "retries", "1", 0, 10, 0),
    KBOOL(th_config, router.fallback, "fallback", "true"),
    KDUR(th_config, router.hedge_after_ms, "hedge_after", "0s", 0, 1 * HOUR),
    KSEC("breaker", s_breaker),
    KDUR(th_config, router.health_interval_ms, "health_interval", "10s", 0, 1 * HOUR),
    KLIST(th_config, router.routes, router.n_routes, "routes", s_route, 0),
};
const section_def cf_s_router = SECTION(k_router);

static const key_def k_voice[] = {
    KSTR(th_voice_conf, language, "language", "", NULL, 0, 0),
    KKV(th_voice_conf, providers, n_providers, "providers", 0),
};
const section_def cf_s_voice = SECTION(k_voice);

/* router.routes[i].providers[j] name providers */
static void check_routes(ctx *c, const ynode *root, th_config *cfg)
{
    char p[256];
    const ynode *routes = cf_get(cf_get(root, "router"), "routes");
    for (size_t i = 0; routes && routes->kind == N_SEQ && i < routes->n; i++) {
        const ynode *rp = cf_get(cf_item(routes, i), "providers");
        char rpath[256];
        snprintf(rpath, sizeof rpath, "router.routes[%zu].providers", i);
        if (rp && (cf_is_null(rp) || (rp->kind == N_SEQ && rp->n == 0)))
            cf_err(c, rp->line, rpath, "must not be empty");
        for (size_t j = 0; rp && rp->kind == N_SEQ && j < rp->n; j++) {
            const ynode *it = rp->kids[j];
            if (it->kind != N_SCALAR || it->val[0] == 0) continue;
            cf_join_index(p, sizeof p, rpath, j);
            if (th_config_provider(cfg, it->val) == NULL)
                cf_err(c, it->line, p, "unknown provider \"%s\"", it->val);
        }
    }
}

/* voices.X.providers keys name providers */
static void check_voices(ctx *c, const ynode *root, th_config *cfg)
{
    char p[256];
    const ynode *voices = cf_get(root, "voices");
    for (size_t i = 0; i < cf_map_len(voices); i++) {
        const ynode *k = voices->kids[2 * i];
        const ynode *vp = cf_get(voices->kids[2 * i + 1], "providers");
        if (k->ignore) continue;
        for (size_t j = 0; j < cf_map_len(vp); j++) {
            const ynode *pk = vp->kids[2 * j];
            if (pk->ignore || pk->val[0] == 0) continue;
            char vpath[256];
            snprintf(vpath, sizeof vpath, "voices.%s.providers", k->val);
            cf_join(p, sizeof p, vpath, pk->val);
            if (th_config_provider(cfg, pk->val) == NULL) cf_err(c, pk->line, p, "unknown provider");
        }
    }
}

void cf_check_routing(ctx *c, const ynode *root, th_config *cfg)
{
    check_routes(c, root, cfg);
    check_voices(c, root, cfg);
}
