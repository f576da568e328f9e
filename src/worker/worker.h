/* worker: `ttshub worker`, an engine node that registers itself with a gateway (API.md "Worker
 * registry", "What a node must serve").
 *
 * The node is a hub of its own (the same HTTP server and synthesis pipeline) with one provider, the
 * engine: the embedded espeak-ng, or an engine kind at --engine-url. It serves
 *   POST /synthesize  {text, voice, format, speed, language, reference?} -> audio in that format,
 *                     errors {"success":false,"message","code"} (503 in standby, stopping or full);
 *   GET  /health, GET /info, POST /command {command: activate|standby|stop}.
 * It registers with the gateway (POST /api/nodes/register, retried with backoff from 0.5 s to 10 s while
 * the gateway is unreachable or refuses), heartbeats at the interval the gateway gives, registers again
 * when a heartbeat gets 404, and unregisters (DELETE /api/nodes/{id}, 2 s at most) when it stops on
 * SIGTERM/SIGINT or the stop command. The cluster token comes from TTSHUB_CLUSTER_TOKEN. */
#ifndef TH_WORKER_WORKER_H
#define TH_WORKER_WORKER_H

/** `ttshub worker ...` (argv[0] is "worker"). Returns the exit code. */
int th_worker_main(int argc, char **argv);

#endif
