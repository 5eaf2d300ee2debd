/*
 * A C client through libtunnel's tunnel_connect, as a load generator (a benchmark, not a test):
 * `cargo xtask bench` runs it as the path `c-connect`, beside the CLI's client mode
 * (`splice-uring`), against the same server end, sink and echo backend. It takes the
 * arguments of `splice-load bulk` / `splice-load rr` that the bench passes, and prints the
 * same JSON, plus `client_cpu_s`: the CPU seconds libtunnel's threads used (the process's,
 * less the calling thread's, which only writes and reads the plain socket as a program would).
 *
 *   throughput --ca CA [--sni NAME] [--driver uring|epoll|auto] bulk --target HOST:PORT
 *       --duration SECS [--streams 1]
 *       one connection writes the sink's pattern for SECS, half-closes, and reads the sink's
 *       16-byte report (bytes received, first bad offset + 1): only confirmed bytes count
 *   throughput --ca CA [--sni NAME] [--driver ...] rr --target HOST:PORT --size N
 *       --duration SECS
 *       N-byte requests (an 8-byte sequence number, then the pattern) on one connection, each
 *       waiting for its echo; 100 warm-up requests are not recorded
 *
 * Build: cc -O2 ffi/bench/throughput.c $(pkg-config --cflags --libs tunnel) -o throughput
 * (`cargo xtask c-test` builds it too). Exit status 0 when the run was clean.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <tunnel.h>

/* The bench's pattern (benches/src/pattern.rs): a prime period, with a tail so that any slice
 * up to MAX_CHUNK is contiguous. */
#define PERIOD 1048573u
#define MAX_CHUNK (256u * 1024u)
#define CHUNK (256u * 1024u)
#define WARMUP 100

static unsigned char pattern[PERIOD + MAX_CHUNK];

static void make_pattern(void) {
    uint64_t x = 0x9E3779B97F4A7C15ull;
    size_t n = 0;
    while (n < PERIOD) {
        uint64_t v;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v = x * 0x2545F4914F6CDD1Dull;
        for (int i = 0; i < 8 && n < PERIOD; i++) pattern[n++] = (unsigned char)(v >> (8 * i));
    }
    memcpy(pattern + PERIOD, pattern, MAX_CHUNK);
}

static const unsigned char *chunk_at(uint64_t pos) { return pattern + pos % PERIOD; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu(int who) {
    struct rusage u;
    getrusage(who, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

/* CPU seconds of every thread but this one: libtunnel's. */
static double engine_cpu(void) { return cpu(RUSAGE_SELF) - cpu(RUSAGE_THREAD); }

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_full(int fd, unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void print_error(const char *what) {
    printf("{\"errors\":{\"count\":1,\"samples\":[\"%s\"]}}\n", what);
}

static int bulk(int fd, double seconds) {
    unsigned char report[16];
    uint64_t sent = 0, received = 0, bad = 0;
    double t0 = now(), c0 = engine_cpu(), until = t0 + seconds, secs;
    while (now() < until) {
        if (write_all(fd, chunk_at(sent), CHUNK) != 0) {
            print_error("write failed");
            return 1;
        }
        sent += CHUNK;
    }
    shutdown(fd, SHUT_WR);
    if (read_full(fd, report, sizeof report) != 0) {
        print_error("no report from the sink");
        return 1;
    }
    secs = now() - t0;
    for (int i = 7; i >= 0; i--) {
        received = received << 8 | report[i];
        bad = bad << 8 | report[8 + i];
    }
    if (bad != 0 || received != sent) {
        printf("{\"errors\":{\"count\":1,\"samples\":[\"the sink received %llu of %llu bytes, first bad "
               "offset + 1: %llu\"]}}\n",
               (unsigned long long)received, (unsigned long long)sent, (unsigned long long)bad);
        return 1;
    }
    printf("{\"streams\":1,\"bytes\":%llu,\"secs\":%.6f,\"gbit_per_s\":%.6f,\"client_cpu_s\":%.6f,"
           "\"errors\":{\"count\":0,\"samples\":[]}}\n",
           (unsigned long long)sent, secs, (double)sent * 8.0 / secs / 1e9, engine_cpu() - c0);
    return 0;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The value at quantile q of n sorted samples. */
static double quantile(const double *v, size_t n, double q) {
    double at = q * (double)n;
    size_t i = (size_t)at;
    if ((double)i < at) i++;
    return v[i == 0 ? 0 : i - 1];
}

static int rr(int fd, size_t size, double seconds) {
    unsigned char *req = malloc(size), *resp = malloc(size);
    size_t n = 0, cap = 1 << 16;
    double *us = malloc(cap * sizeof *us), until = 0, c0 = 0;
    if (req == NULL || resp == NULL || us == NULL || size < 8 || size > MAX_CHUNK) {
        print_error("bad --size, or out of memory");
        return 1;
    }
    for (uint64_t seq = 0;; seq++) {
        double t0;
        if (seq == WARMUP) {
            until = now() + seconds;
            c0 = engine_cpu();
        }
        if (seq >= WARMUP && now() >= until) break;
        memcpy(req, &seq, 8); /* little-endian, as splice-load writes it (x86, arm64) */
        memcpy(req + 8, chunk_at(seq * size), size - 8);
        t0 = now();
        if (write_all(fd, req, size) != 0 || read_full(fd, resp, size) != 0) {
            print_error("the connection ended");
            return 1;
        }
        if (memcmp(req, resp, size) != 0) {
            print_error("an echo differs from its request");
            return 1;
        }
        if (seq < WARMUP) continue;
        if (n == cap) {
            double *more = realloc(us, 2 * cap * sizeof *us);
            if (more == NULL) break;
            us = more;
            cap *= 2;
        }
        us[n++] = (now() - t0) * 1e6;
    }
    c0 = engine_cpu() - c0;
    shutdown(fd, SHUT_WR);
    if (n == 0) {
        print_error("no request recorded");
        return 1;
    }
    qsort(us, n, sizeof *us, by_value);
    printf("{\"requests\":%zu,\"latency\":{\"p50_us\":%.3f,\"p90_us\":%.3f,\"p99_us\":%.3f,"
           "\"p999_us\":%.3f,\"max_us\":%.3f},\"client_cpu_s\":%.6f,"
           "\"errors\":{\"count\":0,\"samples\":[]}}\n",
           n, quantile(us, n, 0.5), quantile(us, n, 0.9), quantile(us, n, 0.99),
           quantile(us, n, 0.999), us[n - 1], c0);
    free(req);
    free(resp);
    free(us);
    return 0;
}

int main(int argc, char **argv) {
    const char *ca = NULL, *sni = "localhost", *driver = "auto", *mode = NULL, *target = NULL;
    double seconds = 1.0;
    size_t size = 64;
    char toml[128];
    tunnel_config *cfg = NULL;
    tunnel_engine *eng = NULL;
    tunnel_connect_opts o;
    int fd = -1, rc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "bulk") == 0 || strcmp(a, "rr") == 0) { mode = a; continue; }
        if (v == NULL) { fprintf(stderr, "%s needs a value\n", a); return 2; }
        i++;
        if (strcmp(a, "--ca") == 0) ca = v;
        else if (strcmp(a, "--sni") == 0) sni = v;
        else if (strcmp(a, "--driver") == 0) driver = v;
        else if (strcmp(a, "--target") == 0) target = v;
        else if (strcmp(a, "--duration") == 0) seconds = atof(v);
        else if (strcmp(a, "--size") == 0) size = (size_t)atol(v);
        else if (strcmp(a, "--streams") == 0 && strcmp(v, "1") == 0) {}
        else { fprintf(stderr, "unknown or unsupported option %s %s (see the comment at the top)\n", a, v); return 2; }
    }
    if (mode == NULL || target == NULL || ca == NULL) {
        fprintf(stderr, "usage: throughput --ca CA [--sni NAME] [--driver D] bulk|rr --target HOST:PORT "
                        "--duration SECS [--size N]\n");
        return 2;
    }
    make_pattern();
    /* One shard thread on the asked driver, as the CLI client it is compared with. */
    snprintf(toml, sizeof toml, "threads = 1\ndriver = \"%s\"\naccess_log = false\n", driver);
    memset(&o, 0, sizeof o);
    o.ca_file = ca;
    o.sni = sni;
    if (tunnel_config_from_toml(toml, &cfg) != TUNNEL_OK || tunnel_engine_start(cfg, &eng) != TUNNEL_OK ||
        tunnel_connect(eng, target, &o, &fd) != TUNNEL_OK) {
        fprintf(stderr, "%s\n", tunnel_last_error());
        return 1;
    }
    tunnel_config_free(&cfg);
    rc = strcmp(mode, "bulk") == 0 ? bulk(fd, seconds) : rr(fd, size, seconds);
    close(fd);
    tunnel_engine_shutdown(eng, 5000);
    tunnel_engine_free(&eng);
    return rc;
}
