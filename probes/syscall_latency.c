/* diag: per-syscall latency of the target, aggregated in the kernel, with per-event records for
 * slow calls and the kernel stack where a slow call blocked (off-CPU, from sched:sched_switch).
 *
 * Loaded by diag/collect/ebpf_agent.py with BCC. Uses only tracepoint arguments and helpers
 * (no kernel struct reads: the headers BCC compiles against may belong to another kernel).
 * One generic enter/exit program pair is attached to every syscalls:sys_enter_X / sys_exit_X
 * tracepoint traced; what to do per syscall number comes from the `sysinfo` array.
 *
 * Filters and sizes come as cflags (like BCC's tools):
 *   -DTARGET_TGID=N   trace one process;  -DTARGET_MAP  trace the tgids in `targets`
 *   -DFOLLOW          add children forked by targets to `targets` (sched:sched_process_fork)
 *   -DAGENT_TGID=N    never trace this tgid (the agent itself, when tracing all)
 *   -DSLOW_NS=N       emit a record for calls at least this slow (0: every call)
 *   -DUSE_RINGBUF -DRINGBUF_PAGES=N   ring buffer; else a perf buffer
 *   -DDIAG_EVENT_SIZE=N   sizeof the consumer's mirror of struct diag_event
 *   -DREQUESTS -DREQ_PAGES=N   the request summarizer (below) and its own ring buffer
 *   -DDIAG_REQUEST_SIZE=N sizeof the consumer's mirror of struct diag_request
 *
 * Request summarizer (REQUESTS): server-side requests are rebuilt in the kernel, one record per
 * request (`requests` buffer), with the same rules as diag/analyze/requests.py:
 *   - a socket is server-side when accepted, or when its first traced I/O is a read that moved
 *     bytes (an older connection); outbound when the target connected it or its first traced I/O
 *     was a write; socketpair ends are neither. Roles live in the fd map next to the kind.
 *   - per server connection (`conns`, keyed (tgid, fd)): a read returning bytes starts a request
 *     when the connection is idle (start = that read's exit) or WRITING (the previous request is
 *     emitted first: it ended at its last write's exit); while READING it adds to the request.
 *     A write returning bytes while READING/WRITING makes it WRITING (end = this exit).
 *     EOF (read returns 0), close, or an accept/connect reusing the fd emit a WRITING request
 *     and forget the connection. The agent emits WRITING requests left at stop, and counts
 *     READING ones as in flight.
 *   - a thread's `serve` (in its inflight entry) is the connection whose I/O it did last while a
 *     request was open;
 *     every traced call the thread completes while that request is open adds its duration to
 *     the request's family_ns[FAM_*]. Calls after the last response write wait in `pending` and
 *     count only if another response write follows, so the sums stay inside [start, end].
 */
#include <uapi/linux/ptrace.h>
#include "diag_events.h"

#ifndef SLOW_NS
#define SLOW_NS 1000000ULL
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 256
#endif
#ifndef STACK_ENTRIES
#define STACK_ENTRIES 16384
#endif
#ifndef AGENT_TGID
#define AGENT_TGID 0
#endif
/* sched_switch prev_state: TASK_REPORT bits; 0 (or only the preempt bit 0x100) = runnable */
#define BLOCKED_STATE_MASK 0xff

#ifndef REQ_PAGES
#define REQ_PAGES 256
#endif

#ifdef DIAG_EVENT_SIZE
_Static_assert(sizeof(struct diag_event) == DIAG_EVENT_SIZE,
               "struct diag_event differs from the agent's ctypes mirror");
#endif
#ifdef DIAG_AGENT_NIDX
_Static_assert(DIAG_NIDX == DIAG_AGENT_NIDX && DIAG_NKIND == DIAG_AGENT_NKIND && DIAG_NSLOT == DIAG_AGENT_NSLOT,
               "aggregate array dimensions differ from the agent's");
#endif
#ifdef DIAG_REQUEST_SIZE
_Static_assert(sizeof(struct diag_request) == DIAG_REQUEST_SIZE,
               "struct diag_request differs from the agent's ctypes mirror");
#endif

/* Generic layout of syscalls:sys_enter_* / sys_exit_* (64-bit): 8 bytes of common fields,
 * int __syscall_nr, then the arguments (8 bytes each) or the return value. */
struct diag_sys_enter {
    u64 common;
    int nr;
    u32 pad;
    u64 args[6];
};
struct diag_sys_exit {
    u64 common;
    int nr;
    u32 pad;
    long ret;
};

struct diag_fdkey {
    u32 tgid;
    s32 fd;
};

/* One entry per thread that made a traced call, reused call after call: entry overwrites the
 * call's part in place and exit marks it idle (start_ns = 0). Inserting and deleting an entry per
 * call cost ~240 ns of the target's time per call (hash element allocation and free); the LRU
 * evicts the entries of threads that died. The thread's request state (REQUESTS) lives here too,
 * so a call needs no other per-thread lookup. */
struct diag_inflight {
    u64 start_ns;       /* 0: the thread is not inside a traced call */
    u64 off_cpu_ns;
    u64 max_off_ns;
    u64 max_off_ts;
    u64 switch_out_ns;
    u64 arg;            /* user pointer to int[2] (pipe, socketpair) */
    u32 nr;
    u32 flags;
    s32 fd;
    u32 kind;           /* kind of args[0] */
    u32 newkind;        /* kind of the fd(s) the call creates */
    s32 kstack_id;      /* stack of the longest off-CPU interval */
    s32 pending_stack;  /* stack of the current off-CPU interval */
    u32 fdv;            /* fd map value of args[0]: kind | role bits */
    u32 fam;            /* FAM_* (sysinfo) */
    u32 idx;            /* sysinfo.idx */
    /* per thread, kept across calls: a call's entry writes only the fields above (other
     * threads may clear `serve` meanwhile: a whole-struct write would undo that) */
    struct diag_fdkey serve;  /* connection whose request the thread serves (tgid 0: none) */
    u64 preempted_ns;   /* when it was preempted while serving, outside a syscall (0: not) */
};

struct diag_agg {
    u64 count;
    u64 total_ns;
    u64 bytes_total;
    u64 max_ns;
};

BPF_ARRAY(sysinfo, struct diag_sysinfo, 1024);
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);
BPF_TABLE("lru_hash", u32, struct diag_inflight, inflight, 65536);
BPF_HASH(fdkinds, struct diag_fdkey, u32, 262144);
BPF_PERCPU_ARRAY(agg, struct diag_agg, DIAG_NIDX * DIAG_NKIND);
BPF_PERCPU_ARRAY(lat_hist, u64, DIAG_NIDX * DIAG_NKIND * DIAG_NSLOT);
BPF_PERCPU_ARRAY(bytes_hist, u64, DIAG_NIDX * DIAG_NKIND * DIAG_NSLOT);
BPF_STACK_TRACE(stacks, STACK_ENTRIES);
#if defined(TARGET_MAP) || defined(FOLLOW)
BPF_HASH(targets, u32, u8, 65536);
#endif
#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif
#ifdef REQUESTS
struct diag_conn {
    struct diag_request r;
    u64 pending[FAM_N];    /* time after the last response write: counts if another write follows */
};
BPF_HASH(conns, struct diag_fdkey, struct diag_conn, 65536);
BPF_PERCPU_ARRAY(conn_scratch, struct diag_conn, 1);
#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(requests, REQ_PAGES);
#else
BPF_PERF_OUTPUT(requests);
#endif
#endif

static __always_inline void count(u32 slot)
{
    u64 *c = counters.lookup(&slot);
    if (c)
        (*c)++;
}

static __always_inline int is_target(u32 tgid)
{
#if defined(TARGET_MAP) || defined(FOLLOW)
    return targets.lookup(&tgid) != NULL;
#elif defined(TARGET_TGID)
    return tgid == TARGET_TGID;
#else
    return tgid != AGENT_TGID && tgid != 0;
#endif
}

static __always_inline u32 kind_of(u32 tgid, s32 fd)
{
    struct diag_fdkey k = {.tgid = tgid, .fd = fd};
    u32 *v = fdkinds.lookup(&k);
    return v ? *v : DIAG_KIND_UNKNOWN;
}

static __always_inline void set_kind(u32 tgid, s32 fd, u32 kind)
{
    struct diag_fdkey k = {.tgid = tgid, .fd = fd};
    if (fd < 0)
        return;
    if (kind == DIAG_KIND_UNKNOWN) {
        fdkinds.delete(&k);
        return;
    }
    if (fdkinds.update(&k, &kind) != 0)
        count(CNT_FDMAP_ERR);
}

static __always_inline u32 path_kind(u64 uptr)
{
    char p[8] = {};
    if (bpf_probe_read_user_str(p, sizeof(p), (void *)uptr) <= 0)
        return DIAG_KIND_FILE;
    /* character devices (/dev/null, /dev/zero, ttys...) are "other"; /dev/shm holds files */
    if (p[0] == '/' && p[1] == 'd' && p[2] == 'e' && p[3] == 'v' && p[4] == '/' &&
        !(p[5] == 's' && p[6] == 'h'))
        return DIAG_KIND_OTHER;
    return DIAG_KIND_FILE;
}


/* row = sysinfo.idx * DIAG_NKIND + kind: one cell of this CPU's aggregate arrays */
static __always_inline void hist_add(int is_bytes, u32 row, u64 v)
{
    u32 slot = bpf_log2l(v);
    if (slot >= DIAG_NSLOT)
        slot = DIAG_NSLOT - 1;
    u32 i = row * DIAG_NSLOT + slot;
    u64 *c = is_bytes ? bytes_hist.lookup(&i) : lat_hist.lookup(&i);
    if (c)
        (*c)++;
    else
        count(CNT_AGG_ERR);
}

#ifdef REQUESTS
static __always_inline int same_key(struct diag_fdkey *a, struct diag_fdkey *b)
{
    return a->tgid == b->tgid && a->fd == b->fd;
}

static __always_inline void unserve_thread(u32 t, struct diag_fdkey *k)
{
    struct diag_inflight *e = inflight.lookup(&t);
    if (e && same_key(&e->serve, k)) {
        e->serve.tgid = 0;
        e->serve.fd = 0;
    }
}

/* The threads that served a request stop serving it. */
static __always_inline void req_unserve(struct diag_conn *c, struct diag_fdkey *k)
{
    unserve_thread(c->r.tid, k);
    if (c->r.write_tid && c->r.write_tid != c->r.tid)
        unserve_thread(c->r.write_tid, k);
}

static __always_inline void req_emit(void *ctx, struct diag_conn *c, struct diag_fdkey *k)
{
    req_unserve(c, k);
#ifdef USE_RINGBUF
    /* no wake-up per record: the agent consumes the buffer after every poll (<= 100 ms), so a
     * busy server does not wake it thousands of times a second */
    if (requests.ringbuf_output(&c->r, sizeof(c->r), BPF_RB_NO_WAKEUP) != 0)
        count(CNT_REQ_LOST);
#else
    requests.perf_submit(ctx, &c->r, sizeof(c->r));   /* losses come back through lost_cb */
#endif
    count(CNT_REQ_EMITTED);
}

/* Ready for the next request on the same connection. */
static __always_inline void req_reset(struct diag_conn *c)
{
    c->r.seq++;
    c->r.state = CONN_IDLE;
    c->r.start_ns = 0;
    c->r.end_ns = 0;
    c->r.first_write_ns = 0;
    c->r.bytes_in = 0;
    c->r.bytes_out = 0;
    c->r.reads = 0;
    c->r.writes = 0;
    c->r.tid = 0;
    c->r.write_tid = 0;
#pragma unroll
    for (int i = 0; i < FAM_N; i++) {
        c->r.family_ns[i] = 0;
        c->pending[i] = 0;
    }
}

/* EOF, close or fd reuse: emit a complete request, forget the connection. */
static __always_inline void req_forget(void *ctx, struct diag_fdkey *k, int emit)
{
    struct diag_conn *c = conns.lookup(k);
    if (!c)
        return;
    if (c->r.state == CONN_WRITING && emit) {
        req_emit(ctx, c, k);
    } else {
        if (c->r.state == CONN_READING)
            count(CNT_REQ_ABANDONED);
        req_unserve(c, k);
    }
    conns.delete(k);
}

static __always_inline struct diag_conn *req_new(struct diag_fdkey *k, u64 conn_start)
{
    u32 zero = 0;
    struct diag_conn *t = conn_scratch.lookup(&zero);
    if (!t)
        return NULL;
    __builtin_memset(t, 0, sizeof(*t));
    t->r.tgid = k->tgid;
    t->r.fd = k->fd;
    t->r.conn_start_ns = conn_start;
    if (conns.update(k, t) != 0) {
        count(CNT_CONN_ERR);
        return NULL;
    }
    return conns.lookup(k);
}

static __always_inline void req_serve(struct diag_inflight *self, struct diag_fdkey *k)
{
    self->serve = *k;
}

/* The request summarizer's part of a call's exit (see the top of the file). */
static __always_inline void req_exit(void *ctx, u32 tgid, u32 tid, struct diag_inflight *f,
                                     struct diag_inflight *self, long ret, u64 now, u64 dur)
{
    u32 flags = f->flags;
    u32 fdv = f->fdv;
    struct diag_fdkey k = {.tgid = tgid, .fd = f->fd};
    struct diag_conn *c;

    if ((flags & SF_ACCEPT) && ret >= 0) {
        struct diag_fdkey nk = {.tgid = tgid, .fd = (s32)ret};
        req_forget(ctx, &nk, 1);           /* a close we missed */
        req_new(&nk, now);
    } else if ((flags & SF_CONNECT) && f->fd >= 0) {
        fdv = (fdv & ~FDR_MASK & ~DIAG_KIND_MASK) | DIAG_KIND_SOCKET | FDR_OUT;
        if (fdkinds.update(&k, &fdv) != 0)
            count(CNT_FDMAP_ERR);
        req_forget(ctx, &k, 0);
    } else if ((flags & (SF_RD | SF_WR)) && f->fd >= 0 && (fdv & DIAG_KIND_MASK) == DIAG_KIND_SOCKET) {
        if (!(fdv & FDR_MASK) && ret > 0) {
            /* an older socket: its first I/O decides its side */
            fdv |= (flags & SF_RD) ? FDR_SERVER : FDR_OUT;
            if (fdkinds.update(&k, &fdv) != 0)
                count(CNT_FDMAP_ERR);
        }
        if ((fdv & FDR_SERVER) && ret >= 0) {
            c = conns.lookup(&k);
            if (flags & SF_RD) {
                if (ret == 0) {                  /* EOF */
                    req_forget(ctx, &k, 1);
                    return;
                }
                if (!c)
                    c = req_new(&k, 0);          /* a connection older than the attach */
                if (!c)
                    return;
                if (c->r.state == CONN_WRITING) {
                    req_emit(ctx, c, &k);
                    req_reset(c);
                }
                if (c->r.state == CONN_IDLE) {
                    /* the wait for these bytes is idle time: the request starts at this exit */
                    c->r.state = CONN_READING;
                    c->r.tid = tid;
                    c->r.start_ns = now;
                    c->r.end_ns = now;
                    c->r.reads = 1;
                    c->r.bytes_in = (u64)ret;
                    req_serve(self, &k);
                    return;
                }
                c->r.reads++;
                c->r.bytes_in += (u64)ret;
                __sync_fetch_and_add(&c->r.family_ns[FAM_SOCK], dur);
                req_serve(self, &k);
                return;
            }
            if (ret > 0 && c && c->r.state != CONN_IDLE) {
                if (c->r.state == CONN_WRITING) {
                    /* what the thread did since the previous write was inside the response */
#pragma unroll
                    for (int i = 0; i < FAM_N; i++) {
                        c->r.family_ns[i] += c->pending[i];
                        c->pending[i] = 0;
                    }
                }
                __sync_fetch_and_add(&c->r.family_ns[FAM_SOCK], dur);
                c->r.state = CONN_WRITING;
                c->r.writes++;
                c->r.bytes_out += (u64)ret;
                c->r.end_ns = now;
                if (!c->r.first_write_ns) {
                    c->r.first_write_ns = now;
                    c->r.write_tid = tid;
                }
                req_serve(self, &k);
                return;
            }
        }
    } else if ((flags & SF_CLOSE) && (fdv & FDR_SERVER)) {
        return;                            /* forgotten at entry */
    }

    /* any other call: time of the request this thread serves */
    if (!self->serve.tgid)
        return;
    struct diag_fdkey sk = self->serve;
    c = conns.lookup(&sk);
    if (!c || c->r.state == CONN_IDLE) {
        self->serve.tgid = 0;
        self->serve.fd = 0;
        return;
    }
    u32 fam = f->fam;
    if (fam == FAM_IO) {
        u32 kind = fdv & DIAG_KIND_MASK;
        if (kind == DIAG_KIND_FILE)
            fam = FAM_FILE;
        else if (kind == DIAG_KIND_SOCKET)
            fam = (fdv & FDR_OUT) ? FAM_UPSTREAM : (fdv & FDR_PAIR) ? FAM_OTHER : FAM_SOCK;
        else
            fam = FAM_OTHER;
    }
    if (fam >= FAM_N)
        return;
    if (c->r.state == CONN_WRITING)
        __sync_fetch_and_add(&c->pending[fam], dur);
    else
        __sync_fetch_and_add(&c->r.family_ns[fam], dur);
}
#endif

static __always_inline int do_enter(struct diag_sys_enter *ctx, const int nargs)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_target(tgid))
        return 0;
    u32 nr = (u32)ctx->nr;
    struct diag_sysinfo *si = sysinfo.lookup(&nr);
    if (!si || !si->flags)
        return 0;
    u32 flags = si->flags;
    struct diag_inflight f = {};
    f.start_ns = bpf_ktime_get_ns();
    f.nr = nr;
    f.flags = flags;
    f.fd = -1;
    f.kstack_id = -1;
    f.pending_stack = -1;
    f.newkind = si->kind;
    f.fam = si->fam;
    f.idx = si->idx;
    if (flags & (SF_FD0 | SF_NEWFD_DUP | SF_FCNTL)) {
        f.fd = (s32)ctx->args[0];
        f.fdv = kind_of(tgid, f.fd);
        f.kind = f.fdv & DIAG_KIND_MASK;
    }
    if ((flags & SF_KSTACK) || ((flags & SF_KSTACK_FILE) && f.kind == DIAG_KIND_FILE))
        f.flags |= SF_TAKE_STACK;
    if (flags & SF_NEWFD_DUP)
        f.newkind = f.fdv;
    if ((flags & SF_FCNTL) && nargs >= 2) {
        u64 cmd = ctx->args[1];
        if (cmd != 0 /* F_DUPFD */ && cmd != 1030 /* F_DUPFD_CLOEXEC */)
            return 0;
        f.newkind = f.fdv;
    }
    if (flags & SF_PAIR_ARG0)
        f.arg = ctx->args[0];
    if ((flags & SF_PAIR_ARG3) && nargs >= 4)
        f.arg = ctx->args[3];
    if (flags & SF_PATH_ARG0)
        f.newkind = path_kind(ctx->args[0]);
    if ((flags & SF_PATH_ARG1) && nargs >= 2)
        f.newkind = path_kind(ctx->args[1]);
    if (flags & SF_CLOSE) {
        /* Forget the fd now: the kernel frees the number before close returns, and another
         * thread's socket/accept/open may get it before this call's exit (seen: a new outbound
         * socket lost its kind, so its 50 ms wait counted as "other"). Linux frees the fd even
         * when close fails. */
        struct diag_fdkey k = {.tgid = tgid, .fd = f.fd};
#ifdef REQUESTS
        if (f.fdv & FDR_SERVER)
            req_forget(ctx, &k, 1);
#endif
        if (f.fd >= 0)
            fdkinds.delete(&k);
    }
    struct diag_inflight *slot = inflight.lookup(&tid);
    if (slot)
        __builtin_memcpy(slot, &f, __builtin_offsetof(struct diag_inflight, serve));
    else
        inflight.update(&tid, &f);
    return 0;
}

/* The kernel refuses to attach a program that reads past the end of a tracepoint's record, so
 * there is one entry program per number of arguments read: the agent picks the smallest. */
int diag_sys_enter1(struct diag_sys_enter *ctx) { return do_enter(ctx, 1); }
int diag_sys_enter2(struct diag_sys_enter *ctx) { return do_enter(ctx, 2); }
int diag_sys_enter4(struct diag_sys_enter *ctx) { return do_enter(ctx, 4); }

int diag_sys_exit(struct diag_sys_exit *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_target(tgid))           /* before any map: most syscalls of the machine stop here */
        return 0;
    struct diag_inflight *fp = inflight.lookup(&tid);
    if (!fp || !fp->start_ns)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct diag_inflight f = *fp;
    fp->start_ns = 0;
    fp->switch_out_ns = 0;
    if ((u32)ctx->nr != f.nr)       /* an entry left by a call we missed the exit of */
        return 0;
    long ret = ctx->ret;
    u32 flags = f.flags;

    /* fd bookkeeping */
    if (ret >= 0) {
        if (flags & (SF_NEWFD_RET | SF_NEWFD_DUP | SF_FCNTL | SF_PATH_ARG0 | SF_PATH_ARG1))
            set_kind(tgid, (s32)ret, f.newkind);
        if ((flags & (SF_PAIR_ARG0 | SF_PAIR_ARG3)) && f.arg) {
            int fds[2] = {-1, -1};
            if (bpf_probe_read_user(fds, sizeof(fds), (void *)f.arg) == 0) {
                set_kind(tgid, fds[0], f.newkind);
                set_kind(tgid, fds[1], f.newkind);
            }
        }
    }
    if (!(flags & SF_LAT))
        return 0;

    u64 dur = now - f.start_ns;
    u32 row = f.idx * DIAG_NKIND + (f.kind < DIAG_NKIND ? f.kind : DIAG_KIND_UNKNOWN);
    struct diag_agg *a = agg.lookup(&row);
    u64 nbytes = (flags & SF_BYTES) && ret > 0 ? (u64)ret : 0;
    if (a && f.idx < DIAG_NIDX) {
        /* this CPU's cell: plain updates (a BPF program is not migrated while it runs) */
        a->count++;
        a->total_ns += dur;
        a->bytes_total += nbytes;
        if (dur > a->max_ns)
            a->max_ns = dur;
        hist_add(0, row, dur);
        if (nbytes)
            hist_add(1, row, nbytes);
    } else {
        count(CNT_AGG_ERR);
    }
    count(CNT_CALLS);
#ifdef REQUESTS
    req_exit(ctx, tgid, tid, &f, fp, ret, now, dur);
#endif

    if (dur < SLOW_NS && !(flags & SF_ALWAYS))
        return 0;
    struct diag_event ev = {};
    ev.start_ns = f.start_ns;
    ev.dur_ns = dur;
    ev.off_cpu_ns = f.off_cpu_ns;
    ev.kstack_off_ns = f.max_off_ns;
    ev.kstack_ts_ns = f.max_off_ts;
    ev.ret = ret;
    ev.tid = tid;
    ev.tgid = tgid;
    ev.nr = f.nr;
    ev.fd = (flags & SF_FD0) ? f.fd : -1;
    ev.kstack_id = f.kstack_id;
    ev.fd_kind = f.kind;
#ifdef USE_RINGBUF
    if (events.ringbuf_output(&ev, sizeof(ev), 0) != 0)
        count(CNT_EVENT_LOST);
#else
    events.perf_submit(ctx, &ev, sizeof(ev));   /* losses come back through lost_cb */
#endif
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = 0;
    u32 next = args->next_pid;
    /* the tracepoint runs as prev, so its tgid is at hand: other processes' switches skip prev's
     * lookups (next's tgid is not, its lookups stay) */
    u32 prev = is_target(bpf_get_current_pid_tgid() >> 32) ? args->prev_pid : 0;
    struct diag_inflight *f;
    if (prev && (args->prev_state & BLOCKED_STATE_MASK)) {
        f = inflight.lookup(&prev);
        if (f && f->start_ns) {
            now = bpf_ktime_get_ns();
            f->switch_out_ns = now;
            int sid = -1;
            if (f->flags & SF_TAKE_STACK) {
                sid = stacks.get_stackid(args, 0);
                if (sid < 0)
                    count(CNT_STACK_ERR);
            }
            f->pending_stack = sid;
        }
    }
#ifdef REQUESTS
    /* Time a serving thread spends runnable but off CPU (preempted outside a syscall) is time
     * waiting for a CPU: kept apart from on-CPU work in its request's FAM_RUNQ. Inside a
     * syscall, the wait is the call's own time. */
    if (prev && !(args->prev_state & BLOCKED_STATE_MASK)) {
        f = inflight.lookup(&prev);
        if (f && f->serve.tgid && !f->start_ns) {
            if (!now)
                now = bpf_ktime_get_ns();
            f->preempted_ns = now;
        }
    }
#endif
    if (!next)
        return 0;
    f = inflight.lookup(&next);
    if (!f)
        return 0;
    if (f->switch_out_ns) {
        if (!now)
            now = bpf_ktime_get_ns();
        u64 delta = now - f->switch_out_ns;
        f->off_cpu_ns += delta;
        if (delta > f->max_off_ns) {
            f->max_off_ns = delta;
            f->max_off_ts = f->switch_out_ns;
            f->kstack_id = f->pending_stack;
        }
        f->switch_out_ns = 0;
    }
#ifdef REQUESTS
    if (f->preempted_ns) {
        if (!now)
            now = bpf_ktime_get_ns();
        u64 waited = now - f->preempted_ns;
        f->preempted_ns = 0;
        struct diag_fdkey sk = f->serve;
        struct diag_conn *c = sk.tgid ? conns.lookup(&sk) : NULL;
        if (c && c->r.state == CONN_WRITING)
            __sync_fetch_and_add(&c->pending[FAM_RUNQ], waited);
        else if (c && c->r.state != CONN_IDLE)
            __sync_fetch_and_add(&c->r.family_ns[FAM_RUNQ], waited);
    }
#endif
    return 0;
}

/* A thread's entry goes with the thread (the LRU alone could evict a live thread blocked in a long
 * call, losing that call). These events are rare: returning 1 hands them on to perf users of the
 * same tracepoints (the syscall and sched_switch programs return 0: see README "Known limits"). */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    if (is_target(id >> 32)) {
        u32 tid = (u32)id;
        inflight.delete(&tid);
    }
    return 1;
}

/* exec ends every call in flight in the process and its per-thread state (the exec'ing thread
 * keeps or takes the leader's tid) */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u64 id = bpf_get_current_pid_tgid();
    if (is_target(id >> 32)) {
        u32 tid = (u32)id;
        inflight.delete(&tid);
    }
    return 1;
}

#ifdef FOLLOW
/* parent_pid / child_pid are thread ids; the forking task is current. A new thread's tid lands
 * in `targets` too, which is harmless: no process has that tgid while the thread lives. */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    u32 child = args->child_pid;
    u8 one = 1;
    targets.update(&child, &one);
    return 1;
}
#endif
