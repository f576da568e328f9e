/* sdnotify: the systemd notification protocol (sd_notify(3)), for Type=notify units.
 *
 * A datagram of "KEY=VALUE\n..." lines to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or
 * "@name" for the abstract namespace). The protocol is small and stable, so it is spoken here rather
 * than by linking libsystemd: the binary runs the same with or without systemd, in a container too.
 * Without $NOTIFY_SOCKET every call does nothing. */
#ifndef TH_CORE_SDNOTIFY_H
#define TH_CORE_SDNOTIFY_H

/** Sends state ("READY=1", "RELOADING=1\nMONOTONIC_USEC=...", "STOPPING=1", "STATUS=..."). Returns 1 when
 * sent, 0 when there is no $NOTIFY_SOCKET, -1 on error. Never blocks. */
int th_sd_notify(const char *state);

#endif
