/* config_observability: the sections log and tracing. */
#include "config/config_int.h"

static const char *const e_level[] = {"debug", "info", "warn", "error", "off", NULL};
static const char *const e_logfmt[] = {"json", "text", NULL};

static const key_def k_log[] = {
    KENUMI(th_config, log.level, "level", "info", e_level),
    KENUMI(th_config, log.format, "format", "json", e_logfmt),
    KSTR(th_config, log.file, "file", "", NULL, 0, 0),
};
const section_def cf_s_log = SECTION(k_log);

static const key_def k_tracing[] = {
    KSTR(th_config, tracing.otlp_endpoint, "otlp_endpoint", "", cf_check_http_url_opt, F_URL, 0),
    KSTR(th_config, tracing.service_name, "service_name", "ttshub", cf_check_nonempty, 0, 0),
    KDBL(th_config, tracing.sample_ratio, "sample_ratio", "1.0", 0.0, 1.0),
};
const section_def cf_s_tracing = SECTION(k_tracing);
