/*
 * A legacy-style client: it sends a line and prints what comes back. The only change from its
 * plain-TCP version is the connect: tunnel_connect() instead of socket() + connect(), and the
 * bytes go out as TLS verified against a CA file; read, write and close stay as they were.
 *
 *   cc legacy_client.c $(pkg-config --cflags --libs tunnel) -o legacy_client
 *   ./legacy_client HOST:PORT CA_FILE
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <tunnel.h>

int main(int argc, char **argv) {
    tunnel_connect_opts opts;
    char buf[4096];
    ssize_t n;
    int fd;
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST:PORT CA_FILE\n", argv[0]);
        return 2;
    }
    memset(&opts, 0, sizeof opts);
    opts.ca_file = argv[2];

    /* Was: fd = socket(AF_INET, SOCK_STREAM, 0); connect(fd, &addr, sizeof addr); */
    if (tunnel_connect(NULL, argv[1], &opts, &fd) != TUNNEL_OK) {
        fprintf(stderr, "connect: %s\n", tunnel_last_error());
        return 1;
    }

    /* Unchanged from here on. */
    const char *hello = "hello\n";
    if (write(fd, hello, strlen(hello)) < 0) {
        perror("write");
        return 1;
    }
    while ((n = read(fd, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)n, stdout);
    close(fd);
    /* At exit: deliver what is still in flight (up to 5 s), then stop the library's thread. */
    tunnel_default_engine_shutdown(5000);
    return 0;
}
