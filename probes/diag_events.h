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

/* Slots of the per-CPU `counters` array. */
#define CNT_EVENT_LOST     0  /* ring buffer full: slow-call record dropped */
#define CNT_AGG_ERR        1  /* aggregate map full: a call missing from the aggregates */
#define CNT_STACK_ERR      2  /* bpf_get_stackid failed (stack map full / collision) */
#define CNT_FDMAP_ERR      3  /* fd-kind map full */
#define CNT_CALLS          4  /* calls completed (all traced syscalls with SF_LAT) */
#define CNT_MAX            8

struct diag_sysinfo {
    u32 flags;
    u32 kind;
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

#endif
