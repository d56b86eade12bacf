#!/bin/sh
# How the py-spy files in this directory were recorded (py-spy 0.4.3, CPython 3.11, Linux 6.18).
# Re-run from this directory as root to refresh them; the tests check structure, not exact values.
set -e
OUT=$(pwd)
PYSPY=${PYSPY:-$(cd ../../.. && pwd)/.venv/bin/py-spy}
D=$(mktemp -d /tmp/diag-pyspy.XXXXXX)
cat > "$D/prog.py" <<'PY'
import threading, time
def busy_function(d):
    t0 = time.time()
    s = 0
    while time.time() - t0 < d:
        s += sum(i for i in range(200))
    return s
def sleeper(d):
    time.sleep(d)
def main():
    ts = [threading.Thread(target=busy_function, args=(0.6,), name="busy-worker"),
          threading.Thread(target=sleeper, args=(0.6,), name="sleepy")]
    for t in ts: t.start()
    busy_function(0.3)
    for t in ts: t.join()
main()
PY
cd "$D"
for f in speedscope chrometrace raw; do
  ext=json; [ $f = raw ] && ext=txt
  $PYSPY record -f $f -r 20 -o "$OUT/$f.$ext" -- python3 prog.py >/dev/null 2>&1
  $PYSPY record -f $f -r 20 --threads --idle -o "$OUT/${f}_threads.$ext" -- python3 prog.py >/dev/null 2>&1
done
cat > "$D/nat.py" <<'PY'
import time, zlib
def crunch():
    t0 = time.time(); d = b"x" * 1000000
    while time.time() - t0 < 0.5:
        zlib.compress(d)
crunch()
PY
$PYSPY record -f raw -r 20 --native --threads -o "$OUT/raw_native.txt" -- python3 nat.py >/dev/null 2>&1
python3 prog.py & P=$!; sleep 0.2
$PYSPY dump --pid $P > "$OUT/dump.txt"; $PYSPY dump --json --pid $P > "$OUT/dump.json"; wait $P
rm -rf "$D"
