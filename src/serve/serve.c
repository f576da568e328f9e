/* serve: `ttshub serve`: config, the HTTP servers wired to the api layer, signals, drain and stop. */
#include "serve/serve.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/clock.h"
#include "core/sdnotify.h"
#include "core/str.h"
#include "hub/reload.h"

static void shutdown_done(void *ud)
{
    th_hub *hub = ud;
    if (--hub->draining > 0) return; /* the other listener is still draining */
    TH_LOG(hub->log, TH_LOG_INFO, "drained; stopping");
    th_api_feed_free(hub);
    uv_close((uv_handle_t *)&hub->sig_term, NULL);
    uv_close((uv_handle_t *)&hub->sig_int, NULL);
    th_hub_stop(hub);
}

static void begin_drain(th_hub *hub, const char *why)
{
    hub->stopping = true;
    th_sd_notify("STOPPING=1");
    th_reload_stop(hub);
    if (hub->ext && hub->ext->stop) hub->ext->stop(hub, hub->ext->ud);
    th_api_feed_shutdown(hub); /* live-feed clients get a close frame now */
    TH_LOG(hub->log, TH_LOG_INFO, "%s: draining %zu in-flight requests (grace %llums)", why,
           th_http_server_inflight(hub->http), (unsigned long long)hub->cfg->limits.shutdown_grace_ms);
    hub->draining = hub->metrics_http ? 2 : 1;
    if (hub->metrics_http) th_http_server_shutdown(hub->metrics_http, 1000, shutdown_done, hub);
    th_http_server_shutdown(hub->http, hub->cfg->limits.shutdown_grace_ms, shutdown_done, hub);
}

void th_serve_shutdown(th_hub *hub)
{
    if (!hub->stopping) begin_drain(hub, "shutdown");
}

static void on_signal(uv_signal_t *h, int signum)
{
    th_hub *hub = h->data;
    if (hub->stopping) {
        TH_LOG(hub->log, TH_LOG_WARN, "second signal %d: exiting now", signum);
        exit(1);
    }
    char why[24];
    snprintf(why, sizeof why, "signal %d", signum);
    begin_drain(hub, why);
}

static bool is_loopback(const char *listen)
{
    return th_str_startswith(listen, "127.") || th_str_startswith(listen, "[::1]") ||
           th_str_startswith(listen, "localhost:");
}

static th_config *load_config(const th_serve_opts *opts, FILE *err)
{
    if (opts->config_text != NULL) {
        th_config_errors errs = {0};
        th_config *cfg = th_config_parse(opts->config_text, strlen(opts->config_text), &errs);
        for (size_t i = 0; cfg == NULL && i < errs.n; i++)
            fprintf(err, "ttshub: %s%s%s\n", errs.items[i].path, errs.items[i].path[0] ? ": " : "",
                    errs.items[i].message);
        th_config_errors_free(&errs);
        return cfg;
    }
    const char *path = opts->config_path;
    if (path == NULL || *path == 0) path = getenv("TTSHUB_CONFIG");
    if (path == NULL || *path == 0) return th_config_default();
    th_config_errors errs = {0};
    th_config *cfg = th_config_load(path, &errs);
    if (cfg == NULL) {
        for (size_t i = 0; i < errs.n; i++) {
            const th_config_error *e = &errs.items[i];
            if (e->line > 0)
                fprintf(err, "%s:%d: %s%s%s\n", path, e->line, e->path, e->path[0] ? ": " : "", e->message);
            else
                fprintf(err, "%s: %s%s%s\n", path, e->path, e->path[0] ? ": " : "", e->message);
        }
        if (errs.n == 0) fprintf(err, "%s: cannot load config\n", path);
        th_config_errors_free(&errs);
    }
    return cfg;
}

/* The log, at the config's level or --log-level's. 0 or -1 (said on stderr). */
static int open_log(th_hub *hub, const th_serve_opts *opts)
{
    th_log_level level = hub->cfg->log.level;
    if (opts->log_level && th_log_level_parse(opts->log_level, &level) != 0) {
        fprintf(stderr, "ttshub: --log-level must be debug, info, warn or error\n");
        return -1;
    }
    hub->log = th_log_new(level, hub->cfg->log.format, hub->cfg->log.file);
    if (hub->log == NULL) {
        fprintf(stderr, "ttshub: cannot open log file %s: %s\n", hub->cfg->log.file, strerror(errno));
        return -1;
    }
    return 0;
}

/* The client listener, and the metrics one when metrics_listen is set. 0 or -1 (logged). */
static int listen_all(th_hub *hub, const char *listen, const th_http_limits *lim, bool reuse_port)
{
    char err[256] = "";
    th_http_server_set_reuse_port(hub->http, reuse_port);
    if (th_http_server_listen(hub->http, listen, err, sizeof err) != 0) {
        TH_LOG(hub->log, TH_LOG_ERROR, "cannot listen on %s: %s", listen, err);
        fprintf(stderr, "ttshub: cannot listen on %s: %s\n", listen, err);
        return -1;
    }
    if (hub->metrics_router) {
        hub->metrics_http = th_http_server_new(hub->loop, lim, th_api_handle_metrics, hub, hub->log);
        if (hub->metrics_http) th_http_server_set_reuse_port(hub->metrics_http, reuse_port);
        if (hub->metrics_http == NULL ||
            th_http_server_listen(hub->metrics_http, hub->cfg->metrics_listen, err, sizeof err) != 0) {
            TH_LOG(hub->log, TH_LOG_ERROR, "cannot listen on %s: %s", hub->cfg->metrics_listen, err);
            fprintf(stderr, "ttshub: cannot listen on %s (metrics_listen): %s\n", hub->cfg->metrics_listen,
                    err);
            return -1;
        }
        TH_LOG(hub->log, TH_LOG_INFO, "metrics on %s (port %d)", hub->cfg->metrics_listen,
               th_http_server_port(hub->metrics_http));
    }
    return 0;
}

/* auth.mode none on an address others can reach: say so, and close the admin routes (protected mode). */
static void check_open_mode(th_hub *hub, const char *listen)
{
    if (strcmp(hub->cfg->auth.mode, "none") != 0 || is_loopback(listen) || (hub->ext && hub->ext->node_only))
        return;
    TH_LOG(hub->log, TH_LOG_WARN,
           "auth.mode is none and ttshub listens on %s: anyone who can reach it can use it", listen);
    hub->safe.protected_mode = !hub->cfg->auth.allow_open_admin;
    if (hub->safe.protected_mode)
        TH_LOG(hub->log, TH_LOG_WARN,
               "protected mode: /admin/*, announcements and the node routes are refused until API keys "
               "are configured (auth.mode), the cluster token is set (registry.token_env) or "
               "auth.allow_open_admin is true");
}

/* SIGTERM and SIGINT drain (on_signal). */
static void start_signals(th_hub *hub)
{
    uv_signal_init(hub->loop, &hub->sig_term);
    uv_signal_init(hub->loop, &hub->sig_int);
    hub->sig_term.data = hub->sig_int.data = hub;
    uv_signal_start(&hub->sig_term, on_signal, SIGTERM);
    uv_signal_start(&hub->sig_int, on_signal, SIGINT);
}

/* After the loop: the servers and their routers. */
static void free_servers(th_hub *hub)
{
    th_http_server_free(hub->http);
    hub->http = NULL;
    th_http_server_free(hub->metrics_http);
    hub->metrics_http = NULL;
    th_router_free(hub->router);
    hub->router = NULL;
    th_router_free(hub->metrics_router);
    hub->metrics_router = NULL;
}

int th_serve(const th_serve_opts *opts)
{
    int rc = 1;
    th_hub hub;
    memset(&hub, 0, sizeof hub);
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return 1;
    hub.loop = &loop;
    signal(SIGPIPE, SIG_IGN);

    hub.cfg = load_config(opts, stderr);
    if (hub.cfg == NULL) goto out_loop;
    if (open_log(&hub, opts) != 0) goto out_cfg;
    hub.started_ms = th_wall_ms();
    th_uuid_gen_init(&hub.ids);
    hub.started_mono_ms = th_mono_ms();
    hub.exit_code = 0;

    const char *listen = opts->listen && *opts->listen ? opts->listen : hub.cfg->listen;
    th_http_limits lim;
    th_hub_http_limits(hub.cfg, &lim);
    hub.http = th_http_server_new(&loop, &lim, th_api_handle, &hub, hub.log);
    if (hub.http == NULL) goto out_log;
    th_http_server_set_body_limit_fn(hub.http, th_api_body_limit);
    hub.ext = opts->ext;
    if (th_api_register(&hub) != 0) goto out_http;
    if (hub.ext && hub.ext->routes && hub.ext->routes(&hub, hub.ext->ud) != 0) goto out_http;
    if (th_hub_build(&hub) != 0) goto out_router;
    if (th_api_feed_new(&hub) != 0) goto out_governance;

    if (listen_all(&hub, listen, &lim, opts->reuse_port || hub.cfg->reload.reuse_port) != 0)
        goto out_governance;
    check_open_mode(&hub, listen);
    TH_LOG(hub.log, TH_LOG_INFO, "ttshub %s listening on %s (port %d) with %zu provider(s)%s%s", TH_VERSION,
           listen, th_http_server_port(hub.http), hub.n_providers,
           hub.cfg->path ? ", config " : ", embedded default", hub.cfg->path ? hub.cfg->path : "");

    start_signals(&hub);
    th_hub_start(&hub);
    const char *cfg_path = opts->config_text ? NULL : opts->config_path;
    if (opts->config_text == NULL && (cfg_path == NULL || *cfg_path == 0)) cfg_path = getenv("TTSHUB_CONFIG");
    if (th_reload_start(&hub, cfg_path, opts->log_level != NULL, th_api_feed_publish) != 0) {
        TH_LOG(hub.log, TH_LOG_ERROR, "cannot set up config reloads: out of memory");
        hub.exit_code = 1;
        begin_drain(&hub, "start failed");
    }
    th_sd_notify("READY=1");
    if (hub.ext && hub.ext->start && hub.ext->start(&hub, hub.ext->ud) != 0) {
        TH_LOG(hub.log, TH_LOG_ERROR, "cannot start");
        hub.exit_code = 1;
        begin_drain(&hub, "start failed");
    }

    uv_run(&loop, UV_RUN_DEFAULT);
    th_hub_run_deferred(&hub);
    free_servers(&hub);
    th_hub_finish(&hub);
    rc = hub.exit_code;
    TH_LOG(hub.log, TH_LOG_INFO, "stopped");
    goto out_log;

out_governance:
    th_api_feed_free(&hub);
    th_hub_unbuild(&hub);
out_router:
    th_router_free(hub.router);
    th_router_free(hub.metrics_router);
out_http:
    th_http_server_free(hub.http);
    th_http_server_free(hub.metrics_http);
    uv_run(&loop, UV_RUN_DEFAULT); /* let closed handles finish */
out_log:
    th_log_free(hub.log);
out_cfg:
    th_config_unref(hub.cfg);
out_loop:
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rc;
}
