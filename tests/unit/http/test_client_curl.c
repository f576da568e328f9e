/* test_client_curl: every th_client case of test_client.c, run on the libcurl engine. */
#define TEST_CLIENT_ENGINE TH_CLIENT_ENGINE_CURL
#include "test_client.c"
