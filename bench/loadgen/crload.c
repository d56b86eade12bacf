/* crload: a constant-rate load generator for the bench (HTTP/1.1 keep-alive GETs or Redis GETs).
 *
 * Why it exists: wrk and redis-benchmark are closed loops (a new request only when the last one
 * answered), so a slow server also slows the load and its latency hides behind the missing
 * requests (coordinated omission). Debian 12 ships no open-loop tool (wrk2, memtier, vegeta),
 * so the bench compiles this one at run time with the system gcc (never committed as a binary).
 *
 * Method: request i is *scheduled* at t0 + i / rate, whatever happened before. It is sent on the
 * first idle connection at or after that time (one request in flight per connection, no
 * pipelining), and its latency runs from the scheduled time to the end of its response: time
 * spent waiting for a free connection counts, as it would for a real client. The generator's own
 * lateness (send time - the first moment both the schedule and a free connection allowed the
 * send) is reported apart (`send_lag_*`) so a result where the generator, not the server, fell
 * behind can be told. Requests scheduled in the first --warmup
 * seconds are sent but not counted.
 *
 *   crload --proto http|redis --port P [--host 127.0.0.1] --rate R --conns N --duration S
 *          [--warmup W] [--drain D] [--path /]
 *
 * Output: one JSON object on stdout (latencies in microseconds). Exit 0 on a run, 2 on bad
 * arguments, 3 when it cannot connect.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF 65536
#define MAXCONN 1024
#define SPIN_NS 20000      /* below this, poll instead of sleeping */

enum { HTTP, REDIS };

struct conn {
    int fd;
    int busy;             /* a request in flight */
    int dead;
    int64_t sched_ns;     /* scheduled time of the request in flight */
    int64_t idle_since;   /* when its last response ended (it could take a request from then) */
    int counted;          /* scheduled after the warm-up */
    size_t sent;          /* bytes of the request written so far */
    size_t rlen;          /* bytes in rbuf */
    char rbuf[RBUF];
};

static int proto = HTTP;
static char req[512];
static size_t req_len;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(const int64_t *v, size_t n, double q)
{
    if (!n)
        return 0.0;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return (double)v[i] / 1000.0;
}

/* Length of one complete response at the start of b, 0 if incomplete; *err set on an error reply. */
static size_t http_complete(const char *b, size_t n, int *err)
{
    const char *end = memmem(b, n, "\r\n\r\n", 4);
    if (!end)
        return 0;
    size_t head = (size_t)(end - b) + 4;
    long clen = 0;
    for (const char *p = b; p && p < end; p = memchr(p, '\n', (size_t)(end - p))) {
        if (*p == '\n')
            p++;
        if ((size_t)(end - p) > 15 && strncasecmp(p, "content-length:", 15) == 0)
            clen = strtol(p + 15, NULL, 10);
    }
    if (n < head + (size_t)clen)
        return 0;
    *err = !(n >= 12 && b[9] == '2');
    return head + (size_t)clen;
}

static size_t redis_complete(const char *b, size_t n, int *err)
{
    const char *nl = memmem(b, n, "\r\n", 2);
    if (!nl)
        return 0;
    size_t line = (size_t)(nl - b) + 2;
    *err = b[0] == '-';
    if (b[0] != '$')
        return line;
    long len = strtol(b + 1, NULL, 10);
    if (len < 0)
        return line;                       /* $-1: nil */
    if (n < line + (size_t)len + 2)
        return 0;
    return line + (size_t)len + 2;
}

static int connect_one(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (fd < 0 || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void usage(void)
{
    fprintf(stderr, "usage: crload --proto http|redis --port P [--host H] --rate R --conns N --duration S "
                    "[--warmup W] [--drain D] [--path /]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *path = "/";
    int port = 0, nconn = 8;
    double rate = 0, duration = 0, warmup = 1.0, drain = 5.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (!strcmp(a, "--proto"))
            proto = !strcmp(v, "redis") ? REDIS : !strcmp(v, "http") ? HTTP : -1;
        else if (!strcmp(a, "--host"))
            host = v;
        else if (!strcmp(a, "--port"))
            port = atoi(v);
        else if (!strcmp(a, "--rate"))
            rate = atof(v);
        else if (!strcmp(a, "--conns"))
            nconn = atoi(v);
        else if (!strcmp(a, "--duration"))
            duration = atof(v);
        else if (!strcmp(a, "--warmup"))
            warmup = atof(v);
        else if (!strcmp(a, "--drain"))
            drain = atof(v);
        else if (!strcmp(a, "--path"))
            path = v;
        else
            usage();
        i++;
    }
    if (proto < 0 || port <= 0 || rate <= 0 || duration <= 0 || nconn < 1 || nconn > MAXCONN || warmup < 0)
        usage();
    if (proto == HTTP)
        req_len = (size_t)snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", path, host, port);
    else
        req_len = (size_t)snprintf(req, sizeof(req), "*2\r\n$3\r\nGET\r\n$16\r\nkey:__rand_int__\r\n");

    struct conn *c = calloc((size_t)nconn, sizeof(*c));
    /* idle connections in a FIFO ring: the one picked is the one free the longest, so
     * max(scheduled, its idle_since) is when the request could first have gone out */
    int *idle = calloc((size_t)nconn, sizeof(int)), nidle = 0, ihead = 0;
#define IDLE_PUSH(i) (idle[(ihead + nidle++) % nconn] = (i))
#define IDLE_POP() (nidle--, idle[ihead++ % nconn])
    int ep = epoll_create1(0);
    struct epoll_event ev;
    for (int i = 0; i < nconn; i++) {
        c[i].fd = connect_one(host, port);
        if (c[i].fd < 0) {
            fprintf(stderr, "crload: cannot connect to %s:%d: %s\n", host, port, strerror(errno));
            return 3;
        }
        ev.events = EPOLLIN;
        ev.data.u64 = (uint64_t)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
        IDLE_PUSH(i);
    }

    const int64_t total = (int64_t)(rate * (warmup + duration));
    const int64_t first_counted = (int64_t)(rate * warmup);
    int64_t *lat = malloc(sizeof(int64_t) * (size_t)(total - first_counted + 1));
    int64_t *lag = malloc(sizeof(int64_t) * (size_t)(total - first_counted + 1));
    int64_t *cwait = malloc(sizeof(int64_t) * (size_t)(total - first_counted + 1));
    size_t nlat = 0, nlag = 0;
    int64_t errors = 0, completed_all = 0, next = 0, inflight = 0;
    const int64_t t0 = now_ns() + 10000000LL;        /* 10 ms to settle */
#define SCHED(i) (t0 + (int64_t)((double)(i) * 1e9 / rate))
    const int64_t send_end = SCHED(total);
    const int64_t deadline = send_end + (int64_t)(drain * 1e9);
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    struct epoll_event evs[64];

    for (;;) {
        int64_t now = now_ns();
        /* dispatch every request due, while a connection is free */
        while (nidle && next < total && SCHED(next) <= now) {
            int i = IDLE_POP();
            struct conn *k = &c[i];
            if (k->dead)               /* closed by the server while idle: out of the pool */
                continue;
            k->busy = 1;
            k->sched_ns = SCHED(next);
            k->counted = next >= first_counted;
            k->sent = 0;
            k->rlen = 0;
            next++;
            inflight++;
            ssize_t w = send(k->fd, req, req_len, MSG_NOSIGNAL);
            if (w > 0)
                k->sent = (size_t)w;
            if (k->counted) {      /* the generator's own lateness, and the wait for a free connection
                                    * (all of them busy: the server is behind, or over capacity) */
                int64_t free_at = k->sched_ns > k->idle_since ? k->sched_ns : k->idle_since;
                cwait[nlag] = free_at - k->sched_ns;
                lag[nlag++] = now - free_at;
            }
            if (k->sent < req_len) {       /* rare: finish the write when the socket drains */
                ev.events = EPOLLIN | EPOLLOUT;
                ev.data.u64 = (uint64_t)i;
                epoll_ctl(ep, EPOLL_CTL_MOD, k->fd, &ev);
            }
        }
        if (next >= total && inflight == 0)
            break;
        if (now >= deadline)
            break;
        /* sleep until the next request is due (if a connection can take it) or a reply comes;
         * epoll_pwait2 takes a ns timeout: one syscall per wait, no timer to re-arm */
        int64_t wake = (nidle && next < total) ? SCHED(next) : deadline;
        if (wake > deadline)
            wake = deadline;
        int64_t wait_ns = wake - now;
        if (wait_ns < SPIN_NS)
            wait_ns = 0;                   /* due now or almost: a sleep would wake later than that */
        struct timespec to = {.tv_sec = wait_ns / 1000000000LL, .tv_nsec = wait_ns % 1000000000LL};
        int n = epoll_pwait2(ep, evs, 64, &to, NULL);
        if (n < 0 && errno != EINTR)
            break;
        for (int e = 0; e < n; e++) {
            int i = (int)evs[e].data.u64;
            struct conn *k = &c[i];
            if (k->dead)
                continue;
            if ((evs[e].events & EPOLLOUT) && k->busy && k->sent < req_len) {
                ssize_t w = send(k->fd, req + k->sent, req_len - k->sent, MSG_NOSIGNAL);
                if (w > 0)
                    k->sent += (size_t)w;
                if (k->sent >= req_len) {
                    ev.events = EPOLLIN;
                    ev.data.u64 = (uint64_t)i;
                    epoll_ctl(ep, EPOLL_CTL_MOD, k->fd, &ev);
                }
            }
            if (!(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            ssize_t r = recv(k->fd, k->rbuf + k->rlen, RBUF - k->rlen, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                k->dead = 1;           /* closed by the server: its request is an error */
                epoll_ctl(ep, EPOLL_CTL_DEL, k->fd, NULL);
                close(k->fd);
                if (k->busy) {
                    errors++;
                    inflight--;
                }
                continue;
            }
            if (r < 0)
                continue;
            k->rlen += (size_t)r;
            if (!k->busy) {            /* bytes nobody asked for */
                errors++;
                k->rlen = 0;
                continue;
            }
            int err = 0;
            size_t used = proto == HTTP ? http_complete(k->rbuf, k->rlen, &err)
                                        : redis_complete(k->rbuf, k->rlen, &err);
            if (!used) {
                if (k->rlen == RBUF) { /* a response larger than the buffer: not ours */
                    errors++;
                    k->rlen = 0;
                }
                continue;
            }
            int64_t done = now_ns();
            completed_all++;
            if (k->counted) {
                lat[nlat++] = done - k->sched_ns;
                errors += err;
            }
            k->busy = 0;
            k->rlen = 0;
            k->idle_since = done;
            inflight--;
            IDLE_PUSH(i);
        }
    }
    int64_t t_end = now_ns();
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    qsort(lat, nlat, sizeof(int64_t), cmp_i64);
    qsort(lag, nlag, sizeof(int64_t), cmp_i64);
    qsort(cwait, nlag, sizeof(int64_t), cmp_i64);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++)
        sum += (double)lat[i];
    int64_t scheduled = total - first_counted;
    printf("{\"proto\":\"%s\",\"rate\":%.1f,\"conns\":%d,\"duration_s\":%.3f,\"warmup_s\":%.3f,"
           "\"scheduled\":%lld,\"completed\":%zu,\"errors\":%lld,\"unsent\":%lld,\"unanswered\":%lld,"
           "\"achieved_rps\":%.1f,\"mean_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
           "\"p999_us\":%.1f,\"max_us\":%.1f,\"send_lag_p50_us\":%.1f,\"send_lag_p99_us\":%.1f,"
           "\"send_lag_max_us\":%.1f,\"conn_wait_p50_us\":%.1f,\"conn_wait_p99_us\":%.1f,\"cpu_s\":%.3f,"
           "\"wall_s\":%.3f}\n",
           proto == HTTP ? "http" : "redis", rate, nconn, duration, warmup, (long long)scheduled, nlat,
           (long long)errors, (long long)(total - next), (long long)inflight,
           (double)completed_all / ((double)(t_end - t0) / 1e9), nlat ? sum / (double)nlat / 1000.0 : 0.0,
           pct(lat, nlat, 0.50), pct(lat, nlat, 0.90), pct(lat, nlat, 0.99), pct(lat, nlat, 0.999),
           nlat ? (double)lat[nlat - 1] / 1000.0 : 0.0, pct(lag, nlag, 0.50), pct(lag, nlag, 0.99),
           nlag ? (double)lag[nlag - 1] / 1000.0 : 0.0, pct(cwait, nlag, 0.50), pct(cwait, nlag, 0.99), cpu,
           (double)(t_end - t0) / 1e9);
    return 0;
}
