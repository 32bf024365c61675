#!/usr/bin/env python3
"""Where the engine's threads wait while `mailing bench` sends (Linux only).

Samples the state of every thread of the given processes every 10 ms for SECONDS:
running (`R`) or, for a thread that is not, the kernel function it sleeps in
(`/proc/<pid>/task/<tid>/wchan`: `futex_do_wait` is a parked tokio worker or an idle
sqlx connection thread, `do_epoll_wait` a tokio worker waiting for I/O,
`hrtimer_nanosleep` a sleep such as SQLite's busy handler waiting for another
connection's write lock). Prints the average number of threads in each (process,
thread name, state), over all samples and over the samples in which at most one
thread of these processes was running (on 2 cores: the machine had a core to spare).
In those samples it also prints what the first process's SQLite connection threads
(sqlx's `sqlx-sqlite-worker-N`) were doing together, thread by thread: whether, while a
core stood idle, one of them was running a statement (the write lock busy) or all of
them waited (asleep in the busy handler, or idle in `futex_do_wait` between the
statements of their tasks).

    python3 engine/benches/thread_states.py 12 $(pgrep -f 'mailing serve') $(pgrep -f 'mailing bench')

The sampling costs a few percent of one core; read the figures as shares, not speeds.
"""

import collections
import os
import sys
import time


def sample(pids):
    snap = []
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                state = stat[stat.rindex(")") + 2]
                if state != "R":
                    with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                        state = f.read() or state
                snap.append((pid, name.rstrip("0123456789-"), state, int(tid)))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return snap


def table(samples, title):
    counts = collections.Counter()
    for snap in samples:
        counts.update((pid, name, state) for pid, name, state, _ in snap)
    print(f"== {title} ({len(samples)} samples): threads per state, on average")
    for (pid, name, state), n in counts.most_common(30):
        print(f"{n / len(samples):6.2f}  {pid:>7}  {name:<16} {state}")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    seconds, pids = float(sys.argv[1]), [int(p) for p in sys.argv[2:]]
    samples, end = [], time.time() + seconds
    while time.time() < end:
        samples.append(sample(pids))
        time.sleep(0.01)
    if not samples:
        sys.exit("no sample taken")
    spare = [s for s in samples if sum(1 for _, _, st, _ in s if st == "R") <= 1]
    print(f"{len(spare)} of {len(samples)} samples ({100 * len(spare) / len(samples):.1f}%) "
          "had at most one thread running")
    table(samples, "all samples")
    if spare:
        table(spare, "samples with at most one thread running")
        together(spare, pids[0])


def together(samples, pid):
    """The joint states of `pid`'s SQLite connection threads, most frequent first."""
    combos = collections.Counter()
    for snap in samples:
        combos[tuple(sorted((tid, state) for p, name, state, tid in snap
                            if p == pid and name.startswith("sqlx-sqlite"))
                     )] += 1
    print(f"== {pid}'s SQLite connection threads together, in those samples (tid:state)")
    for combo, n in combos.most_common(10):
        threads = " ".join(f"{tid}:{state}" for tid, state in combo)
        print(f"{n / len(samples):6.2f}  {threads or '(no SQLite connection thread)'}")


if __name__ == "__main__":
    main()
