"""Tunnel encapsulations as ip_vs_tunnel_xmit builds them (ipip, gue, gre), decoded by scapy."""

import pytest
from scapy.all import GRE, IP, TCP, UDP, raw

from lvs.control import DestSpec, ServiceSpec
from lvs.engine import Engine
from lvs.flags import IP_VS_CONN_F_TUNNEL

VIP, RS, DIRECTOR = "198.51.100.2", "192.0.2.11", "198.51.100.254"


def addr(text):
    return bytes(int(x) for x in text.split("."))


def engine_with(tun_type=0, tun_port=0, tun_flags=0):
    e = Engine(director_addr=addr(DIRECTOR))
    svc = ServiceSpec(6, addr(VIP), 80, sched_name="rr")
    e.add_service(svc)
    e.add_dest(svc, DestSpec(addr(RS), 80, conn_flags=IP_VS_CONN_F_TUNNEL,
                             tun_type=tun_type, tun_port=tun_port, tun_flags=tun_flags))
    return e


def syn(sport=40000, tos=0, flags="DF"):
    return IP(src="203.0.113.7", dst=VIP, tos=tos, ttl=64, flags=flags, id=777) / TCP(sport=sport, dport=80, flags="S")


def send(e, pkt, now=1.0):
    out = e.receive(raw(pkt), now)
    assert len(out) == 1 and out[0].nexthop == addr(RS)
    return IP(out[0].packet)


def inner_ok(inner, sent):
    # The inner packet is the client's, its TTL decremented (checksum refreshed).
    expect = sent.copy()
    expect.ttl -= 1
    del expect.chksum
    assert raw(inner) == raw(IP(raw(expect)))


def test_ipip():
    e, pkt = engine_with(), syn()
    out = send(e, pkt)
    assert (out.src, out.dst, out.proto, out.ttl, out.id, out.flags) == (DIRECTOR, RS, 4, 63, 0, "DF")
    inner_ok(out.payload, pkt)


@pytest.mark.parametrize("tos,outer", [(0x00, 0x00), (0x02, 0x02), (0x03, 0x02), (0xB9, 0xB9), (0xBB, 0xBA)])
def test_outer_tos_encapsulates_ecn(tos, outer):
    assert send(engine_with(), syn(tos=tos)).tos == outer


def test_no_df_gets_an_id_from_the_seeded_generator():
    a = send(engine_with(), syn(flags=0))
    b = send(engine_with(), syn(flags=0))
    assert a.flags == 0 and a.id == b.id  # same seed, same ID


def test_gue_without_and_with_checksum():
    pkt = syn()
    out = send(engine_with(tun_type=1, tun_port=6080), pkt)
    assert out.proto == 17 and out[UDP].dport == 6080 and out[UDP].chksum == 0
    assert 32768 <= out[UDP].sport < 60999
    payload = raw(out[UDP].payload)
    assert payload[:4] == b"\x00\x04\x00\x00"
    inner_ok(IP(payload[4:]), pkt)
    # The source port is per flow: the same flow keeps it.
    e = engine_with(tun_type=1, tun_port=6080)
    assert send(e, syn(sport=40001))[UDP].sport == send(e, syn(sport=40001), 2.0)[UDP].sport
    out = send(engine_with(tun_type=1, tun_port=6080, tun_flags=1), pkt)
    check = out[UDP].chksum
    ref = out.copy()
    del ref[UDP].chksum
    assert check != 0 and IP(raw(ref))[UDP].chksum == check


def test_gue_without_port_is_refused():
    e = Engine()
    svc = ServiceSpec(6, addr(VIP), 80, sched_name="rr")
    e.add_service(svc)
    with pytest.raises(Exception, match="Invalid operation"):
        e.add_dest(svc, DestSpec(addr(RS), 80, conn_flags=IP_VS_CONN_F_TUNNEL, tun_type=1))


def test_gre_without_and_with_checksum():
    pkt = syn()
    out = send(engine_with(tun_type=2), pkt)
    assert out.proto == 47 and raw(out.payload)[:4] == b"\x00\x00\x08\x00"
    inner_ok(IP(raw(out.payload)[4:]), pkt)
    out = send(engine_with(tun_type=2, tun_flags=1), pkt)
    gre = out[GRE]
    assert gre.chksum_present == 1 and gre.proto == 0x0800
    ref = GRE(raw(gre))
    del ref.chksum
    assert GRE(raw(ref)).chksum == gre.chksum
    inner_ok(IP(raw(out.payload)[8:]), pkt)


def test_tunnel_mtu_counts_the_encapsulation():
    e = engine_with(tun_type=1, tun_port=6080)  # 32 bytes of outer headers
    big = syn() / (b"x" * (1500 - 40 - 32 + 1))
    out = e.receive(raw(big), 1.0)
    assert len(out) == 1 and IP(out[0].packet).proto == 1  # frag-needed back to the client
    icmp = IP(out[0].packet)
    assert icmp.dst == "203.0.113.7" and icmp.payload.type == 3 and icmp.payload.code == 4
    assert icmp.payload.nexthopmtu == 1500 - 32
