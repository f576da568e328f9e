/* config_validate: the validators of the config's strings (listen addresses, URLs, environment
 * variable names, networks, names, key hashes, regions). Each returns NULL when the text is fine, else
 * the message. */
#include "config/config_int.h"

#include "core/netacl.h"
#include "core/str.h"

#include <arpa/inet.h>
#include <string.h>

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static bool is_alpha(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static bool is_hex(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static bool valid_port(const char *s, size_t n, bool allow_zero)
{
    int64_t v;
    if (n == 0 || n > 5) return false;
    for (size_t i = 0; i < n; i++)
        if (!is_digit(s[i])) return false;
    if (th_strn_to_i64(s, n, allow_zero ? 0 : 1, 65535, &v) != 0) return false;
    return true;
}

static bool valid_hostname(const char *s, size_t n)
{
    if (n == 0 || n > 253) return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alpha(s[i]) && !is_digit(s[i]) && s[i] != '.' && s[i] != '-' && s[i] != '_') return false;
    return true;
}

static bool valid_ip6(const char *s, size_t n)
{
    char buf[64];
    unsigned char addr[16];
    if (n == 0 || n >= sizeof buf) return false;
    memcpy(buf, s, n);
    buf[n] = 0;
    return inet_pton(AF_INET6, buf, addr) == 1;
}

/* host[:port] or [v6][:port]; host required, port optional unless need_port. */
static bool valid_hostport(const char *s, size_t n, bool need_port, bool port_zero)
{
    const char *port = NULL;
    size_t hn, pn = 0;
    if (n > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (rb == NULL || !valid_ip6(s + 1, (size_t)(rb - s - 1))) return false;
        size_t used = (size_t)(rb - s) + 1;
        if (used < n) {
            if (s[used] != ':') return false;
            port = s + used + 1;
            pn = n - used - 1;
        }
    } else {
        const char *colon = NULL;
        for (size_t i = 0; i < n; i++)
            if (s[i] == ':') colon = s + i;
        hn = colon ? (size_t)(colon - s) : n;
        if (!valid_hostname(s, hn)) return false;
        if (colon) {
            port = colon + 1;
            pn = n - hn - 1;
        }
    }
    if (port) return valid_port(port, pn, port_zero);
    return !need_port;
}

const char *cf_check_listen(const char *s)
{
    return valid_hostport(s, strlen(s), true, true) ? NULL : "not a listen address (HOST:PORT)";
}

const char *cf_check_listen_opt(const char *s)
{
    return s[0] == 0 ? NULL : cf_check_listen(s);
}

/* scheme://[userinfo@]host[:port][/path][?query]; no spaces or control characters. */
static bool valid_url(const char *s, const char *const *schemes)
{
    const char *rest = NULL;
    for (size_t i = 0; schemes[i]; i++) {
        size_t l = strlen(schemes[i]);
        if (strncmp(s, schemes[i], l) == 0 && strncmp(s + l, "://", 3) == 0) {
            rest = s + l + 3;
            break;
        }
    }
    if (rest == NULL) return false;
    for (const char *p = rest; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) return false;
    size_t an = strcspn(rest, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < an; i++)
        if (rest[i] == '@') at = rest + i;
    if (at) {
        an -= (size_t)(at + 1 - rest);
        rest = at + 1;
    }
    return valid_hostport(rest, an, false, false);
}

static const char *check_http_url(const char *s)
{
    static const char *const schemes[] = {"http", "https", NULL};
    return valid_url(s, schemes) ? NULL : "not a URL";
}

const char *cf_check_http_url_opt(const char *s)
{
    return s[0] == 0 ? NULL : check_http_url(s);
}

const char *cf_check_redis_url(const char *s)
{
    static const char *const schemes[] = {"redis", "rediss", NULL};
    if (strncmp(s, "unix:///", 8) == 0 && s[8]) return NULL;
    return valid_url(s, schemes) ? NULL : "not a redis URL (redis://HOST:PORT/DB)";
}

const char *cf_check_env(const char *s)
{
    size_t n = strlen(s);
    if (n == 0) return NULL;
    if (n > 255 || is_digit(s[0])) return "not an environment variable name";
    for (size_t i = 0; i < n; i++)
        if (!is_alpha(s[i]) && !is_digit(s[i]) && s[i] != '_') return "not an environment variable name";
    return NULL;
}

const char *cf_check_network(const char *s)
{
    th_netacl acl = {0};
    char e[128];
    int rc = th_netacl_add(&acl, s, e, sizeof e);
    th_netacl_free(&acl);
    return rc == 0
               ? NULL
               : "must be a network: a CIDR (10.0.0.0/8, fd00::/8), an address, or loopback | private | any";
}

const char *cf_check_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0) return "must not be empty";
    if (n > 64) return "longer than 64 characters";
    for (size_t i = 0; i < n; i++)
        if (!is_alpha(s[i]) && !is_digit(s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
            return "may hold only letters, digits, '_', '-' and '.'";
    return NULL;
}

const char *cf_check_nonempty(const char *s)
{
    return s[0] ? NULL : "must not be empty";
}

const char *cf_check_hex64(const char *s)
{
    size_t n = strlen(s);
    if (n != 64) return "must be 64 hex characters (the sha256 of the key)";
    for (size_t i = 0; i < n; i++)
        if (!is_hex(s[i])) return "must be 64 hex characters (the sha256 of the key)";
    return NULL;
}

const char *cf_check_region(const char *s)
{
    if (s[0] == 0) return "must not be empty";
    for (const char *p = s; *p; p++)
        if (!(*p >= 'a' && *p <= 'z') && !is_digit(*p)) return "not an Azure region (like westeurope)";
    return NULL;
}
