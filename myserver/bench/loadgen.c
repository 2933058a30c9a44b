/*
 * loadgen - small, fast load generator for TCP echo servers (127.0.0.0/8 only).
 *
 * This is the load generator of myserver-bench: C, so that the server under
 * test, not the client, is what saturates its core; verifies every echoed byte.
 *
 * Usage: loadgen SCENARIO PORT CONNS SIZE SECONDS [THREADS]
 *   SCENARIO  pingpong | connect-rate
 *   PORT      echo server port on 127.0.0.1
 *   CONNS     connections (pingpong) / clients in flight (connect-rate)
 *   SIZE      bytes per message
 *   SECONDS   run time (may be fractional); the run always stops by itself
 *   THREADS   worker threads (default 1), each with its own epoll and an
 *             equal share of CONNS; results are summed
 *
 * Output (stdout, one line, only on success):
 *   {"scenario":"...","operations":N,"seconds":S,"rate":R,"errors":E,
 *    "latencies":[L,...]}
 *   scenario    SCENARIO as given
 *   operations  completed operations, all threads: pingpong rounds (message
 *               sent and fully echoed) / connect-rate clients (connect, send,
 *               half-close, full echo, EOF)
 *   seconds     measured run time (start to the last thread's end)
 *   rate        operations / seconds
 *   errors      connection errors survived (reconnected / retried)
 *   latencies   latency samples in seconds (CLOCK_MONOTONIC, %.9g), all
 *               threads: every 16th operation of each connection/client slot
 *               (the 16th, 32nd, ...); pingpong: first send() of the message
 *               to the last byte of its echo received; connect-rate: connect()
 *               call to the EOF after the full echo. At most 200000 samples
 *               per thread (array allocated once at start; more are dropped),
 *               so normally about operations/16 entries.
 * Exit 3 with a message on stderr if any echoed byte differs from what was
 * sent, or the echo is truncated/extended; exit 1 on too many connection
 * errors (pingpong: more than a handful; connect-rate: more than 1% of
 * operations); exit 2 on bad arguments.
 *
 * Build: cc -O2 -Wall -Wextra -Werror -pthread -o loadgen loadgen.c
 *        (-pthread may be omitted on glibc >= 2.34: pthreads are in libc)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* Exit statuses: a failed run (refused connections, too many errors), and
 * an echo that differs from what was sent (myserver.bench.native). */
#define EXIT_FAILED 1
#define EXIT_WRONG_BYTES 3

#define MAX_EVENTS 256
#define PP_ERR_HANDFUL 5          /* pingpong: fatal beyond this many errors */
#define SRC_FIRST 0x7f000002u     /* 127.0.0.2 */
#define SRC_COUNT 253u            /* 127.0.0.2 .. 127.0.0.254 */
#define LAT_EVERY 16u             /* latency sample every 16th op of a slot */
#define LAT_CAP 200000u           /* latency samples kept per thread */

enum { SC_PINGPONG, SC_CONNRATE };
enum { ST_CLOSED, ST_CONNECTING, ST_ACTIVE, ST_READING };

struct conn {
    int fd;
    int state;
    uint32_t id;        /* global connection index */
    uint32_t evmask;    /* events currently registered (pingpong, LT) */
    uint64_t round;     /* operations completed on this slot */
    uint64_t t0_ns;     /* start of the current op, if it is sampled */
    size_t woff, roff;
    unsigned char *sbuf; /* pingpong: current message */
};

struct worker {
    pthread_t tid;
    int index;
    int nconns;
    uint32_t first_id;
    uint32_t src_next;
    int ep;
    uint64_t ops, errors;
    double end;
    struct conn *conns;
    unsigned char *msgbuf;  /* pingpong: nconns * size */
    unsigned char *scratch; /* receive buffer */
    size_t scratch_len;
    double *lat;            /* latency samples (s), LAT_CAP, allocated once */
    size_t nlat;
};

static int g_scenario;
static const char *g_scenario_name;
static size_t g_size;
static double g_start, g_deadline;
static unsigned char *g_payload;       /* connect-rate payload (read-only) */
static struct sockaddr_in g_dst;
static atomic_int g_stop;
static atomic_int g_failed;
static atomic_int g_pp_errors;
static char g_failmsg[512];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Is the current operation of slot c one of the latency samples? */
static int lat_sampled(const struct conn *c)
{
    return c->round % LAT_EVERY == LAT_EVERY - 1;
}

/* Operation of c ends now: record its latency if sampled (no allocation). */
static void lat_end(struct worker *w, const struct conn *c)
{
    if (!lat_sampled(c))
        return;
    uint64_t t1 = now_ns();
    if (w->nlat < LAT_CAP)
        w->lat[w->nlat++] = (double)(t1 - c->t0_ns) * 1e-9;
}

/* The first failure stops the run; its status is the exit status:
 * EXIT_WRONG_BYTES for an echo that differs from what was sent. */
static void fail_with(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail_with(int status, const char *fmt, ...)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&g_failed, &expected, status)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g_failmsg, sizeof g_failmsg, fmt, ap);
        va_end(ap);
    }
    atomic_store(&g_stop, 1);
}
#define fail(...) fail_with(EXIT_FAILED, __VA_ARGS__)
#define wrong(...) fail_with(EXIT_WRONG_BYTES, __VA_ARGS__)

static int stopped(void)
{
    return atomic_load_explicit(&g_stop, memory_order_relaxed);
}

static size_t first_diff(const unsigned char *a, const unsigned char *b, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (a[i] != b[i])
            break;
    return i;
}

static void ep_set(struct worker *w, int op, struct conn *c, uint32_t ev)
{
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = ev;
    e.data.ptr = c;
    if (epoll_ctl(w->ep, op, c->fd, &e) < 0)
        fail("epoll_ctl: %s", strerror(errno));
    c->evmask = ev;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
}

/* ------------------------------------------------------------------ */
/* pingpong                                                            */
/* ------------------------------------------------------------------ */

static void pp_connect(struct worker *w, struct conn *c);

static void pp_error(struct worker *w, struct conn *c, int err, const char *what)
{
    w->errors++;
    int total = atomic_fetch_add(&g_pp_errors, 1) + 1;
    conn_close(c);
    if (total > PP_ERR_HANDFUL) {
        fail("pingpong: too many connection errors (%d); last: conn %u %s: %s",
             total, c->id, what, err ? strerror(err) : "unexpected EOF");
        return;
    }
    if (!stopped())
        pp_connect(w, c);
}

/* Send what is left of buf (g_size bytes) from c->woff on, until all of it
   is sent or the socket is full (c->woff then says which): 0, or the error
   that stopped it (EPIPE for a send that took nothing). */
static int send_some(struct conn *c, const unsigned char *buf)
{
    while (c->woff < g_size) {
        ssize_t n = send(c->fd, buf + c->woff, g_size - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return n < 0 ? errno : EPIPE;
    }
    return 0;
}

/* Message unique to connection and round: "conn:round:" repeated, truncated. */
static void pp_build(struct conn *c)
{
    char stamp[48];
    int n = snprintf(stamp, sizeof stamp, "%u:%llu:", c->id,
                     (unsigned long long)c->round);
    size_t len = (size_t)n < g_size ? (size_t)n : g_size;
    memcpy(c->sbuf, stamp, len);
    while (len < g_size) {
        size_t k = len < g_size - len ? len : g_size - len;
        memcpy(c->sbuf + len, c->sbuf, k);
        len += k;
    }
}

static void pp_write(struct worker *w, struct conn *c)
{
    int err = send_some(c, c->sbuf);
    if (err) {
        pp_error(w, c, err, "send");
        return;
    }
    uint32_t want = EPOLLIN | (c->woff < g_size ? EPOLLOUT : 0);
    if (want != c->evmask)
        ep_set(w, EPOLL_CTL_MOD, c, want);
}

static void pp_start_round(struct worker *w, struct conn *c)
{
    pp_build(c);
    c->woff = c->roff = 0;
    if (lat_sampled(c))
        c->t0_ns = now_ns();    /* just before the first send() */
    pp_write(w, c);
}

static void pp_connect(struct worker *w, struct conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail("socket: %s", strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->woff = c->roff = 0;
    if (connect(fd, (struct sockaddr *)&g_dst, sizeof g_dst) == 0) {
        c->state = ST_ACTIVE;
        ep_set(w, EPOLL_CTL_ADD, c, EPOLLIN);
        pp_start_round(w, c);
    } else if (errno == EINPROGRESS) {
        c->state = ST_CONNECTING;
        ep_set(w, EPOLL_CTL_ADD, c, EPOLLOUT);
    } else {
        pp_error(w, c, errno, "connect");
    }
}

static void pp_event(struct worker *w, struct conn *c, uint32_t ev)
{
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err) {
            pp_error(w, c, err, "connect");
            return;
        }
        c->state = ST_ACTIVE;
        pp_start_round(w, c);   /* switches interest to EPOLLIN(|EPOLLOUT) */
        return;
    }
    if (c->state != ST_ACTIVE)
        return;

    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        /* level triggered: one read per event; never read past this round */
        ssize_t n = recv(c->fd, w->scratch, g_size - c->roff, 0);
        if (n > 0) {
            if (memcmp(w->scratch, c->sbuf + c->roff, (size_t)n) != 0) {
                size_t d = first_diff(w->scratch, c->sbuf + c->roff, (size_t)n);
                wrong("pingpong: echo mismatch on conn %u round %llu at byte %zu: "
                     "sent 0x%02x, got 0x%02x", c->id,
                     (unsigned long long)c->round, c->roff + d,
                     c->sbuf[c->roff + d], w->scratch[d]);
                return;
            }
            c->roff += (size_t)n;
            if (c->roff == g_size) {
                lat_end(w, c);
                w->ops++;
                c->round++;
                pp_start_round(w, c);
                return;
            }
        } else if (n == 0) {
            pp_error(w, c, 0, "recv");
            return;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            pp_error(w, c, errno, "recv");
            return;
        }
    }
    if ((ev & EPOLLOUT) && c->state == ST_ACTIVE && c->woff < g_size)
        pp_write(w, c);
}

/* ------------------------------------------------------------------ */
/* connect-rate                                                        */
/* ------------------------------------------------------------------ */

static int cr_soft_error(int err)
{
    switch (err) {
    case ECONNREFUSED: case ECONNRESET: case EADDRNOTAVAIL: case EADDRINUSE:
    case EPIPE: case ETIMEDOUT: case ECONNABORTED: case EAGAIN:
        return 1;
    default:
        return 0;
    }
}

/* Open a new client in slot c; retries (counting errors) until it is in flight. */
static void cr_start(struct worker *w, struct conn *c)
{
    while (!stopped() && now() < g_deadline) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            fail("connect-rate: socket: %s", strerror(errno));
            return;
        }
        int one = 1;
        /* port picked at connect() time, unique per 4-tuple */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src;
        memset(&src, 0, sizeof src);
        src.sin_family = AF_INET;
        src.sin_port = 0;
        src.sin_addr.s_addr = htonl(SRC_FIRST + (w->src_next++ % SRC_COUNT));
        int err = 0;
        if (lat_sampled(c))
            c->t0_ns = now_ns();    /* just before connect() */
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            err = errno;
        } else if (connect(fd, (struct sockaddr *)&g_dst, sizeof g_dst) < 0 &&
                   errno != EINPROGRESS) {
            err = errno;
        }
        if (err) {
            close(fd);
            if (!cr_soft_error(err)) {
                fail("connect-rate: bind/connect: %s", strerror(err));
                return;
            }
            w->errors++;
            continue;
        }
        c->fd = fd;
        c->state = ST_CONNECTING;
        c->woff = c->roff = 0;
        /* edge triggered: one epoll_ctl per client; close() removes it */
        ep_set(w, EPOLL_CTL_ADD, c, EPOLLIN | EPOLLOUT | EPOLLET);
        return;
    }
}

static void cr_error(struct worker *w, struct conn *c, int err, const char *what)
{
    conn_close(c);
    if (!cr_soft_error(err)) {
        fail("connect-rate: %s: %s", what, strerror(err));
        return;
    }
    w->errors++;
    cr_start(w, c);
}

static void cr_event(struct worker *w, struct conn *c, uint32_t ev)
{
    if (c->state == ST_CONNECTING) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        /* A full socket: the rest waits for the next EPOLLOUT edge. */
        int err = send_some(c, g_payload);
        if (err) {
            cr_error(w, c, err, "send");
            return;
        }
        if (c->woff == g_size) {
            if (shutdown(c->fd, SHUT_WR) < 0) {
                cr_error(w, c, errno, "shutdown");
                return;
            }
            c->state = ST_READING;
        }
    }
    if (c->state == ST_CLOSED)
        return;
    if (!(ev & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
        return;
    /* edge triggered: drain until EAGAIN or EOF (also while still writing) */
    for (;;) {
        ssize_t n = recv(c->fd, w->scratch, w->scratch_len, 0);
        if (n > 0) {
            if (c->roff + (size_t)n > g_size) {
                wrong("connect-rate: echo longer than sent (%zu+ bytes, sent %zu)",
                     c->roff + (size_t)n, g_size);
                return;
            }
            if (memcmp(w->scratch, g_payload + c->roff, (size_t)n) != 0) {
                size_t d = first_diff(w->scratch, g_payload + c->roff, (size_t)n);
                wrong("connect-rate: echo mismatch at byte %zu: sent 0x%02x, got 0x%02x",
                     c->roff + d, g_payload[c->roff + d], w->scratch[d]);
                return;
            }
            c->roff += (size_t)n;
            continue;
        }
        if (n == 0) {
            if (c->state != ST_READING || c->roff != g_size) {
                wrong("connect-rate: echo truncated: EOF after %zu of %zu bytes "
                     "(%zu written)", c->roff, g_size, c->woff);
                return;
            }
            lat_end(w, c);
            conn_close(c);
            w->ops++;
            c->round++;
            cr_start(w, c);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        cr_error(w, c, errno, "recv");
        return;
    }
}

/* ------------------------------------------------------------------ */

/* One worker's run: start every connection, then handle events until the
 * deadline (or a failure), then close what is open. */
static void run(struct worker *w, void (*start)(struct worker *, struct conn *),
                void (*event)(struct worker *, struct conn *, uint32_t))
{
    struct epoll_event evs[MAX_EVENTS];
    for (int i = 0; i < w->nconns && !stopped(); i++)
        start(w, &w->conns[i]);

    while (!stopped()) {
        double t = now();
        if (t >= g_deadline)
            break;
        int timeout = (int)((g_deadline - t) * 1000.0) + 1;
        if (timeout > 100)
            timeout = 100;
        int n = epoll_wait(w->ep, evs, MAX_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail("epoll_wait: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n && !stopped(); i++)
            event(w, (struct conn *)evs[i].data.ptr, evs[i].events);
    }
    w->end = now();
    for (int i = 0; i < w->nconns; i++)
        conn_close(&w->conns[i]);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    if (g_scenario == SC_PINGPONG)
        run(w, pp_connect, pp_event);
    else
        run(w, cr_start, cr_event);
    return NULL;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen SCENARIO PORT CONNS SIZE SECONDS [THREADS]\n"
            "  SCENARIO: pingpong | connect-rate; server at 127.0.0.1:PORT\n");
    exit(2);
}

static long parse_long(const char *s, const char *name, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < min || v > max) {
        fprintf(stderr, "loadgen: bad %s '%s' (%ld..%ld)\n", name, s, min, max);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 6 || argc > 7)
        usage();
    if (strcmp(argv[1], "pingpong") == 0)
        g_scenario = SC_PINGPONG;
    else if (strcmp(argv[1], "connect-rate") == 0)
        g_scenario = SC_CONNRATE;
    else
        usage();
    g_scenario_name = argv[1];
    int port = (int)parse_long(argv[2], "PORT", 1, 65535);
    int conns = (int)parse_long(argv[3], "CONNS", 1, 1000000);
    g_size = (size_t)parse_long(argv[4], "SIZE", 1, 64L << 20);
    char *end;
    double seconds = strtod(argv[5], &end);
    if (*end || end == argv[5] || !(seconds > 0) || seconds > 86400) {
        fprintf(stderr, "loadgen: bad SECONDS '%s'\n", argv[5]);
        return 2;
    }
    int threads = argc == 7 ? (int)parse_long(argv[6], "THREADS", 1, 1024) : 1;
    if (threads > conns)
        threads = conns;

    signal(SIGPIPE, SIG_IGN);

    /* enough descriptors for all connections */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rlim_t need = (rlim_t)conns + (rlim_t)threads + 32;
        if (rl.rlim_cur < need) {
            rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        if (rl.rlim_cur < need) {
            fprintf(stderr, "loadgen: need %llu file descriptors, limit is %llu\n",
                    (unsigned long long)need, (unsigned long long)rl.rlim_cur);
            return 1;
        }
    }

    memset(&g_dst, 0, sizeof g_dst);
    g_dst.sin_family = AF_INET;
    g_dst.sin_port = htons((uint16_t)port);
    g_dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    if (g_scenario == SC_CONNRATE) {
        g_payload = malloc(g_size);
        if (!g_payload) {
            fprintf(stderr, "loadgen: out of memory\n");
            return 1;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^
                     ((uint64_t)getpid() << 40) ^ 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < g_size; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            g_payload[i] = (unsigned char)(x >> 32);
        }
    }

    struct worker *ws = calloc((size_t)threads, sizeof *ws);
    if (!ws) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    uint32_t next_id = 0;
    for (int t = 0; t < threads; t++) {
        struct worker *w = &ws[t];
        w->index = t;
        w->nconns = conns / threads + (t < conns % threads);
        w->first_id = next_id;
        next_id += (uint32_t)w->nconns;
        w->src_next = (uint32_t)t * (SRC_COUNT / (uint32_t)threads + 1);
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        w->scratch_len = (g_size < 65536 ? g_size : 65536) + 64;
        if (w->scratch_len < g_size && g_scenario == SC_PINGPONG)
            w->scratch_len = g_size;
        w->scratch = malloc(w->scratch_len);
        w->conns = calloc((size_t)w->nconns, sizeof *w->conns);
        w->lat = malloc(LAT_CAP * sizeof *w->lat);
        if (g_scenario == SC_PINGPONG)
            w->msgbuf = malloc((size_t)w->nconns * g_size);
        if (w->ep < 0 || !w->scratch || !w->conns || !w->lat ||
            (g_scenario == SC_PINGPONG && !w->msgbuf)) {
            fprintf(stderr, "loadgen: setup failed: %s\n", strerror(errno));
            return 1;
        }
        for (int i = 0; i < w->nconns; i++) {
            struct conn *c = &w->conns[i];
            c->fd = -1;
            c->state = ST_CLOSED;
            c->id = w->first_id + (uint32_t)i;
            if (w->msgbuf)
                c->sbuf = w->msgbuf + (size_t)i * g_size;
        }
    }

    g_start = now();
    g_deadline = g_start + seconds;
    for (int t = 0; t < threads; t++) {
        if (pthread_create(&ws[t].tid, NULL, worker_main, &ws[t]) != 0) {
            fprintf(stderr, "loadgen: pthread_create failed\n");
            atomic_store(&g_stop, 1);
            for (int j = 0; j < t; j++)
                pthread_join(ws[j].tid, NULL);
            return 1;
        }
    }
    uint64_t ops = 0, errors = 0;
    double tend = g_start;
    for (int t = 0; t < threads; t++) {
        pthread_join(ws[t].tid, NULL);
        ops += ws[t].ops;
        errors += ws[t].errors;
        if (ws[t].end > tend)
            tend = ws[t].end;
    }
    double elapsed = tend - g_start;

    int status = atomic_load(&g_failed);
    if (status) {
        fprintf(stderr, "loadgen: FAIL: %s (operations=%llu errors=%llu)\n", g_failmsg,
                (unsigned long long)ops, (unsigned long long)errors);
        return status;
    }
    if (g_scenario == SC_CONNRATE && errors * 100 > ops) {
        fprintf(stderr, "loadgen: FAIL: connect-rate: %llu errors is more than 1%% of "
                "%llu operations\n", (unsigned long long)errors, (unsigned long long)ops);
        return 1;
    }
    printf("{\"scenario\":\"%s\",\"operations\":%llu,\"seconds\":%.3f,\"rate\":%.1f,"
           "\"errors\":%llu,\"latencies\":[", g_scenario_name, (unsigned long long)ops,
           elapsed, elapsed > 0 ? (double)ops / elapsed : 0.0, (unsigned long long)errors);
    const char *sep = "";
    for (int t = 0; t < threads; t++) {
        for (size_t i = 0; i < ws[t].nlat; i++) {
            printf("%s%.9g", sep, ws[t].lat[i]);
            sep = ",";
        }
    }
    printf("]}\n");
    return 0;
}
