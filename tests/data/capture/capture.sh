#!/bin/sh
# How journal.diag/ was made (diag 0.1.0, kernel 6.18, as root): a real capture of the example
# journal server (fsync under a lock) under a light load, with every default collector plus
# strace, kept small: 1.5 s at 40 req/s. perf.data and logs/ are left out (binary, not replayed).
# The fuzzer (tests/fuzz) derives its capture-bundle and eBPF/process-stream seeds from it.
set -e
OUT=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$OUT/../../.." && pwd)
PY="$REPO/.venv/bin/python"
D=$(mktemp -d /tmp/diag-capture.XXXXXX)
cd "$D"
"$PY" -m diag.examples.journal_server --journal "$D/journal.bin" > port.txt &
SERVER=$!
sleep 1
PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' port.txt)
"$PY" -c "from diag.examples.load import drive; drive('127.0.0.1', $PORT, requests=200, seconds=4, concurrency=2, rate=40)" &
LOAD=$!
sleep 0.5
"$PY" -m diag attach "$SERVER" --duration 1.5 --collectors ebpf,perf,py-spy,process,strace --out "$D/journal.diag" --quiet
wait "$LOAD"
kill "$SERVER"
rm -rf "$OUT/journal.diag"
mkdir -p "$OUT/journal.diag/streams"
cp "$D/journal.diag/manifest.json" "$OUT/journal.diag/"
for s in ebpf.jsonl perf.txt py-spy.json process.jsonl strace.txt; do
  cp "$D/journal.diag/streams/$s" "$OUT/journal.diag/streams/"
done
rm -rf "$D"
