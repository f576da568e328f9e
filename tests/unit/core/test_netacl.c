/* Unit tests of core/netacl (networks, forbidden node addresses, per-IP keys) and core/iprate. */
#include "core/iprate.h"
#include "core/netacl.h"
#include "th_test.h"

static th_netacl acl_of(const char *const *items, size_t n)
{
    th_netacl a;
    char err[128];
    if (th_netacl_parse(&a, items, n, err, sizeof err) != 0) a.n = 0, a.nets = NULL;
    return a;
}

TH_TEST(netacl_names_and_cidrs)
{
    static const char *const def[] = {"loopback", "private"};
    th_netacl a = acl_of(def, 2);
    TH_CHECK(th_netacl_match_text(&a, "127.0.0.1"));
    TH_CHECK(th_netacl_match_text(&a, "127.9.9.9"));
    TH_CHECK(th_netacl_match_text(&a, "::1"));
    TH_CHECK(th_netacl_match_text(&a, "10.1.2.3"));
    TH_CHECK(th_netacl_match_text(&a, "172.31.255.255"));
    TH_CHECK(!th_netacl_match_text(&a, "172.32.0.1"));
    TH_CHECK(th_netacl_match_text(&a, "192.168.0.10"));
    TH_CHECK(th_netacl_match_text(&a, "fd12::1"));
    TH_CHECK(th_netacl_match_text(&a, "::ffff:10.0.0.1")); /* mapped IPv4 */
    TH_CHECK(!th_netacl_match_text(&a, "8.8.8.8"));
    TH_CHECK(!th_netacl_match_text(&a, "2001:db8::1"));
    TH_CHECK(!th_netacl_match_text(&a, "not an address"));
    th_netacl_free(&a);
    static const char *const some[] = {"192.0.2.0/24", "2001:db8:1::/48", "198.51.100.7"};
    a = acl_of(some, 3);
    TH_CHECK(a.n == 3);
    TH_CHECK(th_netacl_match_text(&a, "192.0.2.200"));
    TH_CHECK(!th_netacl_match_text(&a, "192.0.3.1"));
    TH_CHECK(th_netacl_match_text(&a, "2001:db8:1:ffff::1"));
    TH_CHECK(!th_netacl_match_text(&a, "2001:db8:2::1"));
    TH_CHECK(th_netacl_match_text(&a, "198.51.100.7"));
    TH_CHECK(!th_netacl_match_text(&a, "198.51.100.8"));
    th_netacl_free(&a);
    th_netacl e;
    char err[128];
    static const char *const bad[][1] = {{"10.0.0.0/33"}, {"::/129"},    {"x"}, {""},
                                         {"10.0.0.0/"},   {"1.2.3.4/-1"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        TH_CHECK(th_netacl_parse(&e, bad[i], 1, err, sizeof err) != 0);
    static const char *const any[] = {"any"};
    a = acl_of(any, 1);
    TH_CHECK(th_netacl_match_text(&a, "8.8.8.8") && th_netacl_match_text(&a, "2001:db8::1"));
    th_netacl_free(&a);
}

TH_TEST(netacl_forbidden_addresses)
{
    static const char *const no[] = {
        "169.254.169.254",   "169.254.0.1",     "0.0.0.0", "0.1.2.3",
        "224.0.0.1",         "255.255.255.255", "fe80::1", "fe80::a:b",
        "fd00:ec2::254",     "ff02::1",         "::",      "::ffff:169.254.169.254",
        "2002:a9fe:a9fe::1", "100.100.100.200"};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        uint8_t a[16];
        TH_CHECK(th_net_parse_addr(no[i], a) == 0);
        if (!th_net_forbidden(a)) fprintf(stderr, "not forbidden: %s\n", no[i]);
        TH_CHECK(th_net_forbidden(a));
    }
    static const char *const yes[] = {"127.0.0.1", "10.0.0.1",    "192.168.1.1", "fd00:ec2::253",
                                      "::1",       "2001:db8::1", "8.8.8.8"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        uint8_t a[16];
        TH_CHECK(th_net_parse_addr(yes[i], a) == 0);
        TH_CHECK(!th_net_forbidden(a));
    }
}

TH_TEST(net_ip_key_uses_the_64)
{
    char k1[64], k2[64];
    th_net_ip_key("2001:db8:1:2:aaaa::1", k1, sizeof k1);
    th_net_ip_key("2001:0db8:0001:0002:ffff:ffff:ffff:ffff", k2, sizeof k2);
    TH_CHECK_STR(k1, "2001:db8:1:2::/64");
    TH_CHECK_STR(k1, k2);
    th_net_ip_key("2001:db8:1:3::1", k2, sizeof k2);
    TH_CHECK(strcmp(k1, k2) != 0);
    th_net_ip_key("10.0.0.1", k1, sizeof k1);
    TH_CHECK_STR(k1, "10.0.0.1");
    th_net_ip_key("::ffff:10.0.0.1", k2, sizeof k2);
    TH_CHECK_STR(k2, "10.0.0.1"); /* a mapped IPv4 counts as that IPv4 */
    th_net_ip_key("junk", k1, sizeof k1);
    TH_CHECK_STR(k1, "junk");
}

TH_TEST(iprate_caps_and_windows)
{
    th_iprate *t = th_iprate_new(64);
    TH_REQUIRE(t != NULL);
    /* 3 per minute */
    for (int i = 0; i < 3; i++)
        TH_CHECK(th_iprate_hit(t, "10.0.0.1", 1000, 3));
    TH_CHECK(!th_iprate_hit(t, "10.0.0.1", 1000, 3));
    TH_CHECK(th_iprate_hit(t, "10.0.0.2", 1000, 3));          /* another address: its own budget */
    TH_CHECK(th_iprate_hit(t, "10.0.0.1", 1000 + 120000, 3)); /* two windows later */
    /* open slots, per /64 */
    TH_CHECK_INT(th_iprate_acquire(t, "2001:db8::1", 1000, 2), 1);
    TH_CHECK_INT(th_iprate_acquire(t, "2001:db8::2", 1000, 2), 1);
    TH_CHECK_INT(th_iprate_acquire(t, "2001:db8::3", 1000, 2), 0);
    TH_CHECK_INT(th_iprate_acquire(t, "2001:db8:0:1::3", 1000, 2), 1);
    TH_CHECK_INT((int)th_iprate_open(t, "2001:db8::ffff"), 2);
    th_iprate_release(t, "2001:db8::1");
    TH_CHECK_INT(th_iprate_acquire(t, "2001:db8::9", 1000, 2), 1);
    TH_CHECK_INT(th_iprate_acquire(t, "x", 1000, 0), -1); /* cap 0: uncounted */
    th_iprate_free(t);
    /* a flood of distinct /64s fills the table: new ones pass uncounted, the held ones keep their counts */
    t = th_iprate_new(64);
    TH_REQUIRE(t != NULL);
    TH_CHECK_INT(th_iprate_acquire(t, "10.9.9.9", 0, 1), 1);
    int uncounted = 0;
    for (int i = 0; i < 1000; i++) {
        char ip[64];
        snprintf(ip, sizeof ip, "2001:db8:%x:%x::1", i / 65536, i % 65536);
        if (th_iprate_acquire(t, ip, 0, 1) == -1) uncounted++;
    }
    TH_CHECK(uncounted > 0);
    TH_CHECK(th_iprate_entries(t) <= 64);
    TH_CHECK_INT(th_iprate_acquire(t, "10.9.9.9", 0, 1), 0);
    th_iprate_free(t);
}

TH_TEST_MAIN()
