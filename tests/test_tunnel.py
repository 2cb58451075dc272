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


def icmp_about(tunnelled, icmp_type=3, code=4, mtu=1400, src="192.0.2.1"):
    """An ICMP error from a router on the way to the real server, quoting our tunnel packet."""
    from scapy.all import ICMP
    quoted = raw(tunnelled)[:28 + 40]  # outer + client's IP header + 20 bytes, as routers quote
    return raw(IP(src=src, dst=DIRECTOR) / ICMP(type=icmp_type, code=code, nexthopmtu=mtu) / quoted)


def test_frag_needed_for_a_tunnel_packet_reaches_the_client_and_lowers_the_path_mtu():
    from scapy.all import ICMP
    e = engine_with()
    pkt = syn()
    out = send(e, pkt)
    back = e.receive(icmp_about(out, mtu=1400), 2.0)
    assert len(back) == 1
    err = IP(back[0].packet)
    assert back[0].nexthop == addr("203.0.113.7")
    assert (err.src, err.dst, err[ICMP].type, err[ICMP].code) == (VIP, "203.0.113.7", 3, 4)
    assert err[ICMP].nexthopmtu == 1400 - 20   # the client must leave room for our header
    assert raw(err[ICMP].payload)[12:20] == raw(pkt)[12:20]  # about the client's own packet
    # The director now knows the path: a 1390-byte DF packet no longer fits the tunnel.
    big = syn() / (b"x" * (1390 - 40))
    out = e.receive(raw(big), 3.0)
    assert len(out) == 1 and IP(out[0].packet)[ICMP].nexthopmtu == 1380
    # ... and forgets it after ip_rt_mtu_expires (600 s).
    out = e.receive(raw(syn(sport=40001) / (b"x" * (1390 - 40))), 700.0)
    assert len(out) == 1 and IP(out[0].packet).proto == 4


def test_frag_needed_is_not_passed_on_without_df():
    e = engine_with()
    out = send(e, syn(flags=0))
    assert e.receive(icmp_about(out), 2.0) == []
    assert e.drops["icmp_consumed"] == 1


def test_errors_about_unknown_tunnels_are_not_ours():
    e = engine_with()
    out = send(e, syn())
    other = IP(raw(out))
    other.dst = "192.0.2.99"
    del other.chksum
    assert e.receive(icmp_about(IP(raw(other))), 2.0) == []
    assert e.drops["icmp_not_related"] == 1


def test_schedule_icmp_makes_a_connection_from_an_error():
    from scapy.all import ICMP
    from lvs.config import EngineConfig
    for on in (0, 1):
        e = Engine(EngineConfig(schedule_icmp=on))
        svc = ServiceSpec(6, addr(VIP), 80, sched_name="rr")
        e.add_service(svc)
        e.add_dest(svc, DestSpec(addr(RS), 8080, conn_flags=0))
        # The client's side complains about a packet VIP:80 -> client we have no record of.
        quoted = raw(IP(src=VIP, dst="203.0.113.7") / TCP(sport=80, dport=40000, flags="SA"))[:28]
        icmp = raw(IP(src="203.0.113.7", dst=VIP) / ICMP(type=3, code=3) / quoted)
        out = e.receive(icmp, 1.0)
        if not on:
            assert out == [] and e.drops["icmp_not_related"] == 1
            continue
        assert len(out) == 1 and out[0].nexthop == addr(RS)
        fwd = IP(out[0].packet)
        assert fwd.dst == RS and raw(fwd[ICMP].payload)[12:16] == addr(RS)
        conns = e.conn_list()
        assert len(conns) == 1 and conns[0].caddr == addr("203.0.113.7") and conns[0].cport == 40000
