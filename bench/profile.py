"""Profiles of the cases whose targets are missed: where the time or the memory goes.

    python -m bench.profile established|newconn|replay|memory [--top N] [--count N]

Time: pyinstrument (pip install pyinstrument; `tools/setup.sh --bench` adds it
to .venv) when it is there, else cProfile, over the same work as bench/core.py
does. Memory: tracemalloc's allocation sites for 100 k ESTABLISHED NAT
connections, in bytes per connection (CPython; PyPy has no tracemalloc).
"""

import os
import random
import sys
import tempfile

from bench import core

N = 100000


def established_work():
    engine = core.engine_with("nat")
    data = core.open_flows(engine, 1000)
    packets = data * 100
    return lambda: [engine.receive_batch(packets[i:i + core.BATCH], 2.0)
                    for i in range(0, len(packets), core.BATCH)]


def newconn_work():
    engine = core.engine_with("nat", 10, "wlc")
    syns = [core.segment(*core.client_of(i), 0x02) for i in range(N)]
    return lambda: [engine.receive_batch(syns[i:i + core.BATCH], 1.0)
                    for i in range(0, len(syns), core.BATCH)]


def replay_work():
    from lvs.pcap import PcapWriter, ether_frame
    from lvs.replay import replay
    tmp = tempfile.mkdtemp(prefix="pylvs-profile-")
    cap, rules = os.path.join(tmp, "in.pcap"), os.path.join(tmp, "rules")
    with open(rules, "w") as f:
        f.write("-A -t %s:80 -s rr\n" % core.VIP)
        for k in range(4):
            f.write("-a -t %s:80 -r 192.0.2.%d:80 -m\n" % (core.VIP, 10 + k))
    mac, rnd, ts = bytes(6), random.Random(1), 1.0
    with PcapWriter(cap) as w:
        for i in range(N // 10):
            src, sport = core.client_of(i)
            w.write(ts, ether_frame(mac, mac, core.segment(src, sport, 0x02)))
            for _ in range(9):
                ts += rnd.random() * 0.0001
                w.write(ts, ether_frame(mac, mac, core.segment(src, sport, 0x18, b"x" * 32)))
    out = open(os.devnull, "w")
    return lambda: replay(rules, cap, os.path.join(tmp, "out.pcap"), stdout=out)


def profile_time(work, top):
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None
    if Profiler is not None:
        p = Profiler(interval=0.0005)
        p.start()
        work()
        p.stop()
        print(p.output_text(unicode=False, color=False, show_all=False))
        return
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.runcall(work)
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def profile_memory(top):
    import tracemalloc
    engine = core.engine_with("nat")
    syns = [core.segment(*core.client_of(i), 0x02) for i in range(N)]
    acks = [core.segment(*core.client_of(i), 0x10) for i in range(N)]
    tracemalloc.start(4)
    try:
        before = tracemalloc.take_snapshot()
        for i in range(0, N, core.BATCH):
            engine.receive_batch(syns[i:i + core.BATCH], 1.0)
        for i in range(0, N, core.BATCH):
            engine.receive_batch(acks[i:i + core.BATCH], 1.0)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()  # left on, it slows every later allocation of the process (the tests')
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print("%d ESTABLISHED NAT connections (with fast path entries): %.0f bytes each, by allocation site:"
          % (N, total / N))
    for s in stats[:top]:
        frame = s.traceback[0]
        print("  %7.1f B/conn  %s:%d" % (s.size_diff / N, os.path.relpath(frame.filename), frame.lineno))


def main(argv):
    global N
    top = 25
    if "--top" in argv:
        top = int(argv[argv.index("--top") + 1])
    if "--count" in argv:
        N = int(argv[argv.index("--count") + 1])
    names = [a for a in argv if not a.startswith("--") and not a.isdigit()]
    works = {"established": established_work, "newconn": newconn_work, "replay": replay_work}
    if len(names) != 1 or names[0] not in list(works) + ["memory"]:
        sys.stderr.write(__doc__)
        return 2
    if names[0] == "memory":
        if sys.implementation.name != "cpython":
            sys.stderr.write("memory: tracemalloc is CPython's\n")
            return 2
        profile_memory(top)
    else:
        profile_time(works[names[0]](), top)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
