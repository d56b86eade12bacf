/* Records shared by probes/syscall_latency.c and its consumer diag/collect/ebpf_agent.py.
 *
 * The agent mirrors `struct diag_event` with ctypes and passes its size as -DDIAG_EVENT_SIZE:
 * the probe refuses to compile when the two disagree. Change both together.
 */
#ifndef DIAG_EVENTS_H
#define DIAG_EVENTS_H

/* fd kinds (diag.model.FdKind) */
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
#define SF_LAT        0x001  /* aggregate its latency; emit an event when slower than SLOW_NS */
#define SF_FD0        0x002  /* args[0] is an fd */
#define SF_BYTES      0x004  /* ret > 0 is a byte count (read/write families) */
#define SF_NEWFD_RET  0x008  /* ret >= 0 is a new fd of kind sysinfo.kind */
#define SF_NEWFD_DUP  0x010  /* ret >= 0 is a new fd of the kind of args[0] (dup, dup2, dup3) */
#define SF_PAIR_ARG0  0x020  /* args[0] points to int[2] new fds of kind sysinfo.kind (pipe) */
#define SF_PAIR_ARG3  0x040  /* args[3] points to int[2] new fds (socketpair) */
#define SF_CLOSE      0x080  /* ret == 0 forgets args[0] */
#define SF_PATH_ARG0  0x100  /* ret >= 0 is a new fd whose kind is decided by the path in args[0] */
#define SF_PATH_ARG1  0x200  /* ... by the path in args[1] (openat, openat2) */
#define SF_FCNTL      0x400  /* fcntl: F_DUPFD / F_DUPFD_CLOEXEC duplicate args[0] */
#define SF_RD         0x800  /* read family (request summarizer) */
#define SF_WR         0x1000 /* write family */
#define SF_ACCEPT     0x2000 /* ret >= 0 is an accepted (server-side) connection */
#define SF_CONNECT    0x4000 /* args[0] becomes an outbound socket */
#define SF_ALWAYS     0x8000 /* emit a record for every call, whatever SLOW_NS (accept, connect) */
/* Kernel stack where a call blocked (sched_switch): walking the stack costs ~1 us per block, so
 * it is taken only where it says more than the syscall's name (not for idle waits: poll, futex,
 * sleep, accept, reads on sockets and pipes, whose stacks are always the same wait). */
#define SF_KSTACK      0x10000 /* every call (sync, writes, close, connect) */
#define SF_KSTACK_FILE 0x20000 /* calls on regular files (read family) */
#define SF_TAKE_STACK  0x40000 /* set by the probe at entry when one of the two above applies */

/* Aggregates live in per-CPU arrays indexed by (sysinfo.idx, fd kind[, log2 slot]): no hashing
 * and no atomic operations on the hot path; the agent sums the CPUs. */
#define DIAG_NIDX     32     /* latency-traced syscalls (SF_LAT) at most; sysinfo.idx < DIAG_NIDX */
#define DIAG_NKIND    5      /* fd kinds, DIAG_KIND_UNKNOWN..DIAG_KIND_OTHER */
#define DIAG_NSLOT    48     /* log2 histogram slots (2^47 ns = 39 h; larger values land in the last) */
/* Per-CPU arrays cost memory per possible CPU: 2 histograms x 32 x 5 x 48 x 8 B = 123 KiB per CPU
 * (31 MiB on a 256-CPU host), plus the aggregate rows. */

/* Syscall families of a request's time breakdown (diag_request.family_ns[]; names in the agent). */
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

/* Slots of the per-CPU `counters` array. */
#define CNT_EVENT_LOST     0  /* ring buffer full: slow-call record dropped */
#define CNT_AGG_ERR        1  /* aggregate cell out of range (sysinfo.idx): a call missing from the aggregates */
#define CNT_STACK_ERR      2  /* bpf_get_stackid failed (stack map full / collision) */
#define CNT_FDMAP_ERR      3  /* fd-kind map full */
#define CNT_CALLS          4  /* calls completed (all traced syscalls with SF_LAT) */
#define CNT_REQ_LOST       5  /* request ring buffer full: request record dropped */
#define CNT_REQ_EMITTED    6  /* request records output (delivered + lost = emitted + CNT_REQ_LOST) */
#define CNT_CONN_ERR       7  /* connection map full: a connection not summarized */
#define CNT_REQ_ABANDONED  8  /* EOF/close while a request was still READING (no response) */
#define CNT_MAX            12

struct diag_sysinfo {
    u32 flags;
    u32 kind;       /* kind (and role bits) of the fd(s) the call creates */
    u32 fam;        /* FAM_* of the call in a request's breakdown */
    u32 idx;        /* SF_LAT calls: row of the aggregate arrays (< DIAG_NIDX) */
};

struct diag_event {
    u64 start_ns;        /* bpf_ktime_get_ns() at sys_enter: CLOCK_MONOTONIC */
    u64 dur_ns;
    u64 off_cpu_ns;      /* total time blocked off CPU inside the call */
    u64 kstack_off_ns;   /* the longest off-CPU interval, whose kernel stack is kstack_id */
    u64 kstack_ts_ns;    /* when that interval started */
    s64 ret;
    u32 tid;
    u32 tgid;
    u32 nr;              /* syscall number */
    s32 fd;              /* -1 when the call takes no fd */
    s32 kstack_id;       /* -1: none */
    u32 fd_kind;
};

/* One server-side request (REQUESTS mode): the value of the `conns` map while it is open, and
 * the record sent to user space when its response is complete. Mirrored by the agent
 * (-DDIAG_REQUEST_SIZE checks the size). Times: bpf_ktime_get_ns(), CLOCK_MONOTONIC. */
struct diag_request {
    u64 start_ns;        /* exit of the read that brought the request's first bytes */
    u64 end_ns;          /* exit of the last response write */
    u64 first_write_ns;  /* exit of the first response write; 0: none */
    u64 conn_start_ns;   /* exit of the accept of its connection; 0: not seen */
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
};
#endif
