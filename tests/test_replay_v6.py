"""`lvs replay` with IPv6: captures built by scapy, run through NAT, DR and
tunnel services, the output decoded by scapy. Addresses in 2001:db8::/32."""

import os
import struct
import subprocess
import sys

import pytest

pytest.importorskip("scapy.all")
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1Q, Ether  # noqa: E402
from scapy.utils import rdpcap, wrpcap  # noqa: E402

from lvs.pcap import default_mac, ether_frame, read_capture  # noqa: E402
from lvs.replay import ReplayError, parse_directors, parse_fwmark, replay  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIRECTOR_MAC = "02:00:00:00:00:01"
CLIENT, CLIENT2 = "2001:db8:c::7", "2001:db8:c::8"
NAT_VIP, NAT_RS = "2001:db8::80", "2001:db8:1::10"
DR_VIP, DR_RS = "2001:db8::53", "2001:db8:1::11"
TUN_VIP, TUN_RS = "2001:db8::443", "2001:db8:1::12"
DR_RS_MAC = "02:aa:bb:cc:dd:11"
CLIENT_MAC = "02:cc:00:00:00:07"
V4_VIP, V4_RS, V4_CLIENT = "192.0.2.80", "192.0.2.10", "192.0.2.7"

RULES6 = """\
-A -t [2001:db8::80]:80 -s rr
-a -t [2001:db8::80]:80 -r [2001:db8:1::10]:8080 -m
-A -u [2001:db8::53]:53 -s rr
-a -u [2001:db8::53]:53 -r [2001:db8:1::11]:53 -g
-A -t [2001:db8::443]:443 -s rr
-a -t [2001:db8::443]:443 -r [2001:db8:1::12]:443 -i
"""
RULES4 = """\
-A -t 192.0.2.80:80 -s rr
-a -t 192.0.2.80:80 -r 192.0.2.10:8080 -m
"""


def v6_flows():
    """A NAT TCP handshake with data and the server's replies, two DR UDP
    queries and a tunnelled SYN, in time order."""
    c, s = CLIENT, NAT_RS
    return [
        IPv6(src=c, dst=NAT_VIP, hlim=64) / TCP(sport=40000, dport=80, flags="S", seq=1000),
        IPv6(src=s, dst=c, hlim=64) / TCP(sport=8080, dport=40000, flags="SA", seq=5000, ack=1001),
        IPv6(src=c, dst=NAT_VIP, hlim=64) / TCP(sport=40000, dport=80, flags="A", seq=1001, ack=5001),
        IPv6(src=c, dst=NAT_VIP, hlim=64) / TCP(sport=40000, dport=80, flags="PA", seq=1001,
                                                 ack=5001) / b"GET / HTTP/1.0\r\n\r\n",
        IPv6(src=s, dst=c, hlim=64) / TCP(sport=8080, dport=40000, flags="PA", seq=5001,
                                           ack=1019) / b"HTTP/1.0 200 OK\r\n\r\n",
        IPv6(src=c, dst=DR_VIP, hlim=64) / UDP(sport=5000, dport=53) / b"query-1",
        IPv6(src=CLIENT2, dst=DR_VIP, hlim=64) / UDP(sport=5001, dport=53) / b"query-2",
        IPv6(src=c, dst=TUN_VIP, hlim=64) / TCP(sport=40001, dport=443, flags="S"),
    ]


def v4_flows():
    return [
        IP(src=V4_CLIENT, dst=V4_VIP, ttl=64) / TCP(sport=30000, dport=80, flags="S"),
        IP(src=V4_RS, dst=V4_CLIENT, ttl=64) / TCP(sport=8080, dport=30000, flags="SA"),
    ]


LINKS = {
    "ethernet": lambda ip: Ether(src="02:cc:00:00:00:99", dst=DIRECTOR_MAC) / ip,
    "vlan": lambda ip: Ether(src="02:cc:00:00:00:99", dst=DIRECTOR_MAC) / Dot1Q(vlan=6) / ip,
    "sll": lambda ip: CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6,
                                  proto=0x86DD if ip.version == 6 else 0x0800) / ip,
    "sll2": lambda ip: CookedLinuxV2(proto=0x86DD if ip.version == 6 else 0x0800,
                                     ifindex=2, pkttype=0) / ip,
}


def write_capture(path, packets, link="ethernet", linktype=None):
    frames = packets if linktype is not None else [LINKS[link](p) for p in packets]
    for i, f in enumerate(frames):
        f.time = 1000 + i * 0.25
    if linktype is not None:
        wrpcap(str(path), frames, linktype=linktype)
    else:
        wrpcap(str(path), frames)
    return str(path)


def run(tmp_path, capture, rules=RULES6, **kw):
    rules_path = tmp_path / "rules"
    rules_path.write_text(rules)
    out = str(tmp_path / "out.pcap")
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with open(stdout, "w") as so, open(stderr, "w") as se:
        status = replay(str(rules_path), capture, out, stdout=so, stderr=se, **kw)
    frames = rdpcap(out) if os.path.getsize(out) > 24 else []
    return status, stdout.read_text(), stderr.read_text(), frames


def drops_of(listing):
    line = listing.strip().splitlines()[-1]
    assert line.startswith("drops:")
    return dict(item.split("=") for item in line.split()[1:])


def mac(addr_text):
    import socket
    raw = default_mac(socket.inet_pton(socket.AF_INET6 if ":" in addr_text else socket.AF_INET,
                                       addr_text))
    return ":".join("%02x" % b for b in raw)


def assert_l4_checksum_valid(ip6):
    """Recompute the TCP/UDP checksum over the IPv6 pseudo-header with scapy."""
    ref = IPv6(bytes(ip6))
    layer = TCP if ref.haslayer(TCP) else UDP
    got = ref[layer].chksum
    del ref[layer].chksum
    assert IPv6(bytes(ref))[layer].chksum == got


def check_v6_output(frames, neigh_client=True, neigh_dr=True):
    """What the director sends for v6_flows(), whatever the capture's link layer."""
    v6 = [f for f in frames if f.haslayer(IPv6)]
    assert len(v6) == 8
    for f in v6:
        assert f[Ether].type == 0x86DD and f[Ether].src == DIRECTOR_MAC
        assert f[IPv6].hlim == 63  # forwarded: one hop less
    to_nat = [f for f in v6 if f[IPv6].dst == NAT_RS]
    back = [f for f in v6 if f[IPv6].dst == CLIENT]
    dr = [f for f in v6 if f[IPv6].dst == DR_VIP]
    tun = [f for f in v6 if f[IPv6].nh == 41]
    assert (len(to_nat), len(back), len(dr), len(tun)) == (3, 2, 2, 1)
    for f in to_nat:  # NAT: destination rewritten to the real server
        assert f[TCP].dport == 8080 and f[TCP].sport == 40000 and f[IPv6].src == CLIENT
        assert f[Ether].dst == mac(NAT_RS) == "02:06:00:00:00:10"  # the default rule
        assert_l4_checksum_valid(f[IPv6])
    assert bytes(to_nat[2][TCP].payload) == b"GET / HTTP/1.0\r\n\r\n"
    for f in back:  # NAT replies: source rewritten to the VIP
        assert f[IPv6].src == NAT_VIP and f[TCP].sport == 80 and f[TCP].dport == 40000
        assert f[Ether].dst == (CLIENT_MAC if neigh_client else mac(CLIENT))
        assert_l4_checksum_valid(f[IPv6])
    assert bytes(back[1][TCP].payload) == b"HTTP/1.0 200 OK\r\n\r\n"
    for f in dr:  # DR: the client's packet unchanged, to the server's MAC
        assert f[UDP].dport == 53 and f[IPv6].src in (CLIENT, CLIENT2)
        assert f[Ether].dst == (DR_RS_MAC if neigh_dr else mac(DR_RS))
        assert_l4_checksum_valid(f[IPv6])
    outer, inner = tun[0][IPv6], tun[0][IPv6].payload
    assert outer.dst == TUN_RS and inner.dst == TUN_VIP and inner[TCP].dport == 443
    assert tun[0][Ether].dst == mac(TUN_RS)
    assert_l4_checksum_valid(inner)


NEIGH = ["%s=%s" % (CLIENT, CLIENT_MAC), "[%s]=%s" % (DR_RS, DR_RS_MAC)]


@pytest.mark.parametrize("link", sorted(LINKS))
def test_nat_dr_tun_through_each_link_layer(tmp_path, link):
    cap = write_capture(tmp_path / "in.pcap", v6_flows(), link)
    status, out, err, frames = run(tmp_path, cap, neigh=NEIGH)
    assert status == 0 and err == ""
    check_v6_output(frames)
    assert drops_of(out) == {}
    conns = out.split("\n\n")[1]
    assert "[2001:db8:c::7]:40000 [2001:db8::80]:80  [2001:db8:1::10]:8080" in conns
    assert "ESTABLISHED" in conns


@pytest.mark.parametrize("linktype", [101, 12, 14, 229])
def test_raw_ip_captures(tmp_path, linktype):
    cap = write_capture(tmp_path / "in.pcap", v6_flows(), linktype=linktype)
    status, out, _, frames = run(tmp_path, cap, neigh=NEIGH)
    assert status == 0
    check_v6_output(frames)
    assert drops_of(out) == {}


def test_default_macs_without_neigh(tmp_path):
    cap = write_capture(tmp_path / "in.pcap", v6_flows())
    status, _, _, frames = run(tmp_path, cap)
    assert status == 0
    check_v6_output(frames, neigh_client=False, neigh_dr=False)
    assert mac(CLIENT) == "02:06:00:00:00:07" and mac(DR_RS) == "02:06:00:00:00:11"


def test_director_v6_is_the_tunnel_source(tmp_path):
    cap = write_capture(tmp_path / "in.pcap", v6_flows())
    _, _, _, frames = run(tmp_path, cap)
    tun = [f for f in frames if f.haslayer(IPv6) and f[IPv6].nh == 41]
    assert tun[0][IPv6].src == TUN_VIP  # no --director: the VIP
    for director in ("2001:db8::fe", ["192.0.2.254", "2001:db8::fe"], ["[2001:db8::fe]"]):
        _, _, _, frames = run(tmp_path, cap, director=director)
        tun = [f for f in frames if f.haslayer(IPv6) and f[IPv6].nh == 41]
        assert tun[0][IPv6].src == "2001:db8::fe"


def test_director_parsing():
    import socket
    v4, v6 = socket.inet_aton("192.0.2.1"), socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert parse_directors(None) == (None, None)
    assert parse_directors("192.0.2.1") == (v4, None)
    assert parse_directors("2001:db8::1") == (None, v6)
    assert parse_directors(["2001:db8::1", "192.0.2.1"]) == (v4, v6)
    with pytest.raises(ReplayError, match="twice for IPv6"):
        parse_directors(["2001:db8::1", "2001:db8::2"])
    with pytest.raises(ReplayError, match="twice for IPv4"):
        parse_directors(["192.0.2.1", "192.0.2.2"])
    for bad in ("2001:db8::zz", "192.0.2", "[192.0.2.1]", "[2001:db8::1", ""):
        with pytest.raises(ReplayError, match="bad --director"):
            parse_directors(bad)


def test_bad_neigh(tmp_path):
    cap = write_capture(tmp_path / "in.pcap", v6_flows())
    for bad in ("2001:db8::1", "2001:db8::g=02:00:00:00:00:01", "2001:db8::1=zz"):
        with pytest.raises(ReplayError, match="bad --neigh"):
            run(tmp_path, cap, neigh=[bad])


def test_mixed_ipv4_and_ipv6(tmp_path):
    flows = v6_flows()
    v4 = v4_flows()
    packets = flows[:2] + v4[:1] + flows[2:5] + v4[1:] + flows[5:]
    cap = write_capture(tmp_path / "in.pcap", packets)
    status, out, _, frames = run(tmp_path, cap, rules=RULES4 + RULES6, neigh=NEIGH)
    assert status == 0 and drops_of(out) == {}
    check_v6_output(frames)
    v4_out = [f for f in frames if f.haslayer(IP) and not f.haslayer(IPv6)]
    assert len(v4_out) == 2
    for f in v4_out:
        assert f[Ether].type == 0x0800 and f[IP].ttl == 63
    assert v4_out[0][IP].dst == V4_RS and v4_out[0][TCP].dport == 8080
    assert v4_out[0][Ether].dst == "02:00:c0:00:02:0a"
    assert v4_out[1][IP].src == V4_VIP and v4_out[1][Ether].dst == "02:00:c0:00:02:07"
    services = out.split("\n\n")[0]
    assert "TCP  192.0.2.80:80" in services and "TCP  [2001:db8::80]:80" in services


def test_link_padding_is_trimmed_by_payload_length(tmp_path):
    pkt = IPv6(src=CLIENT, dst=DR_VIP, hlim=64) / UDP(sport=5000, dport=53) / b"q"
    raw = bytes(pkt)  # 49 bytes
    frames = [bytes(Ether(src="02:cc:00:00:00:99", dst=DIRECTOR_MAC, type=0x86DD)) + raw + b"\0" * 11,
              bytes(Ether(src="02:cc:00:00:00:99", dst=DIRECTOR_MAC) / Dot1Q(vlan=6, type=0x86DD))
              + raw + b"\xee" * 7,
              bytes(CookedLinux(proto=0x86DD)) + raw + b"\0" * 3]
    path = tmp_path / "pad.pcap"
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames[:2]):
            f.write(struct.pack("<IIII", 10 + i, 0, len(fr), len(fr)) + fr)
    assert [r[1:] for r in read_capture(str(path))] == [("ipv6", raw), ("ipv6", raw)]
    path_sll = tmp_path / "pad_sll.pcap"
    with open(path_sll, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 113))
        f.write(struct.pack("<IIII", 10, 0, len(frames[2]), len(frames[2])) + frames[2])
    assert [r[1:] for r in read_capture(str(path_sll))] == [("ipv6", raw)]
    status, out, _, sent = run(tmp_path, str(path), neigh=NEIGH)
    assert status == 0 and drops_of(out) == {}
    assert len(sent) == 2
    for f in sent:
        ip = bytes(f[IPv6])
        assert ip[:7] == raw[:7] and ip[7] == 63 and ip[8:] == raw[8:] and len(bytes(f)) == 14 + len(raw)
        assert_l4_checksum_valid(f[IPv6])


def test_malformed_ipv6_frames_are_dropped_and_counted(tmp_path):
    good = bytes(IPv6(src=CLIENT, dst=DR_VIP) / UDP(sport=5000, dport=53) / b"q")
    hdr = bytes(Ether(src="02:cc:00:00:00:99", dst=DIRECTOR_MAC, type=0x86DD))
    long_plen = bytearray(good)
    long_plen[4:6] = struct.pack("!H", 500)  # claims more than the frame holds
    zero_plen = bytearray(good)
    zero_plen[4:6] = b"\0\0"
    bad_ext = bytes(IPv6(src=CLIENT, dst=DR_VIP, nh=0, plen=8)) + b"\x11\x05" + b"\xff" * 6
    v4_in_v6 = bytes(IP(src=V4_CLIENT, dst=V4_VIP) / UDP())
    frames = [
        hdr + good[:20],                 # cut inside the IPv6 header
        hdr + bytes(long_plen),
        hdr + bytes(zero_plen),
        hdr + bad_ext,                   # hop-by-hop options that run off their header
        hdr + v4_in_v6,                  # 0x86DD, but an IPv4 header
        hdr,                             # nothing at all after the ethertype
        hdr[:12] + b"\x81\x00\x00",      # VLAN tag cut short
        hdr + b"\x60" + b"\xff" * 60,    # version 6, garbage
        hdr + good,                      # and one good packet, which goes out
    ]
    path = tmp_path / "bad.pcap"
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", 10 + i, 0, len(fr), len(fr)) + fr)
    # Raw IPv6 link type: a packet that is not IPv6 at all.
    raw_path = tmp_path / "bad_raw.pcap"
    with open(raw_path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 229))
        for i, fr in enumerate((v4_in_v6, b"", good[:39], good)):
            f.write(struct.pack("<IIII", 10 + i, 0, len(fr), len(fr)) + fr)
    status, out, err, sent = run(tmp_path, str(path), neigh=NEIGH)
    assert status == 0 and err == ""
    assert len(sent) == 1 and sent[0][UDP].dport == 53
    drops = drops_of(out)
    assert sum(int(v) for v in drops.values()) == len(frames) - 1
    assert drops == {"truncated": "3", "bad_payload_length": "1", "bad_hop_options": "1",
                     "not_ipv6": "2", "other": "1"}
    status, out, err, sent = run(tmp_path, str(raw_path), neigh=NEIGH)
    assert status == 0 and err == "" and len(sent) == 1
    assert drops_of(out) == {"not_ipv6": "2", "truncated": "1"}


def test_fwmark_with_ipv6_addresses(tmp_path):
    import socket
    vip = socket.inet_pton(socket.AF_INET6, "2001:db8::99")
    assert parse_fwmark("tcp:[2001:db8::99]:25=9") == (6, vip, 25, 9)
    assert parse_fwmark("udp:[2001:db8::99]=3") == (17, vip, None, 3)
    assert parse_fwmark("udp:2001:db8::99=3") == (17, vip, None, 3)
    assert parse_fwmark("tcp:[2001:db8::99]:any=0x10") == (6, vip, None, 16)
    assert parse_fwmark("tcp:198.51.100.2:80=1")[1] == socket.inet_aton("198.51.100.2")
    for bad in ("tcp:[2001:db8::99]25=1", "tcp:[2001:db8::99]:99999=1", "tcp:[198.51.100.2]:80=1",
                "tcp:2001:db8::zz=1"):
        with pytest.raises(ReplayError, match="bad --fwmark"):
            parse_fwmark(bad)
    rules = "-A -f 9 -6 -s rr\n-a -f 9 -6 -r 2001:db8:1::13 -g\n"
    cap = write_capture(tmp_path / "in.pcap", [
        IPv6(src=CLIENT, dst="2001:db8::99") / TCP(sport=40002, dport=25, flags="S"),
        IPv6(src=CLIENT, dst="2001:db8::99") / TCP(sport=40003, dport=26, flags="S")])
    status, out, _, frames = run(tmp_path, cap, rules=rules, fwmarks=["tcp:[2001:db8::99]:25=9"])
    assert status == 0 and len(frames) == 1
    assert frames[0][Ether].dst == "02:06:00:00:00:13" and frames[0][TCP].dport == 25
    assert drops_of(out) == {"no_service": "1"}


def test_mac_helpers_ipv6():
    import socket
    assert default_mac(socket.inet_pton(socket.AF_INET6, "2001:db8::c633:640a")) == \
        b"\x02\x06\xc6\x33\x64\x0a"
    assert default_mac(socket.inet_pton(socket.AF_INET6, "2001:db8::1")) != b"\x02\x00\x00\x00\x00\x01"
    with pytest.raises(ValueError):
        default_mac(b"\x01" * 8)
    v6 = bytes(IPv6() / UDP())
    assert ether_frame(b"\x01" * 6, b"\x02" * 6, v6)[12:14] == b"\x86\xdd"
    assert ether_frame(b"\x01" * 6, b"\x02" * 6, bytearray(v6))[12:14] == b"\x86\xdd"
    assert ether_frame(b"\x01" * 6, b"\x02" * 6, bytes(IP() / UDP()))[12:14] == b"\x08\x00"


def test_cli_ipv6_options(tmp_path):
    cap = write_capture(tmp_path / "in.pcap", v6_flows())
    rules = tmp_path / "rules"
    rules.write_text(RULES6)
    out = tmp_path / "out.pcap"
    proc = subprocess.run(
        [sys.executable, "-m", "lvs", "replay", "--rules", str(rules), cap, "-o", str(out),
         "--director", "192.0.2.254", "--director", "2001:db8::fe",
         "--neigh", NEIGH[0], "--neigh", NEIGH[1]],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    frames = rdpcap(str(out))
    check_v6_output(frames)
    assert [f for f in frames if f[IPv6].nh == 41][0][IPv6].src == "2001:db8::fe"
    proc = subprocess.run(
        [sys.executable, "-m", "lvs", "replay", "--rules", str(rules), cap,
         "--director", "2001:db8::fe", "--director", "2001:db8::fd"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "twice for IPv6" in proc.stderr
