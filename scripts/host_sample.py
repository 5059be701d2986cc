#!/usr/bin/env python3
"""Where the two cores went during a benchmark phase, and what PostgreSQL's commits cost.

  host_sample.py record SAMPLES.csv PG_URL DB_PREFIX   # every second until SIGTERM
  host_sample.py summarize SAMPLES.csv RESULT.json [TRACE.csv]
                                                       # one line per phase of RESULT.json

`record` reads, once a second: CPU time per process group (/proc/<pid>/stat), the host's
idle time and the time the hypervisor gave this machine's virtual cores to other guests
while they had work ("steal", /proc/stat), the commits of the databases whose name starts
with DB_PREFIX (pg_stat_database) and PostgreSQL's WAL: syncs, the time spent in them
(needs `track_wal_io_timing=on`), bytes and full-page images (pg_stat_wal, server-wide),
and whether the checkpointer is at work on a checkpoint (pg_stat_activity). `summarize`
matches the samples to each phase's measured window (`measured_from_unix_s`, `seconds` in
ledger-load's JSON) and prints the averages: whether a phase was bound by CPU, the CPU
time per answer (all processes together), what share of its time each process group's
threads spent waiting for a core while they could have run
(`/proc/<pid>/task/<tid>/schedstat`, where the kernel keeps it), how many transfers each
commit carried, how long each WAL sync held up the commits behind it, and in how many of
its seconds a checkpoint was running. A checkpoint's first seconds write a full-page image
of every page they change first (docs/BENCHMARKS.md, "Checkpoints and full-page images"): given ledger-load's
`--trace` file, `summarize` also gives the p99 of the answers sent in such a wave (the
seconds with more than one image per ten transfers) and of the others.
Standard library only.
"""
import json
import os
import signal
import subprocess
import sys
import time

GROUPS = ("postgres", "ledger-router", "ledger-node", "ledger-echo", "nats-server", "ledger-load")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks_by_group():
    """CPU ticks per group, and the (pid, group) of every process in one of GROUPS."""
    ticks = dict.fromkeys(GROUPS + ("other",), 0)
    members = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the process ended between listdir and open
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        used = int(fields[11]) + int(fields[12])  # utime + stime
        group = next((g for g in GROUPS if comm.startswith(g[:15])), "other")
        ticks[group] += used
        if group != "other":
            members.append((pid, group))
    return ticks, members


class CoreWaits:
    """Nanoseconds each group's threads ran and waited on a run queue, summed over the
    threads alive at each sample. A thread's counters vanish with it, so only the growth
    seen between two samples (or since a thread appeared) is added, which keeps the totals
    from going backwards when threads end."""

    def __init__(self):
        self.seen = {}  # (pid, tid) -> (run_ns, wait_ns)
        self.totals = {g: [0, 0] for g in GROUPS}
        self.available = os.path.exists("/proc/self/schedstat")

    def sample(self, members):
        """members: the (pid, group) pairs of cpu_ticks_by_group."""
        if not self.available:
            return None
        now = {}
        for pid, group in members:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue  # the process ended meanwhile
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        run_ns, wait_ns, _ = (int(x) for x in f.read().split())
                except (OSError, ValueError):
                    # ended meanwhile; if it did not, its last counters stay the baseline
                    # so that its whole life is not counted again at the next sample
                    if (pid, tid) in self.seen:
                        now[(pid, tid)] = self.seen[(pid, tid)]
                    continue
                before = self.seen.get((pid, tid), (0, 0))
                self.totals[group][0] += max(0, run_ns - before[0])
                self.totals[group][1] += max(0, wait_ns - before[1])
                now[(pid, tid)] = (run_ns, wait_ns)
        self.seen = now
        return {g: tuple(t) for g, t in self.totals.items()}


def idle_and_steal_ticks():
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return int(fields[3]) + int(fields[4]), int(fields[7])  # idle + iowait, steal


def postgres_counters(pg_url, db_prefix):
    query = (
        "select (select coalesce(sum(xact_commit), 0) from pg_stat_database where datname like '"
        + db_prefix.replace("'", "''")
        + "%'), wal_sync, wal_sync_time, wal_bytes, wal_fpi,"
        # idle between checkpoints, the checkpointer waits in CheckpointerMain
        " (select count(*) from pg_stat_activity where backend_type = 'checkpointer'"
        "  and wait_event is distinct from 'CheckpointerMain')"
        " from pg_stat_wal"
    )
    try:
        out = subprocess.run(["psql", pg_url, "-qtAX", "-F", ",", "-c", query], capture_output=True, text=True, timeout=5)
        commits, syncs, sync_ms, wal_bytes, fpi, checkpointing = out.stdout.strip().split(",")
        return int(commits), int(syncs), float(sync_ms), int(wal_bytes), int(fpi), int(checkpointing)
    except (subprocess.SubprocessError, ValueError):
        return (None,) * 6


def record(path, pg_url, db_prefix):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(path, "w") as out:
        waits = CoreWaits()
        out.write(
            "unix_s,idle_ticks,steal_ticks," + ",".join(GROUPS) + ",other,commits,wal_syncs,wal_sync_ms,wal_bytes,wal_fpi,checkpointing,"
            + ",".join(f"run_ns_{g},wait_ns_{g}" for g in GROUPS) + "\n"
        )
        while not stop:
            started = time.time()
            ticks, members = cpu_ticks_by_group()
            counters = postgres_counters(pg_url, db_prefix)
            run_and_wait = waits.sample(members)
            row = [f"{started:.3f}", *(str(t) for t in idle_and_steal_ticks())] + [str(ticks[g]) for g in GROUPS + ("other",)]
            row += ["" if c is None else str(c) for c in counters]
            row += [str(n) for g in GROUPS for n in run_and_wait[g]] if run_and_wait else ["", ""] * len(GROUPS)
            out.write(",".join(row) + "\n")
            out.flush()
            time.sleep(max(0.0, 1.0 - (time.time() - started)))


def read_trace(path):
    """ledger-load's --trace file: phase name -> [(sent_us, latency_us)]."""
    answers = {}
    if path and os.path.exists(path):
        with open(path) as f:
            f.readline()
            for line in f:
                phase, sent_us, latency_us = line.rsplit(",", 2)
                answers.setdefault(phase, []).append((int(sent_us), int(latency_us)))
    return answers


def p99_ms(latencies_us):
    ordered = sorted(latencies_us)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000


def by_full_page_wave(inside, begin, answers, transfers_per_s):
    """The p99 of the answers sent in a full-page-image wave, and of the others; None
    without a wave. A wave second writes more than one image per ten transfers."""
    waves = [
        (float(a["unix_s"]), float(b["unix_s"]))
        for a, b in zip(inside, inside[1:])
        if a["wal_fpi"] and b["wal_fpi"]  # a sample whose query failed has no counters
        and int(b["wal_fpi"]) - int(a["wal_fpi"]) > 0.1 * transfers_per_s * (float(b["unix_s"]) - float(a["unix_s"]))
    ]
    during, outside = [], []
    for sent_us, latency_us in answers:
        sent = begin + sent_us / 1e6
        (during if any(lo <= sent < hi for lo, hi in waves) else outside).append(latency_us)
    if not during:
        return None
    line = f"full-page-image wave in {len(waves)} of {len(inside) - 1} s: p99 {p99_ms(during):.0f} ms in it"
    if outside:
        line += f", {p99_ms(outside):.0f} ms outside it"
    return line


def core_waits(first, last):
    """'postgres 56%  ledger-router 66% ...': of the time each group's threads could run,
    the share they waited for a core; None when the samples lack the counters."""
    shares = []
    for g in GROUPS:
        if f"run_ns_{g}" not in last:
            continue  # recorded before this group was known
        try:
            ran = int(last[f"run_ns_{g}"]) - int(first[f"run_ns_{g}"])
            waited = int(last[f"wait_ns_{g}"]) - int(first[f"wait_ns_{g}"])
        except (KeyError, ValueError):
            return None
        if ran > 0:
            shares.append(f"{g} {waited / (ran + waited):.0%}")
    return "  ".join(shares) or None


def summarize(path, result_path, trace_path=None):
    with open(path) as f:
        header = f.readline().strip().split(",")
        samples = [dict(zip(header, line.strip().split(","))) for line in f if line.strip()]
    with open(result_path) as f:
        phases = json.load(f)["phases"]
    traces = read_trace(trace_path)
    for phase in phases:
        begin = phase.get("measured_from_unix_s")
        if not begin:
            continue
        end = begin + phase["seconds"]
        inside = [s for s in samples if begin <= float(s["unix_s"]) <= end]
        if len(inside) < 2:
            print(f"{phase['name']}: too few host samples")
            continue
        first, last = inside[0], inside[-1]
        seconds = float(last["unix_s"]) - float(first["unix_s"])

        def cores(key):
            return (int(last[key]) - int(first[key])) / TICKS / seconds

        used = "  ".join(f"{g} {cores(g):.2f}" for g in GROUPS + ("other",) if g in last and cores(g) >= 0.005)
        line = f"{phase['name']}: cores used: {used}; idle {cores('idle_ticks'):.2f}"
        if "steal_ticks" in last:
            line += f"; stolen by the hypervisor {cores('steal_ticks'):.2f}"
        busy = sum(cores(g) for g in GROUPS + ("other",) if g in last)
        if phase["accepted_per_s"] > 0:
            # what each answer cost the machine, all processes together: at lower rates
            # every process wakes up for fewer messages at a time
            line += f"; {busy / phase['accepted_per_s'] * 1e6:.0f} µs of CPU per answer"
        waiting = core_waits(first, last)
        if waiting:
            line += f"; waiting for a core: {waiting}"
        # a phase against ledger-echo commits nothing: no PostgreSQL part then
        if first["commits"] and last["commits"] and int(last["commits"]) > int(first["commits"]):
            commits = (int(last["commits"]) - int(first["commits"])) / seconds
            syncs = (int(last["wal_syncs"]) - int(first["wal_syncs"])) / seconds
            sync_ms = float(last["wal_sync_ms"]) - float(first["wal_sync_ms"])
            per_sync = sync_ms / max(syncs * seconds, 1)
            per_commit = f"{phase['accepted_per_s'] / commits:.1f}" if commits else "no"
            line += f"; PostgreSQL: {commits:.0f} commits/s (relay rounds included), {per_commit} transfers per commit, "
            line += f"{syncs:.0f} WAL syncs/s" + (f" at {per_sync:.2f} ms each" if sync_ms > 0 else "")
            wal_bytes = int(last["wal_bytes"]) - int(first["wal_bytes"])
            fpi = int(last["wal_fpi"]) - int(first["wal_fpi"])
            transfers = max(phase["accepted_per_s"] * seconds, 1)
            line += f", WAL {wal_bytes / transfers / 1024:.1f} kB per transfer ({fpi / transfers:.2f} full-page images)"
        if first.get("checkpointing") and last.get("checkpointing"):
            running = sum(1 for s in inside if s["checkpointing"] == "1")
            line += f"; a checkpoint running in {running} of {len(inside)} samples"
            wave = by_full_page_wave(inside, begin, traces.get(phase["name"], []), phase["accepted_per_s"])
            if wave:
                line += "; " + wave
        print(line)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "summarize":
        summarize(*sys.argv[2:])
    else:
        sys.exit(__doc__)
