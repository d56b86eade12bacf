#!/usr/bin/env bash
# A second, independent OTLP receiver for diag's OTLP test when no OpenTelemetry Collector can be
# built here (build.sh: the Go module proxy is unreachable): Rotel, a collector written in Rust,
# whose agent binary ships inside PyPI's `rotel` wheel. It decodes OTLP/HTTP with its own protobuf
# code and prints what it received in the Collector's debug-exporter format (--debug-log ...
# --debug-log-verbosity detailed), which the test reads.
#
#   contrib/otelcol/rotel.sh  -> prints the path of rotel-agent, exit 0 (exit 1 with the reason)
#
# Cache: ${DIAG_OTELCOL_CACHE:-/var/cache/diag-tests/otelcol}/rotel-agent (never in git).
set -u
cache="${DIAG_OTELCOL_CACHE:-/var/cache/diag-tests/otelcol}"
mkdir -p "$cache" || exit 1
bin="$cache/rotel-agent"
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then echo "$bin"; exit 0; fi
py=${PYTHON:-python3}
dl="$cache/rotel-wheel"; rm -rf "$dl"; mkdir -p "$dl"
if ! "$py" -m pip download -q --no-deps --only-binary=:all: -d "$dl" rotel==0.0.1a15 >"$cache/rotel.log" 2>&1; then
  echo "rotel: pip download rotel==0.0.1a15 failed (log: $cache/rotel.log)" >&2; exit 1
fi
"$py" - "$(ls "$dl"/*.whl | head -n1)" "$bin.new" <<'PY' || { echo "rotel: no agent binary in the wheel" >&2; exit 1; }
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("rotel/rotel-agent") as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
PY
if "$bin.new" --version >/dev/null 2>&1; then mv "$bin.new" "$bin"; echo "$bin"; exit 0; fi
echo "rotel: the agent binary does not run here (glibc too old?)" >&2
exit 1
