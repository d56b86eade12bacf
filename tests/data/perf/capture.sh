#!/bin/sh
# How the `perf script` files in this directory were made (perf 6.1, kernel 6.18, as root).
# Each is cut to its first few samples (at a sample boundary) to stay a few KB.
set -e
OUT=$(pwd)
D=$(mktemp -d /tmp/diag-perf.XXXXXX)
cd "$D"
cat > busy.py <<'PY'
import threading, time
def busy_loop(d):
    t0 = time.time()
    while time.time() - t0 < d:
        sum(i * i for i in range(1000))
ts = [threading.Thread(target=busy_loop, args=(0.3,), name="worker %d" % i) for i in range(2)]
[t.start() for t in ts]; busy_loop(0.2); [t.join() for t in ts]
PY
cat > fs.py <<'PY'
import os, tempfile
fd, p = tempfile.mkstemp()
for i in range(10):
    os.write(fd, b"x" * 100)
    os.fsync(fd)
os.close(fd); os.unlink(p)
try: os.read(999, 10)
except OSError: pass
r, w = os.pipe(); os.set_blocking(r, False)
try: os.read(r, 10)
except BlockingIOError: pass
os.write(w, b"abc"); os.read(r, 10)
PY
# first N samples of a perf script output: cut after the Nth blank line (call-chain output)
firstn() { awk -v n="$1" '{print} /^$/ {if (++k >= n) exit}'; }
perf record -q -k CLOCK_MONOTONIC -g -e cpu-clock -F 999 -o g.data -- python3 busy.py
# 24 python3 samples from the middle of the run (worker threads and main thread)
perf script --ns -F +pid -i g.data 2>/dev/null | awk 'BEGIN {RS=""; ORS="\n\n"} /^python3/ {if (++k > 150 && k <= 174) print}' \
  > "$OUT/cpu_callchain_ns.txt"
perf script -i g.data 2>/dev/null | firstn 6 > "$OUT/cpu_callchain_default_us.txt"
perf script --header --ns -i g.data 2>/dev/null | firstn 3 > "$OUT/cpu_callchain_header.txt"
perf script --ns -F +srcline -i g.data 2>/dev/null | firstn 3 > "$OUT/cpu_callchain_srcline.txt"
# the field list diag.load asks for (needs --sample-cpu when recording a launched command)
perf record -q --sample-cpu -k CLOCK_MONOTONIC -g -e cpu-clock -F 999 -o sc.data -- python3 busy.py
perf script --ns -F comm,pid,tid,cpu,time,event,ip,sym,dso,trace -i sc.data 2>/dev/null \
  | awk 'BEGIN {RS=""; ORS="\n\n"} /^python3/ {if (++k > 100 && k <= 110) print}' > "$OUT/cpu_load_fields.txt"
perf record -q -k CLOCK_MONOTONIC -e cpu-clock -F 999 -o nog.data -- python3 busy.py
perf script --ns -F comm,pid,tid,time,period,event,ip,sym,dso -i nog.data 2>/dev/null | grep -m 40 python3 > "$OUT/cpu_flat_fields.txt"
perf record -q -a -k CLOCK_MONOTONIC -g -e cpu-clock -F 199 -o a.data -- python3 -c "import time; time.sleep(0.2); sum(range(10**7))"
# 2 idle-task (swapper) samples and 2 others
perf script --ns -F +pid -i a.data 2>/dev/null | awk 'BEGIN {RS=""; ORS="\n\n"} /^swapper/ {if (++s <= 2) print; next} {if (++o <= 2) print}' \
  > "$OUT/cpu_all_cpus.txt"
perf record -q -k CLOCK_MONOTONIC -g -e syscalls:sys_enter_fsync -e syscalls:sys_exit_fsync -o fs.data -- python3 fs.py
perf script --ns -F comm,pid,tid,cpu,time,event,trace,ip,sym,dso -i fs.data 2>/dev/null > "$OUT/fsync_tracepoints_callchain.txt"
perf script --ns -i fs.data 2>/dev/null > "$OUT/fsync_tracepoints.txt"
perf record -q -k CLOCK_MONOTONIC -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit \
  -e syscalls:sys_enter_read -e syscalls:sys_exit_read -o raw.data -- python3 fs.py
# the last reads of fs.py: EBADF (fd 999), EAGAIN, then 3 bytes
perf script --ns -F +pid -i raw.data 2>/dev/null | grep -B8 -A20 'NR 0 (3e7,' > "$OUT/raw_and_syscalls_read.txt"
rm -rf "$D"
