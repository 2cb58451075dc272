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
from scapy.layers.inet6 import (HBHOptUnknown, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6,
                                 IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from lvs import cli, realserver
from lvs.checksum import checksum, pseudo_sum
from lvs.decap import Decapsulator, decap_frame, decap_packet

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
    assert decap_frame(arp, "ipip", LOCAL, VIPS) == (None, "not_ip")


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
    v5 = bytes([0x55]) + bytes(good[1:])
    assert decap_packet(v5, "ipip", LOCAL, VIPS) == (None, "outer_header")


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
    assert decap("gre", gre(b"\x00\x00\x88\xbe"))[1] == "gre_protocol"
    assert decap("gre", gre(b"\x00\x00\x86\xdd"))[1] == "inner_not_ipv6"    # 0x86DD: IPv6 inside
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
    assert decap("gue", gue(gue_header(proto=47)))[1] == "gue_protocol"
    assert decap("gue", gue(gue_header(proto=41)))[1] == "inner_not_ipv6"
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
    assert dec.decapsulated == 1 and dec.ignored == {"not_tunnel": 1, "not_ip": 1}
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


# ---------------------------------------------------------------- IPv6: either family in either

DIRECTOR6, SERVER6, CLIENT6, VIP6 = "2001:db8:1::1", "2001:db8:1::2", "2001:db8:2::10", "2001:db8:3::2"
LOCAL46 = LOCAL | {socket.inet_pton(socket.AF_INET6, SERVER6)}
VIPS46 = VIPS | {socket.inet_pton(socket.AF_INET6, VIP6)}


def inner_syn6(tc=0, payload=b""):
    return IPv6(src=CLIENT6, dst=VIP6, tc=tc, hlim=63) / TCP(sport=40000, dport=80, flags="S", seq=1000) / \
        Raw(payload)


def tunnelled_any(outer, encap, inner, csum=False, tos=0):
    """As ip_vs_tunnel_xmit(_v6) sends it: outer family `outer`, the inner packet of either family."""
    six = isinstance(inner, IPv6)
    o = IPv6(src=DIRECTOR6, dst=SERVER6, tc=tos, hlim=63) if outer == 6 else IP(src=DIRECTOR, dst=SERVER, tos=tos)
    if encap == "ipip":
        if outer == 6:
            o.nh = 41 if six else 4
        else:
            o.proto = 41 if six else 4
        return o / inner
    if encap == "gre":
        proto = 0x86DD if six else 0x0800
        return o / (GRE(chksum_present=1, proto=proto) if csum else GRE(proto=proto)) / inner
    udp = UDP(sport=51000, dport=GUE_PORT) if csum else UDP(sport=51000, dport=GUE_PORT, chksum=0)
    return o / udp / Raw(gue_header(proto=41 if six else 4)) / inner


def decap46(packet, encap):
    return decap_frame(frame(packet), encap, LOCAL46, VIPS46, GUE_PORT)


CASES = [(outer, inner, encap, csum) for outer in (4, 6) for inner in (4, 6) for encap, csum in
         (("ipip", False), ("gre", False), ("gre", True), ("gue", False), ("gue", True))]


@pytest.mark.parametrize("outer,inner,encap,csum", CASES,
                         ids=["%s-in-%s-%s%s" % ("v%d" % i, "v%d" % o, e, "-csum" if c else "") for o, i, e, c in CASES])
def test_decapsulates_either_family_in_either(outer, inner, encap, csum):
    packet = inner_syn6(payload=b"hello") if inner == 6 else inner_syn() / Raw(b"hello")
    want = bytes(packet)
    assert decap46(tunnelled_any(outer, encap, packet, csum), encap) == (want, None)


def test_ipv6_tunnels_from_the_engine_itself():
    """What forwarders/tunnel.py sends (an IPv6 service, an IPv6 tunnel server; an IPv4 service
    with an IPv6 server; the other way round) comes out as the client sent it, hop limit less."""
    from lvs.control import DestSpec, ServiceSpec
    from lvs.engine import Engine
    from lvs.flags import (IP_VS_CONN_F_TUNNEL, IP_VS_CONN_F_TUNNEL_TYPE_GRE,
                           IP_VS_CONN_F_TUNNEL_TYPE_GUE, IP_VS_TUNNEL_ENCAP_FLAG_CSUM)
    a6 = lambda t: socket.inet_pton(socket.AF_INET6, t)
    types = {"ipip": 0, "gue": IP_VS_CONN_F_TUNNEL_TYPE_GUE, "gre": IP_VS_CONN_F_TUNNEL_TYPE_GRE}
    for vip, rip, client in ((VIP6, SERVER6, CLIENT6), (VIP, SERVER6, CLIENT), (VIP6, SERVER, CLIENT6)):
        for encap, flags in (("ipip", 0), ("gue", 0), ("gue", IP_VS_TUNNEL_ENCAP_FLAG_CSUM),
                             ("gre", IP_VS_TUNNEL_ENCAP_FLAG_CSUM)):
            e = Engine(director_addr=socket.inet_aton(DIRECTOR), director_addr6=a6(DIRECTOR6))
            svc = ServiceSpec(6, realserver.addr_bytes(vip), 80, sched_name="rr")
            e.add_service(svc)
            e.add_dest(svc, DestSpec(realserver.addr_bytes(rip), 80, conn_flags=IP_VS_CONN_F_TUNNEL,
                                     tun_type=types[encap], tun_port=GUE_PORT, tun_flags=flags))
            if ":" in vip:
                sent = IPv6(src=client, dst=vip, hlim=64) / TCP(sport=40000, dport=80, flags="S")
            else:
                sent = IP(src=client, dst=vip, ttl=64) / TCP(sport=40000, dport=80, flags="S")
            out = e.receive(bytes(sent), 1.0)
            assert len(out) == 1, (vip, rip, encap)
            inner, reason = decap_packet(out[0].packet, encap, LOCAL46, VIPS46, GUE_PORT)
            assert reason is None, (vip, rip, encap, reason)
            if ":" in vip:
                sent.hlim = 63
            else:
                sent.ttl = 63
                del sent.chksum
            assert inner == bytes(sent.__class__(bytes(sent))), (vip, rip, encap)


def test_ipv6_outer_checks():
    good = tunnelled_any(6, "ipip", inner_syn6())
    assert decap46(IPv6(src=DIRECTOR6, dst="2001:db8:1::99", nh=41) / inner_syn6(), "ipip")[1] == "not_local"
    assert decap46(good, "gre")[1] == "not_tunnel"
    assert decap46(IPv6(src=DIRECTOR6, dst=SERVER6) / UDP(dport=53), "ipip")[1] == "not_tunnel"
    raw6 = bytearray(bytes(good))
    struct.pack_into("!H", raw6, 4, len(raw6))              # payload length past the end
    assert decap_packet(bytes(raw6), "ipip", LOCAL46, VIPS46) == (None, "outer_length")
    struct.pack_into("!H", raw6, 4, 0)                       # a jumbogram: no tunnel sends one
    assert decap_packet(bytes(raw6), "ipip", LOCAL46, VIPS46) == (None, "outer_length")
    assert decap_packet(bytes(good)[:39], "ipip", LOCAL46, VIPS46) == (None, "outer_header")
    # Extension headers are walked to the tunnel's next header; padding after the payload is cut.
    with_opts = IPv6(src=DIRECTOR6, dst=SERVER6) / IPv6ExtHdrDestOpt() / inner_syn6()
    assert decap46(with_opts, "ipip") == (bytes(inner_syn6()), None)
    padded = bytes(Ether(dst="02:00:00:00:00:02", type=0x86DD) / good) + b"\0" * 20
    assert decap_frame(padded, "ipip", LOCAL46, VIPS46) == (bytes(inner_syn6()), None)
    cut = bytes(IPv6(src=DIRECTOR6, dst=SERVER6, nh=60, plen=1)) + b"\x29"
    assert decap_packet(cut, "ipip", LOCAL46, VIPS46) == (None, "outer_header")
    # A hop-by-hop option whose action bits say discard (ip6_rcv_core drops it).
    hbh = IPv6(src=DIRECTOR6, dst=SERVER6) / IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=0x81, optdata=b"xx")]) \
        / inner_syn6()
    assert decap46(hbh, "ipip")[1] == "outer_header"


def test_ipv6_inner_checks():
    assert decap46(tunnelled_any(6, "ipip", IPv6(src=CLIENT6, dst="2001:db8:3::99") / TCP()), "ipip")[1] == \
        "inner_not_vip"
    assert decap46(IPv6(src=DIRECTOR6, dst=SERVER6, nh=41) / Raw(bytes(inner_syn())), "ipip")[1] == \
        "inner_not_ipv6"                                                   # 41 names IPv6
    assert decap46(IPv6(src=DIRECTOR6, dst=SERVER6, nh=4) / inner_syn6(), "ipip")[1] == "inner_not_ipv4"
    assert decap46(IP(src=DIRECTOR, dst=SERVER, proto=41) / Raw(bytes(inner_syn6())[:30]), "ipip")[1] == \
        "inner_truncated"
    short = bytearray(bytes(inner_syn6()))
    struct.pack_into("!H", short, 4, 200)
    assert decap46(IP(src=DIRECTOR, dst=SERVER, proto=41) / Raw(bytes(short)), "ipip")[1] == "inner_length"
    # The inner packet's own padding (the outer length says more) is cut off.
    assert decap46(IP(src=DIRECTOR, dst=SERVER, proto=41) / Raw(bytes(inner_syn6()) + b"\0" * 6), "ipip") == \
        (bytes(inner_syn6()), None)


def test_ipv6_gre_and_gue_checks():
    g = bytearray(bytes(GRE(chksum_present=1, proto=0x86DD) / inner_syn6()))
    g[5] ^= 1
    assert decap46(IPv6(src=DIRECTOR6, dst=SERVER6, nh=47) / Raw(bytes(g)), "gre")[1] == "gre_checksum"
    bad = bytearray(bytes(tunnelled_any(6, "gue", inner_syn6(), csum=True)))
    bad[46] ^= 0xFF                                                        # the UDP checksum
    assert decap_packet(bytes(bad), "gue", LOCAL46, VIPS46, GUE_PORT)[1] == "udp_checksum"
    direct = IPv6(src=DIRECTOR6, dst=SERVER6) / UDP(sport=1, dport=GUE_PORT) / inner_syn6()   # GUE version 1
    assert decap46(direct, "gue") == (bytes(inner_syn6()), None)
    other = IPv6(src=DIRECTOR6, dst=SERVER6) / UDP(sport=1, dport=GUE_PORT + 1) / Raw(gue_header(proto=41)) \
        / inner_syn6()
    assert decap46(other, "gue")[1] == "not_tunnel"


def test_ipv6_gue_remote_checksum_offload_is_completed():
    full = bytes(inner_syn6(payload=b"hello"))
    partial = bytearray(full)
    struct.pack_into("!H", partial, 56, pseudo_sum(full[8:24], full[24:40], 6, len(full) - 40))
    option = struct.pack("!IHH", 0x80000000, 40, 40 + 16)
    packet = IPv6(src=DIRECTOR6, dst=SERVER6) / UDP(sport=1, dport=GUE_PORT) / Raw(
        gue_header(proto=41, first=2, flags=1) + option + bytes(partial))
    assert decap46(packet, "gue") == (full, None)


def test_ipv6_ecn_decapsulation():
    """CE in the outer traffic class (or TOS) marks an ECT inner IPv6 packet; not-ECT: dropped."""
    inner, reason = decap46(tunnelled_any(6, "ipip", inner_syn6(tc=2), tos=3), "ipip")
    assert reason is None and IPv6(inner).tc & 3 == 3
    inner, reason = decap46(tunnelled_any(4, "ipip", inner_syn6(tc=1), tos=3), "ipip")
    assert reason is None and IPv6(inner).tc & 3 == 3
    assert decap46(tunnelled_any(6, "ipip", inner_syn6(tc=0), tos=3), "ipip")[1] == "ecn"
    inner, reason = decap46(tunnelled_any(6, "ipip", inner_syn(tos=2), tos=3), "ipip")   # IPv4 in IPv6
    assert reason is None and inner[1] & 3 == 3 and checksum(inner[:20]) == 0


def test_ipv6_outer_fragments_are_reassembled():
    big = inner_syn6(payload=b"x" * 1400)
    outer = IPv6(src=DIRECTOR6, dst=SERVER6) / IPv6ExtHdrFragment(id=77) / big
    pieces = fragment6(outer, 600)
    assert len(pieces) > 1
    assert decap46(pieces[0], "ipip")[1] == "outer_fragment"             # the pure function does not queue
    dec = Decapsulator("ipip", VIPS46, LOCAL46)
    out = [dec.frame(frame(p), 1.0) for p in reversed(pieces)]
    assert out[:-1] == [None] * (len(pieces) - 1) and out[-1] == bytes(big)
    assert dec.decapsulated == 1 and not dec.drops
    dec.frame(frame(pieces[0]), 2.0)
    assert dec.next_deadline() == 62.0                                    # 60 s for IPv6
    dec.expire(70.0)
    assert dec.drops == {"fragment_timeout": 1}
    # Fragments of something else are not held at all.
    udp = fragment6(IPv6(src=DIRECTOR6, dst=SERVER6) / IPv6ExtHdrFragment(id=78) / UDP(dport=53) /
                    Raw(b"y" * 1400), 600)
    assert [dec.frame(frame(p), 3.0) for p in udp] == [None] * len(udp)
    assert dec.ignored["not_tunnel"] == len(udp) and dec.next_deadline() is None


@given(st.binary(max_size=200), st.sampled_from(["ipip", "gre", "gue"]))
def test_random_ipv6_bytes_never_raise(data, encap):
    for f in (b"\x02" * 12 + b"\x86\xdd" + data, b"\x02" * 12 + b"\x86\xdd\x60" + data):
        inner, reason = decap_frame(f, encap, LOCAL46, VIPS46, GUE_PORT)
        assert (inner is None) != (reason is None)


@given(st.sampled_from(CASES), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8),
       st.integers(0, 120))
def test_corrupted_ipv6_tunnel_packets_never_raise(case, flips, cut):
    outer, inner_family, encap, csum = case
    inner = inner_syn6(payload=b"abc") if inner_family == 6 else inner_syn() / Raw(b"abc")
    packet = bytearray(bytes(tunnelled_any(outer, encap, inner, csum)))
    for pos, value in flips:
        if pos < len(packet):
            packet[pos] = value
    packet = bytes(packet[:len(packet) - cut])
    dec = Decapsulator(encap, VIPS46, LOCAL46, GUE_PORT)
    got = dec.frame(bytes(Ether(dst="02:00:00:00:00:02", type=0x86DD if packet[:1] and packet[0] >> 4 == 6
                                else 0x0800)) + packet, 0.0)
    assert got is None or got[16:20] in VIPS46 or got[24:40] in VIPS46


# ---------------------------------------------------------------- the kernel's tunnel devices, chosen

class FakeChanges:
    """The journal's interface, recording instead of changing anything."""

    def __init__(self):
        self.done = []

    def command(self, argv, undo, why, input=None):
        self.done.append(" ".join(argv))

    def sysctl(self, name, value, why):
        self.done.append("sysctl %s=%s" % (name, value))


def kernel_setup(monkeypatch, vips, outer, modules):
    """A tunnel Setup on a host whose --iface has addresses of the `outer` families and whose
    kernel has the fallback devices of `modules`."""
    from lvs import hostconf
    monkeypatch.setattr(realserver, "outer_families", lambda ifname: set(outer))
    monkeypatch.setattr(realserver, "kernel_module",
                        lambda dev, module: "present" if module in modules else None)
    monkeypatch.setattr(realserver, "local_addresses", lambda ifname=None: {})
    monkeypatch.setattr(hostconf, "link_info", lambda dev: {"flags": []})
    monkeypatch.setattr(hostconf, "read_sysctl", lambda name: "0")
    args = type("Args", (), dict(vips=realserver._parse_vips(vips), iface="eth0", encap="ipip", decap=None,
                                 state_file="/nonexistent/realserver.state"))()
    setup = realserver.Setup(args, lambda text: None)
    setup.changes = FakeChanges()
    return setup


def test_kernel_tunnel_devices_for_both_families(monkeypatch):
    setup = kernel_setup(monkeypatch, VIP + "," + VIP6, (4, 6), ("ipip", "sit", "ip6_tunnel"))
    text = setup.tunnel()
    assert setup.decap == "kernel"
    assert text.endswith("(kernel decapsulation on tunl0 (ipip), sit0 (sit), ip6tnl0 (ip6_tunnel))")
    done = setup.changes.done
    assert "ip -6 tunnel change ip6tnl0 mode any" in done          # IPv4 VIPs arrive in IPv6 too
    assert "ip addr add %s/32 dev tunl0" % VIP in done and "ip addr add %s/128 dev lo nodad" % VIP6 in done
    for dev in ("tunl0", "ip6tnl0"):                                # IPv4 comes out of both
        assert "sysctl net.ipv4.conf.%s.rp_filter=2" % dev in done
    for dev in ("tunl0", "sit0", "ip6tnl0"):
        assert "ip link set %s up" % dev in done


def test_kernel_tunnel_ipv6_only(monkeypatch):
    setup = kernel_setup(monkeypatch, VIP6, (6,), ("ip6_tunnel",))
    assert setup.tunnel().endswith("(kernel decapsulation on ip6tnl0 (ip6_tunnel))")
    done = setup.changes.done
    assert done == ["ip addr add %s/128 dev lo nodad" % VIP6, "ip link set ip6tnl0 up"]   # ip6ip6: its default


def test_kernel_tunnel_ipv4_as_before(monkeypatch):
    setup = kernel_setup(monkeypatch, VIP, (4,), ("ipip",))
    assert setup.tunnel().endswith("(kernel ipip decapsulation on tunl0)")


def test_kernel_tunnel_refused_naming_the_missing_module(monkeypatch):
    from lvs import hostconf
    setup = kernel_setup(monkeypatch, VIP6, (4, 6), ("ipip", "ip6_tunnel"))
    setup.args.decap = "kernel"
    with pytest.raises(hostconf.HostError, match=r"no sit module \(no sit0"):
        setup.tunnel()
    assert setup.changes.done == []                                 # nothing made for a path not taken


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
    (["--method", "dr", "--vip", "2001:db8::2::1"], "bad VIP address"),
    (["--method", "dr", "--vip", "ff02::1"], "cannot be a VIP"),
    (["--method", "dr", "--vip", "fe80::2"], "cannot be a VIP"),
    (["--method", "dr", "--vip", "::ffff:192.0.2.1"], "cannot be a VIP"),
    (["--method", "dr", "--vip", "::1"], "cannot be a VIP"),
    (["--method", "nat", "--director", "fe80::1"], "global IPv6 address"),
])
def test_bad_addresses(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)    # refused before anything is looked at
    assert run_cli(*argv, "--state-file", str(tmp_path / "s")) == 1
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


def test_vips_of_both_families_are_read():
    assert realserver._parse_vips("198.51.100.2, [2001:DB8::2],2001:db8:0::2,2001:db8::3") == \
        ["198.51.100.2", "2001:db8::2", "2001:db8::3"]
    assert realserver.addr_bytes("2001:db8::2") == socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    assert realserver.addr_bytes(VIP) == socket.inet_aton(VIP)


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

    def __init__(self, ipv6=False):
        self.ipv6 = ipv6
        _counter[0] += 1
        tag = "lvsrs-%d-%d" % (os.getpid(), _counter[0])
        self.d, self.s = tag + "-d", tag + "-s"
        self.state = "/run/pylvs/netns-%s/realserver.state" % self.s
        self.helpers = []        # Popen objects of foreground helpers

    def create(self):
        for n in (self.d, self.s):
            sh("ip", "netns", "add", n)
            if self.ipv6:      # addresses usable at once: no duplicate address detection
                for name in ("all", "default"):
                    sh("sysctl", "-q", "-w", "net.ipv6.conf.%s.accept_dad=0" % name, ns=n)
        sh("ip", "link", "add", "vd", "netns", self.d, "type", "veth", "peer", "name", "vs", "netns", self.s)
        for ns, dev, addrs in ((self.d, "vd", (DIRECTOR + "/24", CLIENT + "/32")), (self.s, "vs", (SERVER + "/24",))):
            for a in addrs:
                sh("ip", "-n", ns, "addr", "add", a, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # Complete checksums on the wire: no offloads on the test's veths.
            sh("ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off", ns=ns)
        sh("ip", "-n", self.s, "route", "add", "default", "via", DIRECTOR)
        if self.ipv6:
            sh("ip", "-n", self.d, "addr", "add", DIRECTOR6 + "/64", "dev", "vd")
            sh("ip", "-n", self.d, "addr", "add", CLIENT6 + "/128", "dev", "vd")
            sh("ip", "-n", self.s, "addr", "add", SERVER6 + "/64", "dev", "vs")
            sh("ip", "-n", self.s, "-6", "route", "add", "default", "via", DIRECTOR6)
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
        return {"addr": addr, "route": sh("ip", "-n", self.s, "route") + sh("ip", "-n", self.s, "-6", "route"),
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


@pytest.fixture
def pair6():
    """A Pair with IPv6 addresses as well (the server 2001:db8:1::2, routed through the director)."""
    p = Pair(ipv6=True)
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


def from_vip(e, flags=None, payload=None, six=False):
    if six:
        if IPv6 not in e or TCP not in e or e[IPv6].src != VIP6 or e[IPv6].dst != CLIENT6:
            return False
    elif IP not in e or TCP not in e or e[IP].src != VIP or e[IP].dst != CLIENT:
        return False
    if flags is not None and e[TCP].flags != flags:
        return False
    return payload is None or bytes(e[TCP].payload).startswith(payload)


def tcp_exchange(pair, encap, port=80, cport=40001, outer=4, inner=4):
    """A TCP exchange through the tunnel, the client's side built by hand: SYN -> SYN-ACK,
    then data both ways. The server's answers come from the VIP, straight to the client.
    `outer` and `inner` are the families of the tunnel and of the client's packets.
    Returns every frame the director/client side received."""
    from lvs.ports import RawPort
    six = inner == 6
    with in_netns(pair.s):
        listener = socket.socket(socket.AF_INET6 if six else socket.AF_INET)
    with in_netns(pair.d):
        wire = RawPort("vd")
    seen = []
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("::" if six else "0.0.0.0", port))
        listener.listen(4)
        listener.settimeout(5)

        def send(tcp):
            packet = (IPv6(src=CLIENT6, dst=VIP6) if six else IP(src=CLIENT, dst=VIP)) / tcp
            if outer == 4 and not six:
                wrapped = tunnelled(encap, packet, gre_csum=True)
            else:
                wrapped = tunnelled_any(outer, encap, packet, csum=True)
            wire.send(bytes(Ether(dst=pair.server_mac, src=wire.mac) / wrapped))

        send(TCP(sport=cport, dport=port, flags="S", seq=1000))
        synack = frames_until(wire, lambda e: from_vip(e, "SA", six=six), seen=seen)
        assert synack is not None, "no SYN-ACK from the VIP: %s" % [e.summary() for e in seen]
        assert synack[TCP].ack == 1001
        assert tcp_checksum_ok(synack)      # complete: offloads are off on the test's veths
        server_seq = synack[TCP].seq + 1
        send(TCP(sport=cport, dport=port, flags="PA", seq=1001, ack=server_seq) / Raw(b"ping\n"))
        conn, peer = listener.accept()
        with conn:
            assert peer[:2] == ((CLIENT6 if six else CLIENT), cport)
            conn.settimeout(5)
            assert conn.recv(100) == b"ping\n"
            conn.sendall(b"pong\n")
            got = frames_until(wire, lambda e: from_vip(e, payload=b"pong\n", six=six), seen=seen)
            assert got is not None, "no data from the VIP: %s" % [e.summary() for e in seen]
        return seen
    finally:
        listener.close()
        wire.close()


def tcp_checksum_ok(e):
    if IPv6 in e:
        packet = bytes(e[IPv6])
        segment = packet[40:40 + struct.unpack_from("!H", packet, 4)[0]]
        return checksum(packet[8:40] + struct.pack("!IxxxB", len(segment), 6) + segment) == 0
    packet = bytes(e[IP])
    ihl = (packet[0] & 15) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    segment = packet[ihl:total]
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(segment))
    return checksum(pseudo + segment) == 0


def assert_no_icmp_from_server(seen):
    icmp = [e.summary() for e in seen if (ICMP in e and e[IP].src == SERVER) or
            (IPv6 in e and e[IPv6].src == SERVER6 and e[IPv6].nh == 58 and e[IPv6].payload.type < 128)]
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


V6_TUNNELS = [(6, 6, "ipip"), (6, 4, "ipip"), (4, 6, "ipip"), (6, 6, "gue"), (4, 6, "gue"), (6, 4, "gre"),
              (6, 6, "gre")]


@needs_root
@pytest.mark.parametrize("outer,inner,encap", V6_TUNNELS,
                         ids=["v%d-in-v%d-%s" % (i, o, e) for o, i, e in V6_TUNNELS])
def test_ipv6_tunnels_userspace(pair6, outer, inner, encap):
    """ip6ip6, IPv4 in IPv6, IPv6 in IPv4, GUE and GRE over IPv6: decapsulated by the helper
    into lvstun0, answered by the server's own stack from the VIP, straight to the client."""
    before = pair6.snapshot()
    vip = VIP6 if inner == 6 else VIP
    extra = ["--encap", encap] + (["--gue-port", str(GUE_PORT)] if encap == "gue" else [])
    r = pair6.lvs("--method", "tunnel", "--vip", vip, "--iface", "vs", "--detach", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "nft table ip pylvs_rs" in out and "nft table ip6 pylvs_rs" in out
    if inner == 6:
        assert "ip addr add %s/128 dev lvstun0 nodad" % VIP6 in out
        assert "sysctl net.ipv6.conf.lvstun0.disable_ipv6=0" not in out     # the default: on
        assert "IPv6 has no rp_filter" in out and "never advertised" in out
        assert ".arp_ignore=" not in out                                    # no IPv4 VIP: no ARP
        assert VIP6 + "/128" in sh("ip", "-n", pair6.s, "addr", "show", "dev", "lvstun0")
    seen = tcp_exchange(pair6, encap, cport=40010, outer=outer, inner=inner)
    assert_no_icmp_from_server(seen)
    table = sh("nft", "list", "table", "ip" if outer == 4 else "ip6", "pylvs_rs", ns=pair6.s)
    assert "counter packets 0 " not in table and "drop" in table
    r = pair6.lvs("--down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "decapsulated 2 packets; dropped: none" in r.stdout
    assert pair6.snapshot() == before


@needs_root
def test_direct_routing_ipv6(pair6):
    """An IPv6 VIP on lo: the director's frame is answered from the VIP; a Neighbour
    Solicitation for the VIP is not (Linux answers only for addresses on the interface asked),
    one for the server's own address is; and nothing the server sends names the VIP."""
    from lvs.ports import RawPort
    before = pair6.snapshot()
    r = pair6.lvs("--method", "dr", "--vip", VIP6, "--iface", "vs")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ip addr add %s/128 dev lo nodad" % VIP6 in r.stdout
    assert "never advertised" in r.stdout and ".arp_ignore=" not in r.stdout
    assert "direct-routing real server for %s ready" % VIP6 in r.stdout
    assert VIP6 + "/128" in sh("ip", "-n", pair6.s, "addr", "show", "dev", "lo")
    with in_netns(pair6.s):
        listener = socket.socket(socket.AF_INET6)
    with in_netns(pair6.d):
        wire = RawPort("vd")
    seen = []
    try:
        listener.bind(("::", 80))
        listener.listen(1)
        wire.send(bytes(Ether(dst=pair6.server_mac, src=wire.mac) / inner_syn6()))
        assert frames_until(wire, lambda e: from_vip(e, "SA", six=True), seen=seen) is not None

        def solicit(target):
            wire.send(bytes(Ether(dst="33:33:ff:00:00:02", src=wire.mac)
                            / IPv6(src=DIRECTOR6, dst="ff02::1:ff00:2", hlim=255)
                            / ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=wire.mac)))
            return frames_until(wire, lambda e: ICMPv6ND_NA in e and e[ICMPv6ND_NA].tgt == target,
                                timeout=1.0, seen=seen)
        assert solicit(VIP6) is None
        assert solicit(SERVER6) is not None
        named = [e.summary() for e in seen if ICMPv6ND_NS in e and (e[IPv6].src == VIP6 or
                                                                     e[ICMPv6ND_NS].tgt == VIP6)
                 and e.src == pair6.server_mac]
        assert not named, named
    finally:
        listener.close()
        wire.close()
    r = pair6.lvs("--down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert pair6.snapshot() == before


@needs_root
def test_nat_default_route_ipv6(pair6):
    sh("ip", "-n", pair6.d, "addr", "add", "2001:db8:1::3/64", "dev", "vd")
    before = pair6.snapshot()
    r = pair6.lvs("--method", "nat", "--director", "2001:db8:1::3", "--vip", VIP6)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "NAT real server ready (replies through the director 2001:db8:1::3: the default route and " \
        "2001:db8:1::/64)" in r.stdout
    routes = sh("ip", "-n", pair6.s, "-6", "route", "show", "default").splitlines()
    assert [x.split()[:3] for x in routes] == [["default", "via", "2001:db8:1::3"]]
    assert sh("ip", "-n", pair6.s, "-6", "route", "show", "exact", "2001:db8:1::/64").split()[:3] == \
        ["2001:db8:1::/64", "via", "2001:db8:1::3"]
    assert "via" not in sh("ip", "-n", pair6.s, "-6", "route", "get", "2001:db8:1::3")
    assert sh("ip", "-n", pair6.s, "route", "show", "default").split()[:3] == ["default", "via", DIRECTOR]
    r = pair6.lvs("--down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert pair6.snapshot() == before


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
