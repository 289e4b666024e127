#!/usr/bin/env bash
# Installs the Debian packages that apiscope's tests and benchmarks drive for real.
# As root, missing ones are installed with apt-get; otherwise the missing ones are listed.
set -euo pipefail

declare -A wanted=(
  [gdb]=gdb                       # injecting the agent into a live server
  [chromium]=chromium             # the dashboard's browser tests
  [chromedriver]=chromium-driver
  [prometheus]=prometheus         # scraping /metrics for real
  [promtool]=prometheus
  [wrk]=wrk                       # load for the overhead benchmarks
  [valgrind]=valgrind             # the agent's instructions per request (benchmarks)
  [redis-server]=redis-server     # the sample app's cache and the accuracy corpus
  [go]=golang-go                  # go tool pprof reads the pprof export
)

missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${wanted[$cmd]}")
done
# PostgreSQL's server binaries live outside PATH (/usr/lib/postgresql/VERSION/bin).
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's prometheus package starts a system service; the tests run their own servers.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus 2>/dev/null || true; fi
  pkill -x prometheus 2>/dev/null || true
  pkill -f prometheus-node-exporter 2>/dev/null || true
  # Likewise PostgreSQL's and Redis's system services: the tests start their own servers.
  if command -v systemctl >/dev/null 2>&1; then
    systemctl stop postgresql redis-server 2>/dev/null || true
  fi
  pkill -x redis-server 2>/dev/null || true
else
  echo "missing system packages (tests that need them will skip outside CI): ${missing[*]}"
  echo "install them with: sudo apt-get install ${missing[*]}"
fi
