#include "th_test.h"

#include "routing/breaker.h"

static th_breaker_conf conf(int failures, double ratio, uint64_t window, uint64_t open_for, int probes)
{
    return (th_breaker_conf){.failures = failures,
                             .failure_ratio = ratio,
                             .window_ms = window,
                             .open_for_ms = open_for,
                             .half_open_probes = probes};
}

/* allow + record in one go */
static bool call(th_breaker *b, bool ok, uint64_t now)
{
    if (!th_breaker_allow(b, now)) return false;
    th_breaker_record(b, ok, now);
    return true;
}

TH_TEST(breaker_consecutive_failures_open)
{
    th_breaker b;
    th_breaker_conf c = conf(3, 0, 0, 1000, 1);
    th_breaker_init(&b, &c);
    TH_CHECK_INT(th_breaker_get(&b, 0), TH_BREAKER_CLOSED);
    TH_CHECK(call(&b, false, 10));
    TH_CHECK(call(&b, false, 20));
    TH_CHECK(call(&b, true, 30)); /* success resets the run */
    TH_CHECK(call(&b, false, 40));
    TH_CHECK(call(&b, false, 50));
    TH_CHECK_INT(th_breaker_get(&b, 50), TH_BREAKER_CLOSED);
    TH_CHECK(th_breaker_allow(&b, 60));
    TH_CHECK(th_breaker_record(&b, false, 60)); /* third in a row: state changed */
    TH_CHECK_INT(th_breaker_get(&b, 60), TH_BREAKER_OPEN);
    TH_CHECK(!th_breaker_allow(&b, 61));
    TH_CHECK(!th_breaker_available(&b, 1059));
    TH_CHECK_INT(b.transitions, 1);
    TH_CHECK_STR(th_breaker_state_name(TH_BREAKER_OPEN), "open");
    TH_CHECK_STR(th_breaker_state_name(TH_BREAKER_HALF_OPEN), "half_open");
    TH_CHECK_STR(th_breaker_state_name(TH_BREAKER_CLOSED), "closed");
}

TH_TEST(breaker_defaults_normalised)
{
    th_breaker b;
    th_breaker_conf c = conf(0, -1, 0, 100, 0);
    th_breaker_init(&b, &c);
    TH_CHECK_INT(b.conf.failures, 5);
    TH_CHECK_INT(b.conf.half_open_probes, 1);
    for (int i = 0; i < 4; i++)
        TH_CHECK(call(&b, false, (uint64_t)i));
    TH_CHECK_INT(th_breaker_get(&b, 4), TH_BREAKER_CLOSED);
    TH_CHECK(call(&b, false, 5));
    TH_CHECK_INT(th_breaker_get(&b, 5), TH_BREAKER_OPEN);
}

TH_TEST(breaker_ratio_rule)
{
    th_breaker b;
    /* 5 consecutive would open, but failures interleave with successes; ratio 0.5 over 10 s */
    th_breaker_conf c = conf(5, 0.5, 10000, 5000, 1);
    th_breaker_init(&b, &c);
    uint64_t t = 1000;
    TH_CHECK(call(&b, false, t));
    TH_CHECK(call(&b, true, t += 100));
    TH_CHECK(call(&b, false, t += 100));
    TH_CHECK(call(&b, true, t += 100));
    /* 2 of 4 failed: ratio reached but fewer than `failures` calls in the window */
    TH_CHECK_INT(th_breaker_get(&b, t), TH_BREAKER_CLOSED);
    TH_CHECK(th_breaker_error_rate(&b, t) > 0.49 && th_breaker_error_rate(&b, t) < 0.51);
    TH_CHECK(th_breaker_allow(&b, t += 100));
    TH_CHECK(th_breaker_record(&b, false, t)); /* 3 of 5 */
    TH_CHECK_INT(th_breaker_get(&b, t), TH_BREAKER_OPEN);
}

TH_TEST(breaker_ratio_below_threshold_stays_closed)
{
    th_breaker b;
    th_breaker_conf c = conf(5, 0.5, 10000, 5000, 1);
    th_breaker_init(&b, &c);
    uint64_t t = 0;
    for (int i = 0; i < 100; i++) {
        TH_CHECK(call(&b, i % 3 == 0 ? false : true, t)); /* 34% failures */
        t += 50;
    }
    TH_CHECK_INT(th_breaker_get(&b, t), TH_BREAKER_CLOSED);
    double r = th_breaker_error_rate(&b, t);
    TH_CHECK(r > 0.25 && r < 0.45);
}

TH_TEST(breaker_window_expiry)
{
    th_breaker b;
    th_breaker_conf c = conf(5, 0.5, 10000, 5000, 1);
    th_breaker_init(&b, &c);
    /* 4 failures of 12 early on: below the ratio */
    uint64_t t = 0;
    for (int i = 0; i < 4; i++) {
        TH_CHECK(call(&b, false, t));
        TH_CHECK(call(&b, true, t + 1));
        TH_CHECK(call(&b, true, t + 2));
        t += 10;
    }
    TH_CHECK_INT(th_breaker_get(&b, 100), TH_BREAKER_CLOSED);
    double r0 = th_breaker_error_rate(&b, 100);
    TH_CHECK(r0 > 0.33 && r0 < 0.34);
    TH_CHECK(th_breaker_error_rate(&b, 9999) > 0.33); /* still inside the 10 s window */
    /* 30 s later the window has forgotten them */
    t = 30000;
    TH_CHECK(th_breaker_error_rate(&b, t) == 0);
    TH_CHECK(call(&b, false, t));
    TH_CHECK(call(&b, true, t + 1));
    TH_CHECK(call(&b, true, t + 2));
    TH_CHECK(call(&b, true, t + 3));
    TH_CHECK_INT(th_breaker_get(&b, t + 3), TH_BREAKER_CLOSED);
    /* buckets slide: failures at 30 s, 35 s; at 41 s the one at 30 s is out */
    TH_CHECK(call(&b, false, 35000));
    double r1 = th_breaker_error_rate(&b, 35000);
    double r2 = th_breaker_error_rate(&b, 41000);
    TH_CHECK(r1 > 0.39 && r1 < 0.41); /* 2 of 5 */
    TH_CHECK(r2 == 1.0);              /* only the 35 s failure is left */
}

TH_TEST(breaker_half_open_probes_all_succeed)
{
    th_breaker b;
    th_breaker_conf c = conf(2, 0, 0, 1000, 2);
    th_breaker_init(&b, &c);
    TH_CHECK(call(&b, false, 0));
    TH_CHECK(call(&b, false, 0));
    TH_CHECK_INT(th_breaker_get(&b, 999), TH_BREAKER_OPEN);
    TH_CHECK(!th_breaker_allow(&b, 999));
    TH_CHECK_INT(th_breaker_get(&b, 1000), TH_BREAKER_HALF_OPEN);
    TH_CHECK(th_breaker_available(&b, 1000));
    TH_CHECK_INT(b.state, TH_BREAKER_OPEN); /* available() does not move it */
    TH_CHECK(th_breaker_allow(&b, 1000));
    TH_CHECK_INT(b.state, TH_BREAKER_HALF_OPEN);
    TH_CHECK(th_breaker_allow(&b, 1001));
    TH_CHECK(!th_breaker_allow(&b, 1002)); /* exactly two probes */
    TH_CHECK(!th_breaker_available(&b, 1002));
    TH_CHECK(!th_breaker_record(&b, true, 1003));
    TH_CHECK_INT(th_breaker_get(&b, 1003), TH_BREAKER_HALF_OPEN);
    TH_CHECK(!th_breaker_allow(&b, 1003)); /* the finished probe's slot is not reused */
    TH_CHECK(th_breaker_record(&b, true, 1004));
    TH_CHECK_INT(th_breaker_get(&b, 1004), TH_BREAKER_CLOSED);
    TH_CHECK_INT(b.transitions, 3);
    TH_CHECK(th_breaker_error_rate(&b, 1004) == 0);
    /* closed again with a fresh run count */
    TH_CHECK(call(&b, false, 1100));
    TH_CHECK_INT(th_breaker_get(&b, 1100), TH_BREAKER_CLOSED);
}

TH_TEST(breaker_half_open_probe_fails_reopens)
{
    th_breaker b;
    th_breaker_conf c = conf(1, 0, 0, 1000, 3);
    th_breaker_init(&b, &c);
    TH_CHECK(call(&b, false, 0));
    TH_CHECK_INT(th_breaker_get(&b, 0), TH_BREAKER_OPEN);
    TH_CHECK(th_breaker_allow(&b, 1500));
    TH_CHECK(th_breaker_allow(&b, 1500));
    TH_CHECK(!th_breaker_record(&b, true, 1600));
    TH_CHECK(th_breaker_record(&b, false, 1700)); /* one fails: open again */
    TH_CHECK_INT(th_breaker_get(&b, 1700), TH_BREAKER_OPEN);
    /* fresh open_for from 1700 */
    TH_CHECK(!th_breaker_allow(&b, 2600));
    TH_CHECK_INT(th_breaker_get(&b, 2699), TH_BREAKER_OPEN);
    TH_CHECK(th_breaker_allow(&b, 2700));
    TH_CHECK_INT(th_breaker_get(&b, 2700), TH_BREAKER_HALF_OPEN);
    TH_CHECK_INT(b.probes_out, 1);
    TH_CHECK_INT(b.probes_ok, 0);
}

TH_TEST(breaker_release_returns_probe)
{
    th_breaker b;
    th_breaker_conf c = conf(1, 0, 0, 100, 1);
    th_breaker_init(&b, &c);
    TH_CHECK(call(&b, false, 0));
    TH_CHECK(th_breaker_allow(&b, 100));
    TH_CHECK(!th_breaker_allow(&b, 100));
    th_breaker_release(&b); /* the client went away */
    TH_CHECK_INT(th_breaker_get(&b, 101), TH_BREAKER_HALF_OPEN);
    TH_CHECK(th_breaker_available(&b, 101));
    TH_CHECK(th_breaker_allow(&b, 101));
    TH_CHECK(th_breaker_record(&b, true, 102));
    TH_CHECK_INT(th_breaker_get(&b, 102), TH_BREAKER_CLOSED);
    /* release while closed, and extra releases, change nothing */
    th_breaker_release(&b);
    th_breaker_release(&b);
    TH_CHECK_INT(b.probes_out, 0);
    TH_CHECK_INT(th_breaker_get(&b, 103), TH_BREAKER_CLOSED);
}

TH_TEST(breaker_stale_outcomes_ignored)
{
    th_breaker b;
    th_breaker_conf c = conf(2, 0, 0, 1000, 1);
    th_breaker_init(&b, &c);
    /* three calls allowed while closed; two fail and open it; the third reports while open */
    TH_CHECK(th_breaker_allow(&b, 0));
    TH_CHECK(th_breaker_allow(&b, 0));
    TH_CHECK(th_breaker_allow(&b, 0));
    TH_CHECK(!th_breaker_record(&b, false, 1));
    TH_CHECK(th_breaker_record(&b, false, 2));
    TH_CHECK(!th_breaker_record(&b, true, 3));
    TH_CHECK_INT(th_breaker_get(&b, 3), TH_BREAKER_OPEN);
    /* half-open with no probe out: an outcome is not a probe */
    TH_CHECK_INT(th_breaker_get(&b, 1002), TH_BREAKER_HALF_OPEN);
    TH_CHECK(th_breaker_allow(&b, 1002));
    th_breaker_release(&b);
    TH_CHECK(!th_breaker_record(&b, false, 1003));
    TH_CHECK_INT(th_breaker_get(&b, 1003), TH_BREAKER_HALF_OPEN);
}

TH_TEST_MAIN()
