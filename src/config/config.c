/* config: YAML (libyaml events) -> a small bounded node tree -> th_config through one schema table.
 *
 * Pipeline (parse() below; config_int.h lists the files):
 *   1. cf_build() (config_yaml.c): libyaml events into a tree of ynode. Bounded: 4 MiB of text, 32
 *      levels of nesting, 10,000 nodes, one document; anchors and aliases are rejected.
 *   2. cf_walk_section() (config_schema.c): every mapping is checked against a section_def, an array
 *      of key_def: name, type, bounds, default (as the text one would write in the file), offsetof its
 *      field and an optional validator. Defaults are applied by parsing that text through the same
 *      code as the file. Unknown keys are errors. The tables live in one file a group of sections
 *      (config_server.c, config_governance.c, config_providers.c, ...); the top one is here.
 *   3. cross_check(): checks between sections (routes and voices name existing providers, auth,
 *      tenants of keys, voice library durations, registry timings), each in its section's file.
 * The same tables free a config (cf_free_section) and dump it as JSON (config_json.c). */
#include "config/config_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const key_def k_top[] = {
    KSTR(th_config, listen, "listen", "0.0.0.0:8080", cf_check_listen, 0, 0),
    KSTR(th_config, metrics_listen, "metrics_listen", "", cf_check_listen_opt, 0, 0),
    KSTR(th_config, data_dir, "data_dir", "./data", cf_check_nonempty, 0, 0),
    KSEC("log", cf_s_log),
    KSEC("limits", cf_s_limits),
    KSEC("auth", cf_s_auth),
    KMAP(th_config, tenants, n_tenants, "tenants", cf_s_tenant, name, cf_check_name),
    KSEC("rate_limit", cf_s_rate),
    KSEC("redis", cf_s_redis),
    KSEC("cache", cf_s_cache),
    KLIST(th_config, providers, n_providers, "providers", cf_s_provider, 0),
    KSEC("router", cf_s_router),
    KMAP(th_config, voices, n_voices, "voices", cf_s_voice, id, NULL),
    KSEC("registry", cf_s_registry),
    KSEC("tracing", cf_s_tracing),
    KSEC("voice_library", cf_s_voice_library),
    KSEC("reload", cf_s_reload),
    KBOOL(th_config, metrics_tenant_labels, "metrics_tenant_labels", "true"),
};
static const section_def s_top = SECTION(k_top);

/* With no `providers` key: the embedded espeak provider, read through the same table. */
static const char default_providers_yaml[] = "- name: local\n  type: espeak\n";

/* Step 3: the checks between sections, in a fixed order (the order of the errors). */
static void cross_check(ctx *c, const ynode *root, th_config *cfg)
{
    cf_check_providers(c, root, cfg);
    cf_check_routing(c, root, cfg);
    cf_check_auth(c, root, cfg);
    cf_check_voice_library(c, root, cfg);
    cf_check_registry(c, root, cfg);
}

static void config_free(th_config *c)
{
    if (c == NULL) return;
    cf_free_section(&s_top, c);
    free(c->path);
    free(c);
}

static th_config *parse(const char *yaml, size_t len, th_config_errors *errs, const char *path)
{
    ctx c = {.errs = errs, .kind = -1};
    ynode *root = NULL, *defprov = NULL;
    th_config *cfg = NULL;
    if (len > MAX_FILE_BYTES) {
        cf_err(&c, 0, "", "the file is larger than 4 MiB");
        goto out;
    }
    if (cf_build(&c, yaml ? yaml : "", yaml ? len : 0, &root) != 0) goto out;
    cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL) {
        cf_oom(&c);
        goto out;
    }
    cfg->refs = 1;
    c.cfg = cfg;
    if (path && (cfg->path = strdup(path)) == NULL) {
        cf_oom(&c);
        goto out;
    }
    if (cf_apply_defaults(&s_top, cfg) != 0) {
        cf_oom(&c);
        goto out;
    }
    if (root && root->kind != N_MAP && !cf_is_null(root)) {
        cf_err(&c, root->line, "", "the file must be a mapping of keys");
        goto out;
    }
    if (cf_get(root, "providers") == NULL) {
        ctx dc = {.kind = -1, .cfg = cfg};
        if (cf_build(&dc, default_providers_yaml, sizeof default_providers_yaml - 1, &defprov) != 0 ||
            dc.nerr) {
            cf_oom(&c);
            goto out;
        }
        for (size_t i = 0; i < s_top.n; i++)
            if (strcmp(s_top.keys[i].name, "providers") == 0)
                cf_set_key(&dc, &s_top.keys[i], defprov, cfg, "providers");
        if (dc.nerr) {
            cf_oom(&c);
            goto out;
        }
    }
    if (root && root->kind == N_MAP) cf_walk_section(&c, &s_top, root, cfg, "");
    if (!c.oom) cross_check(&c, root, cfg);
out:
    cf_node_free(root);
    cf_node_free(defprov);
    if (c.nerr || c.oom) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

th_config *th_config_default(void)
{
    return parse("", 0, NULL, NULL);
}

th_config *th_config_parse(const char *yaml, size_t len, th_config_errors *errs)
{
    return parse(yaml, len, errs, NULL);
}

th_config *th_config_parse_file(const char *yaml, size_t len, const char *path, th_config_errors *errs)
{
    return parse(yaml, len, errs, path);
}

th_config *th_config_load(const char *path, th_config_errors *errs)
{
    ctx c = {.errs = errs, .kind = -1};
    th_config *cfg = NULL;
    char *buf = NULL;
    size_t n = 0;
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (f == NULL) {
        cf_err(&c, 0, "", "cannot open: %s", strerror(errno));
        goto out;
    }
    if (fstat(fileno(f), &st) != 0) {
        cf_err(&c, 0, "", "cannot stat: %s", strerror(errno));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        cf_err(&c, 0, "", "is a directory");
        goto out;
    }
    if (S_ISREG(st.st_mode) && st.st_size > (off_t)MAX_FILE_BYTES) {
        cf_err(&c, 0, "", "the file is larger than 4 MiB");
        goto out;
    }
    buf = malloc(MAX_FILE_BYTES + 1);
    if (buf == NULL) {
        cf_oom(&c);
        goto out;
    }
    n = fread(buf, 1, MAX_FILE_BYTES + 1, f);
    if (ferror(f)) {
        cf_err(&c, 0, "", "cannot read: %s", strerror(errno));
        goto out;
    }
    if (n > MAX_FILE_BYTES) {
        cf_err(&c, 0, "", "the file is larger than 4 MiB");
        goto out;
    }
    cfg = parse(buf, n, errs, path);
out:
    if (f) fclose(f);
    free(buf);
    return cfg;
}

void th_config_errors_free(th_config_errors *errs)
{
    if (errs == NULL) return;
    free(errs->items);
    errs->items = NULL;
    errs->n = errs->cap = 0;
}

th_config *th_config_ref(th_config *c)
{
    if (c) __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return c;
}

void th_config_unref(th_config *c)
{
    if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0) config_free(c);
}

const th_provider_conf *th_config_provider(const th_config *c, const char *name)
{
    for (size_t i = 0; c && name && i < c->n_providers; i++)
        if (c->providers[i].name && strcmp(c->providers[i].name, name) == 0) return &c->providers[i];
    return NULL;
}

const th_tenant_conf *th_config_tenant(const th_config *c, const char *name)
{
    for (size_t i = 0; c && name && i < c->n_tenants; i++)
        if (c->tenants[i].name && strcmp(c->tenants[i].name, name) == 0) return &c->tenants[i];
    return NULL;
}

char *th_config_to_json(const th_config *c)
{
    if (c == NULL) return NULL;
    json_t *o = cf_dump_section(&s_top, c);
    if (o == NULL) return NULL;
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}
