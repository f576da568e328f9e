/* netacl: lists of networks (CIDRs) and the address rules of the registry and per-IP limits.
 *
 * A list is parsed once from config strings: "10.0.0.0/8", "fd00::/8", "192.168.1.7" (a host), or the
 * names "loopback" (127.0.0.0/8, ::1), "private" (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) and
 * "any" (every address). An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is matched as the IPv4 address.
 * th_net_forbidden() names the addresses a node may never have whatever the lists say: unspecified,
 * link-local (169.254/16, fe80::/10; cloud metadata lives there), the AWS IPv6 metadata address
 * fd00:ec2::254, multicast and broadcast. th_net_ip_key() gives the key per-IP limits count under: the
 * address itself for IPv4, its /64 for IPv6 (one customer's allocation). Pure; any thread. */
#ifndef TH_CORE_NETACL_H
#define TH_CORE_NETACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct th_net {
    uint8_t addr[16]; /* IPv4 as ::ffff:a.b.c.d */
    int prefix;       /* over the 128 bits */
} th_net;

typedef struct th_netacl {
    th_net *nets;
    size_t n;
} th_netacl;

/** Text -> 16-byte address (IPv4 mapped). 0, or -1 when it is not an address. */
int th_net_parse_addr(const char *s, uint8_t out[16]);
/** One entry ("cidr", a host, or a name): 0, or -1 with err set. */
int th_netacl_add(th_netacl *acl, const char *s, char *err, size_t errlen);
/** A whole list (NULL/0 entries: an empty list). 0, or -1 with err set (acl left empty). */
int th_netacl_parse(th_netacl *acl, const char *const *items, size_t n, char *err, size_t errlen);
void th_netacl_free(th_netacl *acl);
bool th_netacl_match(const th_netacl *acl, const uint8_t addr[16]);
bool th_netacl_match_text(const th_netacl *acl, const char *ip);
bool th_netacl_match_sa(const th_netacl *acl, const struct sockaddr *sa);
/** sockaddr (AF_INET / AF_INET6) -> 16 bytes; -1 for other families. */
int th_net_from_sa(const struct sockaddr *sa, uint8_t out[16]);
/** Addresses no node may have (see above). */
bool th_net_forbidden(const uint8_t addr[16]);
bool th_net_is_loopback(const uint8_t addr[16]);
/** The per-IP key of a client address text: "a.b.c.d", or "xxxx:xxxx:xxxx:xxxx::/64" for IPv6; text that
 * is not an address is copied as it is (cut to fit). out has room for outlen bytes (>= 48 advised). */
void th_net_ip_key(const char *ip, char *out, size_t outlen);

#endif
