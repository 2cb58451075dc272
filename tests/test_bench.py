"""The benchmarks' baselines do the work they stand for (bench/core.py)."""

import json

from bench import core


def test_the_bare_loop_rewrites_as_the_engine_does():
    """The bare loop's output for established NAT flows is byte for byte what the
    engine sends: the baseline does the same rewrite, with nothing else."""
    engine = core.engine_with("nat", servers=1)
    adm_rs = engine.services[(6, core.VIP_B, 80)].destinations[0]
    assert adm_rs.addr == bytes([192, 0, 2, 10])
    data = core.open_flows(engine, 200)
    want = [tx.packet for tx in engine.receive_batch(data, 2.0)]
    got = core.bare_loop(data, core.baseline_table(data))
    assert got == want
    assert engine.fast.hits >= 200


def test_the_ipv6_bare_loop_rewrites_as_the_engine_does():
    engine = core.engine6_with("nat", servers=1)
    data = core.open_flows6(engine, 200)
    hits = engine.fast.hits
    want = [tx.packet for tx in engine.receive_batch(data, 2.0)]
    assert core.bare_loop6(data, core.baseline_table6(data)) == want
    assert engine.fast.hits - hits == 200


def test_the_established_case_reports_fast_and_general_paths(capsys, monkeypatch):
    monkeypatch.setattr(core, "METHODS", {"dr": "-g"})
    monkeypatch.setattr(core, "FLOWS", {True: (100, 300)})
    monkeypatch.setattr(core, "timed", lambda fn, rounds: fn()[0] / fn()[1])
    core.case_established(quick=True)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["flows"], r["fast"]) for r in rows] == [(100, True), (100, False), (300, True), (300, False)]
    assert all(r["value"] > 0 and r["baseline"] > 0 for r in rows)


def test_the_memory_profile_names_where_a_connection_s_bytes_go(capsys):
    import sys
    import pytest
    from bench import profile
    if sys.implementation.name != "cpython":
        pytest.skip("tracemalloc is CPython's")
    import tracemalloc
    assert profile.main(["memory", "--count", "2000", "--top", "5"]) == 0
    assert not tracemalloc.is_tracing()   # left on, it would slow the rest of the test run
    out = capsys.readouterr().out
    assert "2000 ESTABLISHED NAT connections" in out
    assert "lvs/conntab.py" in out        # the connection objects themselves
    assert profile.main(["nonsense"]) == 2


def test_the_sync_case_measures_a_master_and_a_backup(capsys, monkeypatch):
    monkeypatch.setattr(core, "timed", lambda fn, rounds: fn()[0] / fn()[1])
    core.case_sync(quick=True)
    rows = {r["case"]: r for r in (json.loads(line) for line in capsys.readouterr().out.splitlines()
                                   if line.startswith("{"))}
    master = rows["established nat 1k flows, sync master on"]
    assert master["baseline"] > 0 and master["sent"] >= 1000     # every flow was sent at least once
    assert rows["sync backup, entries installed"]["value"] > 0
    assert rows["sync backup, entries updated"]["value"] > 0


def test_the_sim_case_counts_simulated_packets_against_the_bare_loop(capsys, monkeypatch):
    """bench/core.py's sim case: a quick run (under a second) of the fixed workload per
    scheduler, its packets/s beside the bare loop's, and the issue's target line."""
    from bench import __main__ as bench_main
    monkeypatch.setattr(core, "timed", lambda fn, rounds: fn()[0] / fn()[1])
    core.case_sim(quick=True)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["sched"] for r in rows] == ["rr", "wlc"]
    for r in rows:
        assert r["unit"] == "pkt/s" and r["value"] > 0 and r["baseline"] > 0 and r["ratio"] > 0
        assert r["conns"] > 100 and r["packets"] > 10 * r["conns"]
    line, = [t for t in bench_main.targets(rows) if "lvs sim" in t[0]]
    assert line[0].startswith("lvs sim >= 100k simulated pkt/s (%s, worst: " % rows[0]["impl"])


def test_the_port_forwarder_rewrites_the_same_on_ethernet_and_tun():
    """bench/portfwd.py's forward() (what bench/ports.py runs over each port choice) turns a
    packet to VIP:port into one to the real server with valid checksums and one TTL less, on an
    Ethernet port (with the MACs) and on a TUN port (bare IP) alike; nothing else is sent."""
    import socket
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from bench import portfwd
    vip, rs = socket.inet_aton("198.51.100.2"), socket.inet_aton("198.51.100.10")
    rs_mac, mine = bytes.fromhex("020000000010"), bytes.fromhex("020000000003")
    ip = IP(src="198.51.100.1", dst="198.51.100.2", ttl=64)
    packets = [ip / UDP(sport=4000, dport=9000) / (b"x" * 64), ip / TCP(sport=4001, dport=9000, flags="S"),
               ip / UDP(sport=4000, dport=9000, chksum=0) / b"no checksum",
               ip / UDP(sport=4000, dport=9001) / b"other port",
               IP(src="198.51.100.1", dst="198.51.100.9") / UDP(dport=9000)]
    for link in (14, 0):
        frames = [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:03") / p) if link else bytes(p)
                  for p in packets]
        sent = []
        forward = portfwd.make_forward(lambda n: frames, sent.append, link, vip, rs, frozenset([9000]),
                                       rs_mac if link else b"", mine if link else b"")
        forward()
        assert len(sent) == 3
        for got in sent:
            if link:
                assert got[:12] == rs_mac + mine
            out = IP(bytes(got[link:]))
            assert (out.src, out.dst, out.ttl) == ("198.51.100.1", "198.51.100.10", 63)
            again = IP(bytes(got[link:]))
            del again.chksum
            if out.payload.chksum:           # a UDP datagram without a checksum keeps none
                del again.payload.chksum
            again = IP(bytes(again))
            assert (again.chksum, again.payload.chksum) == (out.chksum, out.payload.chksum)
        assert IP(bytes(sent[2][link:])).payload.chksum == 0
