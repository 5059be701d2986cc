#!/usr/bin/env bash
# Benchmarks, reproducible with `make bench`: the naive PostgreSQL ledger (pgbench) and
# this cluster, back to back on the same machine, same PostgreSQL, same run.
#   BENCH_ACCOUNTS   accounts in both ledgers          (default 100000)
#   BENCH_SECONDS    measured seconds per phase        (default 20)
#   BENCH_SHARDS     shard counts to measure           (default "1 2 4")
#   BENCH_MILLION    1 = also load 1,000,000 accounts and report node memory (slow)
# The cluster runs as one process, the router beside the node (`ledger-router --node`);
# on the largest shard count the uniform phase runs again without the database's balance
# check (migration 0010's trigger dropped) and once more with it, to price it; and the
# uniform and half-peak open-loop phases run again with
# the router in a process of its own, for comparison; then, with the cluster stopped, the
# same load against `ledger-echo` (the protocol's subjects answered with nothing behind
# them) closed loop and at a quarter and half of the cluster's peak: the floor that the
# way through NATS and the load generator sets on this machine by itself.
# It tunes the local PostgreSQL first (scripts/env.sh: tune_postgres) and restarts it. The
# kernel keeps its settings, except for one extra phase at half the peak that runs with a
# database host's profile (scripts/env.sh: host_profile) and restores them. The node (and
# a router apart) runs in a session of its own, as a service does, so that with the
# kernel's autogroups it does not share its CPU share with the load generator. Every
# request asks the ledger how long it held it (`--server-timing`), so that each phase
# also says how much of its latency was spent inside the ledger and how much on the way.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
ensure_all
tune_postgres
ACCOUNTS="${BENCH_ACCOUNTS:-100000}"
SECONDS_PER_PHASE="${BENCH_SECONDS:-20}"
SHARD_COUNTS="${BENCH_SHARDS:-1 2 4}"
OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
BIN="$ROOT/target/release"
PG="$LEDGER_PG_URL"
say "building release binaries"
cargo build -q --release --bins

psql_admin() { psql "$PG/postgres" -v ON_ERROR_STOP=1 -qtA "$@"; }

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
  echo "postgres: $(psql_admin -c 'show server_version') shared_buffers=$(psql_admin -c 'show shared_buffers') max_wal_size=$(psql_admin -c 'show max_wal_size') checkpoint_timeout=$(psql_admin -c 'show checkpoint_timeout') synchronous_commit=$(psql_admin -c 'show synchronous_commit') fsync=$(psql_admin -c 'show fsync') full_page_writes=$(psql_admin -c 'show full_page_writes') wal_init_zero=$(psql_admin -c 'show wal_init_zero') wal_compression=$(psql_admin -c 'show wal_compression') autovacuum=$(psql_admin -c 'show autovacuum')"
  echo "nats-server serving $LEDGER_NATS_URL: v$(python3 -c 'import json,socket,sys; u=sys.argv[1].split("//")[-1]; h,p=u.rsplit(":",1); s=socket.create_connection((h,int(p))); print(json.loads(s.recv(65536).decode().split(" ",1)[1])["version"])' "$LEDGER_NATS_URL")"
  echo "kernel writeback: dirty_background_ratio=$(cat /proc/sys/vm/dirty_background_ratio) dirty_ratio=$(cat /proc/sys/vm/dirty_ratio); disk scheduler of the data directory's device: $(cat "/sys/block/$(data_disk)/queue/scheduler" 2>/dev/null || echo unknown)"
  echo "the kernel's values of what the host profile sets: $(host_profile_knobs | while read -r file _; do printf '%s=%s ' "$(basename "$file")" "$(cat "$file")"; done)"
  # the same machine class is not always as fast: a fixed piece of CPU work, timed, lets
  # runs of different days be compared (best of three)
  echo "cpu check: $(python3 -c 'import time
best = 1e9
for _ in range(3):
    t = time.perf_counter(); s = 0
    for i in range(10_000_000): s += i
    best = min(best, time.perf_counter() - t)
print(f"{best:.2f} s for 10,000,000 additions in a Python loop")')"
  echo "accounts: $ACCOUNTS, seconds per phase: $SECONDS_PER_PHASE"
} | tee "$OUT/machine.txt"

# ---- the naive baseline ---------------------------------------------------------------
say "naive baseline: pgbench, one transfer per database transaction"
psql_admin -c "drop database if exists ledger_bench_naive with (force)" -c "create database ledger_bench_naive"
psql "$PG/ledger_bench_naive" -v ON_ERROR_STOP=1 -q -v accounts="$ACCOUNTS" -f bench/naive_schema.sql
best_naive=0
: >"$OUT/naive.txt"
for clients in 4 16 32; do
  tps=$(pgbench -n -f bench/naive_transfer.sql -D accounts="$ACCOUNTS" -c "$clients" -j 2 -T "$SECONDS_PER_PHASE" "$PG/ledger_bench_naive" 2>&1 |
        tee -a "$OUT/naive.txt" | awk '/^tps/ {print int($3)}')
  echo "naive clients=$clients: $tps transfers/s" | tee -a "$OUT/summary.txt"
  [ "${tps:-0}" -gt "$best_naive" ] && best_naive="$tps"
done
naive_bytes=$(psql "$PG/ledger_bench_naive" -qtA -c "select (sum(pg_total_relation_size(c.oid)) / greatest((select count(*) from naive_transaction), 1))::int
  from pg_class c where c.relname in ('naive_transaction', 'naive_entry') and c.relkind = 'r'")
echo "naive best: $best_naive transfers/s; bytes on disk per transfer: $naive_bytes" | tee -a "$OUT/summary.txt"
psql_admin -c "drop database if exists ledger_bench_naive with (force)"

# ---- the cluster ------------------------------------------------------------------------
config_for() { # shards -> path of a bench config with fresh databases
  local shards="$1" file="$OUT/cluster-$1.toml" ids=""
  printf '[cluster]\nname = "bench-%s"\nnats_url = "%s"\n[ring]\nvirtual_nodes_per_shard = 128\n[limits]\nbatch_commands_max = 512\nbatches_in_flight_per_database_server = 2\n' \
    "$shards" "$LEDGER_NATS_URL" >"$file"
  for i in $(seq 0 $((shards - 1))); do
    psql_admin -c "drop database if exists ledger_bench_${shards}_s$i with (force)"
    printf '[[shards]]\nid = %s\ndatabase_url = "%s/ledger_bench_%s_s%s"\npool_size = 4\n' "$i" "$PG" "$shards" "$i" >>"$file"
    ids="$ids${ids:+, }$i"
  done
  printf '[[nodes]]\nname = "node-0"\nshards = [%s]\n' "$ids" >>"$file"
  echo "$file"
}

NODE_PID=""; ROUTER_PID=""
start_cluster() { # config, shards: one process, the router beside the node
  setsid "$BIN/ledger-router" --config "$1" --node node-0 >"$OUT/cluster-$2.log" 2>&1 & NODE_PID=$!; ROUTER_PID=""
  for _ in $(seq 1 300); do [ "$(grep -c 'shard serving' "$OUT/cluster-$2.log")" -ge "$2" ] && break; sleep 0.1; done
  for _ in $(seq 1 100); do "$BIN/ledgerctl" --nats "$LEDGER_NATS_URL" topology >/dev/null 2>&1 && break; sleep 0.1; done
}
start_cluster_apart() { # config, shards: a node process and a router process
  setsid "$BIN/ledger-node" --config "$1" --node node-0 >"$OUT/node-$2.log" 2>&1 & NODE_PID=$!
  for _ in $(seq 1 300); do [ "$(grep -c 'shard serving' "$OUT/node-$2.log")" -ge "$2" ] && break; sleep 0.1; done
  setsid "$BIN/ledger-router" --config "$1" >"$OUT/router-$2.log" 2>&1 & ROUTER_PID=$!
  for _ in $(seq 1 100); do "$BIN/ledgerctl" --nats "$LEDGER_NATS_URL" topology >/dev/null 2>&1 && break; sleep 0.1; done
}
start_echo() { # shards: ledger-echo reports that many in its topology; fails if it did not start
  setsid "$BIN/ledger-echo" --nats "$LEDGER_NATS_URL" --shards "$1" >"$OUT/echo.log" 2>&1 & NODE_PID=$!; ROUTER_PID=""
  for _ in $(seq 1 100); do grep -q "ledger-echo serving" "$OUT/echo.log" && break; sleep 0.1; done
  grep -q "ledger-echo serving" "$OUT/echo.log"
}
SAMPLER_PID=""
stop_cluster() { kill $ROUTER_PID $NODE_PID 2>/dev/null || true; wait $ROUTER_PID $NODE_PID 2>/dev/null || true; }
trap 'stop_cluster; host_profile off; [ -z "$SAMPLER_PID" ] || kill "$SAMPLER_PID" 2>/dev/null || true' EXIT

load() { # name, extra args...
  local name="$1"; shift
  "$BIN/ledger-load" --nats "$LEDGER_NATS_URL" --tenant "$TENANT" --accounts "$ACCOUNTS" --skip-setup \
    --duration-s "$SECONDS_PER_PHASE" --warmup-s 5 --name "$name" --out "$OUT/$name.json" --svg "$OUT/$name.svg" \
    --trace "$OUT/$name.trace.csv" --server-timing --quiet "$@" |
    tee -a "$OUT/summary.txt"
}
rate_of() { python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['phases'][0]['accepted_per_s']))" "$OUT/$1.json"; }

best_ours=0
for shards in $SHARD_COUNTS; do
  say "cluster with $shards shard(s)"
  config="$(config_for "$shards")"
  start_cluster "$config" "$shards"
  TENANT="$(python3 -c 'import uuid; print(uuid.uuid4())')"
  "$BIN/ledger-load" --nats "$LEDGER_NATS_URL" --tenant "$TENANT" --accounts "$ACCOUNTS" --setup-only --quiet |
    tee -a "$OUT/summary.txt"
  largest=""; [ "$shards" = "$(echo $SHARD_COUNTS | awk '{print $NF}')" ] && largest=1
  if [ -n "$largest" ]; then
    # CPU per process group and PostgreSQL's commits and WAL syncs, every second, for the
    # diagnosis lines after the runs (scripts/host_sample.py)
    python3 scripts/host_sample.py record "$OUT/host-s$shards.csv" "$PG/postgres" "ledger_bench_${shards}_" & SAMPLER_PID=$!
  fi
  load "uniform-s$shards-home" --concurrency 1024 --keys home
  uniform=$(rate_of "uniform-s$shards-home")
  [ "$uniform" -gt "$best_ours" ] && best_ours="$uniform"
  if [ -n "$largest" ]; then
    # what the database's own balance check costs (migration 0010): the same load with
    # its trigger dropped on every shard, then with it back, so that the two runs with it
    # stand on both sides of the one without
    balance_check() { # on|off
      for i in $(seq 0 $((shards - 1))); do
        if [ "$1" = off ]; then sql="drop trigger trg_ledger_entry_balanced on ledger_entry"
        else sql="create trigger trg_ledger_entry_balanced after insert on ledger_entry referencing new table as new_entries
                  for each statement execute function ledger_require_balanced_entries()"; fi
        psql "$PG/ledger_bench_${shards}_s$i" -v ON_ERROR_STOP=1 -qc "$sql"
      done
    }
    balance_check off
    load "uniform-s$shards-home-nocheck" --concurrency 1024 --keys home
    balance_check on
    load "uniform-s$shards-home-check" --concurrency 1024 --keys home
    echo "BALANCE CHECK (migration 0010) on $shards shards: with it $uniform and $(rate_of "uniform-s$shards-home-check") transfers/s, without it $(rate_of "uniform-s$shards-home-nocheck")" | tee -a "$OUT/summary.txt"
    load "uniform-s$shards-random" --concurrency 1024 --keys random
    load "hot-s$shards-home" --concurrency 1024 --keys home --workload hot --hot-accounts 10 --hot-share 0.9
    # cross-shard transfers run as sagas: one in ten, then all of them
    load "cross10-s$shards-home" --concurrency 1024 --keys home --cross-shard-share 0.1
    load "cross100-s$shards" --concurrency 1024 --cross-shard-share 1.0
    half=$((uniform / 2))
    load "open-s$shards-home" --mode open --rate "$((half / 2)),$half,$((half * 3 / 2))" --concurrency 8192 --keys home
    # half the peak again, with the profile of a one-disk database host (scripts/env.sh),
    # then the kernel's values as they were
    if host_profile on; then
      echo "host profile for the next phase: $(describe_host_profile)" | tee -a "$OUT/summary.txt"
      load "open-s$shards-home-hostprofile" --mode open --rate "$half" --concurrency 8192 --keys home
      host_profile off
    else
      echo "host profile: cannot set it here (needs root or sudo); phase skipped" | tee -a "$OUT/summary.txt"
    fi
    transfers=$(for i in $(seq 0 $((shards - 1))); do psql "$PG/ledger_bench_${shards}_s$i" -qtA -c "select count(*) from ledger_transaction"; done | awk '{s+=$1} END {print s}')
    bytes=$(for i in $(seq 0 $((shards - 1))); do psql "$PG/ledger_bench_${shards}_s$i" -qtA -c "select coalesce(sum(pg_total_relation_size(c.oid)),0)
      from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind in ('r', 'p')
      and (c.relname like 'ledger_transaction%' or c.relname like 'ledger_entry%' or c.relname = 'ledger_idempotency' or c.relname = 'ledger_outbox')"; done | awk '{s+=$1} END {print s}')
    echo "cluster $shards shards: $transfers transfers on disk, $((bytes / transfers)) bytes per transfer (journal, entries, idempotency, outbox, with indexes)" | tee -a "$OUT/summary.txt"
    echo "node (and router) resident memory after the runs: $(($(ps -o rss= -p "$NODE_PID") / 1024)) MiB" | tee -a "$OUT/summary.txt"
    # the same cluster with the router in a process of its own: the uniform peak, and
    # open loop at half of this run's peak
    stop_cluster
    start_cluster_apart "$config" "$shards"
    load "uniform-s$shards-home-apart" --concurrency 1024 --keys home
    load "open-s$shards-home-apart" --mode open --rate "$half" --concurrency 8192 --keys home
    # the floor (docs/BENCHMARKS.md, "The floor"): nothing behind the subjects
    stop_cluster
    if start_echo "$shards"; then
      load "floor-s$shards" --concurrency 1024 --keys home
      load "floor-open-s$shards" --mode open --rate "$((half / 2)),$half" --concurrency 8192 --keys home
    else
      echo "floor: ledger-echo did not start ($(tail -n 1 "$OUT/echo.log")); its phases are skipped" | tee -a "$OUT/summary.txt"
    fi
    kill "$SAMPLER_PID"; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
    echo "where the CPU went and what commits cost, per phase on $shards shards:" | tee -a "$OUT/summary.txt"
    for phase in uniform-s$shards-home uniform-s$shards-home-nocheck uniform-s$shards-home-check uniform-s$shards-random hot-s$shards-home cross10-s$shards-home cross100-s$shards \
                 open-s$shards-home open-s$shards-home-hostprofile uniform-s$shards-home-apart open-s$shards-home-apart \
                 floor-s$shards floor-open-s$shards; do
      [ -f "$OUT/$phase.json" ] || continue
      python3 scripts/host_sample.py summarize "$OUT/host-s$shards.csv" "$OUT/$phase.json" "$OUT/$phase.trace.csv" |
        sed 's/^/  /' | tee -a "$OUT/summary.txt"
    done
  fi
  stop_cluster
done

if [ "${BENCH_MILLION:-0}" = "1" ]; then
  say "1,000,000 accounts: node memory"
  config="$(config_for 4)"
  start_cluster "$config" 4
  TENANT="$(python3 -c 'import uuid; print(uuid.uuid4())')"
  "$BIN/ledger-load" --nats "$LEDGER_NATS_URL" --tenant "$TENANT" --accounts 1000000 --duration-s 10 --warmup-s 2 \
    --name million --keys home --concurrency 256 --quiet --out "$OUT/million.json" | tee -a "$OUT/summary.txt"
  echo "node resident memory with 1,000,000 accounts loaded: $(($(ps -o rss= -p "$NODE_PID") / 1024)) MiB (account_cache_max per shard bounds it)" | tee -a "$OUT/summary.txt"
  stop_cluster
fi

latest_rate() { # phase-name pattern -> its rate in the largest shard count's run, or 0
  local file; file="$(ls "$OUT"/$1.json 2>/dev/null | tail -n1 || true)"
  if [ -n "$file" ]; then rate_of "$(basename "$file" .json)"; else echo 0; fi
}
apart=$(latest_rate 'uniform-s*-home-apart')
random=$(latest_rate 'uniform-s*-random')
python3 - "$best_ours" "$best_naive" "$apart" "$random" "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import glob, json, sys
ours, naive, apart, random = (int(a) for a in sys.argv[1:5])
print(f"RATIO uniform single-shard (best over shard counts, keys homed) / naive best: {ours} / {naive} = {ours / max(naive, 1):.2f}x")
if apart:
    print(f"  (router in its own process, largest shard count: {apart} / {naive} = {apart / max(naive, 1):.2f}x)")
if random:
    print(f"  (random keys, most of them homed on another shard than the accounts, largest shard count: {random} / {naive} = {random / max(naive, 1):.2f}x)")
# half the peak, the ledger against the floor (ledger-echo) at the same rate
def half_peak_phase(pattern):
    files = sorted(glob.glob(f"{sys.argv[5]}/{pattern}.json"))
    phases = json.load(open(files[-1]))["phases"] if files else []
    return phases[1] if len(phases) > 1 else None
ledger, floor = half_peak_phase("open-s*-home"), half_peak_phase("floor-open-s*")
if ledger and floor:
    p99 = lambda phase: phase["latency_us"]["p99"] / 1000
    print(f"HALF THE PEAK, open loop at {ledger['offered_per_s']:.0f}/s: p99 {p99(ledger):.1f} ms (target 25); "
          f"the message path alone (ledger-echo, nothing behind it) at {floor['offered_per_s']:.0f}/s: p99 {p99(floor):.1f} ms")
PY
say "results in $OUT"
