"""Property tests over IPv6 (hypothesis): random headers with extension headers,
fragments and mutated bytes never raise out of the engine, and every packet is
either forwarded or counted; a NAT'd TCP/UDP packet leaves with transport
checksums that hold over the IPv6 pseudo-header, whatever headers precede it.
"""

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy.all")
from scapy.layers.inet import TCP, UDP  # noqa: E402
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,  # noqa: E402
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, PadN)

from lvs.control import DestSpec, ServiceSpec  # noqa: E402
from lvs.engine import Engine  # noqa: E402

VIP, RS = "2001:db8::200", "2001:db8:2::11"


def A(text):
    return socket.inet_pton(socket.AF_INET6, text)


def engine(fwd):
    eng = Engine(seed=3, director_addr6=A("2001:db8:2::1"))
    for proto, port in ((6, 80), (17, 53)):
        svc = ServiceSpec(protocol=proto, addr=A(VIP), port=port, sched_name="rr")
        eng.add_service(svc)
        eng.add_dest(svc, DestSpec(addr=A(RS), port=port, conn_flags=fwd))
    return eng


ext_headers = st.lists(st.sampled_from(["hop", "dst", "rt", "frag"]), max_size=3)


@st.composite
def ipv6_packets(draw):
    proto = draw(st.sampled_from([6, 17]))
    ip = IPv6(src="2001:db8:100::%x" % draw(st.integers(1, 0xFFFF)), dst=VIP,
              hlim=draw(st.integers(0, 255)), tc=draw(st.integers(0, 255)),
              fl=draw(st.integers(0, 0xFFFFF)))
    layers = ip
    for kind in draw(ext_headers):
        if kind == "hop":
            layers = layers / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\0" * 4)])
        elif kind == "dst":
            layers = layers / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 4)])
        elif kind == "rt":
            layers = layers / IPv6ExtHdrRouting(segleft=0)
        else:
            layers = layers / IPv6ExtHdrFragment(offset=draw(st.integers(0, 3)), m=draw(st.booleans()),
                                                 id=draw(st.integers(0, 2 ** 32 - 1)))
    sport = draw(st.integers(1, 65535))
    if proto == 6:
        l4 = TCP(sport=sport, dport=80, flags=draw(st.sampled_from(["S", "A", "FA", "R", "PA"])))
    else:
        l4 = UDP(sport=sport, dport=53)
    return bytes(layers / l4 / draw(st.binary(max_size=40)))


def counted(eng):
    return sum(eng.drops.values()) + eng.fragments_held


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ipv6_packets(), min_size=1, max_size=8), st.sampled_from([0, 2, 3]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4))
def test_never_raises_and_every_packet_is_sent_or_counted(packets, fwd, flips):
    eng = engine(fwd)
    now = 100.0
    for raw in packets:
        buf = bytearray(raw)
        for pos, value in flips:
            if pos < len(buf):
                buf[pos] = value
        before = counted(eng)
        out = eng.receive(bytes(buf), now)
        now += 0.01
        assert eng.drops["internal_error"] == 0
        assert out or counted(eng) > before
    eng.expire(now + 120.0)      # reassembly queues time out, counted
    assert eng.drops["internal_error"] == 0


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(ipv6_packets())
def test_nat_checksums_hold_over_the_pseudo_header(raw):
    eng = engine(0)
    out = eng.receive(raw, 100.0)
    for t in out:
        pkt = IPv6(t.packet)
        if pkt.dst != RS:
            continue          # an ICMPv6 error back to the client
        for layer in (TCP, UDP):
            if layer in pkt:
                got = pkt[layer].chksum
                del pkt[layer].chksum
                assert IPv6(bytes(pkt))[layer].chksum == got
        assert pkt.hlim == IPv6(raw).hlim - 1
