/* th_test: a tiny unit-test harness. Each test file is one CTest test.
 *
 *   TH_TEST(name) { TH_CHECK(x == 1); TH_CHECK_STR(a, "b"); }
 *   int main(void) { return th_test_run(); }   -- via TH_TEST_MAIN()
 */
#ifndef TH_TEST_H
#define TH_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct th_test_case {
    const char *name;
    void (*fn)(int *failed);
} th_test_case;

#define TH_TEST_MAX 256
static th_test_case th_test_cases[TH_TEST_MAX];
static int th_test_ncases;

#define TH_TEST(name)                                                                                        \
    static void name(int *th__failed);                                                                       \
    __attribute__((constructor)) static void th__reg_##name(void)                                            \
    {                                                                                                        \
        if (th_test_ncases < TH_TEST_MAX) th_test_cases[th_test_ncases++] = (th_test_case){#name, name};     \
    }                                                                                                        \
    static void name(int *th__failed)

#define TH_CHECK(cond)                                                                                       \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                         \
            (*th__failed)++;                                                                                 \
        }                                                                                                    \
    } while (0)

#define TH_CHECK_STR(a, b)                                                                                   \
    do {                                                                                                     \
        const char *th__a = (a), *th__b = (b);                                                               \
        if (th__a == NULL || th__b == NULL || strcmp(th__a, th__b) != 0) {                                   \
            fprintf(stderr, "%s:%d: \"%s\" != \"%s\" (%s vs %s)\n", __FILE__, __LINE__,                      \
                    th__a ? th__a : "(null)", th__b ? th__b : "(null)", #a, #b);                             \
            (*th__failed)++;                                                                                 \
        }                                                                                                    \
    } while (0)

#define TH_CHECK_INT(a, b)                                                                                   \
    do {                                                                                                     \
        long long th__a = (long long)(a), th__b = (long long)(b);                                            \
        if (th__a != th__b) {                                                                                \
            fprintf(stderr, "%s:%d: %lld != %lld (%s vs %s)\n", __FILE__, __LINE__, th__a, th__b, #a, #b);   \
            (*th__failed)++;                                                                                 \
        }                                                                                                    \
    } while (0)

#define TH_REQUIRE(cond)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "%s:%d: requirement failed: %s\n", __FILE__, __LINE__, #cond);                   \
            (*th__failed)++;                                                                                 \
            return;                                                                                          \
        }                                                                                                    \
    } while (0)

static inline int th_test_run(void)
{
    int passed = 0, failed = 0;
    for (int i = 0; i < th_test_ncases; i++) {
        int f = 0;
        th_test_cases[i].fn(&f);
        if (f) {
            fprintf(stderr, "FAIL %s (%d checks)\n", th_test_cases[i].name, f);
            failed++;
        } else {
            fprintf(stderr, "ok   %s\n", th_test_cases[i].name);
            passed++;
        }
    }
    fprintf(stderr, "%d passed, %d failed\n", passed, failed);
    return (failed || passed == 0) ? 1 : 0;
}

#define TH_TEST_MAIN()                                                                                       \
    int main(void)                                                                                           \
    {                                                                                                        \
        return th_test_run();                                                                                \
    }

#endif
