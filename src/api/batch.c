/* batch: POST /api/batch_synthesize. */
#include "api/api.h"

void th_api_clone_batch(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c = th_http_get_data(req);
    c->shape = TH_SHAPE_CLONE;
    c->route = "/api/batch_synthesize";
    th_api_error(c, 501, NULL, "not_implemented", "not yet");
}
