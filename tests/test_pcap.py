"""lvs.pcap against captures written by scapy and by hand, plus the tutorial capture."""

import io
import os
import struct
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvs.pcap import (CaptureError, PcapWriter, default_mac, ether_frame, parse_mac,
                      read_capture)

scapy_all = pytest.importorskip("scapy.all")
from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import (ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q,  # noqa: E402
                             Ether)
from scapy.utils import EDecimal, PcapWriter as ScapyPcapWriter, rdpcap, wrpcap  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAC_A, MAC_B = "02:00:c6:33:64:01", "02:00:00:00:00:01"


def ipv4_packets():
    return [
        IP(src="198.51.100.1", dst="198.51.100.2", id=7) / TCP(sport=40001, dport=80, flags="S"),
        IP(src="203.0.113.5", dst="198.51.100.2", id=8) / UDP(sport=5353, dport=53) / b"query",
        IP(src="192.0.2.9", dst="198.51.100.2", id=9) / ICMP() / (b"x" * 100),
    ]


# (seconds, microseconds) chosen to be awkward for floats
TIMES_US = [(1700000000, 0), (1700000000, 1), (1700000001, 999999)]
TIMES_NS = [(1700000000, 1), (1700000000, 123456789), (1700000002, 999999999)]


def stamp(pkts, times, digits):
    for pkt, (sec, frac) in zip(pkts, times):
        pkt.time = EDecimal(Decimal(sec) + Decimal(frac).scaleb(-digits))
    return pkts


def check(path, pkts, times, units):
    records = list(read_capture(str(path)))
    assert [r[1] for r in records] == ["ipv4"] * len(pkts)
    for (ts, _kind, data), pkt, (sec, frac) in zip(records, pkts, times):
        assert ts == (sec * units + frac) / units  # the float nearest the file's value
        assert data == bytes(pkt[IP])


LINK_LAYERS = {
    "ethernet": lambda ip: Ether(src=MAC_A, dst=MAC_B) / ip,
    "vlan": lambda ip: Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=5) / ip,
    "qinq": lambda ip: Ether(src=MAC_A, dst=MAC_B) / Dot1AD(vlan=7) / Dot1Q(vlan=5) / ip,
    "sll": lambda ip: CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, proto=0x0800) / ip,
    "sll2": lambda ip: CookedLinuxV2(proto=0x0800, ifindex=2, pkttype=0) / ip,
}


@pytest.mark.parametrize("link", sorted(LINK_LAYERS))
def test_classic_microsecond(tmp_path, link):
    pkts = stamp([LINK_LAYERS[link](ip) for ip in ipv4_packets()], TIMES_US, 6)
    wrpcap(str(tmp_path / "c.pcap"), pkts)
    check(tmp_path / "c.pcap", pkts, TIMES_US, 10**6)


@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("link", sorted(LINK_LAYERS))
def test_classic_nanosecond_both_byte_orders(tmp_path, link, endianness):
    pkts = [LINK_LAYERS[link](ip) for ip in ipv4_packets()]
    with ScapyPcapWriter(str(tmp_path / "n.pcap"), nano=True, endianness=endianness) as w:
        # Explicit seconds and nanoseconds: a float time cannot carry 19 digits.
        w.write_header(pkts[0])
        for pkt, (sec, nsec) in zip(pkts, TIMES_NS):
            w.write_packet(pkt, sec=sec, usec=nsec)
    check(tmp_path / "n.pcap", pkts, TIMES_NS, 10**9)


@pytest.mark.parametrize("linktype", [101, 12, 14, 228])
def test_classic_raw_ip(tmp_path, linktype):
    pkts = stamp(ipv4_packets(), TIMES_US, 6)
    wrpcap(str(tmp_path / "r.pcap"), pkts, linktype=linktype)
    check(tmp_path / "r.pcap", pkts, TIMES_US, 10**6)


def test_non_ip_frames_are_labelled(tmp_path):
    arp = Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="198.51.100.1", pdst="198.51.100.2")
    v6 = Ether(src=MAC_A, dst=MAC_B) / IPv6() / UDP()
    odd = Ether(src=MAC_A, dst=MAC_B, type=0x88CC) / b"lldp"
    vlan_arp = Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=3) / ARP()
    frames = [arp, v6, odd, vlan_arp]
    wrpcap(str(tmp_path / "x.pcap"), frames)
    records = list(read_capture(str(tmp_path / "x.pcap")))
    assert [r[1] for r in records] == ["arp", "ipv6", "other", "arp"]
    # IPv6 comes back as the bare packet, like IPv4; the others as raw frames.
    assert [r[2] for r in records] == [bytes(arp), bytes(v6[IPv6]), bytes(odd), bytes(vlan_arp)]


def ipv6_packets():
    return [
        IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=40001, dport=80, flags="S"),
        IPv6(src="2001:db8::3", dst="2001:db8::2") / UDP(sport=5353, dport=53) / b"query",
    ]


@pytest.mark.parametrize("link", sorted(LINK_LAYERS))
def test_ipv6_through_each_link_layer(tmp_path, link):
    def relabel(frame):  # the link layers above were written for IPv4
        for layer in (Ether, Dot1Q, CookedLinux, CookedLinuxV2):
            if frame.haslayer(layer):
                inner = frame.getlayer(layer)
                if isinstance(inner.payload, IPv6):
                    if layer in (CookedLinux, CookedLinuxV2):
                        inner.proto = 0x86DD
                    else:
                        inner.type = 0x86DD
        return frame
    pkts = [relabel(LINK_LAYERS[link](ip)) for ip in ipv6_packets()]
    wrpcap(str(tmp_path / "v6.pcap"), pkts)
    records = list(read_capture(str(tmp_path / "v6.pcap")))
    assert [(r[1], r[2]) for r in records] == [("ipv6", bytes(p)) for p in ipv6_packets()]


@pytest.mark.parametrize("linktype", [101, 12, 14, 229])
def test_raw_ipv6_link_types(tmp_path, linktype):
    wrpcap(str(tmp_path / "r6.pcap"), ipv6_packets(), linktype=linktype)
    records = list(read_capture(str(tmp_path / "r6.pcap")))
    assert [(r[1], r[2]) for r in records] == [("ipv6", bytes(p)) for p in ipv6_packets()]


def test_raw_ipv6_and_sll_arp(tmp_path):
    wrpcap(str(tmp_path / "r6.pcap"), [IPv6() / UDP()], linktype=101)
    assert [r[1] for r in read_capture(str(tmp_path / "r6.pcap"))] == ["ipv6"]
    wrpcap(str(tmp_path / "sa.pcap"), [CookedLinux(proto=0x0806) / ARP()])
    assert [r[1] for r in read_capture(str(tmp_path / "sa.pcap"))] == ["arp"]


def test_ethernet_padding_is_trimmed_and_snaplen_truncation_kept(tmp_path):
    ip = bytes(IP(src="198.51.100.1", dst="198.51.100.2") / TCP())  # 40 bytes
    padded = bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800)) + ip + b"\x00" * 6
    big = bytes(IP(src="198.51.100.1", dst="198.51.100.2") / UDP() / (b"y" * 200))
    cut = bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800)) + big[:60]
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 74, 1))
    out.write(struct.pack("<IIII", 1, 0, len(padded), len(padded)) + padded)
    out.write(struct.pack("<IIII", 2, 0, len(cut), 14 + len(big)) + cut)
    out.seek(0)
    records = list(read_capture(out))
    assert records == [(1.0, "ipv4", ip), (2.0, "ipv4", big[:60])]


def test_truncated_file_raises_after_complete_records(tmp_path):
    pkts = stamp([Ether(src=MAC_A, dst=MAC_B) / ip for ip in ipv4_packets()], TIMES_US, 6)
    wrpcap(str(tmp_path / "t.pcap"), pkts)
    whole = (tmp_path / "t.pcap").read_bytes()
    for cut in (len(whole) - 10, len(whole) - len(pkts[2]) - 8):  # mid-data, mid-header
        (tmp_path / "cut.pcap").write_bytes(whole[:cut])
        seen = []
        with pytest.raises(CaptureError) as err:
            for record in read_capture(str(tmp_path / "cut.pcap")):
                seen.append(record)
        assert [r[2] for r in seen] == [bytes(p[IP]) for p in pkts[:2]]
        assert "cut.pcap" in str(err.value) and "offset" in str(err.value)


def test_not_a_capture_and_bad_link_type(tmp_path):
    for junk in (b"", b"abc", b"GET / HTTP/1.0\r\n\r\n" * 3):
        (tmp_path / "j").write_bytes(junk)
        with pytest.raises(CaptureError):
            list(read_capture(str(tmp_path / "j")))
    (tmp_path / "u.pcap").write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147))
    with pytest.raises(CaptureError, match="link type 147"):
        list(read_capture(str(tmp_path / "u.pcap")))
    assert issubclass(CaptureError, ValueError)


# -- pcapng -------------------------------------------------------------------

def test_pcapng_from_scapy_several_interfaces(tmp_path):
    ScapyNg = pytest.importorskip("scapy.utils").PcapNgWriter
    eth = [Ether(src=MAC_A, dst=MAC_B) / ip for ip in ipv4_packets()]
    raw = ipv4_packets()
    sll2 = [CookedLinuxV2(proto=0x0800) / ip for ip in ipv4_packets()]
    pkts = []
    for i, (a, b, c) in enumerate(zip(eth, raw, sll2)):
        a.sniffed_on, b.sniffed_on, c.sniffed_on = "eth0", "tun0", "any"
        for j, p in enumerate((a, b, c)):
            p.time = 1700000000 + i + j / 8  # exact in binary
            pkts.append(p)
    w = ScapyNg(str(tmp_path / "s.pcapng"))
    for p in pkts:
        w.write(p)
    w.close()
    records = list(read_capture(str(tmp_path / "s.pcapng")))
    assert [r[1] for r in records] == ["ipv4"] * len(pkts)
    assert [r[0] for r in records] == [float(p.time) for p in pkts]
    assert [r[2] for r in records] == [bytes(p[IP]) for p in pkts]


def ng_block(order, btype, body):
    body += b"\x00" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def ng_option(order, code, value):
    return struct.pack(order + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def ng_shb(order):
    return ng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_idb(order, linktype, tsresol=None, snaplen=0):
    opts = b""
    if tsresol is not None:
        opts = ng_option(order, 9, bytes([tsresol])) + ng_option(order, 0, b"")
    return ng_block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def ng_epb(order, ifid, ticks, data):
    head = struct.pack(order + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
    return ng_block(order, 6, head + data)


def ng_spb(order, data):
    return ng_block(order, 3, struct.pack(order + "I", len(data)) + data)


def test_pcapng_by_hand_both_orders_resolutions_spb_and_unknown_blocks():
    a, b, c = (bytes(p) for p in ipv4_packets())
    d = bytes(IP(src="192.0.2.1", dst="198.51.100.2") / UDP())
    eth = bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800))
    data = b"".join([
        ng_shb(">"),                           # big-endian section
        ng_idb(">", 1),                        # if 0: Ethernet, default microseconds
        ng_idb(">", 101, tsresol=9),           # if 1: raw, nanoseconds
        ng_idb(">", 113, tsresol=0x80 | 20),   # if 2: SLL, 2^-20 s
        ng_block(">", 4, b"\x00\x00\x00\x00"),  # name resolution block: skipped
        ng_epb(">", 0, 1700000000 * 10**6 + 250000, eth + a),
        ng_spb(">", eth + b),                  # no timestamp: the previous one
        ng_epb(">", 1, 1700000001 * 10**9 + 7, b),
        ng_epb(">", 2, (1700000002 << 20) + 3, bytes(CookedLinux(proto=0x0800)) + c),
        ng_block(">", 0x40000BAD, b"custom"),
        ng_shb("<"),                           # new little-endian section, fresh interfaces
        ng_idb("<", 228, tsresol=3),
        ng_epb("<", 0, 1700000003 * 1000 + 1, d),
    ])
    records = list(read_capture(io.BytesIO(data)))
    assert records == [
        (1700000000.25, "ipv4", a),
        (1700000000.25, "ipv4", b),
        ((1700000001 * 10**9 + 7) / 10**9, "ipv4", b),
        (((1700000002 << 20) + 3) / 2**20, "ipv4", c),
        ((1700000003 * 1000 + 1) / 1000, "ipv4", d),
    ]


def test_pcapng_errors():
    ip = bytes(ipv4_packets()[0])
    with pytest.raises(CaptureError, match="undeclared interface"):
        list(read_capture(io.BytesIO(ng_shb("<") + ng_epb("<", 0, 0, ip))))
    with pytest.raises(CaptureError, match="link type 147"):
        list(read_capture(io.BytesIO(ng_shb("<") + ng_idb("<", 147) + ng_epb("<", 0, 0, ip))))
    whole = ng_shb("<") + ng_idb("<", 101) + ng_epb("<", 0, 5 * 10**6, ip) + ng_epb("<", 0, 0, ip)
    seen = []
    with pytest.raises(CaptureError, match="offset"):
        for record in read_capture(io.BytesIO(whole[:-6])):
            seen.append(record)
    assert seen == [(5.0, "ipv4", ip)]


# -- writing ------------------------------------------------------------------

def test_writer_round_trip_through_scapy(tmp_path):
    frames, stamps = [], []
    for i, ip in enumerate(ipv4_packets()):
        frames.append(ether_frame(parse_mac(MAC_B), default_mac(bytes([198, 51, 100, 1])), bytes(ip)))
        stamps.append(1700000000 + i * 0.1 + 0.000001 * i)
    with PcapWriter(str(tmp_path / "w.pcap")) as w:
        for ts, frame in zip(stamps, frames):
            w.write(ts, frame)
    back = rdpcap(str(tmp_path / "w.pcap"))
    assert [bytes(p) for p in back] == frames
    assert [round(p.time * 10**6) for p in back] == [round(ts * 10**6) for ts in stamps]
    assert back[0][Ether].src == "02:00:c6:33:64:01"
    header = (tmp_path / "w.pcap").read_bytes()[:24]
    assert struct.unpack("<IHHiIII", header) == (0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def test_writer_on_file_object_leaves_it_open():
    buf = io.BytesIO()
    w = PcapWriter(buf)
    w.write(1.5, ether_frame(b"\x02" * 6, b"\x04" * 6, b"\x45" + b"\x00" * 19))
    w.close()
    w.close()
    buf.seek(0)
    assert list(read_capture(buf)) == [(1.5, "ipv4", b"\x45" + b"\x00" * 19)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 999999),
                          st.binary(max_size=80)), max_size=8))
def test_writer_reader_round_trip_property(records):
    buf = io.BytesIO()
    expected = []
    with PcapWriter(buf) as w:
        for sec, usec, payload in records:
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, 17, 0,
                             bytes([198, 51, 100, 1]), bytes([203, 0, 113, 1])) + payload
            ts = (sec * 10**6 + usec) / 10**6
            w.write(ts, ether_frame(b"\x02" * 6, b"\x04" * 6, ip))
            expected.append((ts, "ipv4", ip))
    buf.seek(0)
    assert list(read_capture(buf)) == expected


def test_mac_helpers():
    assert parse_mac("02:00:00:00:00:01") == b"\x02\x00\x00\x00\x00\x01"
    assert parse_mac("AA-bb-0c-00-00-ff") == b"\xaa\xbb\x0c\x00\x00\xff"
    for bad in ("02:00:00:00:00", "02:00:00:00:00:0g", "0200.0000.0001", "02:00-00:00:00:01", 5):
        with pytest.raises(ValueError):
            parse_mac(bad)
    assert default_mac(bytes([198, 51, 100, 12])) == b"\x02\x00\xc6\x33\x64\x0c"
    assert ether_frame(b"\x01" * 6, b"\x02" * 6, b"IP")[12:] == b"\x08\x00IP"
    with pytest.raises(ValueError):
        ether_frame(b"\x01" * 5, b"\x02" * 6, b"")


# -- the shipped tutorial capture ----------------------------------------------

def test_tutorial_capture_is_reproducible_and_complete(tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_tutorial_capture.py"),
                    "--out", str(tmp_path)], check=True)
    committed = os.path.join(ROOT, "examples")
    for name in ("tutorial.pcap", "tutorial.rules"):
        with open(os.path.join(committed, name), "rb") as f:
            assert (tmp_path / name).read_bytes() == f.read(), name
    records = list(read_capture(str(tmp_path / "tutorial.pcap")))
    kinds = [r[1] for r in records]
    assert kinds.count("arp") == 1 and kinds.count("ipv4") == 42 and len(kinds) == 43
    assert records[0][0] == 1700000000.0 and records[-1][0] == 1700000004.0
    assert [r[0] for r in records] == sorted(r[0] for r in records)
    by_server = {}
    for _ts, kind, data in records:
        if kind != "ipv4":
            continue
        pkt = IP(data)
        assert bytes(pkt) == data and pkt.ttl == 64
        check_sums = IP(data)
        del check_sums.chksum
        del check_sums.payload.chksum
        assert bytes(check_sums) == data  # checksums as scapy computes them
        if pkt.src != "198.51.100.1":
            by_server.setdefault(pkt.src, set()).add(pkt[TCP].dport)
    # Only the NAT server's replies reach the director, for connections 1 and 4.
    assert by_server == {"198.51.100.12": {40001, 40004}}
