/*
 * libtunnel's C tests, driven by `cargo xtask c-test` (xtask/src/ctest.rs), which builds this
 * file twice (shared through pkg-config, and static) under AddressSanitizer and LeakSanitizer,
 * and runs each mode against real peers on loopback:
 *
 *   connect HOST:PORT CA NBYTES    tunnel_connect(NULL, ...) to `openssl s_server`: sends stdin,
 *                                  writes the first NBYTES received to stdout
 *   server CA CERT KEY NBYTES DRIVER
 *                                  an embedded server-mode forwarder in front of an echo
 *                                  backend of this process; prints its port, echoes NBYTES for
 *                                  `openssl s_client`, then shuts down
 *   threads CA CERT KEY DRIVER     several threads tunnel_connect at once through an embedded
 *                                  server mode to an echo backend; stats; no thread or fd left
 *   errors CA CERT KEY OTHER_CERT OTHER_KEY
 *                                  every error path: code and message
 *   agents CA CERT KEY DRIVER      a relay in an engine from TOML, a tunnel opened through its
 *                                  API, a destination agent in front of an echo backend and a
 *                                  source agent; payloads hashed; close; error paths; no
 *                                  thread or fd left; token rotation; CA as PEM text
 *   reconnect CA CERT KEY DRIVER   agents through a relay in a child process (mode `relay`)
 *                                  that is killed and started again: `reconnecting`, then
 *                                  `connected` again
 *   pins CA CERT KEY PIN DRIVER    `pin` (PIN: the relay key's `sha256:` pin, as openssl
 *                                  computes it) instead of a CA: a source agent (with its
 *                                  client token in a file), tunnel_connect and a client-mode
 *                                  forwarder reach the relay with the right pin, not with a
 *                                  wrong one; malformed pins and pin with a CA are refused
 *
 * Exit status 0 on success; a failed check prints what and where and exits 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tunnel.h>

static void fail(int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tunnel_test.c:%d: FAILED: ", line);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

#define CHECK(cond, ...) do { if (!(cond)) fail(__LINE__, __VA_ARGS__); } while (0)
/* A call that must succeed. */
#define OK(call) do { tunnel_result r_ = (call); \
    CHECK(r_ == TUNNEL_OK, "%s: %s: %s", #call, tunnel_result_name(r_), tunnel_last_error()); } while (0)
/* A call that must fail with `code`, with a last error containing `needle`. */
#define FAILS(call, code, needle) do { tunnel_result r_ = (call); \
    CHECK(r_ == (code), "%s returned %s, not %s (%s)", #call, tunnel_result_name(r_), #code, tunnel_last_error()); \
    CHECK(strstr(tunnel_last_error(), (needle)) != NULL, "%s: message %s does not name %s", #call, tunnel_last_error(), (needle)); \
    printf("ok: %s -> %s: %s\n", #call, #code, tunnel_last_error()); } while (0)

static int count_dir(const char *path) {
    DIR *d = opendir(path);
    int n = 0;
    CHECK(d != NULL, "opendir %s", path);
    while (readdir(d) != NULL) n++;
    closedir(d);
    return n;
}

static void write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        CHECK(w > 0, "write: %s", strerror(errno));
        p += w;
        n -= (size_t)w;
    }
}

/* Reads exactly n bytes (0 when end of file comes first, -1 on error). */
static int read_full(int fd, unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return (int)r;
        p += r;
        n -= (size_t)r;
    }
    return 1;
}

/* ---- an echo backend: a thread that serves `conns` connections, one thread each ---- */

struct echo { int listener; int conns; pthread_t thread; };

/* Bytes each echo connection serves before it closes (0: until end of file). */
static size_t echo_limit;

static void *echo_conn(void *arg) {
    int fd = (int)(intptr_t)arg;
    unsigned char buf[16384];
    size_t done = 0, want;
    ssize_t r;
    for (;;) {
        want = sizeof buf;
        if (echo_limit && echo_limit - done < want) want = echo_limit - done;
        if (want == 0 || (r = read(fd, buf, want)) <= 0) break;
        write_all(fd, buf, (size_t)r);
        done += (size_t)r;
    }
    close(fd);
    return NULL;
}

static void *echo_main(void *arg) {
    struct echo *e = arg;
    pthread_t *t = calloc((size_t)e->conns, sizeof *t);
    for (int i = 0; i < e->conns; i++) {
        int fd = accept(e->listener, NULL, NULL);
        CHECK(fd >= 0, "accept: %s", strerror(errno));
        CHECK(pthread_create(&t[i], NULL, echo_conn, (void *)(intptr_t)fd) == 0, "pthread_create");
    }
    for (int i = 0; i < e->conns; i++) pthread_join(t[i], NULL);
    free(t);
    close(e->listener);
    return NULL;
}

/* Starts an echo backend for `conns` connections; writes "127.0.0.1:PORT" to `addr`. */
static void echo_start(struct echo *e, int conns, char *addr, size_t len) {
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    e->listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(e->listener >= 0, "socket");
    CHECK(bind(e->listener, (struct sockaddr *)&sa, sizeof sa) == 0, "bind");
    CHECK(listen(e->listener, 64) == 0, "listen");
    CHECK(getsockname(e->listener, (struct sockaddr *)&sa, &sl) == 0, "getsockname");
    snprintf(addr, len, "127.0.0.1:%u", ntohs(sa.sin_port));
    e->conns = conns;
    CHECK(pthread_create(&e->thread, NULL, echo_main, e) == 0, "pthread_create");
}

/* An engine started from TOML text, which must be good. */
static tunnel_engine *engine_from_toml(const char *toml) {
    tunnel_config *cfg = NULL;
    tunnel_engine *eng = NULL;
    OK(tunnel_config_from_toml(toml, &cfg));
    OK(tunnel_engine_start(cfg, &eng));
    OK(tunnel_config_free(&cfg));
    CHECK(cfg == NULL, "tunnel_config_free sets the handle to NULL");
    return eng;
}

/* An engine with a server-mode forwarder "tls-in" (TLS in on a free port, plain out to
 * `backend`), configured by TOML text; its port goes to `port`. */
static tunnel_engine *server_engine(const char *driver, const char *cert, const char *key,
                                    const char *backend, uint16_t *port) {
    char toml[4096];
    tunnel_engine *eng = NULL;
    snprintf(toml, sizeof toml,
             "threads = 2\ndriver = \"%s\"\naccess_log = false\n"
             "[[forwarder]]\nname = \"tls-in\"\nmode = \"server\"\nlisten = \"127.0.0.1:0\"\n"
             "connect = \"%s\"\ncert = \"%s\"\nkey = \"%s\"\n",
             driver, backend, cert, key);
    eng = engine_from_toml(toml);
    OK(tunnel_engine_local_port(eng, "tls-in", port));
    return eng;
}

/* ---- connect: the legacy client's path, against openssl s_server ---- */

struct pump { int fd; };

static void *stdin_to_fd(void *arg) {
    struct pump *p = arg;
    unsigned char buf[16384];
    ssize_t r;
    while ((r = read(0, buf, sizeof buf)) > 0) write_all(p->fd, buf, (size_t)r);
    return NULL;
}

static int mode_connect(const char *upstream, const char *ca, size_t want) {
    tunnel_connect_opts opts;
    int fd = -1;
    pthread_t writer;
    struct pump p;
    unsigned char *got = malloc(want ? want : 1);
    int fds = count_dir("/proc/self/fd"), tasks = count_dir("/proc/self/task");
    memset(&opts, 0, sizeof opts);
    opts.ca_file = ca;
    opts.sni = "localhost";
    OK(tunnel_connect(NULL, upstream, &opts, &fd));
    p.fd = fd;
    CHECK(pthread_create(&writer, NULL, stdin_to_fd, &p) == 0, "pthread_create");
    CHECK(read_full(fd, got, want) == 1, "read %zu bytes from s_server: %s", want, strerror(errno));
    pthread_join(writer, NULL);
    fwrite(got, 1, want, stdout);
    fflush(stdout);
    free(got);
    /* What we wrote may still be on its way: the drain delivers it before the engine stops. */
    close(fd);
    OK(tunnel_default_engine_shutdown(10000));
    CHECK(count_dir("/proc/self/fd") == fds, "fds left: %d, before: %d", count_dir("/proc/self/fd"), fds);
    CHECK(count_dir("/proc/self/task") == tasks, "threads left: %d, before: %d", count_dir("/proc/self/task"), tasks);
    return 0;
}

/* ---- server: an embedded server mode, against openssl s_client ---- */

static int mode_server(const char *cert, const char *key, size_t nbytes, const char *driver) {
    struct echo e;
    char backend[64];
    uint16_t port = 0;
    int fds = count_dir("/proc/self/fd"), tasks = count_dir("/proc/self/task");
    tunnel_engine *eng;
    echo_limit = nbytes;
    echo_start(&e, 1, backend, sizeof backend);
    eng = server_engine(driver, cert, key, backend, &port);
    printf("%u\n", port);
    fflush(stdout);
    pthread_join(e.thread, NULL);
    OK(tunnel_engine_shutdown(eng, 5000));
    OK(tunnel_engine_free(&eng));
    CHECK(count_dir("/proc/self/fd") == fds, "fds left after free: %d, before: %d", count_dir("/proc/self/fd"), fds);
    CHECK(count_dir("/proc/self/task") == tasks, "threads left after free");
    return 0;
}

/* ---- threads: several threads through tunnel_connect and the embedded server at once ---- */

#define THREADS 6
#define PER_THREAD (1024 * 1024)

struct worker { tunnel_engine *eng; const char *upstream; const char *ca; const char *ca_pem; int id; };

/* The whole of a (small) file as a string, to free. */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    char *text = calloc(1, 1 << 16);
    size_t n;
    CHECK(f != NULL && text != NULL, "open %s", path);
    n = fread(text, 1, (1 << 16) - 1, f);
    CHECK(n > 0, "read %s", path);
    fclose(f);
    return text;
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    tunnel_connect_opts opts;
    int fd = -1;
    unsigned char out[8192], in[8192];
    uint32_t x = 2463534242u + (uint32_t)w->id;
    memset(&opts, 0, sizeof opts);
    /* Half the threads trust the CA as a file, half as PEM text: two connectors. */
    if (w->id % 2) opts.ca_pem = w->ca_pem; else opts.ca_file = w->ca;
    opts.sni = "localhost";
    OK(tunnel_connect(w->eng, w->upstream, &opts, &fd));
    for (size_t done = 0; done < PER_THREAD; done += sizeof out) {
        for (size_t i = 0; i < sizeof out; i++) {
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;
            out[i] = (unsigned char)x;
        }
        write_all(fd, out, sizeof out);
        CHECK(read_full(fd, in, sizeof in) == 1, "thread %d: echo cut at %zu: %s", w->id, done, strerror(errno));
        CHECK(memcmp(in, out, sizeof in) == 0, "thread %d: echo differs at %zu", w->id, done);
    }
    shutdown(fd, SHUT_WR);
    CHECK(read(fd, in, 1) == 0, "thread %d: end of file after the echo", w->id);
    close(fd);
    return NULL;
}

static int mode_threads(const char *ca, const char *cert, const char *key, const char *driver) {
    struct echo e;
    char backend[64], upstream[64];
    uint16_t port = 0;
    pthread_t t[THREADS];
    struct worker w[THREADS];
    tunnel_stats *stats = NULL;
    size_t n = 0, i;
    char *json = NULL;
    int fds = count_dir("/proc/self/fd"), tasks = count_dir("/proc/self/task");
    uint64_t through_connectors = 0;
    char *ca_pem = slurp(ca);
    tunnel_engine *eng;
    echo_start(&e, THREADS + 1, backend, sizeof backend);
    eng = server_engine(driver, cert, key, backend, &port);
    snprintf(upstream, sizeof upstream, "localhost:%u", port);
    for (i = 0; i < THREADS; i++) {
        w[i].eng = eng; w[i].upstream = upstream; w[i].ca = ca; w[i].ca_pem = ca_pem; w[i].id = (int)i;
        CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0, "pthread_create");
    }
    for (i = 0; i < THREADS; i++) pthread_join(t[i], NULL);

    OK(tunnel_engine_stats(eng, &stats, &n));
    CHECK(n == 3, "three forwarders (tls-in and two connectors), not %zu", n);
    for (i = 0; i < n; i++) {
        uint64_t want = strcmp(stats[i].name, "tls-in") == 0 ? THREADS : THREADS / 2;
        printf("stats: %s (%s): accepted %llu, bytes %llu/%llu\n", stats[i].name, stats[i].mode,
               (unsigned long long)stats[i].accepted, (unsigned long long)stats[i].bytes_down_to_up,
               (unsigned long long)stats[i].bytes_up_to_down);
        CHECK(stats[i].accepted == want, "%s accepted %llu", stats[i].name, (unsigned long long)stats[i].accepted);
        CHECK(stats[i].bytes_down_to_up == want * PER_THREAD, "%s bytes in", stats[i].name);
        CHECK(stats[i].bytes_up_to_down == want * PER_THREAD, "%s bytes out", stats[i].name);
        if (strcmp(stats[i].name, "tls-in") != 0) through_connectors += stats[i].accepted;
    }
    CHECK(through_connectors == THREADS, "every connection went through a connector");
    OK(tunnel_stats_free(stats, n));
    free(ca_pem);
    {
        /* One more, through the connector by its name. */
        int fd = -1;
        unsigned char back[5];
        OK(tunnel_engine_connect(eng, "tunnel-connect-1", &fd));
        write_all(fd, (const unsigned char *)"named", 5);
        CHECK(read_full(fd, back, 5) == 1 && memcmp(back, "named", 5) == 0, "echo by name");
        close(fd);
    }
    pthread_join(e.thread, NULL);
    OK(tunnel_engine_stats_json(eng, &json));
    printf("json: %s\n", json);
    CHECK(strstr(json, "\"name\":\"tls-in\"") != NULL, "JSON names tls-in");
    CHECK(strstr(json, "\"name\":\"tunnel-connect-1\"") != NULL, "JSON names the connector");
    CHECK(strstr(json, "\"name\":\"tunnel-connect-2\"") != NULL, "JSON names the other connector");
    OK(tunnel_string_free(json));

    OK(tunnel_engine_shutdown(eng, 5000));
    OK(tunnel_engine_free(&eng));
    CHECK(eng == NULL, "tunnel_engine_free sets the handle to NULL");
    CHECK(count_dir("/proc/self/fd") == fds, "fds left after free: %d, before: %d", count_dir("/proc/self/fd"), fds);
    CHECK(count_dir("/proc/self/task") == tasks, "threads left after free: %d, before: %d", count_dir("/proc/self/task"), tasks);
    printf("ok: %d threads x %d bytes echoed; no fd or thread left\n", THREADS, PER_THREAD);
    return 0;
}

/* ---- errors ---- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_text[65536];

static void on_log(uint32_t level, const char *target, const char *message, void *userdata) {
    size_t used;
    (void)userdata;
    pthread_mutex_lock(&log_lock);
    used = strlen(log_text);
    snprintf(log_text + used, sizeof log_text - used, "%u %s %s\n", level, target, message);
    pthread_mutex_unlock(&log_lock);
}

static int log_has(const char *needle) {
    int found;
    pthread_mutex_lock(&log_lock);
    found = strstr(log_text, needle) != NULL;
    pthread_mutex_unlock(&log_lock);
    return found;
}

static uint64_t stat_of(tunnel_engine *eng, const char *name, int which) {
    tunnel_stats *s = NULL;
    size_t n = 0, i;
    uint64_t v = 0;
    OK(tunnel_engine_stats(eng, &s, &n));
    for (i = 0; i < n; i++)
        if (strcmp(s[i].name, name) == 0) v = which == 0 ? s[i].errors_upstream : s[i].errors_tls;
    OK(tunnel_stats_free(s, n));
    return v;
}

/* Waits (up to 10 s) for `cond`. */
#define EVENTUALLY(cond) do { int k_; for (k_ = 0; k_ < 1000 && !(cond); k_++) usleep(10000); \
    CHECK(cond, "never: %s", #cond); } while (0)

/* A connector with max_connections = 1 whose first connection stays open (its upstream
 * accepts and never answers the handshake): the second connection is refused with
 * TUNNEL_ERR_AT_CAPACITY, naming the forwarder. */
static void at_capacity(const char *ca) {
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    char toml[1024];
    tunnel_engine *eng = NULL;
    int held = -1, second = -1;
    int silent = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(silent >= 0 && bind(silent, (struct sockaddr *)&sa, sizeof sa) == 0, "bind");
    CHECK(listen(silent, 8) == 0 && getsockname(silent, (struct sockaddr *)&sa, &sl) == 0, "listen");
    snprintf(toml, sizeof toml,
             "threads = 1\naccess_log = false\n[[forwarder]]\nname = \"capped\"\nmode = \"client\"\n"
             "connect = \"localhost:%u\"\nca = \"%s\"\nmax_connections = 1\n",
             ntohs(sa.sin_port), ca);
    eng = engine_from_toml(toml);
    OK(tunnel_engine_connect(eng, "capped", &held));
    FAILS(tunnel_engine_connect(eng, "capped", &second), TUNNEL_ERR_AT_CAPACITY, "capped");
    CHECK(second == -1, "no descriptor from a refused connection");
    close(held);
    OK(tunnel_engine_shutdown(eng, 0));
    OK(tunnel_engine_free(&eng));
    close(silent);
}

static int mode_errors(const char *ca, const char *cert, const char *key,
                       const char *other_cert, const char *other_key) {
    tunnel_config *cfg = NULL;
    tunnel_engine *eng = NULL, *eng2 = NULL, *bad = NULL;
    tunnel_forwarder_opts f;
    tunnel_connect_opts o;
    uint16_t port = 0;
    int fd = -1, dead, fds = count_dir("/proc/self/fd"), tasks = count_dir("/proc/self/task");
    char up[64], buf[16];
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;

    OK(tunnel_log_set_callback(on_log, NULL, "warn"));
    FAILS(tunnel_log_to_stderr(NULL), TUNNEL_ERR_LOG_ALREADY_SET, "already set");
    at_capacity(ca);
    CHECK(strcmp(tunnel_result_name(TUNNEL_ERR_CONFIG), "TUNNEL_ERR_CONFIG") == 0, "result name");
    CHECK(strlen(tunnel_version()) >= 5, "version %s", tunnel_version());

    /* NULL pointers. */
    FAILS(tunnel_config_new(NULL), TUNNEL_ERR_NULL_ARGUMENT, "`out`");
    FAILS(tunnel_config_from_toml(NULL, &cfg), TUNNEL_ERR_NULL_ARGUMENT, "`toml`");
    FAILS(tunnel_engine_start(NULL, &eng), TUNNEL_ERR_NULL_ARGUMENT, "`cfg`");
    FAILS(tunnel_engine_stats(NULL, NULL, NULL), TUNNEL_ERR_NULL_ARGUMENT, "`engine`");
    FAILS(tunnel_config_from_toml("threads = 1", NULL), TUNNEL_ERR_NULL_ARGUMENT, "`out`");
    FAILS(tunnel_config_from_file("/nonexistent/splice.toml", NULL), TUNNEL_ERR_NULL_ARGUMENT, "`out`");
    FAILS(tunnel_connect(NULL, NULL, NULL, &fd), TUNNEL_ERR_NULL_ARGUMENT, "`host_port`");
    FAILS(tunnel_connect(NULL, "localhost:1", NULL, NULL), TUNNEL_ERR_NULL_ARGUMENT, "`fd`");
    FAILS(tunnel_log_set_callback(NULL, NULL, NULL), TUNNEL_ERR_NULL_ARGUMENT, "`callback`");
    OK(tunnel_engine_free(NULL));
    OK(tunnel_engine_free(&bad));
    OK(tunnel_config_free(NULL));

    /* Bad TOML: as text, as a file, a key that does not exist. */
    FAILS(tunnel_config_from_toml("threads = [", &cfg), TUNNEL_ERR_CONFIG, "<string>");
    FAILS(tunnel_config_from_toml("threads = 1\nthread = 2", &cfg), TUNNEL_ERR_CONFIG, "<string>: line 2: `thread`");
    FAILS(tunnel_config_from_toml("[[forwarder]]\nmode = \"client\"\nlisten = \"127.0.0.1:0\"\nconnect = \"x\"", &cfg),
          TUNNEL_ERR_CONFIG, "line 4");
    FAILS(tunnel_config_from_file("/nonexistent/splice.toml", &cfg), TUNNEL_ERR_CONFIG, "/nonexistent/splice.toml");
    CHECK(cfg == NULL, "no config on failure");

    /* Option calls, and what a bad forwarder gets. */
    OK(tunnel_config_new(&cfg));
    FAILS(tunnel_config_set_threads(cfg, 0), TUNNEL_ERR_INVALID_ARGUMENT, "threads");
    OK(tunnel_config_set_threads(cfg, 1));
    memset(&f, 0, sizeof f);
    f.mode = 7;
    f.connect = "localhost:1";
    FAILS(tunnel_config_add_forwarder(cfg, &f), TUNNEL_ERR_INVALID_ARGUMENT, "mode 7");
    f.mode = TUNNEL_MODE_SERVER;
    f.name = "tls-in";
    f.listen = "127.0.0.1:0";
    f.connect = "127.0.0.1:1";
    f.cert = other_cert;
    f.key = other_key;
    OK(tunnel_config_add_forwarder(cfg, &f));
    FAILS(tunnel_engine_start(cfg, NULL), TUNNEL_ERR_NULL_ARGUMENT, "`out`");
    OK(tunnel_engine_start(cfg, &eng));
    OK(tunnel_engine_local_port(eng, "tls-in", &port));
    {
        tunnel_stats *s = NULL;
        char *json = NULL;
        FAILS(tunnel_engine_stats(eng, &s, NULL), TUNNEL_ERR_NULL_ARGUMENT, "`len`");
        FAILS(tunnel_engine_stats_json(eng, NULL), TUNNEL_ERR_NULL_ARGUMENT, "`json`");
        CHECK(s == NULL && json == NULL, "nothing allocated on failure");
    }
    FAILS(tunnel_engine_local_port(eng, "nope", &port), TUNNEL_ERR_UNKNOWN_FORWARDER, "nope");
    FAILS(tunnel_engine_add_forwarder(eng, &f), TUNNEL_ERR_FORWARDER_EXISTS, "tls-in");
    FAILS(tunnel_engine_remove_forwarder(eng, "nope"), TUNNEL_ERR_UNKNOWN_FORWARDER, "nope");
    FAILS(tunnel_engine_connect(eng, "nope", &fd), TUNNEL_ERR_UNKNOWN_FORWARDER, "nope");
    FAILS(tunnel_engine_connect(eng, "tls-in", &fd), TUNNEL_ERR_NOT_CLIENT_MODE, "tls-in");
    FAILS(tunnel_engine_connect(eng, NULL, &fd), TUNNEL_ERR_NULL_ARGUMENT, "`name`");
    f.name = "tls-in-2";
    f.cert = "/nonexistent/cert.pem";
    FAILS(tunnel_engine_add_forwarder(eng, &f), TUNNEL_ERR_CERTIFICATE, "/nonexistent/cert.pem");
    f.name = "tls-in";
    f.cert = cert;
    f.key = key;
    OK(tunnel_engine_replace_forwarder(eng, &f));
    f.name = "tls-in";
    f.cert = other_cert;
    f.key = other_key;
    OK(tunnel_engine_replace_forwarder(eng, &f));
    {
        /* A listen address already taken: by the engine's own listener, from another engine. */
        char taken[64];
        snprintf(taken, sizeof taken, "127.0.0.1:%u", port);
        f.listen = taken;
        OK(tunnel_config_free(&cfg));
        OK(tunnel_config_new(&cfg));
        OK(tunnel_config_set_threads(cfg, 1));
        OK(tunnel_config_add_forwarder(cfg, &f));
        FAILS(tunnel_engine_start(cfg, &eng2), TUNNEL_ERR_LISTEN, taken);
        CHECK(eng2 == NULL, "no engine on failure");
        f.listen = "127.0.0.1:0";
    }
    OK(tunnel_config_free(&cfg));
    OK(tunnel_config_free(&cfg));  /* the second free of the same variable is a no-op */

    /* tunnel_connect: a CA file that does not exist, a host:port that is not one. */
    memset(&o, 0, sizeof o);
    o.ca_file = "/nonexistent/ca.pem";
    snprintf(up, sizeof up, "localhost:%u", port);
    FAILS(tunnel_connect(eng, up, &o, &fd), TUNNEL_ERR_CERTIFICATE, "/nonexistent/ca.pem");
    o.ca_file = NULL;
    o.ca_pem = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
    FAILS(tunnel_connect(eng, up, &o, &fd), TUNNEL_ERR_CERTIFICATE, "ca_pem");
    o.ca_file = ca;
    FAILS(tunnel_connect(eng, up, &o, &fd), TUNNEL_ERR_CONFIG, "`ca` and `ca_pem` exclude each other");
    o.ca_pem = NULL;
    FAILS(tunnel_connect(eng, "no-port-here", &o, &fd), TUNNEL_ERR_CONFIG, "no-port-here");

    /* Verification failure: tls-in presents a certificate from a CA we do not trust. The call
     * succeeds; the connection ends, the connector counts a TLS error and the log says why. */
    OK(tunnel_connect(eng, up, &o, &fd));
    CHECK(read(fd, buf, sizeof buf) <= 0, "a connection that fails verification ends");
    close(fd);
    EVENTUALLY(stat_of(eng, "tunnel-connect-1", 1) >= 1);
    EVENTUALLY(log_has("tunnel-connect-1"));
    printf("ok: verification failure: end of file, errors_tls counted, logged\n");

    /* Unreachable upstream: a port nobody listens on. */
    dead = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(dead, (struct sockaddr *)&sa, sizeof sa) == 0, "bind");
    CHECK(getsockname(dead, (struct sockaddr *)&sa, &sl) == 0, "getsockname");
    snprintf(up, sizeof up, "127.0.0.1:%u", ntohs(sa.sin_port));
    OK(tunnel_connect(eng, up, &o, &fd));
    CHECK(read(fd, buf, sizeof buf) <= 0, "a connection to an unreachable upstream ends");
    close(fd);
    close(dead);
    EVENTUALLY(stat_of(eng, "tunnel-connect-2", 0) >= 1);
    EVENTUALLY(log_has(up));
    printf("ok: unreachable upstream: end of file, errors_upstream counted, logged with %s\n", up);

    /* After shutdown, every call on the handle says so; free twice is harmless. */
    OK(tunnel_engine_remove_forwarder(eng, "tls-in"));
    OK(tunnel_engine_shutdown(eng, 1000));
    FAILS(tunnel_engine_shutdown(eng, 1000), TUNNEL_ERR_SHUT_DOWN, "shut down");
    FAILS(tunnel_connect(eng, up, &o, &fd), TUNNEL_ERR_SHUT_DOWN, "shut down");
    {
        char *json = NULL;
        FAILS(tunnel_engine_stats_json(eng, &json), TUNNEL_ERR_SHUT_DOWN, "shut down");
        CHECK(json == NULL, "no JSON after shutdown");
    }
    OK(tunnel_engine_free(&eng));
    OK(tunnel_engine_free(&eng));
    CHECK(count_dir("/proc/self/fd") == fds, "fds left: %d, before: %d", count_dir("/proc/self/fd"), fds);
    CHECK(count_dir("/proc/self/task") == tasks, "threads left: %d, before: %d", count_dir("/proc/self/task"), tasks);
    printf("ok: errors\n");
    return 0;
}

/* ---- agents: a tunnel through our relay, both agents in this process ---- */

/* FNV-1a, 64 bits. */
static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ull; }
    return h;
}

/* Polls the agent until it is in `want` (10 s at most). */
static void wait_state(tunnel_agent *a, uint32_t want, const char *what) {
    uint32_t st = 99;
    for (int i = 0; i < 1000; i++) {
        OK(tunnel_agent_state(a, &st, NULL));
        if (st == want) return;
        usleep(10000);
    }
    fail(__LINE__, "%s: state %u, not %u after 10 s", what, st, want);
}

#define AGENT_CONNS 4
#define AGENT_BYTES (256 * 1024)

/* One connection to a source agent's `port`: `bytes` of pseudo-random data echoed back
 * through the tunnel, hashes compared, then a half-close answered by end of file. */
static void echo_through(uint16_t port, int c, size_t bytes) {
    struct sockaddr_in sa;
    unsigned char out[8192], in[8192];
    uint64_t sent = 14695981039346656037ull, got = sent;
    uint32_t x = 2463534242u + (uint32_t)c;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(port);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect to the source: %s", strerror(errno));
    for (size_t done = 0; done < bytes; done += sizeof out) {
        for (size_t i = 0; i < sizeof out; i++) {
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;
            out[i] = (unsigned char)x;
        }
        sent = fnv(sent, out, sizeof out);
        write_all(fd, out, sizeof out);
        CHECK(read_full(fd, in, sizeof in) == 1, "connection %d: echo cut at %zu", c, done);
        got = fnv(got, in, sizeof in);
    }
    CHECK(sent == got, "connection %d: hash %016llx sent, %016llx back", c,
          (unsigned long long)sent, (unsigned long long)got);
    shutdown(fd, SHUT_WR);
    CHECK(read(fd, in, 1) == 0, "connection %d: end of file after the echo", c);
    close(fd);
}

/* A client token (`[A-Za-z0-9-]{32,128}`) for tunnel_api_rotate and the agents. */
#define CLIENT_TOKEN "c-test-client-token-0123456789-abcdef"

/* An engine of THREADS shards running relay "r" (TLS with CERT and KEY, its tunnels in STATE:
 * ":memory:" or a SQLite file) on AGENTS_PORT and API_PORT ("0": free ones), whose ports go
 * into `*agents` and `*api`. */
static tunnel_engine *start_relay(const char *driver, int threads, const char *cert,
                                  const char *key, const char *state, const char *agents_port,
                                  const char *api_port, uint16_t *agents, uint16_t *api) {
    char toml[4096];
    tunnel_engine *eng = NULL;
    snprintf(toml, sizeof toml,
             "threads = %d\ndriver = \"%s\"\naccess_log = false\n"
             "[[relay]]\nname = \"r\"\nlisten = \"127.0.0.1:%s\"\ncert = \"%s\"\nkey = \"%s\"\n"
             "api = \"127.0.0.1:%s\"\nstate = \"%s\"\n",
             threads, driver, agents_port, cert, key, api_port, state);
    eng = engine_from_toml(toml);
    OK(tunnel_engine_relay_ports(eng, "r", agents, api));
    return eng;
}

/* An engine running relay "r" (TLS with CERT and KEY, a registry in memory) on free ports:
 * its API's URL goes into `url`, its agents' `IP:PORT` into `relay` (64 bytes each). */
static tunnel_engine *relay_engine(const char *driver, const char *cert, const char *key,
                                   char *url, char *relay) {
    uint16_t relay_port = 0, api_port = 0;
    tunnel_engine *eng =
        start_relay(driver, 2, cert, key, ":memory:", "0", "0", &relay_port, &api_port);
    snprintf(url, 64, "http://127.0.0.1:%u", api_port);
    snprintf(relay, 64, "127.0.0.1:%u", relay_port);
    return eng;
}

static int mode_agents(const char *ca, const char *cert, const char *key, const char *driver) {
    char url[64], relay[64], backend[64], service[96], bad_token[64];
    uint16_t relay_port = 0, api_port = 0, src_port = 0;
    tunnel_engine *eng = NULL;
    tunnel_agent *dst = NULL, *src = NULL, *bad = NULL;
    tunnel_agent_opts o;
    char *id = NULL, *src_token = NULL, *dst_token = NULL, *json = NULL, *reason = NULL;
    char *new_src = NULL, *new_dst = NULL, *ca_pem = NULL;
    const char *names[] = {"echo"};
    const char *services[1];
    struct echo e;
    uint32_t st = 99;
    int fds = count_dir("/proc/self/fd"), tasks = count_dir("/proc/self/task");

    eng = relay_engine(driver, cert, key, url, relay);
    FAILS(tunnel_engine_relay_ports(eng, "nope", &relay_port, &api_port), TUNNEL_ERR_INVALID_ARGUMENT, "nope");

    OK(tunnel_api_open(url, NULL, names, 1, 30, "pump-7", "from C", &id, &src_token, &dst_token));
    CHECK(strlen(id) > 0 && strlen(src_token) > 0 && strlen(dst_token) > 0, "id and tokens");
    OK(tunnel_api_list(url, NULL, "pump-7", &json));
    CHECK(strstr(json, id) != NULL, "the list names the tunnel: %s", json);
    OK(tunnel_string_free(json));

    echo_limit = 0;
    /* The connections below, and one each after two rotations. */
    echo_start(&e, AGENT_CONNS + 2, backend, sizeof backend);
    snprintf(service, sizeof service, "echo=%s", backend);
    services[0] = service;
    memset(&o, 0, sizeof o);
    o.kind = TUNNEL_AGENT_DESTINATION;
    o.relay = relay; o.ca = ca; o.sni = "localhost"; o.token = dst_token;
    o.services = services; o.services_len = 1;
    OK(tunnel_agent_start(&o, &dst));
    services[0] = "echo=127.0.0.1:0";
    o.kind = TUNNEL_AGENT_SOURCE;
    o.token = src_token;
    OK(tunnel_agent_start(&o, &src));
    OK(tunnel_agent_local_port(src, "echo", &src_port));
    CHECK(src_port != 0, "the source's port");
    FAILS(tunnel_agent_local_port(dst, "echo", &src_port), TUNNEL_ERR_INVALID_ARGUMENT, "echo");
    wait_state(dst, TUNNEL_AGENT_CONNECTED, "destination");
    wait_state(src, TUNNEL_AGENT_CONNECTED, "source");
    OK(tunnel_api_describe(url, NULL, id, &json));
    CHECK(strstr(json, id) != NULL, "describe names the tunnel: %s", json);
    OK(tunnel_string_free(json));

    /* A lifetime in seconds: the relay keeps 90 s (minutes would have made it 2). */
    {
        char *id90 = NULL, *src90 = NULL, *dst90 = NULL;
        OK(tunnel_api_open_seconds(url, NULL, names, 1, 90, NULL, NULL, &id90, &src90, &dst90));
        OK(tunnel_api_describe(url, NULL, id90, &json));
        CHECK(strstr(json, "\"maxLifetimeTimeoutSeconds\":90") != NULL, "a 90 s lifetime: %s", json);
        OK(tunnel_string_free(json));
        FAILS(tunnel_api_open_seconds(url, NULL, names, 1, 90, NULL, NULL, &id90, NULL, &dst90),
              TUNNEL_ERR_NULL_ARGUMENT, "source_token");
        OK(tunnel_api_close(url, NULL, id90, 1));
        OK(tunnel_string_free(id90));
        OK(tunnel_string_free(src90));
        OK(tunnel_string_free(dst90));
    }

    for (int c = 0; c < AGENT_CONNS; c++) echo_through(src_port, c, AGENT_BYTES);
    printf("ok: %d connections x %d bytes through the tunnel, hashes equal\n", AGENT_CONNS, AGENT_BYTES);

    /* A wrong token: the agent starts, and finishes with a reason (no token in it). */
    snprintf(bad_token, sizeof bad_token, "not-a-token-of-this-relay");
    o.token = bad_token;
    services[0] = "echo=127.0.0.1:0";
    OK(tunnel_agent_start(&o, &bad));
    OK(tunnel_agent_wait_finished(bad, 10000, &st));
    CHECK(st == TUNNEL_AGENT_FINISHED, "a wrong token finishes the agent (state %u)", st);
    OK(tunnel_agent_state(bad, &st, &reason));
    printf("ok: wrong token -> finished: %s\n", reason);
    CHECK(strlen(reason) > 0 && strstr(reason, bad_token) == NULL, "a reason without the token: %s", reason);
    OK(tunnel_string_free(reason));
    OK(tunnel_agent_free(&bad));

    /* Rotating the source's token: the relay drops the source, whose old token is refused
     * when it tries again, and so is a new agent's with the old token; the new token works
     * (for an agent that trusts the CA as PEM text). */
    OK(tunnel_api_rotate(url, NULL, id, TUNNEL_ROTATE_SOURCE, NULL, &new_src, &new_dst));
    CHECK(strlen(new_src) > 0 && strcmp(new_src, src_token) != 0 && strlen(new_dst) == 0,
          "rotating the source gives a new source token only");
    OK(tunnel_agent_wait_finished(src, 10000, &st));
    CHECK(st == TUNNEL_AGENT_FINISHED, "the source with the rotated token finishes (state %u)", st);
    OK(tunnel_agent_free(&src));
    o.token = src_token;
    OK(tunnel_agent_start(&o, &bad));
    OK(tunnel_agent_wait_finished(bad, 10000, &st));
    CHECK(st == TUNNEL_AGENT_FINISHED, "the old source token is refused (state %u)", st);
    OK(tunnel_agent_free(&bad));
    printf("ok: rotated source token: the old one is refused\n");
    ca_pem = slurp(ca);
    o.ca = NULL;
    o.ca_pem = ca_pem;
    o.token = new_src;
    OK(tunnel_agent_start(&o, &src));
    OK(tunnel_agent_local_port(src, "echo", &src_port));
    wait_state(src, TUNNEL_AGENT_CONNECTED, "source with the new token");
    echo_through(src_port, 10, 64 * 1024);
    printf("ok: the new source token works (CA as PEM text)\n");
    OK(tunnel_string_free(new_src));
    OK(tunnel_string_free(new_dst));

    /* Rotating both, bound to a client token: both agents are dropped and refused; agents
     * that bring the client token connect with the new tokens. */
    OK(tunnel_api_rotate(url, NULL, id, TUNNEL_ROTATE_BOTH, CLIENT_TOKEN, &new_src, &new_dst));
    CHECK(strlen(new_src) > 0 && strlen(new_dst) > 0 && strcmp(new_dst, dst_token) != 0,
          "rotating both gives two new tokens");
    OK(tunnel_agent_wait_finished(src, 10000, &st));
    CHECK(st == TUNNEL_AGENT_FINISHED, "rotating both finishes the source (state %u)", st);
    OK(tunnel_agent_wait_finished(dst, 10000, &st));
    CHECK(st == TUNNEL_AGENT_FINISHED, "rotating both finishes the destination (state %u)", st);
    OK(tunnel_agent_free(&src));
    OK(tunnel_agent_free(&dst));
    o.client_token = CLIENT_TOKEN;
    o.kind = TUNNEL_AGENT_DESTINATION;
    o.token = new_dst;
    services[0] = service;
    OK(tunnel_agent_start(&o, &dst));
    o.kind = TUNNEL_AGENT_SOURCE;
    o.token = new_src;
    services[0] = "echo=127.0.0.1:0";
    OK(tunnel_agent_start(&o, &src));
    OK(tunnel_agent_local_port(src, "echo", &src_port));
    wait_state(dst, TUNNEL_AGENT_CONNECTED, "destination with the client token");
    wait_state(src, TUNNEL_AGENT_CONNECTED, "source with the client token");
    echo_through(src_port, 11, 64 * 1024);
    pthread_join(e.thread, NULL);
    printf("ok: both tokens rotated with a client token: the new ones work\n");
    FAILS(tunnel_api_rotate(url, NULL, id, 9, NULL, &new_src, &new_dst), TUNNEL_ERR_INVALID_ARGUMENT, "side 9");
    FAILS(tunnel_api_rotate(url, NULL, id, TUNNEL_ROTATE_BOTH, "short", &new_src, &new_dst), TUNNEL_ERR_TUNNEL_API, "clientToken");
    FAILS(tunnel_api_rotate(url, NULL, "no-such-tunnel", TUNNEL_ROTATE_BOTH, NULL, &new_src, &new_dst), TUNNEL_ERR_TUNNEL_API, "404");
    FAILS(tunnel_api_rotate(url, NULL, id, TUNNEL_ROTATE_BOTH, NULL, NULL, &new_dst), TUNNEL_ERR_NULL_ARGUMENT, "source_token");
    OK(tunnel_string_free(new_src));
    OK(tunnel_string_free(new_dst));
    o.token = src_token;

    /* Closing the tunnel finishes both agents. */
    OK(tunnel_api_close(url, NULL, id, 0));
    OK(tunnel_agent_wait_finished(src, 10000, &st));
    CHECK(st == TUNNEL_AGENT_FINISHED, "closing finishes the source (state %u)", st);
    OK(tunnel_agent_wait_finished(dst, 10000, &st));
    CHECK(st == TUNNEL_AGENT_FINISHED, "closing finishes the destination (state %u)", st);
    OK(tunnel_agent_state(src, &st, &reason));
    printf("ok: closed -> source finished: %s\n", reason);
    OK(tunnel_string_free(reason));

    /* Error paths. */
    o.ca = ca;
    o.ca_pem = ca_pem;
    FAILS(tunnel_agent_start(&o, &bad), TUNNEL_ERR_CONFIG, "`ca` and `ca_pem` exclude each other");
    o.ca = NULL;
    o.ca_pem = "not PEM";
    FAILS(tunnel_agent_start(&o, &bad), TUNNEL_ERR_CERTIFICATE, "ca_pem");
    o.ca = ca;
    o.ca_pem = NULL;
    free(ca_pem);
    o.client_token = NULL;
    services[0] = "echo=127.0.0.1:0";
    o.relay = "no-port-here";
    FAILS(tunnel_agent_start(&o, &bad), TUNNEL_ERR_CONFIG, "no-port-here");
    o.relay = relay;
    o.kind = 7;
    FAILS(tunnel_agent_start(&o, &bad), TUNNEL_ERR_INVALID_ARGUMENT, "kind 7");
    o.kind = TUNNEL_AGENT_SOURCE;
    o.services_len = 0;
    FAILS(tunnel_agent_start(&o, &bad), TUNNEL_ERR_INVALID_ARGUMENT, "services");
    o.services_len = 1;
    o.token = NULL;
    FAILS(tunnel_agent_start(&o, &bad), TUNNEL_ERR_CONFIG, "no access token");
    FAILS(tunnel_api_describe(url, NULL, "no-such-tunnel", &json), TUNNEL_ERR_TUNNEL_API, "404");
    FAILS(tunnel_api_list("https://127.0.0.1:1", NULL, NULL, &json), TUNNEL_ERR_ADDRESS, "https");
    FAILS(tunnel_api_open(url, NULL, names, 1, 0, NULL, NULL, NULL, &src_token, &dst_token), TUNNEL_ERR_NULL_ARGUMENT, "id");
    CHECK(bad == NULL, "no agent from a failed start");

    OK(tunnel_agent_stop(src, 1000));
    FAILS(tunnel_agent_stop(src, 1000), TUNNEL_ERR_SHUT_DOWN, "shut down");
    OK(tunnel_agent_state(src, &st, NULL));
    CHECK(st == TUNNEL_AGENT_STOPPED, "a stopped agent reads stopped (%u)", st);
    OK(tunnel_agent_free(&src));
    OK(tunnel_agent_free(&src));
    OK(tunnel_agent_free(&dst));
    OK(tunnel_string_free(id));
    OK(tunnel_string_free(src_token));
    OK(tunnel_string_free(dst_token));
    OK(tunnel_engine_shutdown(eng, 1000));
    OK(tunnel_engine_free(&eng));
    CHECK(count_dir("/proc/self/fd") == fds, "fds left: %d, before: %d", count_dir("/proc/self/fd"), fds);
    CHECK(count_dir("/proc/self/task") == tasks, "threads left: %d, before: %d", count_dir("/proc/self/task"), tasks);
    printf("ok: agents\n");
    return 0;
}

/* ---- reconnect: the relay in a child process, killed and started again ---- */

/* `relay CERT KEY STATE AGENTS_PORT API_PORT DRIVER`: a relay (ports 0: free ones) whose
 * tunnels live in the SQLite file STATE; prints "AGENTS_PORT API_PORT" and runs until its
 * stdin ends (or it is killed). */
static int mode_relay(const char *cert, const char *key, const char *state, const char *agents_port,
                      const char *api_port, const char *driver) {
    char buf[64];
    uint16_t a = 0, b = 0;
    tunnel_engine *eng = start_relay(driver, 1, cert, key, state, agents_port, api_port, &a, &b);
    printf("%u %u\n", a, b);
    fflush(stdout);
    while (read(0, buf, sizeof buf) > 0) {}
    OK(tunnel_engine_shutdown(eng, 1000));
    OK(tunnel_engine_free(&eng));
    return 0;
}

struct relay_child { pid_t pid; int in; uint16_t agents_port, api_port; };

/* Starts `mode_relay` in a child process (this program again) and reads its ports. */
static void relay_spawn(struct relay_child *r, const char *cert, const char *key, const char *state,
                        const char *driver) {
    char agents[8], api[8], line[64];
    int to_child[2], from_child[2];
    unsigned a = 0, b = 0;
    ssize_t n;
    snprintf(agents, sizeof agents, "%u", r->agents_port);
    snprintf(api, sizeof api, "%u", r->api_port);
    CHECK(pipe2(to_child, O_CLOEXEC) == 0 && pipe2(from_child, O_CLOEXEC) == 0, "pipe2");
    r->pid = fork();
    CHECK(r->pid >= 0, "fork: %s", strerror(errno));
    if (r->pid == 0) {
        /* Only async-signal-safe calls until exec: the parent has threads. */
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        execl("/proc/self/exe", "tunnel_test", "relay", cert, key, state, agents, api, driver, (char *)NULL);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    r->in = to_child[1];
    n = read(from_child[0], line, sizeof line - 1);
    close(from_child[0]);
    CHECK(n > 0, "the relay child printed no ports");
    line[n] = 0;
    CHECK(sscanf(line, "%u %u", &a, &b) == 2, "the relay child printed %s", line);
    r->agents_port = (uint16_t)a;
    r->api_port = (uint16_t)b;
}

static void relay_kill(struct relay_child *r) {
    int status = 0;
    CHECK(kill(r->pid, SIGKILL) == 0, "kill the relay: %s", strerror(errno));
    CHECK(waitpid(r->pid, &status, 0) == r->pid, "waitpid: %s", strerror(errno));
    close(r->in);
}

/* Polls the agent until it is in `want` (`seconds` at most). */
static void wait_state_for(tunnel_agent *a, uint32_t want, int seconds, const char *what) {
    uint32_t st = 99;
    for (int i = 0; i < seconds * 100; i++) {
        OK(tunnel_agent_state(a, &st, NULL));
        if (st == want) return;
        usleep(10000);
    }
    fail(__LINE__, "%s: state %u, not %u after %d s", what, st, want, seconds);
}

/* Agents through a relay that is killed (no close frame: its process ends) and started again
 * on the same ports with the same state: both agents read `reconnecting`, then `connected`
 * again, and carry data again. */
static int mode_reconnect(const char *ca, const char *cert, const char *key, const char *driver) {
    char url[64], relay[64], backend[64], service[96], state[128];
    struct relay_child rc;
    tunnel_agent *dst = NULL, *src = NULL;
    tunnel_agent_opts o;
    char *id = NULL, *src_token = NULL, *dst_token = NULL, *new_src = NULL, *new_dst = NULL;
    const char *names[] = {"echo"};
    const char *services[1];
    struct echo e;
    uint16_t src_port = 0;
    uint32_t st = 99;
    int fds = count_dir("/proc/self/fd"), tasks = count_dir("/proc/self/task");

    snprintf(state, sizeof state, "/tmp/tunnel-test-relay-%d.sqlite", (int)getpid());
    unlink(state);
    memset(&rc, 0, sizeof rc);
    relay_spawn(&rc, cert, key, state, driver);
    snprintf(url, sizeof url, "http://127.0.0.1:%u", rc.api_port);
    snprintf(relay, sizeof relay, "127.0.0.1:%u", rc.agents_port);
    OK(tunnel_api_open(url, NULL, names, 1, 30, NULL, NULL, &id, &src_token, &dst_token));
    /* Tokens bound to a client token: an agent may come back with them. */
    OK(tunnel_api_rotate(url, NULL, id, TUNNEL_ROTATE_BOTH, CLIENT_TOKEN, &new_src, &new_dst));

    echo_limit = 0;
    echo_start(&e, 2, backend, sizeof backend);
    snprintf(service, sizeof service, "echo=%s", backend);
    services[0] = service;
    memset(&o, 0, sizeof o);
    o.kind = TUNNEL_AGENT_DESTINATION;
    o.relay = relay; o.ca = ca; o.sni = "localhost"; o.token = new_dst;
    o.client_token = CLIENT_TOKEN;
    o.services = services; o.services_len = 1;
    OK(tunnel_agent_start(&o, &dst));
    OK(tunnel_agent_state(dst, &st, NULL));
    CHECK(st == TUNNEL_AGENT_CONNECTING || st == TUNNEL_AGENT_CONNECTED, "a new agent is connecting (%u)", st);
    services[0] = "echo=127.0.0.1:0";
    o.kind = TUNNEL_AGENT_SOURCE;
    o.token = new_src;
    OK(tunnel_agent_start(&o, &src));
    OK(tunnel_agent_local_port(src, "echo", &src_port));
    wait_state(dst, TUNNEL_AGENT_CONNECTED, "destination");
    wait_state(src, TUNNEL_AGENT_CONNECTED, "source");
    echo_through(src_port, 20, 64 * 1024);

    relay_kill(&rc);
    wait_state(src, TUNNEL_AGENT_RECONNECTING, "source after the relay died");
    wait_state(dst, TUNNEL_AGENT_RECONNECTING, "destination after the relay died");
    printf("ok: relay killed: both agents reconnecting\n");
    relay_spawn(&rc, cert, key, state, driver);
    wait_state_for(dst, TUNNEL_AGENT_CONNECTED, 60, "destination after the relay came back");
    wait_state_for(src, TUNNEL_AGENT_CONNECTED, 60, "source after the relay came back");
    echo_through(src_port, 21, 64 * 1024);
    pthread_join(e.thread, NULL);
    printf("ok: relay back: both agents connected again, data flows\n");

    OK(tunnel_api_close(url, NULL, id, 0));
    OK(tunnel_agent_wait_finished(src, 10000, &st));
    CHECK(st == TUNNEL_AGENT_FINISHED, "closing finishes the source (state %u)", st);
    OK(tunnel_agent_free(&src));
    OK(tunnel_agent_free(&dst));
    relay_kill(&rc);
    for (const char *const *ext = (const char *const[]){"", "-wal", "-shm", "-journal", NULL}; *ext; ext++) {
        char path[160];
        snprintf(path, sizeof path, "%s%s", state, *ext);
        unlink(path);
    }
    OK(tunnel_string_free(id));
    OK(tunnel_string_free(src_token));
    OK(tunnel_string_free(dst_token));
    OK(tunnel_string_free(new_src));
    OK(tunnel_string_free(new_dst));
    CHECK(count_dir("/proc/self/fd") == fds, "fds left: %d, before: %d", count_dir("/proc/self/fd"), fds);
    CHECK(count_dir("/proc/self/task") == tasks, "threads left: %d, before: %d", count_dir("/proc/self/task"), tasks);
    printf("ok: reconnect\n");
    return 0;
}

/* Sends an HTTP request through `fd` (a plain connection that TLS carries to the relay) and
 * returns whether an HTTP answer came back: the TLS session to the relay was accepted. */
static int relay_answers(int fd) {
    static const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    char buf[16] = {0};
    struct timeval tv = {10, 0};
    ssize_t n;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    /* Refused (a wrong pin): the connection may be reset before the request is written. */
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) {
        close(fd);
        return 0;
    }
    n = read(fd, buf, 9);
    close(fd);
    return n == 9 && memcmp(buf, "HTTP/1.1 ", 9) == 0;
}

static int mode_pins(const char *ca, const char *cert, const char *key, const char *pin,
                     const char *driver) {
    /* A well-formed pin that no key here has (32 zero bytes). */
    static const char wrong[] = "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    char url[64], relay[64], backend[64], service[96], pins[256];
    char token_file[] = "/tmp/tunnel-c-test-ct-XXXXXX";
    char dst_token_file[] = "/tmp/tunnel-c-test-dt-XXXXXX";
    uint16_t src_port = 0, fwd_port = 0;
    tunnel_engine *eng = NULL;
    tunnel_agent *dst = NULL, *src = NULL, *bad = NULL;
    tunnel_agent_opts o;
    tunnel_connect_opts c;
    tunnel_forwarder_opts f;
    char *id = NULL, *src_token = NULL, *dst_token = NULL;
    const char *names[] = {"echo"};
    const char *services[1];
    struct echo e;
    int fd = -1, tf;

    OK(tunnel_log_set_callback(on_log, NULL, "warn"));
    eng = relay_engine(driver, cert, key, url, relay);

    /* tunnel_connect: the right pin (beside a wrong one: either may match) reaches the relay,
     * a wrong one alone does not; malformed, or with a CA, is refused. */
    snprintf(pins, sizeof pins, "%s, %s", wrong, pin);
    memset(&c, 0, sizeof c);
    c.sni = "localhost";
    c.pin = pins;
    OK(tunnel_connect(eng, relay, &c, &fd));
    CHECK(relay_answers(fd), "tunnel_connect with the relay's pin: no HTTP answer");
    c.pin = wrong;
    OK(tunnel_connect(eng, relay, &c, &fd));
    CHECK(!relay_answers(fd), "tunnel_connect with a wrong pin reached the relay");
    c.pin = "sha256:not-a-hash";
    FAILS(tunnel_connect(eng, relay, &c, &fd), TUNNEL_ERR_CONFIG, "pin");
    c.pin = pin;
    c.ca_file = ca;
    FAILS(tunnel_connect(eng, relay, &c, &fd), TUNNEL_ERR_CONFIG, "pin");
    printf("ok: tunnel_connect with pin: the relay's pin reaches it, a wrong one does not\n");

    /* A client-mode forwarder pinned to the relay. */
    memset(&f, 0, sizeof f);
    f.mode = TUNNEL_MODE_CLIENT;
    f.name = "pinned";
    f.listen = "127.0.0.1:0";
    f.connect = relay;
    f.sni = "localhost";
    f.pin = pin;
    OK(tunnel_engine_add_forwarder(eng, &f));
    OK(tunnel_engine_local_port(eng, "pinned", &fwd_port));
    {
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa.sin_port = htons(fwd_port);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect to the forwarder: %s",
              strerror(errno));
        CHECK(relay_answers(fd), "a forwarder with the relay's pin: no HTTP answer");
    }
    f.name = "pinned-and-ca";
    f.ca = ca;
    FAILS(tunnel_engine_add_forwarder(eng, &f), TUNNEL_ERR_CONFIG, "pin");
    printf("ok: a client-mode forwarder with pin reaches the relay\n");

    /* Agents: the destination verifies the relay with the CA, the source with the pin and its
     * client token in a file. */
    OK(tunnel_api_open(url, NULL, names, 1, 30, NULL, NULL, &id, &src_token, &dst_token));
    echo_limit = 0;
    echo_start(&e, 1, backend, sizeof backend);
    snprintf(service, sizeof service, "echo=%s", backend);
    services[0] = service;
    memset(&o, 0, sizeof o);
    o.kind = TUNNEL_AGENT_DESTINATION;
    o.relay = relay; o.ca = ca; o.sni = "localhost"; o.token = dst_token;
    o.services = services; o.services_len = 1;
    /* Its access token from a file: not with `token` too. */
    tf = mkstemp(dst_token_file);
    CHECK(tf >= 0, "mkstemp: %s", strerror(errno));
    write_all(tf, (const unsigned char *)dst_token, strlen(dst_token));
    write_all(tf, (const unsigned char *)"\n", 1);
    close(tf);
    o.token_file = dst_token_file;
    FAILS(tunnel_agent_start(&o, &dst), TUNNEL_ERR_CONFIG, "token");
    o.token = NULL;
    OK(tunnel_agent_start(&o, &dst));
    o.token_file = NULL;
    tf = mkstemp(token_file);
    CHECK(tf >= 0, "mkstemp: %s", strerror(errno));
    write_all(tf, (const unsigned char *)CLIENT_TOKEN "\n", strlen(CLIENT_TOKEN) + 1);
    close(tf);
    services[0] = "echo=127.0.0.1:0";
    o.kind = TUNNEL_AGENT_SOURCE;
    o.token = src_token;
    o.ca = NULL;
    o.pin = pin;
    o.client_token = CLIENT_TOKEN;
    o.client_token_file = token_file;
    FAILS(tunnel_agent_start(&o, &src), TUNNEL_ERR_CONFIG, "client_token");
    o.client_token = NULL;
    o.ca = ca;
    FAILS(tunnel_agent_start(&o, &src), TUNNEL_ERR_CONFIG, "pin");
    o.ca = NULL;
    o.pin = "sha256:not-a-hash";
    FAILS(tunnel_agent_start(&o, &src), TUNNEL_ERR_CONFIG, "pin");
    o.pin = wrong;
    OK(tunnel_agent_start(&o, &bad));
    o.pin = pin;
    OK(tunnel_agent_start(&o, &src));
    OK(tunnel_agent_local_port(src, "echo", &src_port));
    wait_state(dst, TUNNEL_AGENT_CONNECTED, "destination");
    wait_state(src, TUNNEL_AGENT_CONNECTED, "pinned source");
    echo_through(src_port, 0, 65536);
    for (int i = 0; i < 100 && !log_has("matches no"); i++) usleep(100 * 1000);
    CHECK(log_has("matches no"), "the wrongly pinned agent says why:\n%s", log_text);
    {
        uint32_t st = 0;
        char *reason = NULL;
        OK(tunnel_agent_state(bad, &st, &reason));
        CHECK(st != TUNNEL_AGENT_CONNECTED, "a wrong pin connected");
        OK(tunnel_string_free(reason));
    }
    printf("ok: a source pinned to the relay (client token from a file) carries bytes to a destination with its token from a file; a wrong pin is refused\n");
    unlink(token_file);
    unlink(dst_token_file);
    OK(tunnel_agent_free(&bad));
    OK(tunnel_agent_free(&src));
    OK(tunnel_agent_free(&dst));
    OK(tunnel_string_free(id));
    OK(tunnel_string_free(src_token));
    OK(tunnel_string_free(dst_token));
    OK(tunnel_engine_shutdown(eng, 1000));
    OK(tunnel_engine_free(&eng));
    printf("ok: pins\n");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 5 && strcmp(argv[1], "connect") == 0)
        return mode_connect(argv[2], argv[3], (size_t)strtoul(argv[4], NULL, 10));
    if (argc == 7 && strcmp(argv[1], "server") == 0)
        return mode_server(argv[3], argv[4], (size_t)strtoul(argv[5], NULL, 10), argv[6]);
    if (argc == 6 && strcmp(argv[1], "threads") == 0)
        return mode_threads(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 6 && strcmp(argv[1], "agents") == 0)
        return mode_agents(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 6 && strcmp(argv[1], "reconnect") == 0)
        return mode_reconnect(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 7 && strcmp(argv[1], "pins") == 0)
        return mode_pins(argv[2], argv[3], argv[4], argv[5], argv[6]);
    if (argc == 8 && strcmp(argv[1], "relay") == 0)
        return mode_relay(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7]);
    if (argc == 7 && strcmp(argv[1], "errors") == 0)
        return mode_errors(argv[2], argv[3], argv[4], argv[5], argv[6]);
    fprintf(stderr, "usage: see the comment at the top of tunnel_test.c\n");
    return 2;
}
