"""Established-flow throughput of Engine.receive, as a ratio to a baseline in the same run.

The baseline is the least any userspace forwarder must do per packet: copy
the bytes into a bytearray and rewrite the destination address. The engine
does the real work (parse, lookup, state, NAT rewrite with checksums).
Run: python bench/bench_engine.py [packets]   (with .venv or .venv-pypy)
"""

import statistics
import struct
import sys
import time

from lvs.checksum import checksum
from lvs.control import DestSpec, ServiceSpec
from lvs.engine import Engine

VIP = bytes([198, 51, 100, 2])


def ipv4(src, payload):
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, 6, 0, src, VIP))
    struct.pack_into("!H", ip, 10, checksum(ip))
    return bytes(ip) + payload


def packets(n_flows):
    """(SYN, data segment) for each flow; TCP checksums are not checked by IPVS."""
    out = []
    for i in range(n_flows):
        src = bytes([203, 0, 113, 1 + i % 200])
        sport = 10000 + i
        syn = struct.pack("!HHIIBBHHH", sport, 80, 0, 0, 0x50, 0x02, 1000, 0, 0)
        data = struct.pack("!HHIIBBHHH", sport, 80, 1, 1, 0x50, 0x10, 1000, 0, 0) + b"x" * 32
        out.append((ipv4(src, syn), ipv4(src, data)))
    return out


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
    engine = Engine()
    svc = ServiceSpec(6, VIP, 80, sched_name="wlc")
    engine.add_service(svc)
    for k in range(4):
        engine.add_dest(svc, DestSpec(bytes([192, 0, 2, 10 + k]), 8080, conn_flags=0))
    flows = packets(1000)
    now = 1.0
    for syn, _ in flows:  # open every flow with a SYN
        assert engine.receive(syn, now), engine.drops
    data = [d for _, d in flows]

    def run_engine():
        t = time.perf_counter()
        for i in range(n):
            engine.receive(data[i % 1000], now)
        return n / (time.perf_counter() - t)

    def run_baseline():
        t = time.perf_counter()
        for i in range(n):
            buf = bytearray(data[i % 1000])
            buf[16:20] = b"\xc0\x00\x02\x0a"
            bytes(buf)
        return n / (time.perf_counter() - t)

    eng, base = [], []
    for _ in range(5):
        eng.append(run_engine())
        base.append(run_baseline())
    assert not engine.drops, engine.drops
    assert len(engine.conntab) == 1000
    me, mb = statistics.median(eng), statistics.median(base)
    print("%s %s: engine %.0f pkt/s, baseline %.0f pkt/s, ratio %.3f (median of 5 x %d)"
          % (sys.implementation.name, sys.version.split()[0], me, mb, me / mb, n))


if __name__ == "__main__":
    main()
