/* worker/extract: which ids belong to the reference store (never a client's voice_id). */
#include "th_test.h"

#include <string.h>

#include "worker/extract.h"
#include "worker/refs.h"

TH_TEST(content_ids)
{
    char id[65];
    TH_CHECK_INT(th_wref_id("ab", "text", "en", id), 0);
    TH_CHECK(th_wextract_is_content_id(id)); /* what the store makes for the gateway's references */
    char other[65];
    memcpy(other, id, sizeof other);
    other[10] = 'G'; /* not hex */
    TH_CHECK(!th_wextract_is_content_id(other));
    other[10] = 'A'; /* upper case is not the store's */
    TH_CHECK(!th_wextract_is_content_id(other));
    TH_CHECK(!th_wextract_is_content_id(id + 1)); /* 63 characters */
    TH_CHECK(!th_wextract_is_content_id("amy"));
    TH_CHECK(!th_wextract_is_content_id(""));
    memcpy(other, id, sizeof other);
    other[0] = 's';
    TH_CHECK(!th_wextract_is_content_id(other));
}

TH_TEST_MAIN()
