"""`lvs realserver`: the pure decapsulation (ipip, gre, gue), the command line, and, as root,
real servers in network namespaces: tunnel traffic through the userspace decapsulator, DR, NAT,
and --down restoring exactly what was there (also after a SIGKILL)."""

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import given, strategies as st
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from lvs import cli, realserver
from lvs.checksum import checksum, pseudo_sum
from lvs.realserver import Decapsulator, decap_frame, decap_packet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DIRECTOR, SERVER, CLIENT, VIP = "192.0.2.1", "192.0.2.2", "203.0.113.10", "198.51.100.2"
LOCAL = {socket.inet_aton(SERVER)}
VIPS = {socket.inet_aton(VIP)}
GUE_PORT = 6080


def inner_syn(**ip):
    return IP(src=CLIENT, dst=VIP, **ip) / TCP(sport=40000, dport=80, flags="S", seq=1000)


def gue_header(proto=4, flags=0, first=0):
    return struct.pack("!BBH", first, proto, flags)


def tunnelled(encap, inner=None, outer_tos=0, gre_csum=False, udp=None):
    """The outer packet the director sends for `encap`."""
    inner = inner if inner is not None else inner_syn()
    outer = IP(src=DIRECTOR, dst=SERVER, tos=outer_tos)
    if encap == "ipip":
        return outer / inner
    if encap == "gre":
        return outer / (GRE(chksum_present=1, proto=0x0800) if gre_csum else GRE(proto=0x0800)) / inner
    return outer / (udp or UDP(sport=51000, dport=GUE_PORT)) / Raw(gue_header()) / inner


def frame(packet):
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / packet)


def decap(encap, packet, gue_port=GUE_PORT):
    return decap_frame(frame(packet), encap, LOCAL, VIPS, gue_port)


# ---------------------------------------------------------------- the pure decapsulation

@pytest.mark.parametrize("encap,gre_csum", [("ipip", False), ("gre", False), ("gre", True), ("gue", False)])
def test_decapsulates_the_inner_packet(encap, gre_csum):
    want = bytes(inner_syn())
    inner, reason = decap(encap, tunnelled(encap, gre_csum=gre_csum))
    assert (inner, reason) == (want, None)


def test_vlan_tag_and_ethernet_padding_are_skipped():
    f = bytes(Ether(dst="02:00:00:00:00:02") / Dot1Q(vlan=7) / tunnelled("ipip")) + b"\0" * 12
    assert decap_frame(f, "ipip", LOCAL, VIPS) == (bytes(inner_syn()), None)


def test_not_ours_is_ignored():
    assert decap("ipip", IP(src=DIRECTOR, dst="192.0.2.99") / inner_syn())[1] == "not_local"
    assert decap("ipip", tunnelled("gre"))[1] == "not_tunnel"
    assert decap("gue", tunnelled("gue", udp=UDP(dport=GUE_PORT + 1)))[1] == "not_tunnel"
    arp = bytes(Ether() / ARP(pdst=VIP))
    assert decap_frame(arp, "ipip", LOCAL, VIPS) == (None, "not_ipv4")


def test_outer_header_checks():
    good = bytearray(bytes(tunnelled("ipip")))
    bad_sum = bytearray(good)
    bad_sum[8] -= 1                       # TTL changed, checksum not
    assert decap_packet(bytes(bad_sum), "ipip", LOCAL, VIPS) == (None, "outer_checksum")
    long = bytearray(good)
    struct.pack_into("!H", long, 2, len(good) + 4)
    struct.pack_into("!H", long, 10, 0)
    struct.pack_into("!H", long, 10, checksum(long[:20]))
    assert decap_packet(bytes(long), "ipip", LOCAL, VIPS) == (None, "outer_length")
    assert decap_packet(bytes(good[:19]), "ipip", LOCAL, VIPS) == (None, "outer_header")
    v6 = bytes([0x65]) + bytes(good[1:])
    assert decap_packet(v6, "ipip", LOCAL, VIPS) == (None, "outer_header")


def test_inner_checks():
    assert decap("ipip", IP(src=DIRECTOR, dst=SERVER, proto=4) / Raw(b"\x45" + b"\0" * 10))[1] == \
        "inner_truncated"
    other = IP(src=CLIENT, dst="198.51.100.99") / TCP()
    assert decap("ipip", tunnelled("ipip", other))[1] == "inner_not_vip"
    bad = bytearray(bytes(inner_syn()))
    bad[10] ^= 0xFF
    assert decap("ipip", IP(src=DIRECTOR, dst=SERVER, proto=4) / Raw(bytes(bad)))[1] == "inner_checksum"
    v6ish = bytes([0x60]) + bytes(inner_syn())[1:]
    assert decap("ipip", IP(src=DIRECTOR, dst=SERVER, proto=4) / Raw(v6ish))[1] == "inner_not_ipv4"


def test_gre_checks():
    def gre(hdr, inner=None):
        return IP(src=DIRECTOR, dst=SERVER, proto=47) / Raw(hdr + bytes(inner or inner_syn()))
    assert decap("gre", gre(b"\x00\x00\x86\xdd"))[1] == "gre_protocol"
    assert decap("gre", gre(b"\x20\x00\x08\x00\x00\x00\x00\x01"))[1] == "gre_flags"   # a key
    assert decap("gre", gre(b"\x10\x00\x08\x00\x00\x00\x00\x01"))[1] == "gre_flags"   # a sequence
    assert decap("gre", gre(b"\x00\x01\x08\x00"))[1] == "gre_version"
    assert decap("gre", IP(src=DIRECTOR, dst=SERVER, proto=47) / Raw(b"\x00\x00"))[1] == "gre_truncated"
    with_sum = bytearray(bytes(GRE(chksum_present=1, proto=0x0800) / inner_syn()))
    with_sum[5] ^= 1
    assert decap("gre", IP(src=DIRECTOR, dst=SERVER, proto=47) / Raw(bytes(with_sum)))[1] == "gre_checksum"


def test_gue_checks():
    def gue(hdr, inner=None):
        return IP(src=DIRECTOR, dst=SERVER) / UDP(sport=1, dport=GUE_PORT) / Raw(hdr + bytes(inner or inner_syn()))
    assert decap("gue", gue(gue_header(proto=41)))[1] == "gue_protocol"
    assert decap("gue", gue(gue_header(first=0x20)))[1] == "gue_control"
    assert decap("gue", gue(gue_header(first=0x80)))[1] == "gue_version"
    assert decap("gue", gue(gue_header(flags=0x8000)))[1] == "gue_flags"
    assert decap("gue", gue(gue_header(flags=1)))[1] == "gue_options"     # PRIV without room for it
    assert decap("gue", gue(gue_header(first=3)))[1] == "inner_not_ipv4"  # 12 option bytes skipped
    # GUE version 1: the inner IPv4 header right after UDP.
    direct = IP(src=DIRECTOR, dst=SERVER) / UDP(sport=1, dport=GUE_PORT) / inner_syn()
    assert decap("gue", direct) == (bytes(inner_syn()), None)
    bad_udp = bytearray(bytes(gue(gue_header())))
    bad_udp[26] ^= 0xFF                                                    # the UDP checksum
    assert decap_packet(bytes(bad_udp), "gue", LOCAL, VIPS, GUE_PORT)[1] == "udp_checksum"
    no_udp_sum = bytearray(bad_udp)
    no_udp_sum[26:28] = b"\0\0"                                            # 0: no checksum, accepted
    assert decap_packet(bytes(no_udp_sum), "gue", LOCAL, VIPS, GUE_PORT)[1] is None


def test_gue_remote_checksum_offload_is_completed():
    """ipvs_gue_encap on a CHECKSUM_PARTIAL packet: the inner TCP checksum holds only the
    pseudo-header sum; GUE's private remcsum option says where to finish it."""
    full = bytes(inner_syn() / Raw(b"hello"))
    partial = bytearray(full)
    seg_len = len(full) - 20
    struct.pack_into("!H", partial, 36, pseudo_sum(full[12:16], full[16:20], 6, seg_len))
    option = struct.pack("!IHH", 0x80000000, 20, 20 + 16)   # REMCSUM: start, checksum position
    packet = IP(src=DIRECTOR, dst=SERVER) / UDP(sport=1, dport=GUE_PORT) / Raw(
        gue_header(first=2, flags=1) + option + bytes(partial))
    assert decap("gue", packet) == (full, None)
    bad = struct.pack("!IHH", 0x80000000, 20, 4000)
    packet = IP(src=DIRECTOR, dst=SERVER) / UDP(sport=1, dport=GUE_PORT) / Raw(
        gue_header(first=2, flags=1) + bad + bytes(partial))
    assert decap("gue", packet)[1] == "gue_remcsum"


def test_ecn_decapsulation():
    """INET_ECN_decapsulate: CE outside marks an ECT inner packet; on not-ECT it is an error."""
    inner, reason = decap("ipip", tunnelled("ipip", inner_syn(tos=2), outer_tos=3))
    assert reason is None and inner[1] & 3 == 3 and checksum(inner[:20]) == 0
    assert decap("ipip", tunnelled("ipip", inner_syn(tos=0), outer_tos=3))[1] == "ecn"
    assert decap("ipip", tunnelled("ipip", inner_syn(tos=0), outer_tos=2))[1] is None


def test_outer_fragments_are_reassembled():
    big = inner_syn() / Raw(b"x" * 600)
    pieces = fragment(IP(src=DIRECTOR, dst=SERVER, id=77, flags=0) / big, fragsize=256)
    assert len(pieces) > 1
    assert decap("ipip", pieces[0])[1] == "outer_fragment"       # the pure function does not queue
    dec = Decapsulator("ipip", VIPS, LOCAL)
    out = [dec.frame(frame(p), 1.0) for p in reversed(pieces)]
    assert out[:-1] == [None] * (len(pieces) - 1) and out[-1] == bytes(big)
    assert dec.decapsulated == 1 and not dec.drops
    dec.frame(frame(pieces[0]), 2.0)
    dec.expire(40.0)                                               # ipfrag_time is 30 s
    assert dec.drops == {"fragment_timeout": 1}


def test_decapsulator_counts():
    dec = Decapsulator("gre", VIPS, LOCAL)
    assert dec.frame(frame(tunnelled("gre", gre_csum=True)), 0.0) == bytes(inner_syn())
    assert dec.frame(frame(tunnelled("ipip")), 0.0) is None
    assert dec.frame(b"\x01", 0.0) is None
    assert dec.decapsulated == 1 and dec.ignored == {"not_tunnel": 1, "not_ipv4": 1}
    assert "decapsulated 1 packets; dropped: none" == dec.summary()


@given(st.binary(max_size=200), st.sampled_from(["ipip", "gre", "gue"]))
def test_random_bytes_never_raise(data, encap):
    for f in (data, b"\x02" * 12 + b"\x08\x00" + data):
        inner, reason = decap_frame(f, encap, LOCAL, VIPS, GUE_PORT)
        assert (inner is None) != (reason is None)


@given(st.sampled_from(["ipip", "gre", "gue"]), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                                          max_size=8), st.integers(0, 120))
def test_corrupted_tunnel_packets_never_raise(encap, flips, cut):
    packet = bytearray(bytes(tunnelled(encap, inner_syn() / Raw(b"abc"), gre_csum=True)))
    for pos, value in flips:
        if pos < len(packet):
            packet[pos] = value
    packet = bytes(packet[:len(packet) - cut])
    dec = Decapsulator(encap, VIPS, LOCAL, GUE_PORT)
    inner = dec.frame(frame(Raw(packet)), 0.0)
    assert inner is None or inner[16:20] in VIPS


@given(st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=64)), max_size=12))
def test_random_fragments_never_raise(frags):
    dec = Decapsulator("ipip", VIPS, LOCAL)
    for off, payload in frags:
        p = bytes(IP(src=DIRECTOR, dst=SERVER, proto=4, id=1, flags=off >> 13, frag=off & 0x1FFF) / Raw(payload))
        dec.frame(frame(Raw(p)), 0.0)
    dec.expire(100.0)


# ---------------------------------------------------------------- the command line, without changes

def run_cli(*argv):
    return cli.main(["realserver"] + list(argv))


@pytest.mark.parametrize("argv", [
    [],
    ["--method", "tunnel", "--vip", VIP],                                   # no --iface
    ["--method", "dr"],                                                     # no --vip
    ["--method", "nat"],                                                    # no --director
    ["--method", "tunnel", "--vip", VIP, "--iface", "eth0", "--encap", "gue"],   # no --gue-port
    ["--method", "tunnel", "--vip", VIP, "--iface", "eth0", "--encap", "gre", "--kernel"],
    ["--method", "dr", "--vip", VIP, "--encap", "gre"],
    ["--down", "--method", "dr"],
])
def test_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(*argv)
    assert e.value.code == 2


def test_needs_root(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert run_cli("--method", "dr", "--vip", VIP, "--state-file", str(tmp_path / "s")) == 1
    assert "needs root" in capsys.readouterr().err
    assert run_cli("--down", "--state-file", str(tmp_path / "s")) == 1


@pytest.mark.parametrize("argv,message", [
    (["--method", "dr", "--vip", "198.51.100.300"], "bad VIP address"),
    (["--method", "dr", "--vip", VIP + ",x"], "bad VIP address 'x'"),
    (["--method", "dr", "--vip", "224.0.0.1"], "cannot be a VIP"),
    (["--method", "nat", "--director", "192.0.2"], "192.0.2"),
    (["--method", "tunnel", "--vip", VIP, "--iface", "eth0.7"], "interface name"),
])
def test_bad_addresses(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)    # refused before anything is looked at
    assert run_cli(*argv, "--state-file", str(tmp_path / "s")) == 1
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


def test_existing_state_file_is_refused(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    state = tmp_path / "rs.state"
    state.write_text('{"owner": "lvs realserver", "pid": 0, "undo": []}')
    assert run_cli("--method", "dr", "--vip", VIP, "--state-file", str(state)) == 1
    err = capsys.readouterr().err
    assert "exists" in err and "lvs realserver --down --state-file %s" % state in err


# ---------------------------------------------------------------- live, in network namespaces

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, "
                                "veth pairs, nftables and sysctls")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_counter = [0]


@contextlib.contextmanager
def in_netns(name):
    """Run this thread in namespace `name` for a while: sockets made here stay in it."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open("/run/netns/" + name, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns " + name)
        yield
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(home)
        os.close(target)


def sh(*argv, ns=None, check=True):
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError("%s: %s" % (" ".join(argv), r.stderr))
    return r.stdout


class Pair:
    """Two namespaces linked by a veth pair: the director (and client) side `d`, the server `s`."""

    def __init__(self):
        _counter[0] += 1
        tag = "lvsrs-%d-%d" % (os.getpid(), _counter[0])
        self.d, self.s = tag + "-d", tag + "-s"
        self.state = "/run/pylvs/netns-%s/realserver.state" % self.s
        self.helpers = []        # Popen objects of foreground helpers

    def create(self):
        for n in (self.d, self.s):
            sh("ip", "netns", "add", n)
        sh("ip", "link", "add", "vd", "netns", self.d, "type", "veth", "peer", "name", "vs", "netns", self.s)
        for ns, dev, addrs in ((self.d, "vd", (DIRECTOR + "/24", CLIENT + "/32")), (self.s, "vs", (SERVER + "/24",))):
            for a in addrs:
                sh("ip", "-n", ns, "addr", "add", a, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # Complete checksums on the wire: no offloads on the test's veths.
            sh("ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off", ns=ns)
        sh("ip", "-n", self.s, "route", "add", "default", "via", DIRECTOR)
        self.server_mac = json.loads(sh("ip", "-n", self.s, "-j", "link", "show", "vs"))[0]["address"]

    def lvs(self, *args, timeout=60):
        return subprocess.run(["ip", "netns", "exec", self.s, sys.executable, "-m", "lvs", "realserver"]
                              + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def helper_pid(self):
        try:
            with open(self.state) as f:
                return json.load(f)["pid"]
        except (OSError, ValueError, KeyError):
            return None

    def snapshot(self):
        """What --down must give back: addresses, routes, the ruleset, every IPv4 conf sysctl."""
        sysctls = sh("sh", "-c", "grep -r . /proc/sys/net/ipv4/conf /proc/sys/net/ipv6/conf/*/disable_ipv6"
                     " 2>/dev/null || true", ns=self.s)
        addr = sh("ip", "-n", self.s, "addr").replace(" tentative", "")   # IPv6 DAD finishing meanwhile
        return {"addr": addr, "route": sh("ip", "-n", self.s, "route"),
                "nft": sh("nft", "list", "ruleset", ns=self.s), "sysctl": sysctls}

    def destroy(self):
        for p in self.helpers:
            if p.poll() is None:            # not yet reaped: its PID is still its own
                end_pid(p.pid)
                p.wait(5)
        pid = self.helper_pid()             # a detached helper our command forked
        if pid and is_realserver(pid):
            end_pid(pid)
        for n in (self.d, self.s):
            sh("ip", "netns", "delete", n, check=False)
        d = os.path.dirname(self.state)
        for name in ("realserver.state", "realserver.state.log", "realserver.state.tmp"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(d, name))
        with contextlib.suppress(OSError):
            os.rmdir(d)


def is_realserver(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"realserver" in f.read()
    except OSError:
        return False


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def end_pid(pid, timeout=5.0):
    """SIGTERM, then SIGKILL, one PID this test started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not alive(pid):
            return


@pytest.fixture
def pair():
    p = Pair()
    try:
        p.create()
        yield p
    finally:
        p.destroy()


def frames_until(port, want, timeout=3.0, seen=None):
    """Read frames from `port` until `want(Ether)` is true (returned) or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([port.fileno()], [], [], max(0.0, deadline - time.monotonic()))
        for raw in port.recv_batch(64):
            e = Ether(raw)
            if seen is not None:
                seen.append(e)
            if want(e):
                return e
    return None


def from_vip(e, flags=None, payload=None):
    if IP not in e or TCP not in e or e[IP].src != VIP or e[IP].dst != CLIENT:
        return False
    if flags is not None and e[TCP].flags != flags:
        return False
    return payload is None or bytes(e[TCP].payload).startswith(payload)


def tcp_exchange(pair, encap, port=80, cport=40001):
    """A TCP exchange through the tunnel, the client's side built by hand: SYN -> SYN-ACK,
    then data both ways. The server's answers come from the VIP, straight to the client.
    Returns every frame the director/client side received."""
    from lvs.ports import RawPort
    with in_netns(pair.s):
        listener = socket.socket()
    with in_netns(pair.d):
        wire = RawPort("vd")
    seen = []
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(4)
        listener.settimeout(5)

        def send(tcp):
            inner = IP(src=CLIENT, dst=VIP) / tcp
            wire.send(bytes(Ether(dst=pair.server_mac, src=wire.mac) / tunnelled(encap, inner, gre_csum=True)))

        send(TCP(sport=cport, dport=port, flags="S", seq=1000))
        synack = frames_until(wire, lambda e: from_vip(e, "SA"), seen=seen)
        assert synack is not None, "no SYN-ACK from the VIP: %s" % [e.summary() for e in seen]
        assert synack[TCP].ack == 1001
        assert tcp_checksum_ok(synack)      # complete: offloads are off on the test's veths
        server_seq = synack[TCP].seq + 1
        send(TCP(sport=cport, dport=port, flags="PA", seq=1001, ack=server_seq) / Raw(b"ping\n"))
        conn, peer = listener.accept()
        with conn:
            assert peer == (CLIENT, cport)
            conn.settimeout(5)
            assert conn.recv(100) == b"ping\n"
            conn.sendall(b"pong\n")
            got = frames_until(wire, lambda e: from_vip(e, payload=b"pong\n"), seen=seen)
            assert got is not None, "no data from the VIP: %s" % [e.summary() for e in seen]
        return seen
    finally:
        listener.close()
        wire.close()


def tcp_checksum_ok(e):
    packet = bytes(e[IP])
    ihl = (packet[0] & 15) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    segment = packet[ihl:total]
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(segment))
    return checksum(pseudo + segment) == 0


def assert_no_icmp_from_server(seen):
    icmp = [e.summary() for e in seen if ICMP in e and e[IP].src == SERVER]
    assert not icmp, "the kernel answered the tunnel packets itself: %s" % icmp


@needs_root
@pytest.mark.parametrize("encap", ["ipip", "gre", "gue"])
def test_tunnel_userspace_detached(pair, encap):
    before = pair.snapshot()
    extra = ["--encap", encap] + (["--gue-port", str(GUE_PORT)] if encap == "gue" else [])
    r = pair.lvs("--method", "tunnel", "--vip", VIP, "--iface", "vs", "--detach", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "userspace %s decapsulation on vs -> lvstun0" % encap in r.stdout
    for line in ("sysctl net.ipv4.conf.lvstun0.arp_ignore=8", "sysctl net.ipv4.conf.lvstun0.rp_filter=2",
                 "sysctl net.ipv4.conf.vs.arp_ignore=2", "sysctl net.ipv4.conf.all.arp_announce=2",
                 "sysctl net.ipv4.conf.vs.arp_announce=2", "ip addr add %s/32 dev lvstun0" % VIP,
                 "nft table ip pylvs_rs"):
        assert line in r.stdout
    pid = pair.helper_pid()
    assert pid and alive(pid)
    assert VIP + "/32" in sh("ip", "-n", pair.s, "addr", "show", "dev", "lvstun0")

    seen = tcp_exchange(pair, encap)
    assert_no_icmp_from_server(seen)
    rules = sh("nft", "list", "table", "ip", "pylvs_rs", ns=pair.s)
    assert "counter packets 0 " not in rules and "drop" in rules   # the kernel saw them, and kept quiet

    r = pair.lvs("--down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stopping pid %d" % pid in r.stdout
    assert "decapsulated 2 packets; dropped: none" in r.stdout
    assert not alive(pid)
    assert not os.path.exists(pair.state)
    assert "lvstun0" not in sh("ip", "-n", pair.s, "link")
    assert pair.snapshot() == before


@needs_root
def test_sigkill_then_down_restores_exactly(pair):
    before = pair.snapshot()
    r = pair.lvs("--method", "tunnel", "--vip", VIP + ",198.51.100.3", "--iface", "vs", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    pid = pair.helper_pid()
    # Idle, it sleeps in select(): no CPU over half a second (a tick or two of slack).
    def cpu():
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    first = cpu()
    time.sleep(0.5)
    assert cpu() - first <= 2
    os.kill(pid, signal.SIGKILL)          # the PID this test's command started, from its state file
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid)
    assert pair.snapshot() != before      # left behind: the device, the VIPs, the table, the sysctls
    r = pair.lvs("--down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "undo: ip link del dev lvstun0" in r.stdout and "undo: nft delete table ip pylvs_rs" in r.stdout
    assert pair.snapshot() == before
    r = pair.lvs("--down")
    assert r.returncode == 0 and "nothing to undo" in r.stdout


def start_foreground(pair, python_argv):
    """Start a foreground `lvs realserver` in the server namespace; return it once it is ready."""
    p = subprocess.Popen(["ip", "netns", "exec", pair.s, sys.executable] + python_argv,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    pair.helpers.append(p)           # ip netns exec execs: p.pid is the helper's own PID
    fd, got = p.stdout.fileno(), b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and b" ready (" not in got:
        if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = os.read(fd, 65536)    # the fd itself: bounded waits, unlike readline()
            if not chunk:
                break
            got += chunk
    if b" ready (" in got:
        return p
    end_pid(p.pid)
    p.wait(5)
    raise AssertionError("not ready: " + got.decode(errors="replace") + p.stderr.read())


TUNNEL_ARGV = ["--method", "tunnel", "--vip", VIP, "--iface", "vs", "--userspace"]


@needs_root
def test_helper_ends_when_its_interface_goes(pair):
    """A deleted interface leaves the packet socket in error, readable at once forever: the
    helper must notice and end (undoing what it can), not spin."""
    r = pair.lvs("--method", "tunnel", "--vip", VIP, "--iface", "vs", "--detach")
    assert r.returncode == 0, r.stderr
    pid = pair.helper_pid()
    sh("ip", "-n", pair.d, "link", "del", "vd")      # takes its peer, vs, with it
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert not os.path.exists(pair.state)
    assert "lvstun0" not in sh("ip", "-n", pair.s, "link")
    assert "pylvs_rs" not in sh("nft", "list", "ruleset", ns=pair.s)


@needs_root
def test_tunnel_foreground_sigterm_undoes(pair):
    before = pair.snapshot()
    p = start_foreground(pair, ["-m", "lvs", "realserver"] + TUNNEL_ARGV)
    try:
        assert pair.helper_pid() == p.pid
        tcp_exchange(pair, "ipip", cport=40002)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=15)
        assert p.returncode == 0, out + err
        assert "decapsulated 2 packets" in out and "undo: nft delete table ip pylvs_rs" in out
    finally:
        if p.poll() is None:
            end_pid(p.pid)
            p.wait(5)
    assert pair.snapshot() == before
    assert not os.path.exists(pair.state)


@needs_root
def test_an_exception_in_the_loop_undoes(pair):
    before = pair.snapshot()
    script = ("import sys\nfrom lvs import cli, realserver\n"
              "def boom(self, frame, now):\n    raise RuntimeError('injected')\n"
              "realserver.Decapsulator.frame = boom\n"
              "sys.exit(cli.main(['realserver'] + sys.argv[1:]))\n")
    p = start_foreground(pair, ["-c", script] + TUNNEL_ARGV)
    try:
        from lvs.ports import RawPort
        with in_netns(pair.d):
            wire = RawPort("vd")
        try:
            wire.send(bytes(Ether(dst=pair.server_mac, src=wire.mac) / tunnelled("ipip")))
        finally:
            wire.close()
        out, err = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            end_pid(p.pid)
            p.wait(5)
    assert p.returncode == 1
    assert "decapsulator failed" in out and "RuntimeError: injected" in out
    assert "undo: ip link del dev lvstun0" in out
    assert pair.snapshot() == before and not os.path.exists(pair.state)


@needs_root
def test_kernel_path_refused_without_ipip(pair):
    if realserver.kernel_ipip():
        pytest.skip("this kernel has the ipip module")
    before = pair.snapshot()
    r = pair.lvs("--method", "tunnel", "--vip", VIP, "--iface", "vs", "--kernel")
    assert r.returncode == 1 and "no ipip module" in r.stderr
    assert pair.snapshot() == before and not os.path.exists(pair.state)


@needs_root
def test_a_failed_setup_undoes_what_it_did(pair):
    sh("ip", "-n", pair.s, "addr", "add", VIP + "/32", "dev", "vs")   # the VIP where it must not be
    before = pair.snapshot()
    r = pair.lvs("--method", "tunnel", "--vip", VIP, "--iface", "vs", "--detach")
    assert r.returncode == 1
    assert "already on vs" in r.stderr and "ip tuntap add dev lvstun0" in r.stdout
    assert pair.snapshot() == before and not os.path.exists(pair.state)


@needs_root
def test_state_file_of_a_running_helper_is_refused(pair):
    r = pair.lvs("--method", "tunnel", "--vip", VIP, "--iface", "vs", "--detach")
    assert r.returncode == 0, r.stderr
    r2 = pair.lvs("--method", "tunnel", "--vip", VIP, "--iface", "vs", "--detach")
    assert r2.returncode == 1 and "run `lvs realserver --down` first" in r2.stderr
    assert pair.lvs("--down").returncode == 0


@needs_root
def test_direct_routing(pair):
    from lvs.ports import RawPort
    before = pair.snapshot()
    r = pair.lvs("--method", "dr", "--vip", VIP, "--iface", "vs")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "direct-routing real server for %s ready" % VIP in r.stdout
    assert VIP + "/32" in sh("ip", "-n", pair.s, "addr", "show", "dev", "lo")
    for dev in ("all", "vs"):
        assert sh("sysctl", "-n", "net.ipv4.conf.%s.arp_ignore" % dev, ns=pair.s).strip() == "1"
        assert sh("sysctl", "-n", "net.ipv4.conf.%s.arp_announce" % dev, ns=pair.s).strip() == "2"
    # The director's frame: the client's packet unchanged, to the server's MAC. The SYN-ACK comes
    # from the VIP; who-has VIP goes unanswered (the director's job).
    with in_netns(pair.s):
        listener = socket.socket()
    with in_netns(pair.d):
        wire = RawPort("vd")
    try:
        listener.bind(("0.0.0.0", 80))
        listener.listen(1)
        wire.send(bytes(Ether(dst=pair.server_mac, src=wire.mac) / inner_syn()))
        assert frames_until(wire, lambda e: from_vip(e, "SA")) is not None
        wire.send(bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=wire.mac)
                        / ARP(hwsrc=wire.mac, psrc=DIRECTOR, pdst=VIP)))
        assert frames_until(wire, lambda e: ARP in e and e[ARP].op == 2, timeout=1.0) is None
    finally:
        listener.close()
        wire.close()
    r = pair.lvs("--down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert pair.snapshot() == before


@needs_root
def test_nat_default_route(pair):
    sh("ip", "-n", pair.d, "addr", "add", "192.0.2.3/24", "dev", "vd")
    sh("ip", "-n", pair.s, "route", "replace", "default", "via", DIRECTOR, "metric", "50")
    before = pair.snapshot()
    r = pair.lvs("--method", "nat", "--director", "192.0.2.3", "--vip", VIP)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "NAT real server ready (replies through the director 192.0.2.3: the default route and " \
        "192.0.2.0/24)" in r.stdout
    routes = sh("ip", "-n", pair.s, "route", "show", "default").splitlines()
    assert [x.split()[:3] for x in routes] == [["default", "via", "192.0.2.3"]]
    # The segment too (the tutorial's client shares it): replies must all pass the director.
    assert sh("ip", "-n", pair.s, "route", "show", "exact", "192.0.2.0/24").split()[:3] == \
        ["192.0.2.0/24", "via", "192.0.2.3"]
    assert "via" not in sh("ip", "-n", pair.s, "route", "get", "192.0.2.3")
    r = pair.lvs("--down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert pair.snapshot() == before


@needs_root
def test_nat_director_must_be_on_our_segment(pair):
    before = pair.snapshot()
    r = pair.lvs("--method", "nat", "--director", "203.0.113.99")    # reached through a gateway
    assert r.returncode == 1 and "is not on a segment of ours" in r.stderr
    assert pair.snapshot() == before and not os.path.exists(pair.state)


@needs_root
@pytest.mark.parametrize("encap, options", [("gue", ["--tun-type", "gue", "--tun-port", "6080"]),
                                            ("gre", ["--tun-type", "gre", "--tun-nocsum"]),
                                            ("gre", ["--tun-type", "gre", "--tun-csum"])])
def test_gue_and_gre_services_through_the_director(encap, options):
    """The director encapsulates as the service's --tun-type says; the helper unwraps the same."""
    from lvs.lab import Topology
    topo = Topology(tag="g%d%s" % (os.getpid(), encap + options[-1][-5:].strip("-")), servers=1)
    topo.build()
    try:
        topo.start_daemon()
        vip = topo.vip
        assert topo.lvsadm("-A", "-t", vip + ":80", "-s", "rr").returncode == 0
        r = topo.lvsadm("-a", "-t", vip + ":80", "-r", topo.ip("rs1"), "-i", *options)
        assert r.returncode == 0, r.stderr
        argv = topo.realserver_argv("rs1", "tunnel") + ["--encap", encap]
        if encap == "gue":
            argv += ["--gue-port", "6080"]
        topo._realservers.add("rs1")
        r = topo.lvs("rs1", *argv)
        assert r.returncode == 0, r.stderr
        topo.http_server("rs1", "11", port=80, lifetime=60)
        for _ in range(2):
            res = topo.http_get("http://%s/" % vip, timeout=4)
            assert res.ok and res.body.strip() == "11", res
    finally:
        topo.teardown()
