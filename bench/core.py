"""In-process benchmarks of the engine: no I/O, one core, this interpreter.

Each case prints one JSON object per line: {"case", "value", "unit", and,
where it has one, "baseline" measured in the same run and "ratio"}. Values
are medians of repeated rounds. Cases:

  established  packets/s of established flows through Engine.receive_batch
               (batches of 64, flows visited in turn) for NAT, tunnel and DR,
               at 1 k and 1 M flows, fast path on and off; the baseline is the
               bare loop: parse, one dict lookup, address rewrite and
               incremental checksums, nothing else
  established6 the same for IPv6 (NAT and DR, 1 k flows, no extension headers);
               baseline: the bare loop's IPv6 form (hop limit, address, checksum)
  newconn      new connections/s (SYNs, each scheduled) per scheduler at 10,
               100, 1 000 and 10 000 real servers; ratio: per-decision cost at
               10 servers over the cost at this size
  memory       bytes per ESTABLISHED connection (RSS delta / count)
  expiry       the longest pause of a packet loop while its connections expire
  replay       `lvs replay` packets/s on a generated capture
  sim          `lvs sim` simulated packets/s (every one through Engine.receive, with
               the capacity model and the packets built around it) on a fixed small
               workload, rr and wlc, outputs aside; baseline: the bare loop above on
               1 k established flows, measured in the same run
  sync         a sync master's cost on established flows (ratio: against no master);
               a backup's entries installed and updated per second

Run: python -m bench.core [--quick] [CASE ...]   (see bench/__main__.py)
"""

import gc
import json
import os
import random
import statistics
import struct
import sys
import tempfile
import time

from lvs import adm
from lvs.checksum import apply, checksum, delta, fold
from lvs.engine import Engine

VIP = "198.51.100.2"
VIP_B = bytes([198, 51, 100, 2])
BATCH = 64
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos")
METHODS = {"nat": "-m", "tunnel": "-i", "dr": "-g"}


def emit(case, value, unit, baseline=None, **extra):
    row = {"case": case, "value": round(value, 1), "unit": unit, "impl": sys.implementation.name}
    if baseline is not None:
        row["baseline"] = round(baseline, 1)
        row["ratio"] = round(value / baseline, 3) if baseline else None
    row.update(extra)
    print(json.dumps(row), flush=True)


def client_of(i):
    """A distinct (address, port) for flow i: 203.0.113.0/24 and 192.0.2.0/24 hosts."""
    host, port = divmod(i, 50000)
    net = (203, 0, 113) if host < 254 else (192, 0, 2)
    return bytes(net + (1 + host % 254,)), 10000 + port


def ipv4(src, dst, proto, l4):
    head = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0, src, dst))
    struct.pack_into("!H", head, 10, checksum(head))
    return bytes(head) + l4


def segment(src, sport, flags, payload=b""):
    """A TCP segment to the VIP (IPVS does not check TCP checksums: any value does)."""
    return ipv4(src, VIP_B, 6, struct.pack("!HHIIBBHHH", sport, 80, 1, 1, 0x50, flags, 8192, 0x1234, 0) + payload)


def engine_with(method, servers=4, sched="rr", fast=True):
    engine = Engine(fastpath=fast, director_addr=bytes([198, 51, 100, 3]))
    adm.run(engine, ["-A", "-t", VIP + ":80", "-s", sched])
    # ovf sends a server no more connections than its weight: make room for the run.
    weight = ["-w", "1000000"] if sched == "ovf" else []
    for k in range(servers):
        # Documentation addresses only: past 200 servers, more ports per address.
        rs = "192.0.2.%d:%d" % (10 + k % 200, 80 + k // 200)
        status = adm.run(engine, ["-a", "-t", VIP + ":80", "-r", rs, METHODS[method]] + weight)[2]
        assert status == 0, rs
    return engine


def open_flows(engine, n, now=1.0):
    """n flows taken to ESTABLISHED (SYN, then ACK); returns one data segment per flow."""
    data = []
    batch = []
    for i in range(n):
        src, sport = client_of(i)
        batch.append(segment(src, sport, 0x02))
        if len(batch) == BATCH:
            engine.receive_batch(batch, now)
            batch = []
    engine.receive_batch(batch, now)
    for i in range(n):
        src, sport = client_of(i)
        data.append(segment(src, sport, 0x18, b"x" * 32))
    for i in range(0, n, BATCH):
        engine.receive_batch(data[i:i + BATCH], now)  # the ACK: SYN_RECV -> ESTABLISHED
    return data


def bare_loop(packets, table):
    """The baseline: what any forwarder does per packet, and nothing else."""
    out = []
    append = out.append
    get = table.get
    for p in packets:
        e = get(p[12:24])
        if e is None or p[0] != 0x45 or p[8] <= 1:
            continue
        addr, port, ip_d, l4_d = e
        buf = bytearray(p)
        buf[8] -= 1
        struct.pack_into("!H", buf, 10, apply((p[10] << 8) | p[11], ip_d))
        buf[16:20] = addr
        buf[22:24] = port
        struct.pack_into("!H", buf, 36, apply((p[36] << 8) | p[37], l4_d))
        append(bytes(buf))
    return out


def baseline_table(packets):
    new = bytes([192, 0, 2, 10])
    ip_d = fold(delta(VIP_B, new) + 0xFEFF)
    l4_d = delta(VIP_B + b"\x00\x50", new + b"\x00\x50")
    return {p[12:24]: (new, b"\x00\x50", ip_d, l4_d) for p in packets}


def timed(fn, rounds):
    fn()  # warm-up: PyPy's JIT compiles the loop during the first round
    rates = []
    for _ in range(rounds):
        count, seconds = fn()
        rates.append(count / seconds)
    return statistics.median(rates)


FLOWS = {True: (1000, 100000), False: (1000, 1000000)}   # --quick, full run


def visiting(engine, data, per_round, after_batch=None):
    """`per_round` packets of the established flows `data`, visited in turn: (that
    order, a timed round of them through `engine` in batches, calling `after_batch`
    after each, for timed())."""
    order = [data[i % len(data)] for i in range(per_round)]
    batches = [order[i:i + BATCH] for i in range(0, per_round, BATCH)]

    def run_engine():
        t = time.perf_counter()
        for b in batches:
            engine.receive_batch(b, 2.0)
            if after_batch is not None:
                after_batch()
        return per_round, time.perf_counter() - t

    return order, run_engine


def compare_paths(name, engine, data, per_round, rounds, bare, table, **extra):
    """The established flows `data` through `engine` with the fast path on and off
    (visiting), against `bare` over `table`."""
    order, run_engine = visiting(engine, data, per_round)

    def run_bare():
        t = time.perf_counter()
        bare(order, table)
        return per_round, time.perf_counter() - t

    base = timed(run_bare, rounds)
    for fast in (True, False):
        engine.set_fastpath(fast)
        engine.receive_batch(data[:BATCH], 2.0)  # learn again
        rate = timed(run_engine, rounds)
        emit("%s flows fast=%s" % (name, "on" if fast else "off"), rate, "pkt/s", base, fast=fast, **extra)
    assert not engine.drops, dict(engine.drops)


def case_established(quick):
    sizes = FLOWS[quick]
    rounds = 3 if quick else 5
    for flows in sizes:
        per_round = max(flows, 200000 if not quick else 50000) if flows >= 1000 else flows
        for method in METHODS:
            engine = engine_with(method)
            data = open_flows(engine, flows)
            assert len(engine.conntab) == flows, (len(engine.conntab), dict(engine.drops))
            compare_paths("established %s %s" % (method, _size(flows)), engine, data, per_round, rounds,
                          bare_loop, baseline_table(data), flows=flows, method=method)
            engine = data = None  # free the tables before the next
            gc.collect()


VIP6 = "2001:db8::2"
VIP6_B = bytes.fromhex("20010db8000000000000000000000002")


def segment6(i, flags, payload=b""):
    """A TCP segment from flow i's client (2001:db8:1::/64) to the IPv6 VIP."""
    src = bytes.fromhex("20010db8000100000000") + i.to_bytes(6, "big")
    l4 = struct.pack("!HHIIBBHHH", 10000 + i % 50000, 80, 1, 1, 0x50, flags, 8192, 0x1234, 0) + payload
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), 6, 64, src, VIP6_B) + l4


def bare_loop6(packets, table):
    out = []
    append = out.append
    get = table.get
    for p in packets:
        e = get(p[8:44])
        if e is None or p[0] >> 4 != 6 or p[7] <= 1:
            continue
        addr, port, l4_d = e
        buf = bytearray(p)
        buf[7] -= 1
        buf[24:40] = addr
        buf[42:44] = port
        struct.pack_into("!H", buf, 56, apply((p[56] << 8) | p[57], l4_d))
        append(bytes(buf))
    return out


RS6_B = bytes.fromhex("20010db800020000000000000000000a")   # the first real server, 2001:db8:2::a


def engine6_with(method, servers=4):
    engine = Engine(fastpath=True, director_addr6=bytes.fromhex("20010db8000000000000000000000003"))
    adm.run(engine, ["-A", "-t", "[%s]:80" % VIP6, "-s", "rr"])
    for k in range(servers):
        assert adm.run(engine, ["-a", "-t", "[%s]:80" % VIP6, "-r", "[2001:db8:2::%x]:80" % (10 + k),
                                METHODS[method]])[2] == 0
    return engine


def open_flows6(engine, n):
    """n IPv6 flows taken to ESTABLISHED; returns one data segment per flow."""
    for flag in (0x02, 0x10):
        for i in range(0, n, BATCH):
            engine.receive_batch([segment6(j, flag) for j in range(i, min(n, i + BATCH))], 1.0)
    return [segment6(i, 0x18, b"x" * 32) for i in range(n)]


def baseline_table6(packets):
    l4_d = delta(VIP6_B + b"\x00\x50", RS6_B + b"\x00\x50")
    return {p[8:44]: (RS6_B, b"\x00\x50", l4_d) for p in packets}


def case_established6(quick):
    flows, rounds = 1000, 3 if quick else 5
    per_round = 50000 if quick else 200000
    for method in ("nat", "dr"):
        engine = engine6_with(method)
        data = open_flows6(engine, flows)
        assert len(engine.conntab) == flows, (len(engine.conntab), dict(engine.drops))
        compare_paths("established6 %s 1k" % method, engine, data, per_round, rounds, bare_loop6,
                      baseline_table6(data), flows=flows, method=method)


def _size(n):
    return "%dk" % (n // 1000) if n < 1000000 else "%dM" % (n // 1000000)


def case_newconn(quick):
    sizes = (10, 10000) if quick else (10, 100, 1000, 10000)
    scheds = ("rr", "wlc", "lc", "sh") if quick else SCHEDULERS
    budget = 0.5 if quick else 1.5    # seconds per measurement, at most
    syns = []
    for i in range(200000):
        src, sport = client_of(i)
        syns.append(segment(src, sport, 0x02))
    for sched in scheds:
        per_decision = {}
        for servers in sizes:
            engine = engine_with("nat", servers, sched)
            n = 0
            t0 = time.perf_counter()
            deadline = t0 + budget
            while n < len(syns) and time.perf_counter() < deadline:
                engine.receive_batch(syns[n:n + BATCH], 1.0)
                n += BATCH
            seconds = time.perf_counter() - t0
            assert len(engine.conntab) == n, (sched, servers, len(engine.conntab), dict(engine.drops))
            rate = n / seconds
            per_decision[servers] = 1.0 / rate
            emit("newconn %s %d servers" % (sched, servers), rate, "conn/s",
                 1.0 / per_decision[sizes[0]], sched=sched, servers=servers, count=n)
            del engine
            gc.collect()


def rss():
    """Memory in use: the process's RSS; under PyPy the GC's own heap, since PyPy
    keeps memory it has touched once and reuses it without RSS moving."""
    if sys.implementation.name == "pypy":
        text = gc.get_stats().total_gc_memory          # e.g. "1.5GB"
        units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
        return float(text[:-2]) * units[text[-2:]]
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def case_memory(quick):
    """RSS growth per ESTABLISHED connection (with its fast path entry), measured
    over the second half of the table so that memory the interpreter already
    holds (freed while the packets were built) does not hide the growth."""
    n = 100000 if quick else 1000000
    engine = engine_with("nat")
    syns = [segment(*client_of(i), 0x02) for i in range(n)]
    acks = [segment(*client_of(i), 0x10) for i in range(n)]
    marks = []
    for half in (range(0, n // 2), range(n // 2, n)):
        for i in range(half.start, half.stop, BATCH):
            engine.receive_batch(syns[i:min(i + BATCH, half.stop)], 1.0)
        for i in range(half.start, half.stop, BATCH):
            engine.receive_batch(acks[i:min(i + BATCH, half.stop)], 1.0)
        gc.collect()
        marks.append(rss())
    assert len(engine.conntab) == n
    emit("memory per connection %s conns" % _size(n), (marks[1] - marks[0]) / (n - n // 2), "bytes",
         conns=n, fast_entries=len(engine.fast) if engine.fast else 0)


def case_expiry(quick):
    """UDP connections opened at 100 k/s expire 5 minutes later at the same rate,
    while a packet loop goes on (a batch and its expire() every ms); the figure
    is the longest batch of the whole 10 s in which they expire (each such batch
    one packet), with the median and the 99th percentile beside it."""
    n = 100000 if quick else 1000000
    engine = engine_with("nat")
    adm.run(engine, ["-A", "-u", VIP + ":53", "-s", "rr"])
    adm.run(engine, ["-a", "-u", VIP + ":53", "-r", "192.0.2.10:53", "-m"])
    per_ms = 100
    datagrams = [ipv4(src, VIP_B, 17, struct.pack("!HHHH", sport, 53, 12, 0) + b"abcd")
                 for src, sport in map(client_of, range(n))]
    live = [segment(*client_of(n + 1), 0x18)]
    first = t = 1.0
    step = 0.001
    for i in range(0, n, per_ms):
        engine.receive_batch(datagrams[i:i + per_ms], t)
        t += step
    while t < first + 299.0:     # quiet until the first ones are due; the loop still runs its timers
        engine.receive_batch(live, t)
        t += 0.01
    pauses = []
    while len(engine.conntab) > 1 and t < first + 330.0:
        c = time.perf_counter()
        engine.receive_batch(live, t)
        pauses.append(time.perf_counter() - c)
        t += step
    assert len(engine.conntab) <= 1, len(engine.conntab)
    pauses.sort()
    emit("expiry longest pause %s conns" % _size(n), pauses[-1] * 1000, "ms", conns=n, calls=len(pauses),
         median_ms=round(pauses[len(pauses) // 2] * 1000, 3),
         p99_ms=round(pauses[int(len(pauses) * 0.99)] * 1000, 3))


def case_replay(quick):
    from lvs.pcap import PcapWriter, ether_frame
    from lvs.replay import replay
    n = 100000 if quick else 1000000
    flows = n // 10
    with tempfile.TemporaryDirectory() as tmp:
        cap, rules = os.path.join(tmp, "in.pcap"), os.path.join(tmp, "rules")
        with open(rules, "w") as f:
            f.write("-A -t %s:80 -s rr\n" % VIP)
            for k in range(4):
                f.write("-a -t %s:80 -r 192.0.2.%d:80 -m\n" % (VIP, 10 + k))
        mac = bytes(6)
        rnd = random.Random(1)
        with PcapWriter(cap) as w:
            ts = 1.0
            for i in range(flows):
                src, sport = client_of(i)
                w.write(ts, ether_frame(mac, mac, segment(src, sport, 0x02)))
                for _ in range(9):
                    ts += rnd.random() * 0.0001
                    w.write(ts, ether_frame(mac, mac, segment(src, sport, 0x18, b"x" * 32)))
        out = open(os.devnull, "w")
        t = time.perf_counter()
        status = replay(rules, cap, os.path.join(tmp, "out.pcap"), stdout=out)
        seconds = time.perf_counter() - t
        assert status == 0
    emit("replay %s packets" % _size(n), n / seconds, "pkt/s", packets=n)


SIM_WORKLOAD = {
    # Four NAT servers, Pareto-sized responses, short holds: examples/sim-heavy-tail.toml
    # made smaller (no event, no burst); --quick runs 2 s of its arrivals, the full run 20.
    "seed": 1, "sample": 0.5, "drain": 10.0,
    "clients": {"count": 200, "networks": ["198.51.100.0/24"], "skew": 0.6},
    "arrivals": {"rate": 300.0},
    "connections": {"protocol": "tcp", "size": {"dist": "pareto", "alpha": 1.3, "min": 4000, "max": 2000000},
                    "request": 300, "hold": {"dist": "exponential", "mean": 0.2}},
    "service": {"address": "192.0.2.1", "port": 80, "method": "nat"},
    "servers": [{"address": "192.0.2.1%d" % k, "capacity": 8, "queue": 100, "speed": 250000.0}
                for k in range(1, 5)],
}


def case_sim(quick):
    from lvs.sim import Run, generate_arrivals
    from lvs.sim_workload import Workload
    rounds = 1 if quick else 3
    raw = dict(SIM_WORKLOAD, duration=2.0 if quick else 20.0)
    wl = Workload(raw, "bench")
    arrivals = generate_arrivals(wl, wl.seed)
    engine = engine_with("nat")
    data = open_flows(engine, 1000)
    order = [data[i % 1000] for i in range(50000)]
    table = baseline_table(data)
    engine = data = None

    def run_bare():
        t = time.perf_counter()
        bare_loop(order, table)
        return len(order), time.perf_counter() - t

    base = timed(run_bare, 3)
    for sched in ("rr", "wlc"):
        packets = []

        def run_sim():
            run = Run(wl, sched, arrivals, wl.seed).run()   # run.wall: the loop, not the setup
            packets.append(run.packets)
            return run.packets, run.wall

        rate = timed(run_sim, rounds)
        emit("sim %s 4 servers %d conns" % (sched, len(arrivals)), rate, "pkt/s", base, sched=sched,
             conns=len(arrivals), packets=packets[-1])
        gc.collect()


def case_sync(quick):
    """Connection sync: a master's cost on established flows (against the same engine
    with no master, in the same run), and how fast a backup installs and updates."""
    from lvs.syncmsg import SyncEntry, encode
    rounds = 3 if quick else 5
    flows, per_round = 1000, (50000 if quick else 200000)
    engine = engine_with("nat")
    data = open_flows(engine, flows)
    # the daemon sends after each batch
    _, run_engine = visiting(engine, data, per_round, after_batch=lambda: engine.sync_take(4.0))
    off = timed(run_engine, rounds)
    assert adm.run(engine, ["--start-daemon", "master", "--mcast-interface", "eth0"])[2] == 0
    engine.receive_batch(data[:BATCH], 2.0)
    on = timed(run_engine, rounds)
    emit("established nat 1k flows, sync master on", on, "pkt/s", off,
         sent=engine.sync_stats["sync_entries_sent"])
    n = 20000 if quick else 100000
    entries = [SyncEntry(6, 0, 1, bytes([198, 51, 100, i & 0xFF]), 1024 + (i >> 8), VIP_B, 80,
                         bytes([192, 0, 2, 10 + i % 4]), 80, 0, 900) for i in range(n)]
    messages = encode(entries)
    backup = engine_with("nat")
    assert adm.run(backup, ["--start-daemon", "backup", "--mcast-interface", "eth0"])[2] == 0
    for what in ("installed", "updated"):
        t = time.perf_counter()
        for m in messages:
            backup.sync_receive(m, 3.0)
        seconds = time.perf_counter() - t
        assert backup.sync_stats["sync_" + what] == n, dict(backup.sync_stats)
        emit("sync backup, entries %s" % what, n / seconds, "entries/s", messages=len(messages))


CASES = {"established": case_established, "established6": case_established6, "newconn": case_newconn,
         "memory": case_memory, "expiry": case_expiry, "replay": case_replay, "sim": case_sim,
         "sync": case_sync}


def main(argv):
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("--")] or list(CASES)
    for name in names:
        CASES[name](quick)


if __name__ == "__main__":
    main(sys.argv[1:])
