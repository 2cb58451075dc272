"""`lvs realserver`: the userspace decapsulation (pure, no root), and what the
helper does to a host and undoes (in namespaces, as root)."""

import os
import signal
import socket
import time

import pytest
from hypothesis import given, strategies as st
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.packet import Raw

from lvs.realserver import decapsulate

VIP, CLIENT, DIRECTOR, SERVER = "198.51.100.2", "198.51.100.1", "198.51.100.3", "198.51.100.11"
VIPS = {socket.inet_aton(VIP)}


def inner(dst=VIP):
    return bytes(IP(src=CLIENT, dst=dst) / TCP(sport=40000, dport=80, flags="S"))


def gue(payload, port=6080, csum=True):
    u = UDP(sport=40000, dport=port) / Raw(b"\x00\x04\x00\x00" + payload)
    if not csum:
        u.chksum = 0
    return bytes(IP(src=DIRECTOR, dst=SERVER) / u)


@pytest.mark.parametrize("outer, encap", [
    (bytes(IP(src=DIRECTOR, dst=SERVER, proto=4) / Raw(inner())), "ipip"),
    (bytes(IP(src=DIRECTOR, dst=SERVER) / GRE(proto=0x0800) / Raw(inner())), "gre"),
    (bytes(IP(src=DIRECTOR, dst=SERVER) / GRE(proto=0x0800, chksum_present=1) / Raw(inner())), "gre"),
    (gue(inner()), "gue"),
    (gue(inner(), csum=False), "gue"),
])
def test_each_encapsulation_gives_back_the_inner_packet(outer, encap):
    got, reason = decapsulate(outer, encap, VIPS, gue_port=6080)
    assert reason is None and got == inner()


def test_what_is_not_ours_is_dropped_with_a_reason():
    ipip = bytearray(bytes(IP(src=DIRECTOR, dst=SERVER, proto=4) / Raw(inner())))
    assert decapsulate(bytes(IP(src=DIRECTOR, dst=SERVER, proto=4) / Raw(inner("198.51.100.9"))),
                       "ipip", VIPS) == (None, "inner_not_vip")
    bad = bytearray(ipip)
    bad[10] ^= 0xFF
    assert decapsulate(bytes(bad), "ipip", VIPS) == (None, "bad_ip_checksum")
    assert decapsulate(bytes(ipip[:30]), "ipip", VIPS)[1] == "bad_total_length"
    cut = bytes(IP(src=DIRECTOR, dst=SERVER, proto=4) / Raw(inner()[:12]))
    assert decapsulate(cut, "ipip", VIPS) == (None, "inner_truncated")
    assert decapsulate(bytes(ipip), "gre", VIPS) == (None, "not_tunnel")
    assert decapsulate(gue(inner(), port=6081), "gue", VIPS, gue_port=6080) == (None, "not_tunnel")
    corrupt = bytearray(gue(inner()))
    corrupt[-1] ^= 1
    assert decapsulate(bytes(corrupt), "gue", VIPS, gue_port=6080)[1] == "bad_udp_checksum"
    keyed = bytes(IP(src=DIRECTOR, dst=SERVER) / GRE(proto=0x0800, key_present=1, key=7) / Raw(inner()))
    assert decapsulate(keyed, "gre", VIPS) == (None, "gre_options")


@given(st.binary(max_size=120), st.sampled_from(["ipip", "gre", "gue"]))
def test_random_bytes_never_raise(data, encap):
    got, reason = decapsulate(data, encap, VIPS, gue_port=6080)
    assert (got is None) != (reason is None)


@given(st.integers(0, 59), st.integers(0, 255))
def test_any_corrupted_byte_is_caught_or_harmless(offset, value):
    outer = bytearray(bytes(IP(src=DIRECTOR, dst=SERVER, proto=4) / Raw(inner())))
    outer[offset] = value
    got, reason = decapsulate(bytes(outer), "ipip", VIPS)
    if got is not None:  # the header checksums held: the inner packet is a well-formed one to the VIP
        assert got[16:20] == socket.inet_aton(VIP) and got[0] >> 4 == 4


# ---------------------------------------------------------------- on a host, as root

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, TUN, nftables")


@pytest.fixture
def rs_host():
    """A real server's namespace with one veth to a peer namespace, no route out."""
    from lvs.lab import Topology
    topo = Topology(tag="r%d" % os.getpid(), servers=1)
    topo.build()
    try:
        yield topo
    finally:
        topo.teardown()


def state(topo, role="rs1"):
    out = []
    for argv in (["ip", "-d", "link"], ["ip", "addr"], ["ip", "route", "show", "table", "all"],
                 ["nft", "list", "ruleset"], ["sysctl", "-a", "--pattern", r"^net\.ipv4\.conf"]):
        out.append(topo.run(role, argv, check=True).stdout)
    return out


@root
@pytest.mark.parametrize("method", ["dr", "nat"])
def test_dr_and_nat_settings_are_made_and_undone(rs_host, method):
    topo = rs_host
    before = state(topo)
    r = topo.lvs("rs1", *topo.realserver_argv("rs1", method))
    assert r.returncode == 0, r.stderr
    if method == "dr":
        assert "198.51.100.2/32" in topo.run("rs1", ["ip", "addr", "show", "lo"]).stdout
        assert topo.run("rs1", ["sysctl", "-n", "net.ipv4.conf.all.arp_ignore"]).stdout.strip() == "1"
    else:
        routes = topo.run("rs1", ["ip", "route"]).stdout
        assert "default via 198.51.100.3" in routes and "198.51.100.0/24 via 198.51.100.3" in routes
    assert state(topo) != before
    again = topo.lvs("rs1", *topo.realserver_argv("rs1", method))
    assert again.returncode == 1 and "--down" in again.stderr  # one journal at a time
    r = topo.lvs("rs1", "realserver", "--down")
    assert r.returncode == 0 and "host restored" in r.stdout
    assert state(topo) == before


@root
def test_tunnel_helper_killed_then_down_restores_the_host(rs_host):
    topo = rs_host
    before = state(topo)
    r = topo.lvs("rs1", *topo.realserver_argv("rs1", "tunnel"))
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.rsplit("pid ", 1)[1].split()[0])
    assert "lvstun0" in topo.run("rs1", ["ip", "link"]).stdout
    assert "ip protocol" in topo.run("rs1", ["nft", "list", "ruleset"]).stdout
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    r = topo.lvs("rs1", "realserver", "--down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert state(topo) == before


@root
def test_userspace_decapsulation_answers_from_the_vip(rs_host):
    """An IPIP SYN from the 'director' gets a SYN-ACK from the VIP to the client, sent
    by the real server's own stack through its outside interface."""
    topo = rs_host
    r = topo.lvs("rs1", *topo.realserver_argv("rs1", "tunnel"))
    assert r.returncode == 0, r.stderr
    topo.http_server("rs1", "11", port=80, lifetime=60)
    # The client address lives on the director's namespace for this test: it
    # sends the tunnel packet and sees the answer, both on its own segment.
    assert topo.run("director", ["ip", "addr", "add", CLIENT + "/32", "dev", "eth0"]).returncode == 0
    probe = r"""
import socket, sys, time
from scapy.all import Ether, IP, TCP, Raw, sendp, AsyncSniffer, conf
conf.verb = 0
sn = AsyncSniffer(iface="eth0", filter="tcp and src host %s" % sys.argv[1], count=1)
sn.start(); time.sleep(0.5)
pkt = IP(src=sys.argv[2], dst=sys.argv[3], proto=4) / IP(src=sys.argv[4], dst=sys.argv[1]) / TCP(sport=40123, dport=80, flags="S", seq=1)
from scapy.all import send
send(pkt, iface="eth0")
sn.join(timeout=5)
if sn.running: sn.stop()
got = sn.results
if got:
    p = got[0]
    print("answer", p[IP].src, p[IP].dst, p[TCP].sport, p[TCP].dport, p[TCP].flags)
else:
    print("no answer")
"""
    r = topo.python("director", probe, VIP, "198.51.100.3", topo.ip("rs1"), CLIENT, timeout=30)
    assert r.stdout.split() == ["answer", VIP, CLIENT, "80", "40123", "SA"], r.stdout + r.stderr
    assert topo.lvs("rs1", "realserver", "--down").returncode == 0


@root
@pytest.mark.parametrize("encap, options", [("gue", ["--tun-type", "gue", "--tun-port", "6080"]),
                                            ("gre", ["--tun-type", "gre", "--tun-nocsum"]),
                                            ("gre", ["--tun-type", "gre", "--tun-csum"])])
def test_gue_and_gre_services_through_the_director(rs_host, encap, options):
    """The director encapsulates as the service says; the helper unwraps the same."""
    topo = rs_host
    topo.start_daemon()
    assert topo.lvsadm("-A", "-t", VIP + ":80", "-s", "rr").returncode == 0
    r = topo.lvsadm("-a", "-t", VIP + ":80", "-r", topo.ip("rs1"), "-i", *options)
    assert r.returncode == 0, r.stderr
    argv = topo.realserver_argv("rs1", "tunnel") + ["--encap", encap]
    if encap == "gue":
        argv += ["--gue-port", "6080"]
    topo._realservers.add("rs1")
    r = topo.lvs("rs1", *argv)
    assert r.returncode == 0, r.stderr
    topo.http_server("rs1", "11", port=80, lifetime=60)
    for _ in range(2):
        res = topo.http_get("http://%s/" % VIP, timeout=4)
        assert res.ok and res.body.strip() == "11", res
