"""`lvs lab --flood` (lvs/lab_flood.py): established flows through a bounded spoofed SYN flood.

The figures (goodput, latency, drops, table, memory, the defense modes) come from a short run in
network namespaces, which needs root and skips without it; the frames, the sources and the
arithmetic of the report are checked without. The live run's bounds are loose (CI machines are
noisy): the established flows keep at least half their goodput, the table never passes its bound,
the flood's drops are counted.
"""

import ipaddress
import json
import os
import shutil
import subprocess
import sys

import pytest

from lvs import lab, lab_flood
from lvs.checksum import checksum, l4_checksum
from lvs.engine import Engine
from lvs import adm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_root = pytest.mark.skipif(
    not lab.has_privileges() or shutil.which("ip") is None or shutil.which("nft") is None,
    reason="needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), iproute2 and nft to build network namespaces")


# ---------------------------------------------------------------- without root


def test_the_spoofed_sources_are_documentation_addresses_no_lab_host_has():
    sources = lab_flood.flood_sources()
    assert len(sources) == len(set(sources)) == 254 + 126
    nets = [ipaddress.ip_network(n) for n in lab_flood.FLOOD_NETS]
    hosts = {h.ip for h in lab.Topology(tag="t1x", servers=lab.MAX_SERVERS, directors=2).hosts.values()}
    hosts |= {lab.VIP, lab.GATEWAY_IP}
    for a in sources:
        addr = ipaddress.ip_address(a)
        assert any(addr in net for net in nets)
        assert any(addr in net for net in lab.ALLOWED_NETS)
        assert a not in hosts and not a.endswith(".255") and not a.endswith(".0")


def test_the_flood_frames_are_distinct_syns_with_right_checksums():
    frames = lab_flood.syn_frames(b"\x02" * 6, b"\x04" * 6, lab.VIP, 80, 5000, 7)
    assert len({f[26:30] + f[34:36] for f in frames}) == 5000       # (source, port) never repeats
    sources = {ipaddress.ip_address(a).packed for a in lab_flood.flood_sources()}
    for f in frames:
        assert f[:12] == b"\x02" * 6 + b"\x04" * 6 and f[12:14] == b"\x08\x00" and len(f) == 54
        p = f[14:]
        assert checksum(p[:20]) == 0
        assert l4_checksum(p[12:16], p[16:20], 6, p[20:]) in (0, 0xFFFF)
        assert p[28:32] == b"\0\0\0\0" and p[33] == 0x02                 # SYN, no ACK
        assert p[12:16] in sources and p[16:20] == bytes([198, 51, 100, 2])
        assert 1024 <= int.from_bytes(p[20:22], "big") and int.from_bytes(p[22:24], "big") == 80
    assert frames == lab_flood.syn_frames(b"\x02" * 6, b"\x04" * 6, lab.VIP, 80, 5000, 7)


def test_the_engine_takes_the_flood_as_new_connections_up_to_its_bound():
    eng = Engine(max_conns=100)
    assert adm.run(eng, ["-A", "-t", lab.VIP + ":80", "-s", "rr"])[2] == 0
    assert adm.run(eng, ["-a", "-t", lab.VIP + ":80", "-r", "198.51.100.10:80", "-m"])[2] == 0
    frames = lab_flood.syn_frames(b"\x02" * 6, b"\x04" * 6, lab.VIP, 80, 300, 3)
    out = eng.receive_batch([f[14:] for f in frames], 1.0)
    assert len(out) == 100 and len(eng.conntab.conns) == 100
    assert eng.drops["table_full"] == 200


def test_phase_figures_read_the_records():
    run = {"client": {"download": {"samples": [(0.0, 0), (1.0, 1000), (2.0, 1500), (3.0, 3500)]},
                      "rr": [(0.5, 0.001, True), (1.5, 0.002, True), (1.6, 1.0, False), (2.5, 0.004, True)],
                      "probe": [(1.2, 0.001, True), (1.7, 1.0, False)]},
           "samples": [{"t": 1.0, "values": {"director.to_engine": 10, "director.fastpath_hits": 5,
                                             "drop.table_full": 0, "conns": 4}, "rss_kb": 100, "cpu": 1.0},
                       {"t": 2.0, "values": {"director.to_engine": 110, "director.fastpath_hits": 30,
                                             "drop.table_full": 7, "conns": 9}, "rss_kb": 300, "cpu": 1.5}]}
    fig = lab_flood.phase_figures(run, "during", 1.0, 2.0)
    assert fig["goodput"] == 500.0
    assert fig["requests"] == 2 and fig["requests_ok"] == 1 and fig["latency_p50_ms"] == 2.0
    assert fig["probes"] == 2 and fig["probes_ok"] == 1
    assert fig["counters"] == {"director.to_engine": 100, "director.fastpath_hits": 25, "drop.table_full": 7}
    assert fig["fast_share"] == 0.25 and fig["to_engine_per_s"] == 100.0 and fig["cpu_share"] == 0.5
    assert fig["table_max"] == 9 and fig["rss_max_kb"] == 300
    assert lab_flood._at(run["client"]["download"]["samples"], 2.5) == 2500
    samples = [{"t": 10.0, "modes": {"drop_entry": 1}}, {"t": 11.0, "modes": {"drop_entry": 2}},
               {"t": 14.5, "modes": {"drop_entry": 1}}]
    assert lab_flood.mode_changes(samples, 10.0) == [(1.0, "drop_entry", 1, 2), (4.5, "drop_entry", 2, 1)]


def test_bad_options_are_refused(monkeypatch):
    import io
    from lvs.cli import build_parser
    monkeypatch.setattr(lab_flood, "has_privileges", lambda: True)
    for bad in (["--phases", "4,8"], ["--phases", "4,0,4"], ["--flood-rate", "0"], ["--max-conns", "0"],
                ["--download-rate", "10"]):
        args = build_parser().parse_args(["lab", "--flood", "--tag", "neverbuilt"] + bad)
        out, err = io.StringIO(), io.StringIO()
        assert args.func(args, out=out, err=err) == 2, bad
        assert "lvs lab --flood:" in err.getvalue() and out.getvalue() == ""


# ---------------------------------------------------------------- a short flood


@needs_root
def test_a_short_flood(tmp_path):
    tag = "t%dfl" % os.getpid()
    before = [subprocess.run(["ip", "-o"] + what, capture_output=True, text=True, timeout=10).stdout
              for what in (["link"], ["addr"], ["route"])]
    path = str(tmp_path / "flood.json")
    try:
        r = subprocess.run([sys.executable, "-m", "lvs", "lab", "--flood", "--tag", tag, "--phases", "3,5,3",
                            "--flood-rate", "8000", "--max-conns", "5000", "--watch", "6", "--json", path],
                           capture_output=True, text=True, timeout=180, cwd=ROOT)
    finally:
        left = lab.lab_namespaces(tag)
        if left:
            lab.remove_namespaces(left)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "[6/6] what happened" in out and "[done] cleaning up" in out
    assert not lab.lab_namespaces(tag)
    after = [subprocess.run(["ip", "-o"] + what, capture_output=True, text=True, timeout=10).stdout
             for what in (["link"], ["addr"], ["route"])]
    assert after == before
    with open(path) as f:
        run = json.load(f)
    fig = run["figures"]
    before_, during, after_ = fig["phases"]
    # The established flows keep working during the flood.
    assert before_["goodput"] > 0.5 * run["download_rate"]
    assert during["goodput"] >= 0.5 * before_["goodput"], fig
    assert during["requests_ok"] >= 0.5 * during["requests"], during
    assert after_["requests_ok"] > 0
    assert run["client"]["download"]["status"] == 200
    # The flood ran, bounded, and what the table could not take was dropped and counted.
    assert 0 < fig["flood_sent"] <= run["flood_count"] == 8000 * 5
    assert fig["table_max"] is not None and fig["table_max"] <= 5000
    counted = during["counters"]
    assert counted.get("drop.table_full", 0) + counted.get("drop.drop_packet", 0) > 0, counted
    # Established packets went by the fast path (unless the run has it off: PYLVS_FASTPATH=0).
    assert counted.get("director.fastpath_hits", 0) > 0 or os.environ.get("PYLVS_FASTPATH") == "0"
    assert run["answers_dropped_in_client"] > 0     # the servers' SYN-ACKs died in the client
