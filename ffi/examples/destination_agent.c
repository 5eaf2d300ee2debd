/*
 * A device program that makes its own local service reachable through a tunnel: it starts a
 * destination agent in-process (the relay dials nothing in; the agent connects out to the
 * relay) that forwards the tunnel's SERVICE streams to TARGET, then waits until the tunnel is
 * closed (the agent finishes) and says why.
 *
 *   cc destination_agent.c $(pkg-config --cflags --libs tunnel) -o destination_agent
 *   AWSIOT_TUNNEL_ACCESS_TOKEN=... ./destination_agent relay.example:8443 ca.pem SSH 127.0.0.1:22
 *
 * The destination access token comes from `splice-engine tunnel open` (or tunnel_api_open).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tunnel.h>

int main(int argc, char **argv) {
    char service[256];
    const char *services[1];
    const char *token = getenv("AWSIOT_TUNNEL_ACCESS_TOKEN");
    tunnel_agent_opts opts;
    tunnel_agent *agent = NULL;
    uint32_t state = TUNNEL_AGENT_CONNECTING;
    char *reason = NULL;
    if (argc != 5 || token == NULL) {
        fprintf(stderr, "usage: AWSIOT_TUNNEL_ACCESS_TOKEN=... %s RELAY CA SERVICE TARGET\n", argv[0]);
        return 2;
    }
    snprintf(service, sizeof service, "%s=%s", argv[3], argv[4]);
    services[0] = service;
    memset(&opts, 0, sizeof opts);
    opts.kind = TUNNEL_AGENT_DESTINATION;
    opts.relay = argv[1];
    opts.ca = argv[2];
    opts.token = token;
    opts.services = services;
    opts.services_len = 1;
    if (tunnel_agent_start(&opts, &agent) != TUNNEL_OK) {
        fprintf(stderr, "%s\n", tunnel_last_error());
        return 1;
    }
    /* The agent reconnects by itself; it finishes when the tunnel is closed or the relay
     * refuses the token. Wait for that, a minute at a time. */
    while (state != TUNNEL_AGENT_FINISHED && state != TUNNEL_AGENT_STOPPED) {
        if (tunnel_agent_wait_finished(agent, 60000, &state) != TUNNEL_OK) break;
    }
    tunnel_agent_state(agent, &state, &reason);
    printf("the agent finished: %s\n", reason ? reason : "");
    tunnel_string_free(reason);
    tunnel_agent_free(&agent);
    return 0;
}
