/* loop_until: runs a provider test's uv loop until a predicate holds or a time limit passes.
 *
 *   TH_CHECK(lu_run_until(&loop, col_ended, &c, 5000));   // false when 5 s passed first
 *
 * A repeating 10 ms timer keeps UV_RUN_ONCE returning while nothing else is pending.
 */
#ifndef TH_TEST_LOOP_UNTIL_H
#define TH_TEST_LOOP_UNTIL_H

#include "core/clock.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

__attribute__((unused)) static void lu_tick_cb(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until done(arg) (never when done is NULL) or max_ms pass; true when done(arg) held. */
__attribute__((unused)) static bool lu_run_until(uv_loop_t *loop, bool (*done)(void *), void *arg,
                                                 uint64_t max_ms)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, lu_tick_cb, 10, 10);
    uint64_t end = th_mono_ms() + max_ms;
    bool ok = false;
    while (th_mono_ms() < end) {
        if (done != NULL && done(arg)) {
            ok = true;
            break;
        }
        uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

#endif
