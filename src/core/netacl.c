/* netacl: network lists, forbidden node addresses and per-IP keys (see netacl.h). */
#include "core/netacl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/str.h"

static const uint8_t V4MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static bool is_v4(const uint8_t a[16])
{
    return memcmp(a, V4MAPPED, 12) == 0;
}

int th_net_parse_addr(const char *s, uint8_t out[16])
{
    struct in_addr v4;
    struct in6_addr v6;
    if (s == NULL) return -1;
    if (inet_pton(AF_INET, s, &v4) == 1) {
        memcpy(out, V4MAPPED, 12);
        memcpy(out + 12, &v4, 4);
        return 0;
    }
    if (inet_pton(AF_INET6, s, &v6) == 1) {
        memcpy(out, &v6, 16);
        return 0;
    }
    return -1;
}

int th_net_from_sa(const struct sockaddr *sa, uint8_t out[16])
{
    if (sa == NULL) return -1;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(out, V4MAPPED, 12);
        memcpy(out + 12, &in->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        memcpy(out, &in6->sin6_addr, 16);
        return 0;
    }
    return -1;
}

static bool in_net(const uint8_t a[16], const uint8_t net[16], int prefix)
{
    int full = prefix / 8, rest = prefix % 8;
    if (memcmp(a, net, (size_t)full) != 0) return false;
    if (rest == 0) return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (net[full] & mask);
}

static int push(th_netacl *acl, const uint8_t addr[16], int prefix)
{
    th_net *n = realloc(acl->nets, (acl->n + 1) * sizeof *n);
    if (n == NULL) return -1;
    acl->nets = n;
    memcpy(n[acl->n].addr, addr, 16);
    n[acl->n].prefix = prefix;
    acl->n++;
    return 0;
}

static int push_text(th_netacl *acl, const char *addr, int prefix)
{
    uint8_t a[16];
    if (th_net_parse_addr(addr, a) != 0) return -1;
    return push(acl, a, prefix);
}

int th_netacl_add(th_netacl *acl, const char *s, char *err, size_t errlen)
{
    if (s == NULL || *s == 0) {
        snprintf(err, errlen, "an empty network");
        return -1;
    }
    int rc = 0;
    if (strcmp(s, "loopback") == 0) {
        rc |= push_text(acl, "127.0.0.0", 96 + 8);
        rc |= push_text(acl, "::1", 128);
    } else if (strcmp(s, "private") == 0) {
        rc |= push_text(acl, "10.0.0.0", 96 + 8);
        rc |= push_text(acl, "172.16.0.0", 96 + 12);
        rc |= push_text(acl, "192.168.0.0", 96 + 16);
        rc |= push_text(acl, "100.64.0.0", 96 + 10);
        rc |= push_text(acl, "fc00::", 7);
    } else if (strcmp(s, "any") == 0) {
        rc |= push_text(acl, "::", 0);
    } else {
        char buf[64];
        const char *slash = strchr(s, '/');
        size_t alen = slash ? (size_t)(slash - s) : strlen(s);
        if (alen == 0 || alen >= sizeof buf) {
            snprintf(err, errlen, "'%.60s' is not a network (CIDR such as 10.0.0.0/8 or fd00::/8)", s);
            return -1;
        }
        memcpy(buf, s, alen);
        buf[alen] = 0;
        uint8_t a[16];
        if (th_net_parse_addr(buf, a) != 0) {
            snprintf(err, errlen, "'%.60s' is not a network (CIDR such as 10.0.0.0/8 or fd00::/8)", s);
            return -1;
        }
        bool v4 = strchr(buf, ':') == NULL;
        int64_t p = v4 ? 32 : 128;
        if (slash && th_str_to_i64(slash + 1, 0, v4 ? 32 : 128, &p) != 0) {
            snprintf(err, errlen, "'%.60s': the prefix length must be 0-%d", s, v4 ? 32 : 128);
            return -1;
        }
        rc = push(acl, a, (int)p + (v4 ? 96 : 0));
    }
    if (rc != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int th_netacl_parse(th_netacl *acl, const char *const *items, size_t n, char *err, size_t errlen)
{
    acl->nets = NULL;
    acl->n = 0;
    for (size_t i = 0; i < n; i++)
        if (th_netacl_add(acl, items[i], err, errlen) != 0) {
            th_netacl_free(acl);
            return -1;
        }
    return 0;
}

void th_netacl_free(th_netacl *acl)
{
    free(acl->nets);
    acl->nets = NULL;
    acl->n = 0;
}

bool th_netacl_match(const th_netacl *acl, const uint8_t addr[16])
{
    for (size_t i = 0; acl && i < acl->n; i++)
        if (in_net(addr, acl->nets[i].addr, acl->nets[i].prefix)) return true;
    return false;
}

bool th_netacl_match_text(const th_netacl *acl, const char *ip)
{
    uint8_t a[16];
    return th_net_parse_addr(ip, a) == 0 && th_netacl_match(acl, a);
}

bool th_netacl_match_sa(const th_netacl *acl, const struct sockaddr *sa)
{
    uint8_t a[16];
    return th_net_from_sa(sa, a) == 0 && th_netacl_match(acl, a);
}

bool th_net_is_loopback(const uint8_t a[16])
{
    static const uint8_t one[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    return (is_v4(a) && a[12] == 127) || memcmp(a, one, 16) == 0;
}

bool th_net_forbidden(const uint8_t a[16])
{
    static const uint8_t zero[16] = {0};
    static const uint8_t ec2[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
    if (is_v4(a)) {
        const uint8_t *v = a + 12;
        if (v[0] == 0) return true;                  /* 0.0.0.0/8 */
        if (v[0] == 169 && v[1] == 254) return true; /* link-local, 169.254.169.254 metadata */
        if (v[0] >= 224) return true;                /* multicast, reserved, broadcast */
        if (v[0] == 100 && v[1] == 100 && v[2] == 100 && v[3] == 200) return true; /* Alibaba metadata */
        return false;
    }
    if (memcmp(a, zero, 16) == 0) return true;              /* :: */
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) return true; /* fe80::/10 link-local */
    if (a[0] == 0xff) return true;                          /* multicast */
    if (memcmp(a, ec2, 16) == 0) return true;               /* AWS IMDS over IPv6 */
    if (a[0] == 0x20 && a[1] == 0x02) {                     /* 6to4 of a forbidden IPv4 */
        uint8_t m[16];
        memcpy(m, V4MAPPED, 12);
        memcpy(m + 12, a + 2, 4);
        return th_net_forbidden(m);
    }
    return false;
}

void th_net_ip_key(const char *ip, char *out, size_t outlen)
{
    if (outlen == 0) return;
    uint8_t a[16];
    if (ip == NULL || th_net_parse_addr(ip, a) != 0) {
        th_strlcpy(out, ip ? ip : "", outlen);
        return;
    }
    if (is_v4(a)) {
        snprintf(out, outlen, "%u.%u.%u.%u", a[12], a[13], a[14], a[15]);
        return;
    }
    snprintf(out, outlen, "%x:%x:%x:%x::/64", (unsigned)(a[0] << 8 | a[1]), (unsigned)(a[2] << 8 | a[3]),
             (unsigned)(a[4] << 8 | a[5]), (unsigned)(a[6] << 8 | a[7]));
}
