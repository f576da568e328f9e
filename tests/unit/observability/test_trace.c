#include "th_test.h"

#include <string.h>
#include <uv.h>

#include "observability/trace.h"

TH_TEST(trace_parent_parse_and_format)
{
    th_trace_ctx c;
    TH_REQUIRE(th_trace_parse_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &c));
    TH_CHECK(c.valid && c.sampled);
    TH_CHECK_INT(c.trace_id[0], 0x4b);
    TH_CHECK_INT(c.span_id[7], 0xb7);
    char out[TH_TRACEPARENT_LEN + 1];
    th_trace_format_parent(&c, out);
    TH_CHECK_STR(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    TH_CHECK(th_trace_parse_parent("  00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ", &c));
    TH_CHECK(c.valid && !c.sampled);
    /* a later version may carry more fields */
    TH_CHECK(th_trace_parse_parent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abc", &c));
    static const char *const bad[] = {
        NULL,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",    /* short */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", /* 00 with extra */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* version ff */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   /* zero trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   /* zero span id */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   /* upper case */
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",   /* separators */
        "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",   /* not hex */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  /* junk after the flags */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        TH_CHECK(!th_trace_parse_parent(bad[i], &c));
        TH_CHECK(!c.valid);
    }
}

TH_TEST(trace_sampling_and_spans)
{
    uv_loop_t loop;
    TH_REQUIRE(uv_loop_init(&loop) == 0);
    TH_CHECK(th_tracer_new(&loop, "", "x", 1.0, NULL) == NULL); /* off */
    TH_CHECK(th_span_start(NULL, "x", TH_SPAN_SERVER, NULL) == NULL);
    th_tracer *t = th_tracer_new(&loop, "http://127.0.0.1:9/", "svc", 0.0, NULL);
    TH_REQUIRE(t);
    TH_CHECK(th_span_start(t, "unsampled", TH_SPAN_SERVER, NULL) == NULL); /* ratio 0 */
    th_trace_ctx parent;
    TH_REQUIRE(th_trace_parse_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &parent));
    th_span *s = th_span_start(t, "root", TH_SPAN_SERVER, &parent); /* the sampled parent decides */
    TH_REQUIRE(s);
    th_trace_ctx c;
    th_span_ctx(s, &c);
    TH_CHECK(memcmp(c.trace_id, parent.trace_id, 16) == 0);
    TH_CHECK(memcmp(c.span_id, parent.span_id, 8) != 0);
    th_span *child = th_span_start(t, "child", TH_SPAN_CLIENT, &c);
    TH_REQUIRE(child);
    th_span_attr_str(child, "k", "v");
    th_span_attr_int(child, "n", 42);
    th_span_error(child, "failed");
    th_span_end(child);
    parent.sampled = false;
    TH_CHECK(th_span_start(t, "x", TH_SPAN_SERVER, &parent) == NULL);
    th_span_drop(s);
    TH_CHECK_INT(th_tracer_dropped(t), 0);
    /* close sends the one waiting span (to a closed port: it fails quietly) and frees itself */
    th_tracer_close(t);
    uv_run(&loop, UV_RUN_DEFAULT);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST_MAIN()
