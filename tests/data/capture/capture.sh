#!/bin/sh
# How journal.diag/ was made (kernel 6.18, as root): a real capture of the example journal server
# (fsync under a lock) under a light load, with every collector (strace included), kept small:
# 1.5 s at 40 req/s. perf.data and logs/ are left out (perf.data is replayed through perf, not
# read by diag; logs are not replayed). The eBPF stream is the agent's: its JSON lines and the
# binary record files beside them (docs/capture-format.md).
# The fuzzer (tests/fuzz) derives its capture-bundle and eBPF/process-stream seeds from it.
set -e
OUT=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$OUT/../../.." && pwd)
PY="${PY:-$REPO/.venv/bin/python}"
D=$(mktemp -d /tmp/diag-capture.XXXXXX)
cd "$D"
"$PY" -m diag.examples.journal_server --journal "$D/journal.bin" > port.txt &
SERVER=$!
sleep 1
PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' port.txt)
"$PY" -c "from diag.examples.load import drive; drive('127.0.0.1', $PORT, requests=200, seconds=4, concurrency=2, rate=40)" &
LOAD=$!
sleep 0.5
"$PY" -m diag attach "$SERVER" --duration 1.5 --collectors ebpf,perf,py-spy,pyruntime,process,strace --out "$D/journal.diag" --quiet
wait "$LOAD"
kill "$SERVER"
rm -rf "$OUT/journal.diag"
mkdir -p "$OUT/journal.diag/streams"
cp "$D/journal.diag/manifest.json" "$OUT/journal.diag/"
for s in "$D"/journal.diag/streams/*; do
  case "$s" in *.data) ;; *) cp "$s" "$OUT/journal.diag/streams/" ;; esac
done
rm -rf "$D"
