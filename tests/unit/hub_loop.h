/* hub_loop: runs a test's uv loop until something happened or a time limit passed.
 *
 *   hl_run_until(&loop, &got.n, 1, 2000);     // until a counter reaches 1, at most 2 s: true if it did
 *   hl_run_until_set(&loop, &r.done, 2000);   // until a flag is non-zero, at most 2 s of loop time
 *   hl_run_until_set(&loop, NULL, 100);       // just run the loop for 100 ms
 *
 * A repeating 5 ms timer keeps UV_RUN_ONCE returning while nothing else is pending.
 */
#ifndef TH_TEST_HUB_LOOP_H
#define TH_TEST_HUB_LOOP_H

#include "core/clock.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

__attribute__((unused)) static void hl_on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *flag (a counter) reaches want, or timeout_ms passes. */
__attribute__((unused)) static bool hl_run_until(uv_loop_t *loop, const int *flag, int want,
                                                 uint64_t timeout_ms)
{
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, hl_on_tick, 5, 5);
    uint64_t deadline = th_mono_ms() + timeout_ms;
    while (*flag < want && th_mono_ms() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *flag >= want;
}

/* Runs the loop until *flag is non-zero (never when flag is NULL) or ms of loop time pass. */
__attribute__((unused)) static void hl_run_until_set(uv_loop_t *loop, const int *flag, uint64_t ms)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, hl_on_tick, 5, 5);
    uint64_t end = uv_now(loop) + ms;
    while ((flag == NULL || !*flag) && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

#endif
