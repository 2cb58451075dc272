"""`lvs replay` end to end on the shipped tutorial capture, outputs decoded by scapy."""

import os
import subprocess
import sys

import pytest
from scapy.all import IP, TCP, UDP, Ether, rdpcap, wrpcap

from lvs.replay import ReplayError, replay

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "examples", "tutorial.rules")
CAPTURE = os.path.join(ROOT, "examples", "tutorial.pcap")
VIP, CLIENT = "198.51.100.2", "198.51.100.1"


def run(tmp_path, rules=RULES, capture=CAPTURE, **kw):
    out = str(tmp_path / "out.pcap")
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with open(stdout, "w") as so, open(stderr, "w") as se:
        status = replay(rules, capture, out, stdout=so, stderr=se, **kw)
    return status, stdout.read_text(), stderr.read_text(), rdpcap(out) if os.path.getsize(out) > 24 else []


def test_tutorial_listing_shows_port_rewrite_and_counters(tmp_path):
    status, out, err, _ = run(tmp_path)
    assert status == 0 and err == ""
    stats, conns, drops = out.split("\n\n")
    lines = stats.splitlines()
    assert lines[0] == "IP Virtual Server version 1.2.1 (size=4096)"
    # -g and -i real servers were given ports 10 and 11: IPVS lists them on 80.
    assert lines[3].split() == ["TCP", "198.51.100.2:80", "6", "30", "10", "1500", "468"]
    assert lines[4].split() == ["->", "198.51.100.10:80", "2", "10", "0", "500", "0"]
    assert lines[5].split() == ["->", "198.51.100.11:80", "2", "10", "0", "500", "0"]
    assert lines[6].split() == ["->", "198.51.100.12:12", "2", "10", "10", "500", "468"]
    rows = [line.split() for line in conns.splitlines()[2:]]
    # rr starts at the last server added (the head of the kernel's list).
    assert [(r[3].split(":")[1], r[5], r[2]) for r in rows] == [
        ("40001", "198.51.100.12:12", "TIME_WAIT"), ("40002", "198.51.100.11:80", "FIN_WAIT"),
        ("40003", "198.51.100.10:80", "FIN_WAIT"), ("40004", "198.51.100.12:12", "TIME_WAIT"),
        ("40005", "198.51.100.11:80", "FIN_WAIT"), ("40006", "198.51.100.10:80", "FIN_WAIT")]
    assert drops.strip() == "drops: arp=1 no_service=2"


def test_tutorial_frames_per_method(tmp_path):
    _, _, _, frames = run(tmp_path)
    assert len(frames) == 40  # 30 client packets + 10 NAT replies; ARP and the two strays are not sent
    for f in frames:
        assert f[Ether].src == "02:00:00:00:00:01"
    nat = [f for f in frames if f[Ether].dst == "02:00:c6:33:64:0c"]
    tun = [f for f in frames if f[Ether].dst == "02:00:c6:33:64:0b"]
    dr = [f for f in frames if f[Ether].dst == "02:00:c6:33:64:0a"]
    back = [f for f in frames if f[Ether].dst == "02:00:c6:33:64:01"]
    assert (len(nat), len(tun), len(dr), len(back)) == (10, 10, 10, 10)
    for f in nat:
        assert f[IP].dst == "198.51.100.12" and f[TCP].dport == 12 and f[IP].ttl == 63
    for f in back:  # NAT replies leave with the VIP as source
        assert f[IP].src == VIP and f[TCP].sport == 80 and f[IP].dst == CLIENT
    for f in tun:  # IPIP from the director (the VIP, as in the tutorial) to the server
        outer, inner = f[IP], f[IP].payload
        assert outer.proto == 4 and outer.src == VIP and outer.dst == "198.51.100.11"
        assert inner.dst == VIP and inner[TCP].dport == 80 and outer.ttl == inner.ttl == 63
    for f in dr:  # the client's packet, unchanged but for TTL, to the server's MAC
        assert f[IP].dst == VIP and f[TCP].dport == 80 and f[IP].ttl == 63
    for f in frames:  # every checksum as scapy computes it, outer and inner
        ip = IP(bytes(f[IP]))
        assert_checksums(ip)
        if ip.proto == 4:
            assert_checksums(IP(bytes(ip.payload)))


def assert_checksums(ip):
    ref = ip.copy()
    del ref.chksum
    if ref.haslayer(TCP) and ip.proto == 6:
        del ref[TCP].chksum
    ref = IP(bytes(ref))
    assert ref.chksum == ip.chksum
    if ip.proto == 6:
        assert ref[TCP].chksum == ip[TCP].chksum


def test_timed_rule_quiesces_a_server(tmp_path):
    rules = tmp_path / "rules"
    rules.write_text(open(RULES).read()
                     + "@1.2 -e -t 198.51.100.2:80 -r 198.51.100.12:12 -m -w 0\n")
    status, out, _, _ = run(tmp_path, rules=str(rules))
    assert status == 0
    rows = [line.split() for line in out.split("\n\n")[1].splitlines()[2:]]
    # Connection 1 (t=0.5) went to the NAT server; from 1.2 s it gets no new ones.
    servers = [r[5] for r in rows]
    assert servers[0] == "198.51.100.12:12" and servers[1:].count("198.51.100.12:12") == 0


def test_failing_timed_rule_reports_line_and_goes_on(tmp_path):
    rules = tmp_path / "rules"
    rules.write_text(open(RULES).read() + "@1 -d -t 198.51.100.2:80 -r 198.51.100.99:80\n")
    status, out, err, frames = run(tmp_path, rules=str(rules))
    assert status == 1
    line = len(open(RULES).read().splitlines()) + 1
    assert err == "%s:%d: No such destination\n" % (rules, line)
    assert len(frames) == 40


def test_bad_initial_rule_runs_nothing(tmp_path):
    rules = tmp_path / "rules"
    rules.write_text("-A -t 198.51.100.2:80 -s nosuch\n")
    with pytest.raises(ReplayError, match="rules:1: Scheduler or persistence engine not found"):
        replay(str(rules), CAPTURE, None)


def test_bad_sysctl_is_an_error_before_running(tmp_path):
    with pytest.raises(ReplayError, match="unknown sysctl"):
        replay(RULES, CAPTURE, None, sysctls=["no_such=1"])
    with pytest.raises(ReplayError, match="invalid value"):
        replay(RULES, CAPTURE, None, sysctls=["secure_tcp=9"])


def test_fwmark_service(tmp_path):
    rules = tmp_path / "rules"
    rules.write_text("-A -f 7 -s rr\n-a -f 7 -r 203.0.113.20 -m\n")
    cap = tmp_path / "in.pcap"
    wrpcap(str(cap), [Ether() / IP(src="192.0.2.7", dst="203.0.113.9") / UDP(sport=5000, dport=53),
                      Ether() / IP(src="192.0.2.7", dst="203.0.113.9") / UDP(sport=5001, dport=54)])
    status, out, _, frames = run(tmp_path, rules=str(rules), capture=str(cap),
                                 fwmarks=["udp:203.0.113.9:53=7"], neigh=["203.0.113.20=02:aa:bb:cc:dd:ee"])
    assert status == 0
    assert len(frames) == 1 and frames[0][Ether].dst == "02:aa:bb:cc:dd:ee"
    assert frames[0][IP].dst == "203.0.113.20" and frames[0][UDP].dport == 53
    assert "no_service=1" in out


def test_cli_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lvs", "replay", "--rules", RULES, CAPTURE],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "drops: arp=1 no_service=2" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "lvs", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().startswith("pylvs ")
