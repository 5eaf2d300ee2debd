/*
 * Bulk throughput of a C client (a benchmark, not a test): sends MIB MiB to HOST:PORT, ends
 * its write side, waits for the server's end of file, and prints one line:
 *
 *   <Gbit/s> <CPU seconds of this process, all threads>
 *
 *   throughput tunnel HOST:PORT CA MIB   through tunnel_connect (TLS in this process)
 *   throughput plain  HOST:PORT MIB      plain TCP (e.g. to `splice-engine client`)
 *
 * python/bench/throughput.py --c-client PATH runs both beside engine.connect() and the CLI's
 * client mode; build it with
 *   cc -O2 ffi/bench/throughput.c $(pkg-config --cflags --libs tunnel) -o throughput
 */
#define _GNU_SOURCE
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <tunnel.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static int plain_connect(const char *hostport) {
    char host[256];
    const char *colon = strrchr(hostport, ':');
    struct addrinfo hints, *ai;
    int fd;
    if (colon == NULL || (size_t)(colon - hostport) >= sizeof host) return -1;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0) return -1;
    fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) { close(fd); fd = -1; }
    freeaddrinfo(ai);
    return fd;
}

int main(int argc, char **argv) {
    static char chunk[1 << 20];
    char sink[65536];
    int fd = -1;
    long mib;
    double t0, c0;
    if (argc == 5 && strcmp(argv[1], "tunnel") == 0) {
        tunnel_connect_opts o;
        memset(&o, 0, sizeof o);
        o.ca_file = argv[3];
        mib = atol(argv[4]);
        if (tunnel_connect(NULL, argv[2], &o, &fd) != TUNNEL_OK) {
            fprintf(stderr, "%s\n", tunnel_last_error());
            return 1;
        }
    } else if (argc == 4 && strcmp(argv[1], "plain") == 0) {
        mib = atol(argv[3]);
        fd = plain_connect(argv[2]);
    } else {
        fprintf(stderr, "usage: %s tunnel HOST:PORT CA MIB | plain HOST:PORT MIB\n", argv[0]);
        return 2;
    }
    if (fd < 0) { perror("connect"); return 1; }
    t0 = now();
    c0 = cpu();
    for (long i = 0; i < mib; i++) {
        size_t done = 0;
        while (done < sizeof chunk) {
            ssize_t w = write(fd, chunk + done, sizeof chunk - done);
            if (w <= 0) { perror("write"); return 1; }
            done += (size_t)w;
        }
    }
    shutdown(fd, SHUT_WR);
    while (read(fd, sink, sizeof sink) > 0) {
    }
    printf("%.3f %.3f\n", (double)mib * 8.0 * (1 << 20) / (now() - t0) / 1e9, cpu() - c0);
    close(fd);
    tunnel_default_engine_shutdown(5000);
    return 0;
}
