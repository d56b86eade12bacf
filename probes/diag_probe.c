/* diag's eBPF probe: per-syscall latency of the target processes aggregated in the kernel, records
 * of slow calls (with the kernel stack where they blocked), server requests summarized in the
 * kernel, who woke a blocked target thread and how long it waited for a CPU, and the accept queue.
 *
 * Loaded by diag/agent/ with BCC. Uses only tracepoint arguments and helpers (no kernel struct
 * reads: the headers BCC compiles against may belong to another kernel). One generic enter/exit
 * program pair sits on raw_syscalls:sys_enter/sys_exit; what to do per syscall number comes from
 * the `sysinfo` array. Every program tests the target first, before touching any map, so the
 * rest of the machine pays only the kernel's price of an attached program.
 *
 * Filters and sizes come as cflags (like BCC's tools):
 *   -DTARGET_TGID=N   trace one process (a compiled-in constant: the cheapest test)
 *   -DTARGET_SET -DPID_WORDS=N   trace the tgids whose bit is set in `target_bits` (a process tree)
 *   -DFOLLOW          add processes forked by targets to the set (sched:sched_process_fork)
 *   -DSLOW_NS=N       emit a record for calls at least this slow (0: every call)
 *   -DWAKE_MIN_NS=N   emit a wakeup record when a target thread blocked at least this long
 *   -DRUNQ_MIN_NS=N   emit a runq record when a target thread waited at least this long for a CPU
 *   -DRINGBUF_PAGES=N -DREQ_PAGES=N -DSCHED_PAGES=N   ring sizes (powers of two)
 *   -DREQUESTS        the request summarizer (below), its histograms and its ring
 *   -DACCEPT_QUEUE    accept-queue wait per connection (sock:inet_sock_set_state) and SYN retransmits
 *   -DFLOOR           every program returns at once: the kernel's own price of attached programs
 *   -D<STRUCT>_SIZE=N sizeof the consumer's layout of each record struct (checked below)
 *
 * Records go to BPF ring buffers without wake-ups (BPF_RB_NO_WAKEUP): the agent consumes them on a
 * timer, copying whole batches (diag/agent/ring.py), so a busy server never wakes it per record.
 *
 * Request summarizer (REQUESTS): server-side requests are rebuilt in the kernel with the same rules
 * as diag/analyze/requests.py:
 *   - a socket is server-side when accepted, or when its first traced I/O is a read that moved
 *     bytes (an older connection); outbound when the target connected it or its first traced I/O
 *     was a write; socketpair ends are neither. Roles live in the fd map next to the kind.
 *   - per server connection (`conns`, keyed (tgid, fd)): a read returning bytes starts a request
 *     when the connection is idle (start = that read's exit) or WRITING (the previous request is
 *     complete: it ended at its last write's exit); while READING it adds to the request.
 *     A write returning bytes while READING/WRITING makes it WRITING (end = this exit).
 *     EOF (read returns 0), close, or an accept/connect reusing the fd complete a WRITING request
 *     and forget the connection. The agent emits WRITING requests left at stop.
 *   - a thread's `serve` is the connection whose I/O it did last while a request was open; every
 *     traced call the thread completes while that request is open adds its duration to the
 *     request's family_ns[FAM_*]. Calls after the last response write wait in `pending` and count
 *     only if another response write follows, so the sums stay inside [start, end].
 *   - every completed request lands in per-CPU histograms (latency server-side and client-visible,
 *     time per family); it is exported as a record when it is at least as slow as the threshold
 *     the agent sets every second (req_ctl), or as 1 in (mask + 1) ordinary exemplars.
 */
#include <uapi/linux/ptrace.h>
#include "diag_events.h"

#ifndef SLOW_NS
#define SLOW_NS 1000000ULL
#endif
#ifndef WAKE_MIN_NS
#define WAKE_MIN_NS 100000ULL
#endif
#ifndef RUNQ_MIN_NS
#define RUNQ_MIN_NS 100000ULL
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 256
#endif
#ifndef REQ_PAGES
#define REQ_PAGES 1024
#endif
#ifndef SCHED_PAGES
#define SCHED_PAGES 512
#endif
#ifndef STACK_ENTRIES
#define STACK_ENTRIES 16384
#endif
#ifndef PID_WORDS
#define PID_WORDS 512          /* pid_max / 64 (the agent passes /proc/sys/kernel/pid_max / 64) */
#endif
/* sched_switch prev_state: TASK_REPORT bits; 0 (or only the preempt bit 0x100) = runnable */
#define BLOCKED_STATE_MASK 0xff
/* Two addresses on one kernel stack are closer than this (THREAD_SIZE is 16 KiB, 32 KiB with
 * KASAN); an interrupt runs on the per-CPU interrupt stack, which is elsewhere. */
#define SAME_STACK_SPAN 32768
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT    2
#define TCP_SYN_RECV    3
#define IPPROTO_TCP_NR  6

#ifdef FLOOR
#define FLOOR_RETURN(v) return (v)
#else
#define FLOOR_RETURN(v) do { } while (0)
#endif

#ifdef DIAG_EVENT_SIZE
_Static_assert(sizeof(struct diag_event) == DIAG_EVENT_SIZE, "struct diag_event differs from the agent's layout");
#endif
#ifdef DIAG_REQUEST_SIZE
_Static_assert(sizeof(struct diag_request) == DIAG_REQUEST_SIZE, "struct diag_request differs from the agent's layout");
#endif
#ifdef DIAG_SCHED_SIZE
_Static_assert(sizeof(struct diag_sched) == DIAG_SCHED_SIZE, "struct diag_sched differs from the agent's layout");
#endif
#ifdef DIAG_SYSINFO_SIZE
_Static_assert(sizeof(struct diag_sysinfo) == DIAG_SYSINFO_SIZE, "struct diag_sysinfo differs from the agent's layout");
#endif

/* Generic layout of raw_syscalls:sys_enter / sys_exit (64-bit): 8 bytes of common fields, long id,
 * then the arguments (8 bytes each) or the return value. */
struct diag_sys_enter {
    u64 common;
    long id;
    u64 args[6];
};
struct diag_sys_exit {
    u64 common;
    long id;
    long ret;
};

struct diag_fdkey {
    u32 tgid;
    s32 fd;
};

/* One entry per target thread that made a traced call, reused call after call: entry overwrites
 * the call's part in place and exit marks it idle (start_ns = 0). Inserting and deleting an entry
 * per call cost ~240 ns of the target's time per call (hash element allocation and free); the LRU
 * evicts the entries of threads that died unseen. The thread's own state lives here too, so a call
 * or a scheduler event needs no other per-thread lookup. */
struct diag_thread {
    u64 start_ns;       /* 0: the thread is not inside a traced call */
    u64 off_cpu_ns;
    u64 max_off_ns;
    u64 max_off_ts;
    u64 switch_out_ns;
    u64 arg;            /* user pointer: int[2] (pipe, socketpair) or the peer's sockaddr (accept) */
    u64 uaddr;          /* SF_UADDR: args[0] */
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
    /* per thread, kept across calls: a call's entry writes only the fields above (other threads
     * may clear `serve` meanwhile: a whole-struct write would undo that) */
    struct diag_fdkey serve;  /* connection whose request the thread serves (tgid 0: none) */
    u64 preempted_ns;   /* preempted while serving, outside a syscall (0: not) */
    u64 blocked_ns;     /* when it blocked (switched out not runnable); 0: running or runnable */
    u64 runnable_ns;    /* when it became runnable (woken or preempted); 0: running or blocked */
    u64 stack_addr;     /* an address on its own kernel stack (learn_stack, at its first traced call) */
    u32 tgid;
    u32 runq_flags;     /* SCHEDF_PREEMPTED / SCHEDF_IN_CALL of the current runnable wait */
};

struct diag_agg {
    u64 count;
    u64 total_ns;
    u64 bytes_total;
    u64 max_ns;
};

BPF_ARRAY(sysinfo, struct diag_sysinfo, 1024);
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);
BPF_TABLE("lru_hash", u32, struct diag_thread, inflight, 65536);
BPF_HASH(fdkinds, struct diag_fdkey, u32, 262144);
BPF_PERCPU_ARRAY(agg, struct diag_agg, DIAG_NIDX * DIAG_NKIND);
BPF_PERCPU_ARRAY(lat_hist, u64, DIAG_NIDX * DIAG_NKIND * DIAG_NSLOT);
BPF_PERCPU_ARRAY(bytes_hist, u64, DIAG_NIDX * DIAG_NKIND * DIAG_NSLOT);
BPF_STACK_TRACE(stacks, STACK_ENTRIES);
BPF_PERCPU_ARRAY(scratch_addr, u64, 1);
BPF_PERCPU_ARRAY(sched_scratch, struct diag_sched, 1);
BPF_PROG_ARRAY(learn_prog, 1);
/* threads of target processes seen in a traced call: the scheduler programs test this bit before
 * any lookup (most switches and wake-ups of a busy machine are other processes') */
BPF_ARRAY(thread_bits, u64, PID_WORDS);
#ifdef TARGET_SET
BPF_ARRAY(target_bits, u64, PID_WORDS);
#endif
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(sched, SCHED_PAGES);
#ifdef REQUESTS
struct diag_conn {
    struct diag_request r;
    u64 pending[FAM_N];    /* time after the last response write: counts if another write follows */
};
BPF_HASH(conns, struct diag_fdkey, struct diag_conn, 65536);
BPF_PERCPU_ARRAY(conn_scratch, struct diag_conn, 1);
BPF_RINGBUF_OUTPUT(requests, REQ_PAGES);
BPF_ARRAY(req_ctl, u64, CTL_N);
BPF_PERCPU_ARRAY(req_hist, u64, REQ_NHIST * REQ_NSLOT);
BPF_PERCPU_ARRAY(fam_hist, u64, FAM_N * DIAG_NSLOT);
BPF_PERCPU_ARRAY(exemplar_seq, u64, 1);
#endif
#ifdef ACCEPT_QUEUE
/* peer address and port of a connection whose handshake completed on a target listener */
struct diag_peer {
    u8 addr[16];         /* IPv6, or IPv4-mapped (::ffff:a.b.c.d) */
    u16 port;
    u16 pad;
};
BPF_ARRAY(listen_ports, u8, 65536);          /* ports target processes listen on (the agent fills it) */
BPF_TABLE("lru_hash", struct diag_peer, u64, established, 65536);
#endif

static __always_inline void count(u32 slot)
{
    u64 *c = counters.lookup(&slot);
    if (c)
        (*c)++;
}

static __always_inline int bit_is_set(u64 *word, u32 id)
{
    return word && ((*word >> (id & 63)) & 1);
}

static __always_inline int is_target_thread(u32 tid)
{
    u32 w = tid >> 6;
    if (w >= PID_WORDS)
        return 0;
    return bit_is_set(thread_bits.lookup(&w), tid);
}

static __always_inline void set_thread_bit(u32 tid, int on)
{
    u32 w = tid >> 6;
    if (w >= PID_WORDS)
        return;
    u64 *word = thread_bits.lookup(&w);
    if (!word)
        return;
    if (on)
        __sync_fetch_and_or(word, 1ULL << (tid & 63));
    else
        __sync_fetch_and_and(word, ~(1ULL << (tid & 63)));
}

static __always_inline int is_target(u32 tgid)
{
#if defined(TARGET_SET)
    u32 w = tgid >> 6;
    if (w >= PID_WORDS)
        return 0;
    return bit_is_set(target_bits.lookup(&w), tgid);
#elif defined(TARGET_TGID)
    return tgid == TARGET_TGID;
#else
    return 0;
#endif
}

/* An address on the stack this program runs on, as a plain number (through a map: the verifier
 * does not let a frame pointer be compared as an integer). */
static __always_inline u64 stack_addr(void)
{
    u32 zero = 0;
    u64 *s = scratch_addr.lookup(&zero);
    if (!s)
        return 0;
    volatile u64 marker = 0;
    *s = (u64)&marker;
    return *(volatile u64 *)s;
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
/* log-linear slot: the power of two, then the next REQ_SUB_BITS bits below the leading one */
static __always_inline u32 req_slot(u64 v)
{
    u32 lg = bpf_log2l(v);             /* floor(log2(v)) + 1, 0 for v == 0 */
    if (lg <= REQ_SUB_BITS + 1)
        return (u32)v;                 /* v < 8: exact */
    u32 sub = (u32)(v >> (lg - 1 - REQ_SUB_BITS)) & ((1 << REQ_SUB_BITS) - 1);
    u32 slot = (lg - REQ_SUB_BITS) * (1 << REQ_SUB_BITS) + sub;
    return slot < REQ_NSLOT ? slot : REQ_NSLOT - 1;
}

static __always_inline void req_hist_add(u32 which, u64 v)
{
    u32 i = which * REQ_NSLOT + req_slot(v);
    u64 *c = req_hist.lookup(&i);
    if (c)
        (*c)++;
}

static __always_inline int same_key(struct diag_fdkey *a, struct diag_fdkey *b)
{
    return a->tgid == b->tgid && a->fd == b->fd;
}

static __always_inline void unserve_thread(u32 t, struct diag_fdkey *k)
{
    struct diag_thread *e = inflight.lookup(&t);
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

/* A request is complete: into the histograms; exported when slow or an exemplar. */
static __always_inline void req_emit(void *ctx, struct diag_conn *c, struct diag_fdkey *k)
{
    req_unserve(c, k);
    u64 lat = c->r.end_ns - c->r.start_ns;
    u64 client = lat;
    if (c->r.seq == 0 && (c->r.flags & REQF_QUEUED) && c->r.conn_start_ns >= c->r.queued_ns &&
        c->r.end_ns > c->r.conn_start_ns - c->r.queued_ns)
        client = c->r.end_ns - (c->r.conn_start_ns - c->r.queued_ns);
    req_hist_add(REQ_HIST_SERVER, lat);
    req_hist_add(REQ_HIST_CLIENT, client);
#pragma unroll
    for (int i = 0; i < FAM_N; i++) {
        u64 v = c->r.family_ns[i];
        if (v) {
            u32 slot = bpf_log2l(v);
            if (slot >= DIAG_NSLOT)
                slot = DIAG_NSLOT - 1;
            u32 j = i * DIAG_NSLOT + slot;
            u64 *h = fam_hist.lookup(&j);
            if (h)
                (*h)++;
        }
    }
    count(CNT_REQ_DONE);
    u32 z = CTL_REQ_THRESHOLD_NS, m = CTL_REQ_EXEMPLAR_MASK;
    u64 *thr = req_ctl.lookup(&z);
    u64 *mask = req_ctl.lookup(&m);
    u32 flags = c->r.flags & REQF_QUEUED;
    if (!thr || lat >= *thr) {
        flags |= REQF_SLOW;
    } else {
        u32 zero = 0;
        u64 *seq = exemplar_seq.lookup(&zero);
        if (!seq || !mask)
            return;
        u64 n = (*seq)++;
        if (n & *mask)
            return;
        flags |= REQF_EXEMPLAR;
    }
    c->r.flags = flags;
    if (requests.ringbuf_output(&c->r, sizeof(c->r), BPF_RB_NO_WAKEUP) != 0)
        count(CNT_REQ_LOST);
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
    c->r.flags &= REQF_QUEUED;
#pragma unroll
    for (int i = 0; i < FAM_N; i++) {
        c->r.family_ns[i] = 0;
        c->pending[i] = 0;
    }
}

/* EOF, close or fd reuse: complete a request, forget the connection. */
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

static __always_inline struct diag_conn *req_new(struct diag_fdkey *k, u64 conn_start, u64 queued, int have_queued)
{
    u32 zero = 0;
    struct diag_conn *t = conn_scratch.lookup(&zero);
    if (!t)
        return NULL;
    __builtin_memset(t, 0, sizeof(*t));
    t->r.tgid = k->tgid;
    t->r.fd = k->fd;
    t->r.conn_start_ns = conn_start;
    if (have_queued) {
        t->r.queued_ns = queued;
        t->r.flags = REQF_QUEUED;
    }
    if (conns.update(k, t) != 0) {
        count(CNT_CONN_ERR);
        return NULL;
    }
    return conns.lookup(k);
}
#endif

#ifdef ACCEPT_QUEUE
/* How long the accepted connection waited in the accept queue: from its handshake (seen by
 * sock:inet_sock_set_state) to this accept, found by the peer address accept wrote. */
static __always_inline int accept_queued(u64 uaddr, u64 now, u64 *queued)
{
    struct {
        u16 family;
        u16 port_be;
        u32 v4_or_flow;
        u8 v6[16];
    } sa = {};
    if (!uaddr || bpf_probe_read_user(&sa, sizeof(sa), (void *)uaddr) != 0)
        return 0;
    struct diag_peer p = {};
    if (sa.family == 2) {               /* AF_INET: the tracepoint gives IPv4-mapped addresses */
        p.addr[10] = 0xff;
        p.addr[11] = 0xff;
        __builtin_memcpy(&p.addr[12], &sa.v4_or_flow, 4);
    } else if (sa.family == 10) {
        __builtin_memcpy(p.addr, sa.v6, 16);
    } else {
        return 0;
    }
    p.port = (sa.port_be >> 8) | ((sa.port_be & 0xff) << 8);
    u64 *est = established.lookup(&p);
    if (!est)
        return 0;
    u64 t = *est;
    established.delete(&p);
    if (t > now)
        return 0;
    *queued = now - t;
    return 1;
}
#endif

#ifdef REQUESTS
/* The request summarizer's part of a call's exit (see the top of the file). */
static __always_inline void req_exit(void *ctx, u32 tgid, u32 tid, struct diag_thread *f,
                                     struct diag_thread *self, long ret, u64 now, u64 dur)
{
    u32 flags = f->flags;
    u32 fdv = f->fdv;
    struct diag_fdkey k = {.tgid = tgid, .fd = f->fd};
    struct diag_conn *c;

    if ((flags & SF_ACCEPT) && ret >= 0) {
        struct diag_fdkey nk = {.tgid = tgid, .fd = (s32)ret};
        u64 queued = 0;
        int have = 0;
        count(CNT_ACCEPTED);
#ifdef ACCEPT_QUEUE
        have = accept_queued(f->arg, now, &queued);
        if (have)
            count(CNT_ACCEPT_QUEUED);
#endif
        req_forget(ctx, &nk, 1);           /* a close we missed */
        req_new(&nk, now, queued, have);
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
                    c = req_new(&k, 0, 0, 0);    /* a connection older than the attach */
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
                    self->serve = k;
                    return;
                }
                c->r.reads++;
                c->r.bytes_in += (u64)ret;
                __sync_fetch_and_add(&c->r.family_ns[FAM_SOCK], dur);
                self->serve = k;
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
                self->serve = k;
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

static __always_inline int do_enter(struct diag_sys_enter *ctx)
{
    FLOOR_RETURN(0);
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_target(tgid))
        return 0;
    u32 nr = (u32)ctx->id;
    struct diag_sysinfo *si = sysinfo.lookup(&nr);
    if (!si || !si->flags)
        return 0;
    u32 flags = si->flags;
    struct diag_thread f = {};
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
    if (flags & SF_FCNTL) {
        u64 cmd = ctx->args[1];
        if (cmd != 0 /* F_DUPFD */ && cmd != 1030 /* F_DUPFD_CLOEXEC */)
            return 0;
        f.newkind = f.fdv;
    }
    if (flags & SF_UADDR)
        f.uaddr = ctx->args[0];
    if (flags & SF_PAIR_ARG0)
        f.arg = ctx->args[0];
    if (flags & SF_PAIR_ARG3)
        f.arg = ctx->args[3];
    if (flags & SF_ACCEPT)
        f.arg = ctx->args[1];
    if (flags & SF_PATH_ARG0)
        f.newkind = path_kind(ctx->args[0]);
    if (flags & SF_PATH_ARG1)
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
    struct diag_thread *slot = inflight.lookup(&tid);
    if (slot) {
        __builtin_memcpy(slot, &f, __builtin_offsetof(struct diag_thread, serve));
    } else {
        /* a thread's first traced call: its own state, and its bit for the scheduler programs */
        f.tgid = tgid;
        inflight.update(&tid, &f);
        set_thread_bit(tid, 1);
        learn_prog.call(ctx, 0);        /* diag_learn_stack: does not return */
    }
    return 0;
}

int diag_sys_enter(struct diag_sys_enter *ctx) { return do_enter(ctx); }

/* Tail-called at a thread's first traced call: where its own kernel stack is. A program whose
 * stack use reaches 64 bytes runs on a per-CPU private stack (kernels >= 6.13), so the address
 * has to be taken by a program this small; sched_waking compares it with where the waking runs. */
int diag_learn_stack(struct diag_sys_enter *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct diag_thread *f = inflight.lookup(&tid);
    if (f)
        f->stack_addr = stack_addr();
    return 0;
}

int diag_sys_exit(struct diag_sys_exit *ctx)
{
    FLOOR_RETURN(0);
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_target(tgid))           /* before any map: most syscalls of the machine stop here */
        return 0;
    struct diag_thread *fp = inflight.lookup(&tid);
    if (!fp || !fp->start_ns)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct diag_thread f = *fp;
    fp->start_ns = 0;
    fp->switch_out_ns = 0;
    if ((u32)ctx->id != f.nr)       /* an entry left by a call we missed the exit of */
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
    ev.uaddr = f.uaddr;
    ev.tid = tid;
    ev.tgid = tgid;
    ev.nr = f.nr;
    ev.fd = (flags & SF_FD0) ? f.fd : -1;
    ev.kstack_id = f.kstack_id;
    ev.fd_kind = f.kind;
    if (events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) != 0)
        count(CNT_EVENT_LOST);
    return 0;
}

static __always_inline void emit_runq(struct diag_thread *f, u32 tid, u64 now)
{
    struct diag_sched s = {};
    s.type = SCHED_RUNQ;
    s.ts_ns = now;
    s.since_ns = f->runnable_ns;
    s.tid = tid;
    s.tgid = f->tgid;
    s.wakee_nr = f->start_ns ? (s32)f->nr : -1;
    s.waker_nr = -1;
    s.flags = f->runq_flags | (f->serve.tgid ? SCHEDF_WAKEE_SERVING : 0);
    if (sched.ringbuf_output(&s, sizeof(s), BPF_RB_NO_WAKEUP) != 0)
        count(CNT_SCHED_LOST);
    else
        count(CNT_RUNQ);
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    FLOOR_RETURN(0);
    u64 now = 0;
    u32 next = args->next_pid;
    /* the tracepoint runs as prev, so its tgid is at hand: other processes' switches skip prev's
     * lookups; next is tested against the thread bits before any lookup */
    u32 prev = is_target(bpf_get_current_pid_tgid() >> 32) ? args->prev_pid : 0;
    struct diag_thread *f;
    if (prev) {
        f = inflight.lookup(&prev);
        if (f) {
            now = bpf_ktime_get_ns();
            if (args->prev_state & BLOCKED_STATE_MASK) {
                f->blocked_ns = now;
                f->runnable_ns = 0;
                if (f->start_ns) {
                    f->switch_out_ns = now;
                    int sid = -1;
                    if (f->flags & SF_TAKE_STACK) {
                        sid = stacks.get_stackid(args, 0);
                        if (sid < 0)
                            count(CNT_STACK_ERR);
                    }
                    f->pending_stack = sid;
                }
            } else {
                /* preempted: runnable, waiting for a CPU */
                f->runnable_ns = now;
                f->runq_flags = SCHEDF_PREEMPTED | (f->start_ns ? SCHEDF_IN_CALL : 0);
#ifdef REQUESTS
                /* Time a serving thread spends runnable but off CPU outside a syscall is time
                 * waiting for a CPU: kept apart from on-CPU work in its request's FAM_RUNQ.
                 * Inside a syscall, the wait is the call's own time. */
                if (f->serve.tgid && !f->start_ns)
                    f->preempted_ns = now;
#endif
            }
        }
    }
    if (!next || !is_target_thread(next))
        return 0;
    f = inflight.lookup(&next);
    if (!f)
        return 0;
    if (!now)
        now = bpf_ktime_get_ns();
    f->blocked_ns = 0;
    if (f->switch_out_ns) {
        u64 delta = now - f->switch_out_ns;
        f->off_cpu_ns += delta;
        if (delta > f->max_off_ns) {
            f->max_off_ns = delta;
            f->max_off_ts = f->switch_out_ns;
            f->kstack_id = f->pending_stack;
        }
        f->switch_out_ns = 0;
    }
    if (f->runnable_ns) {
        if (now - f->runnable_ns >= RUNQ_MIN_NS)
            emit_runq(f, next, now);
        f->runnable_ns = 0;
    }
#ifdef REQUESTS
    if (f->preempted_ns) {
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

/* Fires in the waker's context (sched_wakeup fires in the wakee's): who ended a target thread's
 * wait, and what it was doing. Whether the waking ran in an interrupt is told by the stack it runs
 * on: a thread's own syscalls run on its kernel stack, interrupts (timers, the network's softirqs,
 * disk completions) on the CPU's interrupt stack. The program keeps its own stack under 64 bytes
 * so that the kernel runs it on the current stack, not on a private one. */
TRACEPOINT_PROBE(sched, sched_waking)
{
    FLOOR_RETURN(0);
    u32 wakee = args->pid;
    if (!is_target_thread(wakee))
        return 0;
    struct diag_thread *f = inflight.lookup(&wakee);
    if (!f || !f->blocked_ns)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 since = f->blocked_ns;
    f->blocked_ns = 0;
    f->runnable_ns = now;
    f->runq_flags = f->start_ns ? SCHEDF_IN_CALL : 0;
    if (now - since < WAKE_MIN_NS)
        return 0;
    /* the record is built in a per-CPU scratch slot, not on the stack: a program using 64 bytes
     * of stack or more runs on a per-CPU private stack (kernels >= 6.13), where the address
     * test below would compare CPUs instead of stacks */
    u32 zero = 0;
    struct diag_sched *s = sched_scratch.lookup(&zero);
    if (!s)
        return 0;
    s->type = SCHED_WAKEUP;
    s->ts_ns = now;
    s->since_ns = since;
    s->tid = wakee;
    s->tgid = f->tgid;
    s->wakee_nr = f->start_ns ? (s32)f->nr : -1;
    s->arg = f->uaddr ? f->uaddr : (u64)(s64)f->fd;
    s->wakee_fdv = (f->start_ns && (f->flags & SF_FD0)) ? f->fdv : 0;
    s->flags = f->serve.tgid ? SCHEDF_WAKEE_SERVING : 0;
    s->waker_call_ns = 0;
    s->waker_nr = -1;
    u64 id = bpf_get_current_pid_tgid();
    s->waker_tid = (u32)id;
    s->waker_tgid = id >> 32;
    bpf_get_current_comm(&s->waker_comm, sizeof(s->waker_comm));
    if (!s->waker_tid) {
        s->flags |= SCHEDF_WAKER_IDLE | SCHEDF_WAKER_IRQ;
    } else if (is_target(s->waker_tgid)) {
        s->flags |= SCHEDF_WAKER_TARGET;
        u32 wtid = s->waker_tid;
        struct diag_thread *w = inflight.lookup(&wtid);
        if (w) {
            if (w->start_ns) {
                s->waker_nr = (s32)w->nr;
                s->waker_call_ns = w->start_ns;
            }
            if (w->serve.tgid)
                s->flags |= SCHEDF_WAKER_SERVING;
            u64 sp = stack_addr();
            if (w->stack_addr && sp) {
                u64 d = sp > w->stack_addr ? sp - w->stack_addr : w->stack_addr - sp;
                if (d >= SAME_STACK_SPAN)
                    s->flags |= SCHEDF_WAKER_IRQ;
            }
        }
    }
    if (sched.ringbuf_output(s, sizeof(*s), BPF_RB_NO_WAKEUP) != 0)
        count(CNT_SCHED_LOST);
    else
        count(CNT_WAKEUPS);
    return 0;
}

/* A thread's entry goes with the thread (the LRU alone could evict a live thread blocked in a long
 * call, losing that call), and a process leaves the set with its last thread. These events are
 * rare: returning 1 hands them on to perf users of the same tracepoints. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    FLOOR_RETURN(1);
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_target(tgid))
        return 1;
    inflight.delete(&tid);
    set_thread_bit(tid, 0);
#ifdef TARGET_SET
    if (args->group_dead) {
        u32 w = tgid >> 6;
        u64 *word = w < PID_WORDS ? target_bits.lookup(&w) : NULL;
        if (word)
            __sync_fetch_and_and(word, ~(1ULL << (tgid & 63)));
    }
#endif
    return 1;
}

/* exec ends every call in flight in the process and its per-thread state (the exec'ing thread
 * keeps or takes the leader's tid) */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    FLOOR_RETURN(1);
    u64 id = bpf_get_current_pid_tgid();
    if (is_target(id >> 32)) {
        u32 tid = (u32)id;
        inflight.delete(&tid);
    }
    return 1;
}

#if defined(FOLLOW) && defined(TARGET_SET)
/* parent_pid / child_pid are thread ids; the forking task is current. A new thread's tid lands in
 * the set too, which is harmless: no process has that tgid while the thread lives. */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    FLOOR_RETURN(1);
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_target(tgid))
        return 1;
    u32 child = args->child_pid;
    u32 w = child >> 6;
    u64 *word = w < PID_WORDS ? target_bits.lookup(&w) : NULL;
    if (word)
        __sync_fetch_and_or(word, 1ULL << (child & 63));
    return 1;
}
#endif

#ifdef ACCEPT_QUEUE
static __always_inline int listening(u16 port)
{
    u32 p = port;
    u8 *v = listen_ports.lookup(&p);
    return v && *v;
}

/* The handshake of a connection to a target listener completed: it enters the accept queue. Runs
 * in softirq context on any CPU; the port test comes first. */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    FLOOR_RETURN(1);
    if (args->protocol != IPPROTO_TCP_NR || args->newstate != TCP_ESTABLISHED || args->oldstate != TCP_SYN_RECV)
        return 1;
    if (!listening(args->sport))
        return 1;
    struct diag_peer p = {};
    __builtin_memcpy(p.addr, args->daddr_v6, 16);
    p.port = args->dport;
    u64 now = bpf_ktime_get_ns();
    established.update(&p, &now);
    return 1;
}

/* A target listener resent its SYN-ACK: the client's handshake is stalled. */
TRACEPOINT_PROBE(tcp, tcp_retransmit_synack)
{
    FLOOR_RETURN(1);
    if (listening(args->sport))
        count(CNT_SYNACK_RETRANS);
    return 1;
}

/* A client on this host resent its SYN to a target listener: the first one was dropped (a full
 * accept queue drops SYNs), which costs that client at least the initial retransmit timeout. */
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    FLOOR_RETURN(1);
    if (args->state == TCP_SYN_SENT && listening(args->dport))
        count(CNT_SYN_RETRANS);
    return 1;
}
#endif
