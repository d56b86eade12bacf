/* What probes/diag_probe.c and its consumer (diag/agent/) share: numbers, flags and record layouts.
 *
 * This header is the single source. The agent reads it (diag/agent/header.py): the #define
 * values become its constants and the record structs below become the struct.Struct layouts it
 * records in the capture and decodes with, so nothing here is copied by hand. It passes each
 * struct's size back as -D<NAME>_SIZE and the probe refuses to compile when the two disagree.
 * Keep to what that reader understands: `#define NAME <integer>` lines, and structs whose fields
 * are u8/u16/u32/u64/s32/s64 scalars or fixed arrays of them, with explicit padding.
 */
#ifndef DIAG_EVENTS_H
#define DIAG_EVENTS_H

/* fd kinds (diag.syscalls.FdKind, in this order) */
#define DIAG_KIND_UNKNOWN 0
#define DIAG_KIND_SOCKET  1
#define DIAG_KIND_FILE    2
#define DIAG_KIND_PIPE    3
#define DIAG_KIND_OTHER   4
#define DIAG_KIND_MASK    0xff

/* Role bits kept with the kind in the fd map (REQUESTS mode): which side of a connection the
 * target is on. Never in records: fd_kind in records and aggregates is (value & DIAG_KIND_MASK). */
#define FDR_SERVER        0x100  /* accepted, or an older socket whose first traced I/O was a read */
#define FDR_OUT           0x200  /* the target called connect on it, or its first traced I/O was a write */
#define FDR_PAIR          0x400  /* socketpair: a local channel, never a request */
#define FDR_MASK          0x700

/* What the probe does with one syscall number (the `sysinfo` array, filled by the agent). */
#define SF_LAT        0x001  /* aggregate its latency; emit a record when slower than SLOW_NS */
#define SF_FD0        0x002  /* args[0] is an fd */
#define SF_BYTES      0x004  /* ret > 0 is a byte count (read/write families) */
#define SF_NEWFD_RET  0x008  /* ret >= 0 is a new fd of kind sysinfo.kind */
#define SF_NEWFD_DUP  0x010  /* ret >= 0 is a new fd of the kind of args[0] (dup, dup2, dup3) */
#define SF_PAIR_ARG0  0x020  /* args[0] points to int[2] new fds of kind sysinfo.kind (pipe) */
#define SF_PAIR_ARG3  0x040  /* args[3] points to int[2] new fds (socketpair) */
#define SF_CLOSE      0x080  /* forgets args[0] */
#define SF_PATH_ARG0  0x100  /* ret >= 0 is a new fd whose kind is decided by the path in args[0] */
#define SF_PATH_ARG1  0x200  /* ... by the path in args[1] (openat, openat2) */
#define SF_FCNTL      0x400  /* fcntl: F_DUPFD / F_DUPFD_CLOEXEC duplicate args[0] */
#define SF_RD         0x800  /* read family (request summarizer) */
#define SF_WR         0x1000 /* write family */
#define SF_ACCEPT     0x2000 /* ret >= 0 is an accepted (server-side) connection; args[1] its peer */
#define SF_CONNECT    0x4000 /* args[0] becomes an outbound socket */
#define SF_ALWAYS     0x8000 /* emit a record for every call, whatever SLOW_NS (sync, sleep, accept, connect) */
/* Kernel stack where a call blocked (sched_switch): walking the stack costs ~1 us per block, so
 * it is taken only where it says more than the syscall's name (not for idle waits: poll, futex,
 * sleep, accept, reads on sockets and pipes, whose stacks are always the same wait). */
#define SF_KSTACK      0x10000 /* every call (sync, writes, close, connect) */
#define SF_KSTACK_FILE 0x20000 /* calls on regular files (read family) */
#define SF_TAKE_STACK  0x40000 /* set by the probe at entry when one of the two above applies */
#define SF_UADDR       0x80000 /* args[0] is a user address worth keeping (futex: which lock) */

/* Aggregates live in per-CPU arrays indexed by (sysinfo.idx, fd kind[, log2 slot]): no hashing
 * and no atomic operations on the hot path; the agent sums the CPUs. */
#define DIAG_NIDX     32     /* latency-traced syscalls (SF_LAT) at most; sysinfo.idx < DIAG_NIDX */
#define DIAG_NKIND    5      /* fd kinds, DIAG_KIND_UNKNOWN..DIAG_KIND_OTHER */
#define DIAG_NSLOT    48     /* log2 histogram slots (2^47 ns = 39 h; larger values land in the last) */
/* Request latency histograms are log-linear: REQ_SUB slots per power of two (a slot spans 19 %
 * at most), for percentiles the adaptive export threshold and the report can trust. */
#define REQ_SUB_BITS  2
#define REQ_NSLOT     192    /* 48 powers of two x 4 */
#define REQ_HIST_SERVER 0    /* server-side latency: first request byte read -> last response byte written */
#define REQ_HIST_CLIENT 1    /* client-visible: from the connection's handshake for a connection's first request */
#define REQ_NHIST     2

/* Syscall families of a request's time breakdown (diag_request.family_ns[]). Their names are
 * diag.syscalls.PROBE_FAMILY_KEYS, in this order. */
#define FAM_SYNC      0
#define FAM_FILE      1
#define FAM_FUTEX     2
#define FAM_SLEEP     3
#define FAM_POLL      4
#define FAM_UPSTREAM  5      /* read/write/connect on outbound sockets */
#define FAM_SOCK      6      /* other socket I/O: the request's own socket */
#define FAM_OTHER     7
#define FAM_RUNQ      8      /* runnable but preempted while serving (outside syscalls): waiting for a CPU */
#define FAM_N         9
#define FAM_IO        9      /* sysinfo.fam only: decided by the fd (file / upstream / sock / other) */

/* Connection states of the request summarizer. */
#define CONN_IDLE     0
#define CONN_READING  1
#define CONN_WRITING  2

/* diag_request.flags */
#define REQF_SLOW      0x1   /* at least the export threshold: every such request is exported */
#define REQF_EXEMPLAR  0x2   /* one of 1-in-(mask+1) ordinary requests */
#define REQF_QUEUED    0x4   /* queued_ns was measured (the connection's handshake was seen) */

/* req_ctl array slots, written by the agent every second */
#define CTL_REQ_THRESHOLD_NS 0  /* export requests at least this slow (server-side latency) */
#define CTL_REQ_EXEMPLAR_MASK 1 /* and 1 in (mask + 1) of the others; mask 0: every request */
#define CTL_N                 2

/* diag_sched.type */
#define SCHED_WAKEUP  1      /* a target thread blocked >= WAKE_MIN_NS was woken */
#define SCHED_RUNQ    2      /* a target thread was runnable >= RUNQ_MIN_NS before it ran */

/* diag_sched.flags */
#define SCHEDF_WAKER_TARGET   0x01  /* the waker is a thread of a target process */
#define SCHEDF_WAKER_IRQ      0x02  /* the waking ran on another stack than the waker's own: an interrupt */
#define SCHEDF_WAKER_IDLE     0x04  /* woken from the idle task: an interrupt on an idle CPU */
#define SCHEDF_WAKER_SERVING  0x08  /* the waker was serving a request when it woke the wakee */
#define SCHEDF_WAKEE_SERVING  0x10  /* the wakee was serving a request */
#define SCHEDF_PREEMPTED      0x20  /* RUNQ: it had been preempted (else: it had just been woken) */
#define SCHEDF_IN_CALL        0x40  /* RUNQ: inside a traced syscall */

/* Slots of the per-CPU `counters` array. */
#define CNT_EVENT_LOST     0  /* slow-call ring full: record dropped */
#define CNT_AGG_ERR        1  /* aggregate cell out of range (sysinfo.idx): a call missing from the aggregates */
#define CNT_STACK_ERR      2  /* bpf_get_stackid failed (stack map full / collision) */
#define CNT_FDMAP_ERR      3  /* fd-kind map full */
#define CNT_CALLS          4  /* calls completed (all traced syscalls with SF_LAT) */
#define CNT_REQ_LOST       5  /* request ring full: request record dropped */
#define CNT_REQ_EMITTED    6  /* request records output (delivered + lost = emitted + CNT_REQ_LOST) */
#define CNT_CONN_ERR       7  /* connection map full: a connection not summarized */
#define CNT_REQ_ABANDONED  8  /* EOF/close while a request was still READING (no response) */
#define CNT_REQ_DONE       9  /* requests completed (every one, exported or not: the histograms' total) */
#define CNT_SCHED_LOST    10  /* sched ring full: wakeup/runq record dropped */
#define CNT_WAKEUPS       11  /* wakeup records output */
#define CNT_RUNQ          12  /* runq records output */
#define CNT_SYNACK_RETRANS 13 /* SYN-ACKs retransmitted by a target listener (the client's final ACK was lost or late) */
#define CNT_SYN_RETRANS   14  /* SYNs retransmitted towards a target listener by local clients (a dropped SYN: >= 1 s each) */
#define CNT_ACCEPT_QUEUED 15  /* accepted connections whose accept-queue wait was measured */
#define CNT_ACCEPTED      16  /* connections accepted */
#define CNT_MAX           20

struct diag_sysinfo {
    u32 flags;
    u32 kind;       /* kind (and role bits) of the fd(s) the call creates */
    u32 fam;        /* FAM_* of the call in a request's breakdown */
    u32 idx;        /* SF_LAT calls: row of the aggregate arrays (< DIAG_NIDX) */
};

/* A slow (or always-reported) call. */
struct diag_event {
    u64 start_ns;        /* bpf_ktime_get_ns() at sys_enter: CLOCK_MONOTONIC */
    u64 dur_ns;
    u64 off_cpu_ns;      /* total time blocked off CPU inside the call */
    u64 kstack_off_ns;   /* the longest off-CPU interval, whose kernel stack is kstack_id */
    u64 kstack_ts_ns;    /* when that interval started */
    s64 ret;
    u64 uaddr;           /* SF_UADDR calls: args[0] (a futex's address); else 0 */
    u32 tid;
    u32 tgid;
    u32 nr;              /* syscall number */
    s32 fd;              /* -1 when the call takes no fd */
    s32 kstack_id;       /* -1: none */
    u32 fd_kind;
};

/* One server-side request (REQUESTS mode): the value of the `conns` map while it is open, and
 * the record sent to user space when it is exported. Times: bpf_ktime_get_ns(), CLOCK_MONOTONIC. */
struct diag_request {
    u64 start_ns;        /* exit of the read that brought the request's first bytes */
    u64 end_ns;          /* exit of the last response write */
    u64 first_write_ns;  /* exit of the first response write; 0: none */
    u64 conn_start_ns;   /* exit of the accept of its connection; 0: not seen */
    u64 queued_ns;       /* its connection's wait in the accept queue (handshake -> accept); REQF_QUEUED */
    u64 bytes_in;
    u64 bytes_out;
    u64 family_ns[FAM_N];/* time in each family on the serving thread inside the request */
    u32 reads;
    u32 writes;
    u32 tgid;
    u32 tid;             /* the thread that read the request */
    u32 write_tid;       /* the thread of the first response write; 0: none */
    s32 fd;
    u32 seq;             /* index of the request on its connection */
    u32 state;           /* CONN_* */
    u32 flags;           /* REQF_* */
    u32 pad;
};

/* Scheduler facts about target threads (`sched` ring): who woke a thread that had blocked, and
 * how long a thread waited for a CPU. No stack walk: the waker's state comes from its in-flight
 * entry (its syscall, whether it serves a request) and from where the waking ran. */
struct diag_sched {
    u64 ts_ns;           /* WAKEUP: when it was woken; RUNQ: when it got a CPU */
    u64 since_ns;        /* WAKEUP: when it blocked; RUNQ: when it became runnable */
    u64 arg;             /* WAKEUP: the wakee's call's futex address or fd (see wakee_nr) */
    u64 waker_call_ns;   /* WAKEUP: when the waker entered the traced call it is in; 0: none */
    u32 type;            /* SCHED_* */
    u32 tid;             /* the thread woken / that waited */
    u32 tgid;
    s32 wakee_nr;        /* WAKEUP: the traced call the wakee blocked in; -1: none (RUNQ: the call it is in) */
    u32 waker_tid;
    u32 waker_tgid;
    s32 waker_nr;        /* the traced call the waker is in; -1: none or not a target */
    u32 flags;           /* SCHEDF_* */
    u8 waker_comm[16];   /* WAKEUP: the waker's command name (kernel threads: jbd2/..., kworker/...) */
    u32 wakee_fdv;       /* WAKEUP: kind and role bits of the wakee call's fd (0: no fd) */
    u32 pad;
};
#endif
