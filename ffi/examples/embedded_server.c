/*
 * A plain-TCP server that takes TLS without a TLS stack of its own: it starts a server-mode
 * forwarder in-process (TLS in on LISTEN, plain TCP out to its own port BACKEND), then serves
 * its plain port as it always did (here: it reads a request and answers one line, per
 * connection, until it is killed).
 *
 *   cc embedded_server.c $(pkg-config --cflags --libs tunnel) -o embedded_server
 *   ./embedded_server 127.0.0.1:8443 cert.pem key.pem
 *   openssl s_client -connect 127.0.0.1:8443 -CAfile ca.pem
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <tunnel.h>

int main(int argc, char **argv) {
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    char backend[64];
    tunnel_config *cfg = NULL;
    tunnel_engine *engine = NULL;
    tunnel_forwarder_opts fwd;
    int listener, conn;
    if (argc != 4) {
        fprintf(stderr, "usage: %s LISTEN CERT KEY\n", argv[0]);
        return 2;
    }

    /* The program's own plain listener, on a free loopback port. */
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(listener, 16) != 0 || getsockname(listener, (struct sockaddr *)&sa, &sl) != 0) {
        perror("listen");
        return 1;
    }
    snprintf(backend, sizeof backend, "127.0.0.1:%u", ntohs(sa.sin_port));

    /* TLS in front of it, in this process. */
    memset(&fwd, 0, sizeof fwd);
    fwd.mode = TUNNEL_MODE_SERVER;
    fwd.name = "tls-in";
    fwd.listen = argv[1];
    fwd.connect = backend;
    fwd.cert = argv[2];
    fwd.key = argv[3];
    if (tunnel_log_to_stderr("info") != TUNNEL_OK || tunnel_config_new(&cfg) != TUNNEL_OK ||
        tunnel_config_add_forwarder(cfg, &fwd) != TUNNEL_OK ||
        tunnel_engine_start(cfg, &engine) != TUNNEL_OK) {
        fprintf(stderr, "tunnel: %s\n", tunnel_last_error());
        tunnel_config_free(&cfg);
        return 1;
    }
    tunnel_config_free(&cfg);
    fprintf(stderr, "TLS on %s -> %s\n", argv[1], backend);

    /* The server as it always was. */
    while ((conn = accept(listener, NULL, NULL)) >= 0) {
        const char *answer = "hello over TLS\n";
        char request[512];
        if (read(conn, request, sizeof request) > 0 && write(conn, answer, strlen(answer)) < 0)
            perror("write");
        close(conn);
    }

    tunnel_engine_shutdown(engine, 5000);
    tunnel_engine_free(&engine);
    close(listener);
    return 0;
}
