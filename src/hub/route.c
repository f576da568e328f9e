/* route: candidate providers, slots with bounded queues, breakers, health probes. */
#include "hub/route.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/list.h"
#include "core/str.h"
#include "hub/hub.h"
#include "observability/metrics.h"
#include "hub/reload.h"
#include "providers/upstream.h"

static void publish(th_route_prov *rp)
{
    th_hub *hub = rp->owner->hub;
    if (hub->metrics == NULL || rp->retired) return; /* a draining old copy must not hide the new one */
    const char *lbl[] = {rp->p->conf->name, NULL};
    th_metrics_set(hub->metrics, TH_M_PROVIDER_INFLIGHT, lbl, rp->inflight);
    th_metrics_set(hub->metrics, TH_M_QUEUE_DEPTH, lbl, rp->waiting);
    th_metrics_set(hub->metrics, TH_M_BREAKER_STATE, lbl, (double)th_breaker_get(&rp->breaker, th_mono_ms()));
}

void th_route_breaker_conf(const th_config *cfg, th_breaker_conf *bc)
{
    *bc = (th_breaker_conf){
        .failures = cfg->router.breaker.failures,
        .failure_ratio = cfg->router.breaker.failure_ratio,
        .window_ms = cfg->router.breaker.window_ms,
        .open_for_ms = cfg->router.breaker.open_for_ms,
        .half_open_probes = cfg->router.breaker.half_open_probes,
    };
}

th_route_prov *th_route_prov_new(th_route *r, th_provider *p, th_config *cfg)
{
    th_route_prov *rp = calloc(1, sizeof *rp);
    if (rp == NULL) return NULL;
    rp->refs = 1;
    rp->owner = r;
    rp->cfg = th_config_ref(cfg);
    rp->p = p;
    rp->probe_ok = true;
    th_reload_provider_tag(cfg, p->conf, rp->cache_name, sizeof rp->cache_name);
    th_breaker_conf bc;
    th_route_breaker_conf(cfg, &bc);
    th_breaker_init(&rp->breaker, &bc);
    return rp;
}

th_route_prov *th_route_prov_ref(th_route_prov *rp)
{
    if (rp) rp->refs++;
    return rp;
}

void th_route_prov_unref(th_route_prov *rp)
{
    if (rp == NULL || --rp->refs > 0) return;
    if (rp->retired)
        TH_LOG(rp->owner->hub->log, TH_LOG_INFO, "provider %s: drained, removed", rp->p->conf->name);
    rp->p->ops->destroy(rp->p);
    th_config_unref(rp->cfg);
    free(rp);
}

int th_route_init(th_route *r, th_hub *hub)
{
    memset(r, 0, sizeof *r);
    r->hub = hub;
    r->n = hub->n_providers;
    r->provs = calloc(r->n ? r->n : 1, sizeof *r->provs);
    if (r->provs == NULL) return -1;
    const th_config *cfg = hub->cfg;
    th_balance_strategy st = TH_BALANCE_WEIGHTED;
    th_balance_parse(cfg->router.strategy, &st);
    th_balance_init(&r->balance, st, th_mono_us() ^ (uint64_t)(uintptr_t)r);
    for (size_t i = 0; i < r->n; i++) {
        th_route_prov *rp = th_route_prov_new(r, hub->providers[i], hub->cfg);
        if (rp == NULL) {
            /* the providers not wrapped yet are still the hub's */
            for (size_t k = 0; k < i; k++)
                hub->providers[k] = NULL;
            th_route_free(r);
            return -1;
        }
        r->provs[i] = rp;
        publish(rp);
    }
    return 0;
}

void th_route_free(th_route *r)
{
    for (size_t i = 0; r->provs && i < r->n; i++)
        th_route_prov_unref(r->provs[i]);
    free(r->provs);
    r->provs = NULL;
    r->n = 0;
}

void th_route_replace(th_route *r, th_route_prov **provs, size_t n, const th_config *cfg)
{
    th_breaker_conf bc;
    th_route_breaker_conf(cfg, &bc);
    th_balance_strategy st = TH_BALANCE_WEIGHTED;
    th_balance_parse(cfg->router.strategy, &st);
    r->balance.strategy = st;
    for (size_t i = 0; i < r->n; i++) {
        bool kept = false;
        for (size_t k = 0; k < n && !kept; k++)
            kept = provs[k] == r->provs[i];
        if (!kept) {
            th_route_prov *rp = r->provs[i];
            rp->retired = true;    /* its queue drains on its own: each waiter holds a reference */
            if (r->hub->metrics) { /* a removed provider's gauges go to 0; a changed one's new record sets
                                      them */
                const char *lbl[] = {rp->p->conf->name, NULL};
                th_metrics_set(r->hub->metrics, TH_M_PROVIDER_INFLIGHT, lbl, 0);
                th_metrics_set(r->hub->metrics, TH_M_QUEUE_DEPTH, lbl, 0);
                th_metrics_set(r->hub->metrics, TH_M_BREAKER_STATE, lbl, 0);
            }
        }
        th_route_prov_unref(r->provs[i]);
    }
    free(r->provs);
    r->provs = provs;
    r->n = n;
    for (size_t i = 0; i < n; i++) {
        provs[i]->breaker.conf = bc;
        publish(provs[i]);
    }
}

static const char *engine_voice_for(const th_hub *hub, const th_provider_conf *pc, const char *voice)
{
    const char *ev = th_kv_get(pc->voices, pc->n_voices, voice);
    if (ev) return ev;
    for (size_t v = 0; v < hub->cfg->n_voices; v++) {
        const th_voice_conf *vc = &hub->cfg->voices[v];
        if (strcmp(vc->id, voice) == 0) {
            ev = th_kv_get(vc->providers, vc->n_providers, pc->name);
            if (ev) return ev;
        }
    }
    return voice;
}

static bool glob_or_any(const char *pattern, const char *s)
{
    if (pattern == NULL || *pattern == 0) return true;
    return th_glob_match(pattern, s ? s : "");
}

bool th_route_prov_available(const th_route_prov *rp)
{
    return rp->probe_ok && th_breaker_available(&rp->breaker, th_mono_ms());
}

bool th_route_available(th_route *r, size_t i)
{
    return th_route_prov_available(r->provs[i]);
}

static size_t candidates(th_route *r, const char *tenant, const char *voice, const char *model, bool clone,
                         bool (*allowed)(const char *provider, void *ud), void *allowed_ud, size_t *idx,
                         const char **engine_voice, size_t max)
{
    th_hub *hub = r->hub;
    const th_config *cfg = hub->cfg;
    size_t set[64];
    size_t nset = 0;
    const th_route_conf *match = NULL;
    for (size_t i = 0; i < cfg->router.n_routes && match == NULL; i++) {
        const th_route_conf *rc = &cfg->router.routes[i];
        if (glob_or_any(rc->tenant, tenant) && glob_or_any(rc->voice, voice) && glob_or_any(rc->model, model))
            match = rc;
    }
    if (match) {
        for (size_t k = 0; k < match->n_providers && nset < 64; k++) {
            int pi = th_hub_provider_index(hub, match->providers[k]);
            if (pi >= 0) set[nset++] = (size_t)pi;
        }
    } else {
        for (size_t i = 0; i < r->n && nset < 64; i++)
            set[nset++] = i;
    }
    /* drop providers that do not know the voice or that the tenant may not use */
    size_t kept = 0;
    th_balance_peer peers[64];
    for (size_t k = 0; k < nset; k++) {
        th_route_prov *rp = r->provs[set[k]];
        const th_provider_conf *pc = rp->p->conf;
        if (allowed && !allowed(pc->name, allowed_ud)) continue;
        if (clone) {
            if (!rp->p->caps.can_clone) continue;
        } else {
            const char *ev = engine_voice_for(hub, pc, voice);
            if (rp->p->ops->voice_ok && rp->p->ops->voice_ok(rp->p, ev) != 0) continue;
        }
        set[kept++] = set[k];
    }
    nset = kept;
    if (nset == 0) return 0;
    /* balance over the candidate set; peers[] mirrors set[] */
    size_t order[64];
    for (size_t k = 0; k < nset; k++) {
        th_route_prov *rp = r->provs[set[k]];
        peers[k] = (th_balance_peer){
            .weight = rp->p->conf->weight > 0 ? rp->p->conf->weight : 1,
            .priority = rp->p->conf->priority,
            .inflight = rp->inflight + rp->waiting,
            .available = th_route_available(r, set[k]),
            .current_weight = rp->current_weight,
        };
        order[k] = k;
    }
    th_balance_order(&r->balance, peers, nset, order, nset);
    for (size_t k = 0; k < nset; k++)
        r->provs[set[k]]->current_weight = peers[k].current_weight;
    size_t n = nset < max ? nset : max;
    for (size_t k = 0; k < n; k++) {
        idx[k] = set[order[k]];
        engine_voice[k] = clone ? voice : engine_voice_for(hub, r->provs[idx[k]]->p->conf, voice);
    }
    return n;
}

size_t th_route_candidates(th_route *r, const char *tenant, const char *voice, const char *model,
                           bool (*allowed)(const char *provider, void *ud), void *allowed_ud, size_t *idx,
                           const char **engine_voice, size_t max)
{
    return candidates(r, tenant, voice, model, false, allowed, allowed_ud, idx, engine_voice, max);
}

size_t th_route_clone_candidates(th_route *r, const char *tenant, const char *voice, const char *model,
                                 bool (*allowed)(const char *provider, void *ud), void *allowed_ud,
                                 size_t *idx, const char **engine_voice, size_t max)
{
    return candidates(r, tenant, voice, model, true, allowed, allowed_ud, idx, engine_voice, max);
}

th_slot_rc th_route_acquire(th_route_prov *rp, th_route_waiter *w)
{
    const th_provider_conf *pc = rp->p->conf;
    if (pc->concurrency <= 0 || (rp->inflight < pc->concurrency && rp->waiting == 0)) {
        rp->inflight++;
        publish(rp);
        return TH_SLOT_NOW;
    }
    if (rp->waiting >= pc->queue) return TH_SLOT_FULL;
    w->next = NULL;
    w->prev = rp->wait_tail;
    if (rp->wait_tail)
        rp->wait_tail->next = w;
    else
        rp->wait_head = w;
    rp->wait_tail = w;
    w->since_ms = th_mono_ms();
    rp->waiting++;
    publish(rp);
    return TH_SLOT_QUEUED;
}

void th_route_unwait(th_route_prov *rp, th_route_waiter *w)
{
    TH_DL_UNLINK_T(rp->wait_head, rp->wait_tail, w, prev, next);
    rp->waiting--;
    publish(rp);
}

void th_route_release(th_route_prov *rp)
{
    if (rp->inflight > 0) rp->inflight--;
    th_route_waiter *w = rp->wait_head;
    if (w) {
        th_route_unwait(rp, w);
        rp->inflight++; /* the slot passes straight to the waiter */
        publish(rp);
        w->grant(w->ud);
        return;
    }
    publish(rp);
}

static void breaker_changed(th_route_prov *rp, th_breaker_state from)
{
    th_breaker_state to = th_breaker_get(&rp->breaker, th_mono_ms());
    TH_LOG(rp->owner->hub->log, to == TH_BREAKER_OPEN ? TH_LOG_WARN : TH_LOG_INFO,
           "provider %s: breaker %s -> %s", rp->p->conf->name, th_breaker_state_name(from),
           th_breaker_state_name(to));
    rp->last_state = to;
    publish(rp);
}

bool th_route_allow(th_route_prov *rp)
{
    th_breaker_state before = th_breaker_get(&rp->breaker, th_mono_ms());
    bool ok = th_breaker_allow(&rp->breaker, th_mono_ms());
    if (th_breaker_get(&rp->breaker, th_mono_ms()) != before) breaker_changed(rp, before);
    return ok;
}

void th_route_outcome(th_route_prov *rp, bool ok, double first_byte_ms)
{
    rp->calls++;
    if (!ok) rp->failures++;
    if (ok && first_byte_ms >= 0)
        rp->ewma_first_byte_ms =
            rp->ewma_first_byte_ms == 0 ? first_byte_ms : 0.8 * rp->ewma_first_byte_ms + 0.2 * first_byte_ms;
    th_breaker_state before = th_breaker_get(&rp->breaker, th_mono_ms());
    if (th_breaker_record(&rp->breaker, ok, th_mono_ms())) breaker_changed(rp, before);
}

void th_route_outcome_none(th_route_prov *rp)
{
    th_breaker_release(&rp->breaker);
}

/* ---- active health probes ---- */

static void probe_done(void *ud, bool healthy, const char *detail)
{
    th_route_prov *rp = ud;
    rp->probing = false;
    if (!rp->retired && healthy != rp->probe_ok) {
        TH_LOG(rp->owner->hub->log, healthy ? TH_LOG_INFO : TH_LOG_WARN, "provider %s: health probe %s%s%s",
               rp->p->conf->name, healthy ? "ok again" : "failed", detail && *detail ? ": " : "",
               detail ? detail : "");
        rp->probe_ok = healthy;
        publish(rp);
    }
    th_strlcpy(rp->probe_detail, detail ? detail : "", sizeof rp->probe_detail);
}

static void probe_tick(uv_timer_t *t)
{
    th_route *r = t->data;
    if (r == NULL) return;
    for (size_t i = 0; i < r->n; i++) {
        th_route_prov *rp = r->provs[i];
        if (rp->probing || rp->p->ops != &th_upstream_ops) continue;
        /* no reference: destroying the provider drops its probe without a callback */
        if (th_upstream_probe(rp->p, probe_done, rp) == 0) rp->probing = true;
        publish(rp); /* breaker state moves with time (open -> half_open) */
    }
}

static void probe_timer_closed(uv_handle_t *h)
{
    free(h);
}

void th_route_start_probes(th_route *r)
{
    uint64_t every = r->hub->cfg->router.health_interval_ms;
    if (every == 0 || r->probe_timer) return;
    bool any = false;
    for (size_t i = 0; i < r->n; i++)
        if (r->provs[i]->p->ops == &th_upstream_ops) any = true;
    if (!any) return;
    r->probe_timer = malloc(sizeof *r->probe_timer);
    if (r->probe_timer == NULL) return;
    uv_timer_init(r->hub->loop, r->probe_timer);
    r->probe_timer->data = r;
    uv_timer_start(r->probe_timer, probe_tick, every, every);
}

void th_route_stop_probes(th_route *r)
{
    if (r->probe_timer == NULL) return;
    r->probe_timer->data = NULL;
    uv_timer_stop(r->probe_timer);
    uv_close((uv_handle_t *)r->probe_timer, probe_timer_closed);
    r->probe_timer = NULL;
}
