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

#ifdef DIAG_EVENT_SIZE
_Static_assert(sizeof(struct diag_event) == DIAG_EVENT_SIZE,
               "struct diag_event differs from the agent's ctypes mirror");
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

struct diag_inflight {
    u64 start_ns;
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
    u32 pad;
};

struct diag_fdkey {
    u32 tgid;
    s32 fd;
};
struct diag_aggkey {
    u32 nr;
    u32 kind;
};
struct diag_agg {
    u64 count;
    u64 total_ns;
    u64 bytes_total;
    u64 max_ns;
};
struct diag_histkey {
    u32 nr;
    u32 kind;
    u32 slot;
    u32 pad;
};

BPF_ARRAY(sysinfo, struct diag_sysinfo, 1024);
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);
BPF_TABLE("lru_hash", u32, struct diag_inflight, inflight, 65536);
BPF_HASH(fdkinds, struct diag_fdkey, u32, 262144);
BPF_HASH(agg, struct diag_aggkey, struct diag_agg, 4096);
BPF_HASH(lat_hist, struct diag_histkey, u64, 32768);
BPF_HASH(bytes_hist, struct diag_histkey, u64, 32768);
BPF_STACK_TRACE(stacks, STACK_ENTRIES);
#if defined(TARGET_MAP) || defined(FOLLOW)
BPF_HASH(targets, u32, u8, 65536);
#endif
#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(events);
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
    if (flags & (SF_FD0 | SF_NEWFD_DUP | SF_FCNTL)) {
        f.fd = (s32)ctx->args[0];
        f.kind = kind_of(tgid, f.fd);
    }
    if (flags & SF_NEWFD_DUP)
        f.newkind = f.kind;
    if ((flags & SF_FCNTL) && nargs >= 2) {
        u64 cmd = ctx->args[1];
        if (cmd != 0 /* F_DUPFD */ && cmd != 1030 /* F_DUPFD_CLOEXEC */)
            return 0;
        f.newkind = f.kind;
    }
    if (flags & SF_PAIR_ARG0)
        f.arg = ctx->args[0];
    if ((flags & SF_PAIR_ARG3) && nargs >= 4)
        f.arg = ctx->args[3];
    if (flags & SF_PATH_ARG0)
        f.newkind = path_kind(ctx->args[0]);
    if ((flags & SF_PATH_ARG1) && nargs >= 2)
        f.newkind = path_kind(ctx->args[1]);
    inflight.update(&tid, &f);
    return 0;
}

/* The kernel refuses to attach a program that reads past the end of a tracepoint's record, so
 * there is one entry program per number of arguments read: the agent picks the smallest. */
int diag_sys_enter1(struct diag_sys_enter *ctx) { return do_enter(ctx, 1); }
int diag_sys_enter2(struct diag_sys_enter *ctx) { return do_enter(ctx, 2); }
int diag_sys_enter4(struct diag_sys_enter *ctx) { return do_enter(ctx, 4); }

static __always_inline void hist_add(int is_bytes, u32 nr, u32 kind, u64 v)
{
    struct diag_histkey hk = {.nr = nr, .kind = kind, .slot = bpf_log2l(v)};
    u64 zero = 0, *c;
    if (is_bytes) {
        c = bytes_hist.lookup_or_try_init(&hk, &zero);
    } else {
        c = lat_hist.lookup_or_try_init(&hk, &zero);
    }
    if (c)
        __sync_fetch_and_add(c, 1);
    else
        count(CNT_AGG_ERR);
}

int diag_sys_exit(struct diag_sys_exit *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    struct diag_inflight *fp = inflight.lookup(&tid);
    if (!fp)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct diag_inflight f = *fp;
    inflight.delete(&tid);
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
        if ((flags & SF_CLOSE) && ret == 0) {
            struct diag_fdkey k = {.tgid = tgid, .fd = f.fd};
            fdkinds.delete(&k);
        }
    }
    if (!(flags & SF_LAT))
        return 0;

    u64 dur = now - f.start_ns;
    struct diag_aggkey ak = {.nr = f.nr, .kind = f.kind};
    struct diag_agg zero = {};
    struct diag_agg *a = agg.lookup_or_try_init(&ak, &zero);
    u64 nbytes = (flags & SF_BYTES) && ret > 0 ? (u64)ret : 0;
    if (a) {
        __sync_fetch_and_add(&a->count, 1);
        __sync_fetch_and_add(&a->total_ns, dur);
        if (nbytes)
            __sync_fetch_and_add(&a->bytes_total, nbytes);
        if (dur > a->max_ns)
            a->max_ns = dur;   /* racy across CPUs; informative only */
    } else {
        count(CNT_AGG_ERR);
    }
    hist_add(0, f.nr, f.kind, dur);
    if (nbytes)
        hist_add(1, f.nr, f.kind, nbytes);
    count(CNT_CALLS);

    if (dur < SLOW_NS)
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
    u32 prev = args->prev_pid;
    u32 next = args->next_pid;
    struct diag_inflight *f;
    if (prev && (args->prev_state & BLOCKED_STATE_MASK)) {
        f = inflight.lookup(&prev);
        if (f) {
            now = bpf_ktime_get_ns();
            f->switch_out_ns = now;
            int sid = stacks.get_stackid(args, 0);
            if (sid < 0)
                count(CNT_STACK_ERR);
            f->pending_stack = sid;
        }
    }
    if (next) {
        f = inflight.lookup(&next);
        if (f && f->switch_out_ns) {
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
    }
    return 0;
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
    return 0;
}
#endif
