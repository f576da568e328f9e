/* worker: `ttshub worker`, an engine node that registers itself with a gateway (API.md "Worker
 * registry", "What a node must serve").
 *
 * The node is a hub of its own (the same HTTP server and synthesis pipeline) with one provider, the
 * engine: the embedded espeak-ng, or an engine kind at --engine-url. It serves
 *   POST /synthesize  {text, voice|voice_id, format|output_format, speed, pitch?, language, engine?,
 *                     reference_sha256?...} -> audio in that format,
 *                     errors {"success":false,"message","code"} (503 in standby, stopping or full);
 *   POST /extract_voice (seed-2, multipart) -> a voice in the node's reference store (worker/extract.h);
 *   GET  /health, GET /info, POST /command {command: activate|load_model|standby|unload_model|stop}.
 * It registers with the gateway (POST /api/nodes/register with url, host and port, retried with backoff
 * from 0.5 s to 10 s while the gateway is unreachable or refuses), heartbeats at the interval the gateway
 * gives (else --heartbeat-interval), registers again when a heartbeat gets 404 or {"success":false}, and
 * unregisters (DELETE /api/nodes/{id}, 2 s at most) when it stops on SIGTERM/SIGINT or the stop command.
 * The gateway is ttshub's registry or the seed-2 gateway (voice-clone-tts): --gateway-protocol, or found
 * out from FastAPI's 422 to the first registration; with seed-2 the node speaks NodeInfo/NodeMetrics and
 * its status words, and registers again after a load (that gateway reads model_loaded only there). The
 * cluster token comes from the variable --token-env names (TTSHUB_CLUSTER_TOKEN). */
#ifndef TH_WORKER_WORKER_H
#define TH_WORKER_WORKER_H

/** `ttshub worker ...` (argv[0] is "worker"). Returns the exit code. */
int th_worker_main(int argc, char **argv);

#endif
