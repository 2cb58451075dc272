"""Hand-written behaviour tests of the engine's packet path and control plane.

Every expected value comes from reading the Linux 6.1 IPVS source
(net/netfilter/ipvs); the function each one comes from is named next to it.
"""

import socket
import struct

import pytest

pytest.importorskip("scapy.all")
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror  # noqa: E402

from lvs.checksum import checksum  # noqa: E402
from lvs.config import EngineConfig  # noqa: E402
from lvs.control import DestSpec, ServiceSpec  # noqa: E402
from lvs.engine import Engine  # noqa: E402
from lvs.flags import (IP_VS_DEST_F_OVERLOAD, IP_VS_SVC_F_ONEPACKET,  # noqa: E402
                       IP_VS_SVC_F_PERSISTENT)


def A(text):
    return bytes(int(x) for x in text.split("."))


VIP = "203.0.113.200"
RS1, RS2 = "192.0.2.11", "192.0.2.12"
DIRECTOR = "192.0.2.1"
C1, C2, C3 = "198.51.100.7", "198.51.100.8", "198.51.100.9"
NAT, TUN, DR = 0, 2, 3
T0 = 10000.0


# ----------------------------------------------------------------- helpers

def svc_spec(port=80, proto=6, **kw):
    kw.setdefault("sched_name", "rr")
    return ServiceSpec(protocol=proto, addr=A(VIP), port=port, **kw)


def dest_spec(addr, port=80, fwd=NAT, weight=1, **kw):
    return DestSpec(addr=A(addr), port=port, conn_flags=fwd, weight=weight, **kw)


def make(dests=((RS1, 80, NAT),), port=80, proto=6, config=None, svc_kw=None, dest_kw=None,
         **engine_kw):
    eng = Engine(config=config, seed=3, **engine_kw)
    svc = svc_spec(port=port, proto=proto, **(svc_kw or {}))
    eng.add_service(svc)
    for addr, dport, fwd in dests:
        eng.add_dest(svc, dest_spec(addr, dport, fwd, **(dest_kw or {})))
    return eng, svc


def tcp(src, sport, flags, dst=VIP, dport=80, ttl=64, tos=0, df=True, ident=0x1234,
        payload=b"", seq=1000, ack=0):
    ip = IP(src=src, dst=dst, ttl=ttl, tos=tos, id=ident, flags="DF" if df else 0)
    return bytes(ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack,
                          window=1024) / payload)


def udp(src, sport, dst=VIP, dport=53, ttl=64, payload=b"query", chksum=None):
    u = UDP(sport=sport, dport=dport) if chksum is None else UDP(sport=sport, dport=dport,
                                                                 chksum=chksum)
    return bytes(IP(src=src, dst=dst, ttl=ttl, id=0x4321) / u / payload)


def conns(eng, templates=False):
    return [cp for cp in eng.conn_list() if cp.is_template == templates]


def conn_of(eng, caddr, cport):
    found = [cp for cp in conns(eng) if cp.caddr == A(caddr) and cp.cport == cport]
    assert len(found) == 1, found
    return found[0]


def dest_of(eng, svc, addr, port=80):
    return eng.services[svc.key].find_dest(A(addr), port)


def open_conn(eng, client, cport, now, rs_port=80, dport=80):
    """SYN (+ SYN-ACK from the real server for NAT) + ACK: an ESTABLISHED connection."""
    out = eng.receive(tcp(client, cport, "S", dport=dport), now)
    assert len(out) == 1, eng.drops
    rs = out[0].nexthop
    cp = conn_of(eng, client, cport)
    if cp.flags & 7 == NAT:
        eng.receive(tcp(".".join(map(str, rs)), rs_port, "SA", dst=client, dport=cport), now + 0.01)
    eng.receive(tcp(client, cport, "A", dport=dport), now + 0.02)
    assert eng.state_name(cp) == "ESTABLISHED"
    return cp, rs


def assert_ip_valid(raw):
    ihl = (raw[0] & 15) * 4
    assert checksum(raw[:ihl]) == 0
    pkt = IP(raw)
    rebuilt = IP(raw)
    del rebuilt.chksum
    if TCP in rebuilt:
        del rebuilt[TCP].chksum
    if UDP in rebuilt and rebuilt[UDP].chksum != 0:
        del rebuilt[UDP].chksum
    if ICMP in rebuilt:
        del rebuilt[ICMP].chksum
    assert bytes(IP(bytes(rebuilt))) == raw, "checksums differ from scapy's"
    return pkt


# ------------------------------------------------------------ forwarding

def test_dr_frame_to_real_server():
    """ip_vs_dr_xmit: only the next hop changes; __ip_vs_get_out_rt's
    decrement_ttl lowers the TTL and ip_decrease_ttl fixes the checksum."""
    eng, _ = make(dests=((RS1, 0, DR),))
    orig = tcp(C1, 40000, "S", ttl=17, tos=0x28, payload=b"hello")
    out = eng.receive(orig, T0)
    assert len(out) == 1
    got = out[0].packet
    assert out[0].nexthop == A(RS1)
    assert got[16:20] == A(VIP)
    assert got[8] == 16
    assert checksum(got[:20]) == 0
    assert got[:8] == orig[:8] and got[9] == orig[9] and got[12:] == orig[12:]


@pytest.mark.parametrize("director", [None, DIRECTOR])
@pytest.mark.parametrize("inner_tos,outer_tos", [(0x03, 0x02), (0xBB, 0xBA), (0x02, 0x02),
                                                 (0x01, 0x01), (0x10, 0x10)])
def test_ipip_outer_header(director, inner_tos, outer_tos):
    """ip_vs_tunnel_xmit + ip_vs_prepare_tunneled_skb: outer TTL = inner TTL
    after decrement_ttl, DF copied (pmtu_disc=1), TOS = INET_ECN_encapsulate
    (CE -> ECT(0)), protocol IPPROTO_IPIP, ip_select_ident gives ID 0 with DF;
    the inner header gets ip_send_check."""
    kw = {"director_addr": A(director)} if director else {}
    eng, _ = make(dests=((RS1, 0, TUN),), **kw)
    orig = tcp(C1, 40001, "S", ttl=30, tos=inner_tos, df=True, payload=b"x" * 11)
    out = eng.receive(orig, T0)
    assert len(out) == 1 and out[0].nexthop == A(RS1)
    got = out[0].packet
    outer, inner = got[:20], got[20:]
    assert outer[0] == 0x45
    assert outer[1] == outer_tos
    assert struct.unpack_from("!H", outer, 2)[0] == 20 + len(orig)
    assert struct.unpack_from("!H", outer, 4)[0] == 0          # ID 0 with DF
    assert struct.unpack_from("!H", outer, 6)[0] == 0x4000     # DF, no offset
    assert outer[8] == 29
    assert outer[9] == 4
    assert checksum(outer) == 0
    assert outer[12:16] == A(director or VIP)
    assert outer[16:20] == A(RS1)
    assert inner[8] == 29 and checksum(inner[:20]) == 0
    assert inner[:8] == orig[:8] and inner[9] == orig[9] and inner[12:] == orig[12:]


def test_ipip_without_df_and_pmtu_disc_off():
    """ip_vs_tunnel_xmit: dfp is NULL when pmtu_disc is 0, so the outer DF is clear."""
    eng, _ = make(dests=((RS1, 0, TUN),), config=EngineConfig(pmtu_disc=0))
    out = eng.receive(tcp(C1, 40002, "S", df=True), T0)
    assert struct.unpack_from("!H", out[0].packet, 6)[0] & 0x4000 == 0
    eng2, _ = make(dests=((RS1, 0, TUN),))
    out = eng2.receive(tcp(C1, 40003, "S", df=False), T0)
    assert struct.unpack_from("!H", out[0].packet, 6)[0] == 0
    assert checksum(out[0].packet[:20]) == 0


def test_nat_in_and_reply_rewrite():
    """ip_vs_nat_xmit/tcp_dnat_handler and handle_response/tcp_snat_handler:
    VIP:vport <-> RIP:rport, incremental checksums (tcp_fast_csum_update)."""
    eng, _ = make(dests=((RS1, 8080, NAT),))
    out = eng.receive(tcp(C1, 40010, "S", ttl=50, payload=b"abc"), T0)
    assert out[0].nexthop == A(RS1)
    p = assert_ip_valid(out[0].packet)
    assert (p.src, p.dst, p[TCP].sport, p[TCP].dport, p.ttl) == (C1, RS1, 40010, 8080, 49)
    assert bytes(p[TCP].payload) == b"abc"
    reply = tcp(RS1, 8080, "SA", dst=C1, dport=40010, ttl=64, payload=b"defg", seq=7, ack=1001)
    out = eng.receive(reply, T0 + 0.1)
    assert len(out) == 1 and out[0].nexthop == A(C1)
    p = assert_ip_valid(out[0].packet)
    assert (p.src, p.dst, p[TCP].sport, p[TCP].dport, p.ttl) == (VIP, C1, 80, 40010, 63)
    assert bytes(p[TCP].payload) == b"defg"
    assert (p[TCP].seq, p[TCP].ack, p[TCP].flags) == (7, 1001, "SA")


def test_no_real_server_port_unreachable():
    """ip_vs_leave: no dest -> icmp_send(ICMP_DEST_UNREACH, ICMP_PORT_UNREACH),
    from the address the packet was sent to (__icmp_send: RTCF_LOCAL), TTL 64,
    quoting the packet; NF_DROP."""
    eng, svc = make(dests=())
    orig = tcp(C1, 40020, "S")
    out = eng.receive(orig, T0)
    assert eng.drops["no_dest"] == 1
    assert len(out) == 1 and out[0].nexthop == A(C1)
    p = assert_ip_valid(out[0].packet)
    assert (p.src, p.dst, p.proto, p.ttl) == (VIP, C1, 1, 64)
    assert (p[ICMP].type, p[ICMP].code) == (3, 3)
    assert bytes(p[ICMP].payload) == orig
    assert conns(eng) == []
    # A quiescent (weight 0) dest is no dest either (ip_vs_rr_schedule skips weight 0).
    eng.add_dest(svc, dest_spec(RS1, weight=0))
    out = eng.receive(tcp(C1, 40021, "S"), T0 + 1)
    assert eng.drops["no_dest"] == 2 and ICMP in IP(out[0].packet)


def test_icmp_error_tos_keeps_tos_bits():
    eng, _ = make(dests=())
    # (0x11 & IPTOS_TOS_MASK 0x1E) | IPTOS_PREC_INTERNETCONTROL 0xC0 = 0xD0
    out = eng.receive(tcp(C1, 40022, "S", tos=0x11), T0)
    assert out[0].packet[1] == 0xD0


# ---------------------------------------------------------- persistence

PERSIST = {"flags": IP_VS_SVC_F_PERSISTENT, "timeout": 300, "netmask": 0xFFFFFF00}


def test_persistence_netmask_keeps_a_24_on_one_server():
    """ip_vs_sched_persist: template <proto, caddr & netmask, 0, vaddr, vport,
    daddr, dport>; every connection of the /24 follows it."""
    eng, svc = make(dests=((RS1, 80, NAT), (RS2, 80, NAT)), svc_kw=PERSIST)
    first = eng.receive(tcp(C1, 41000, "S"), T0)[0].nexthop
    for i, client in enumerate([C2, C3, C1, C2]):
        out = eng.receive(tcp(client, 41001 + i, "S"), T0 + 1 + i)
        assert out[0].nexthop == first
    other = eng.receive(tcp("203.0.113.9", 41100, "S"), T0 + 10)[0].nexthop
    assert other != first  # another /24 is scheduled afresh (rr moves on)
    tpls = conns(eng, templates=True)
    assert len(tpls) == 2
    ct = [t for t in tpls if t.caddr == A("198.51.100.0")][0]
    assert (ct.cport, ct.vaddr, ct.vport, ct.daddr, ct.dport) == (0, A(VIP), 80, first, 80)
    assert eng.state_name(ct) == "NONE"
    assert ct.n_control == 5
    assert dest_of(eng, svc, ".".join(map(str, first))).persistconns == 1


def test_persistence_template_lifetime():
    """ip_vs_sched_persist sets ct->timeout = svc->timeout and ip_vs_conn_put
    starts its timer; ip_vs_conn_expire on a template that still controls
    connections (n_control) sets timeout 60 s and re-arms (expire_later)."""
    eng, _ = make(dests=((RS1, 80, NAT),), svc_kw=PERSIST)
    cp, _ = open_conn(eng, C1, 42000, T0)
    ct = conns(eng, templates=True)[0]
    assert ct.expires == pytest.approx(T0 + 300)
    eng.expire(T0 + 299.9)
    assert ct in eng.conn_list()
    eng.expire(T0 + 300.5)
    assert ct in eng.conn_list()                 # still controls cp: kept
    assert ct.expires == pytest.approx(T0 + 360)
    eng.receive(tcp(C1, 42000, "R"), T0 + 310)    # CLOSE: 10 s
    eng.expire(T0 + 321)
    assert cp not in eng.conn_list()
    assert ct.n_control == 0 and ct in eng.conn_list()
    eng.expire(T0 + 359.9)
    assert ct in eng.conn_list()
    eng.expire(T0 + 360.1)
    assert eng.conn_list() == []


def test_template_without_connections_expires_at_timeout():
    eng, _ = make(dests=((RS1, 80, NAT),), svc_kw=PERSIST)
    eng.receive(tcp(C1, 42100, "S"), T0)   # SYN_RECV: 60 s
    eng.expire(T0 + 61)
    assert len(conns(eng)) == 0 and len(conns(eng, templates=True)) == 1
    eng.expire(T0 + 300.1)
    assert eng.conn_list() == []


@pytest.mark.parametrize("eqt", [0, 1])
def test_expire_quiescent_template(eqt):
    """ip_vs_check_template: with expire_quiescent_template a template whose
    dest has weight 0 is invalidated, so the client is rescheduled; without
    it the client stays on the quiescent server."""
    eng, svc = make(dests=((RS1, 80, NAT), (RS2, 80, NAT)), svc_kw=PERSIST,
                    config=EngineConfig(expire_quiescent_template=eqt))
    first = eng.receive(tcp(C1, 43000, "S"), T0)[0].nexthop
    first_s = ".".join(map(str, first))
    eng.edit_dest(svc, dest_spec(first_s, weight=0))
    out = eng.receive(tcp(C1, 43001, "S"), T0 + 1)
    assert len(out) == 1
    if eqt:
        assert out[0].nexthop != first
    else:
        assert out[0].nexthop == first
    # the first connection continues on its server either way
    out = eng.receive(tcp(C1, 43000, "A"), T0 + 2)
    assert out[0].nexthop == first


def test_assured_template_state_name():
    eng, _ = make(dests=((RS1, 80, NAT),), svc_kw=PERSIST)
    open_conn(eng, C1, 44000, T0)
    ct = conns(eng, templates=True)[0]
    assert eng.state_name(ct) == "ASSURED"


def test_udp_template_state_name():
    eng, _ = make(dests=((RS1, 53, NAT),), port=53, proto=17, svc_kw=PERSIST)
    eng.receive(udp(C1, 44100), T0)
    ct = conns(eng, templates=True)[0]
    assert eng.state_name(ct) == "NONE"


# ----------------------------------------------------------- thresholds

def test_upper_threshold_overload_and_three_quarters():
    """ip_vs_bind_dest: overloaded when activeconns + inactconns >= u_threshold;
    ip_vs_unbind_dest without l_threshold: cleared when total * 4 < u * 3;
    ip_vs_rr_schedule skips IP_VS_DEST_F_OVERLOAD."""
    eng, svc = make(dests=())
    eng.add_dest(svc, dest_spec(RS1, u_threshold=2))
    eng.add_dest(svc, dest_spec(RS2))
    d1, d2 = dest_of(eng, svc, RS1), dest_of(eng, svc, RS2)
    t = T0
    ports = {}
    for port in range(45000, 45004):
        out = eng.receive(tcp(C1, port, "S"), t)
        ports[port] = out[0].nexthop
        t += 0.1
    assert d1.activeconns == 2 and d2.activeconns == 2
    assert d1.flags & IP_VS_DEST_F_OVERLOAD
    for port in range(45004, 45008):
        assert eng.receive(tcp(C1, port, "S"), t)[0].nexthop == A(RS2)
        t += 0.1
    # Close one of RS1's connections: the server's RST -> CLOSE (10 s)
    # (a client RST in SYN_RECV keeps SYN_RECV: tcp_states INPUT rst/sSR).
    p1 = [p for p, rs in ports.items() if rs == A(RS1)][0]
    eng.receive(tcp(RS1, 80, "RA", dst=C1, dport=p1), t)
    assert d1.activeconns == 1 and d1.inactconns == 1
    assert d1.flags & IP_VS_DEST_F_OVERLOAD   # still 2 connections
    t += 10.5
    eng.expire(t)
    assert d1.activeconns + d1.inactconns == 1
    assert not d1.flags & IP_VS_DEST_F_OVERLOAD   # 1*4 < 2*3
    got = {bytes(eng.receive(tcp(C1, p, "S"), t + i)[0].nexthop) for i, p in
           enumerate(range(45010, 45012))}
    assert A(RS1) in got


def test_lower_threshold():
    """ip_vs_unbind_dest: with l_threshold the mark lifts only below it."""
    eng, svc = make(dests=())
    eng.add_dest(svc, dest_spec(RS1, u_threshold=3, l_threshold=2))
    d1 = dest_of(eng, svc, RS1)
    for i, port in enumerate(range(45100, 45103)):
        eng.receive(tcp(C1, port, "S"), T0 + i)
    assert d1.flags & IP_VS_DEST_F_OVERLOAD
    assert eng.receive(tcp(C1, 45103, "S"), T0 + 3) and eng.drops["no_dest"] == 1
    t = T0 + 4
    eng.receive(tcp(RS1, 80, "RA", dst=C1, dport=45100), t)
    eng.expire(t + 11)
    assert d1.totalconns() == 2 and d1.flags & IP_VS_DEST_F_OVERLOAD   # 2 < 2 is false
    eng.receive(tcp(RS1, 80, "RA", dst=C1, dport=45101), t + 12)
    eng.expire(t + 23)
    assert d1.totalconns() == 1 and not d1.flags & IP_VS_DEST_F_OVERLOAD


def test_weight_zero_is_quiescent():
    """__ip_vs_update_dest keeps the dest AVAILABLE with weight 0: schedulers
    skip it, but its existing connections keep flowing (ip_vs_in_hook only
    checks IP_VS_DEST_F_AVAILABLE)."""
    eng, svc = make(dests=((RS1, 80, NAT), (RS2, 80, NAT)))
    cp, rs = open_conn(eng, C1, 46000, T0)
    rs_s = ".".join(map(str, rs))
    eng.edit_dest(svc, dest_spec(rs_s, weight=0))
    for i in range(4):
        out = eng.receive(tcp(C2, 46100 + i, "S"), T0 + 1 + i)
        assert out[0].nexthop != rs
    out = eng.receive(tcp(C1, 46000, "PA", payload=b"more"), T0 + 10)
    assert out[0].nexthop == rs
    assert eng.state_name(cp) == "ESTABLISHED"


# ------------------------------------------------------- conn_reuse_mode

def _to_time_wait(eng, client, cport, t):
    rs_ip = None
    for i, tok in enumerate(["c:S", "s:SA", "c:A", "c:FA", "s:A", "s:FA", "c:A"]):
        side, flags = tok.split(":")
        if side == "c":
            out = eng.receive(tcp(client, cport, flags), t + i * 0.1)
            if rs_ip is None:
                rs_ip = ".".join(map(str, out[0].nexthop))
        else:
            eng.receive(tcp(rs_ip, 80, flags, dst=client, dport=cport), t + i * 0.1)
    cp = conn_of(eng, client, cport)
    assert eng.state_name(cp) == "TIME_WAIT"
    return cp, A(rs_ip)


def test_conn_reuse_mode_reschedules_time_wait():
    """ip_vs_in_hook: a SYN (is_new_conn) hitting a TIME_WAIT connection
    (is_new_conn_expected) with conn_reuse_mode=1 expires it at once
    (ip_vs_conn_expire_now) and schedules a new connection."""
    eng, _ = make(dests=((RS1, 80, NAT), (RS2, 80, NAT)))
    old, rs = _to_time_wait(eng, C1, 47000, T0)
    out = eng.receive(tcp(C1, 47000, "S"), T0 + 5)
    assert len(out) == 1 and out[0].nexthop != rs   # rr moved on
    eng.expire(T0 + 5.01)
    assert old not in eng.conn_list()
    new = conn_of(eng, C1, 47000)
    assert new is not old and eng.state_name(new) == "SYN_RECV"


def test_conn_reuse_mode_zero_reuses():
    """conn_reuse_mode=0: the old entry takes the SYN (TIME_WAIT -syn-> SYN_RECV)."""
    eng, _ = make(dests=((RS1, 80, NAT), (RS2, 80, NAT)), config=EngineConfig(conn_reuse_mode=0))
    old, rs = _to_time_wait(eng, C1, 47100, T0)
    out = eng.receive(tcp(C1, 47100, "S"), T0 + 5)
    assert out[0].nexthop == rs
    assert conn_of(eng, C1, 47100) is old and eng.state_name(old) == "SYN_RECV"


@pytest.mark.parametrize("mode,resched", [(1, False), (2, True)])
def test_conn_reuse_mode_2_dr_fin_wait(mode, resched):
    """is_new_conn_expected: bit 2 also reschedules FIN_WAIT of NOOUTPUT (DR) connections."""
    eng, _ = make(dests=((RS1, 0, DR),), config=EngineConfig(conn_reuse_mode=mode))
    eng.receive(tcp(C1, 47200, "S"), T0)
    eng.receive(tcp(C1, 47200, "A"), T0 + 0.1)
    eng.receive(tcp(C1, 47200, "FA"), T0 + 0.2)
    old = conn_of(eng, C1, 47200)
    assert eng.state_name(old) == "FIN_WAIT"
    eng.receive(tcp(C1, 47200, "S"), T0 + 1)
    eng.expire(T0 + 1.01)
    assert (conn_of(eng, C1, 47200) is not old) == resched


# ------------------------------------------------------ dest removal

def test_deleted_dest_drops_its_packets():
    """ip_vs_in_hook: cp->dest without IP_VS_DEST_F_AVAILABLE and
    expire_nodest_conn=0 -> NF_DROP; the entry stays."""
    eng, svc = make(dests=((RS1, 80, NAT), (RS2, 80, NAT)))
    cp, rs = open_conn(eng, C1, 48000, T0)
    eng.del_dest(svc, dest_spec(".".join(map(str, rs))))
    out = eng.receive(tcp(C1, 48000, "PA", payload=b"x"), T0 + 1)
    assert out == [] and eng.drops["dest_unavailable"] == 1
    assert cp in eng.conn_list()


def test_expire_nodest_conn():
    """ip_vs_in_hook with expire_nodest_conn=1: the entry of a deleted dest is
    expired at once (ip_vs_conn_expire_now); a SYN is then scheduled anew,
    a plain ACK is not a connection start (tcp_conn_schedule)."""
    eng, svc = make(dests=((RS1, 80, NAT), (RS2, 80, NAT)),
                    config=EngineConfig(expire_nodest_conn=1))
    cp, rs = open_conn(eng, C1, 48100, T0)
    cp2, rs2 = open_conn(eng, C1, 48101, T0 + 1)
    assert rs2 != rs
    eng.del_dest(svc, dest_spec(".".join(map(str, rs))))
    out = eng.receive(tcp(C1, 48100, "PA", payload=b"x"), T0 + 2)
    assert out == [] and eng.drops["dest_unavailable"] == 0
    eng.expire(T0 + 2.01)
    assert cp not in eng.conn_list()
    out = eng.receive(tcp(C1, 48100, "S"), T0 + 3)
    assert out[0].nexthop == rs2


def test_expire_nodest_conn_weight_zero_syn_reschedules():
    """ip_vs_in_hook: a SYN on a connection whose dest has weight 0 is
    rescheduled when expire_nodest_conn is set."""
    eng, svc = make(dests=((RS1, 80, NAT), (RS2, 80, NAT)),
                    config=EngineConfig(expire_nodest_conn=1))
    cp, rs = open_conn(eng, C1, 48200, T0)
    eng.edit_dest(svc, dest_spec(".".join(map(str, rs)), weight=0))
    out = eng.receive(tcp(C1, 48200, "S"), T0 + 1)
    assert out[0].nexthop != rs


# -------------------------------------------------------------- timeouts

def test_set_timeouts_affects_new_established():
    """ip_vs_set_timeout: a non-zero value replaces timeout_table[ESTABLISHED]
    / [FIN_WAIT] / udp NORMAL, 0 keeps it; set_tcp_state reads the table."""
    eng, _ = make(dests=((RS1, 80, NAT),))
    eng.set_timeouts(60, 0, 0)
    assert eng.timeouts() == (60, 120, 300)
    cp, _ = open_conn(eng, C1, 49000, T0)
    assert cp.expires - (T0 + 0.02) == pytest.approx(60)
    eng.receive(tcp(RS1, 80, "FA", dst=C1, dport=49000), T0 + 1)   # server FIN: FIN_WAIT
    assert eng.state_name(cp) == "FIN_WAIT"
    assert cp.expires - (T0 + 1) == pytest.approx(120)
    eng.set_timeouts(0, 0, 0)
    assert eng.timeouts() == (60, 120, 300)
    eng.set_timeouts(0, 30, 20)
    assert eng.timeouts() == (60, 30, 20)


def test_udp_one_packet_is_forwarded():
    eng, _ = make(dests=((RS1, 53, NAT),), port=53, proto=17,
                  svc_kw={"flags": IP_VS_SVC_F_ONEPACKET})
    out = eng.receive(udp(C1, 50000), T0)
    assert len(out) == 1 and out[0].nexthop == A(RS1)
    p = assert_ip_valid(out[0].packet)
    assert (p.dst, p[UDP].dport) == (RS1, 53)


def test_udp_one_packet_leaves_no_connection():
    """ip_vs_conn_put: a ONE_PACKET (-o, IP_VS_SVC_F_ONEPACKET) connection
    expires as soon as its packet is sent; ip_vs_conn_hash never hashes it."""
    eng, _ = make(dests=((RS1, 53, NAT), (RS2, 53, NAT)), port=53, proto=17,
                  svc_kw={"flags": IP_VS_SVC_F_ONEPACKET})
    first = eng.receive(udp(C1, 50000), T0)
    second = eng.receive(udp(C1, 50000), T0 + 1)
    d = [x for x in eng.services[(17, A(VIP), 53)].destinations]
    assert eng.conn_list() == []
    assert all(x.totalconns() == 0 and x.refcnt == 0 for x in d)
    # rr schedules each datagram: the same client port alternates servers.
    assert first[0].nexthop != second[0].nexthop


def test_udp_zero_checksum_gets_full_checksum():
    eng, _ = make(dests=((RS1, 5353, NAT),), port=53, proto=17)
    out = eng.receive(udp(C1, 50100, chksum=0), T0)
    p = IP(out[0].packet)
    assert p[UDP].chksum != 0
    assert_ip_valid(out[0].packet)


# ------------------------------------------------------------------ ICMP

def test_icmp_error_from_real_server_side_to_client():
    """ip_vs_out_icmp -> handle_response_icmp -> ip_vs_nat_icmp(inout=1):
    outer saddr and quoted daddr become the VIP, quoted dport the vport,
    both IP checksums and the ICMP checksum are recomputed."""
    eng, _ = make(dests=((RS1, 8080, NAT),))
    out = eng.receive(tcp(C1, 51000, "S"), T0)
    to_rs = out[0].packet
    err = bytes(IP(src=RS1, dst=C1, ttl=64, id=99) / ICMP(type=3, code=4, nexthopmtu=1400)
                / to_rs[:28])
    out = eng.receive(err, T0 + 0.5)
    assert len(out) == 1 and out[0].nexthop == A(C1)
    p = assert_ip_valid(out[0].packet)
    assert (p.src, p.dst, p.ttl) == (VIP, C1, 63)
    q = p[IPerror]
    assert (q.src, q.dst) == (C1, VIP)
    assert (p[TCPerror].sport, p[TCPerror].dport) == (51000, 80)
    assert checksum(bytes(p[ICMP])) == 0
    assert checksum(bytes(q)[:20]) == 0


def test_icmp_error_from_client_side_to_real_server():
    """ip_vs_in_icmp -> ip_vs_icmp_xmit -> ip_vs_nat_icmp(inout=0): outer
    daddr and quoted saddr become the real server, quoted sport its port."""
    eng, _ = make(dests=((RS1, 8080, NAT),))
    eng.receive(tcp(C1, 51100, "S"), T0)
    out = eng.receive(tcp(RS1, 8080, "SA", dst=C1, dport=51100), T0 + 0.1)
    to_client = out[0].packet
    err = bytes(IP(src=C1, dst=VIP, ttl=40, id=77) / ICMP(type=3, code=3) / to_client[:28])
    out = eng.receive(err, T0 + 0.5)
    assert len(out) == 1 and out[0].nexthop == A(RS1)
    p = assert_ip_valid(out[0].packet)
    assert (p.src, p.dst, p.ttl) == (C1, RS1, 39)
    q = p[IPerror]
    assert (q.src, q.dst) == (RS1, C1)
    assert (p[TCPerror].sport, p[TCPerror].dport) == (8080, 51100)
    assert checksum(bytes(p[ICMP])) == 0
    assert checksum(bytes(q)[:20]) == 0


def test_icmp_unrelated_is_not_forwarded():
    """ip_vs_in_icmp: only DEST_UNREACH, SOURCE_QUENCH, TIME_EXCEEDED are related."""
    eng, _ = make(dests=((RS1, 80, NAT),))
    eng.receive(tcp(C1, 51200, "S"), T0)
    echo = bytes(IP(src=C1, dst=VIP) / ICMP(type=8) / b"ping")
    assert eng.receive(echo, T0 + 1) == []
    assert eng.drops["internal_error"] == 0


# ----------------------------------------- replies the director routes

def test_reply_ttl_expired_comes_from_director():
    eng, _ = make(dests=((RS1, 80, NAT),), director_addr=A(DIRECTOR))
    eng.receive(tcp(C1, 52000, "S"), T0)
    out = eng.receive(tcp(RS1, 80, "SA", dst=C1, dport=52000, ttl=1), T0 + 0.1)
    assert eng.drops["ttl_exceeded"] == 1
    p = IP(out[0].packet)
    assert out[0].nexthop == A(RS1) and p[ICMP].type == 11
    assert p.src == DIRECTOR


def test_reply_frag_needed_quotes_original_ttl():
    eng, _ = make(dests=((RS1, 80, NAT),), director_addr=A(DIRECTOR))
    eng.receive(tcp(C1, 52100, "S"), T0)
    big = tcp(RS1, 80, "A", dst=C1, dport=52100, ttl=64, df=True, payload=b"x" * 1600)
    out = eng.receive(big, T0 + 0.1)
    assert eng.drops["frag_needed"] == 1
    p = IP(out[0].packet)
    assert (p[ICMP].type, p[ICMP].code) == (3, 4)
    assert bytes(p[ICMP].payload)[8] == 64


def test_client_frag_needed_quotes_decremented_ttl():
    """IPVS's own path: __ip_vs_get_out_rt runs decrement_ttl before
    ensure_mtu_is_adequate, so the quoted request has TTL-1; source the VIP."""
    eng, _ = make(dests=((RS1, 80, NAT),))
    big = tcp(C1, 52200, "PA", ttl=64, df=True, payload=b"x" * 1600)
    eng.receive(tcp(C1, 52200, "S"), T0)
    out = eng.receive(big, T0 + 0.1)
    p = IP(out[0].packet)
    assert (p.src, p.dst, p[ICMP].type, p[ICMP].code, p[ICMP].nexthopmtu) == (VIP, C1, 3, 4, 1500)
    quoted = bytes(p[ICMP].payload)
    assert quoted[8] == 63 and checksum(quoted[:20]) == 0
    assert len(out[0].packet) == 576


def test_icmp_errors_are_rate_limited_per_client():
    """icmpv4_xrlim_allow: a burst of 6, then one per icmp_ratelimit (1 s) per client."""
    e = Engine()
    svc = ServiceSpec(6, bytes([198, 51, 100, 2]), 80, sched_name="rr")
    e.add_service(svc)
    e.add_dest(svc, DestSpec(bytes([192, 0, 2, 11]), 80, conn_flags=0, weight=0))

    def syns(n, now, client="203.0.113.7"):
        sent = 0
        for i in range(n):
            out = e.receive(bytes(IP(src=client, dst="198.51.100.2") / TCP(sport=1000 + i, flags="S")), now)
            sent += sum(1 for t in out if IP(t.packet).haslayer(ICMP))
        return sent

    assert syns(10, 1.0) == 6
    assert syns(3, 1.5) == 0
    assert syns(3, 2.6) == 1          # one token earned since the burst ran out
    assert syns(3, 2.6, client="203.0.113.8") == 3  # another client has its own bucket
    assert e.drops["no_dest"] == 19


def test_a_spoofed_flood_to_a_closed_service_holds_bounded_icmp_state(monkeypatch):
    """Every SYN from a new address gets its port unreachable (as rate limits allow): the
    per-client ICMP buckets stay bounded, and forgetting the idle ones changes no answer
    (a bucket idle for its burst window is a new one's). IPv6: room for 6000 addresses."""
    from lvs import icmp_send, ipv6 as ipv6_mod
    monkeypatch.setattr(icmp_send, "ICMP_PEERS_GC", 200)
    vip = socket.inet_pton(socket.AF_INET6, "2001:db8::2")

    def run(e):
        svc = ServiceSpec(6, vip, 80, sched_name="rr")
        e.add_service(svc)
        e.add_dest(svc, DestSpec(socket.inet_pton(socket.AF_INET6, "2001:db8::11"), 80, conn_flags=0, weight=0))
        answered, most = [], 0
        for i in range(6000):
            src = socket.inet_pton(socket.AF_INET6, "2001:db8:1::%x" % (i + 1))
            tcp = struct.pack("!HHIIBBHHH", 1000 + i % 5000, 80, 0, 0, 0x50, 2, 1024, 0, 0)
            out = e.receive(ipv6_mod.header(0, 20, 6, 64, src, vip) + tcp, 1.0 + i * 0.004)
            answered.append(len(out))
            most = max(most, len(e._icmp_peers))
        return answered, most

    small, most = run(Engine())
    assert sum(small) > 5000 and most < 2500          # 250 new clients/s, a 6 s window
    monkeypatch.setattr(icmp_send, "ICMP_PEERS_GC", 1 << 30)
    full, most = run(Engine())
    assert full == small and most == 6000


def test_ip_ids_come_from_a_fixed_table_and_never_start_again(monkeypatch):
    """__ip_select_ident's ip_idents: a fixed table of counters, the pairs hashed into it.
    A pair's IDs go on by one while it alone uses its bucket, and however many other pairs
    come and go (and the hash memo is emptied), its counter never starts again."""
    from lvs import engine as engine_mod
    monkeypatch.setattr(engine_mod, "IDENT_PAIRS", 64)
    e = Engine()
    a, b = bytes([198, 51, 100, 2]), bytes([203, 0, 113, 9])
    first = e.ip_ident(a, b, 4)
    assert [e.ip_ident(a, b, 4) for _ in range(3)] == [(first + k) & 0xFFFF for k in (1, 2, 3)]
    seen = {first, (first + 1) & 0xFFFF, (first + 2) & 0xFFFF, (first + 3) & 0xFFFF}
    last = (first + 3) & 0xFFFF
    for i in range(5000):
        e.ip_ident(a, bytes([192, 0, 2, 1 + i % 250]) + bytes(), 4 + i // 250)   # others come and go
        if i % 100 == 0:
            n = e.ip_ident(a, b, 4)
            assert (n - last) & 0xFFFF >= 1 and n not in seen
            seen.add(n)
            last = n
    assert len(e._ident) <= engine_mod.IDENT_BUCKETS and len(e._ident_hash) <= 64


def test_ip_options_travel_with_the_packet():
    """IPVS works on iph->ihl: options stay in place and ports are found after them."""
    e = Engine()
    svc = ServiceSpec(6, bytes([198, 51, 100, 2]), 80, sched_name="rr")
    e.add_service(svc)
    e.add_dest(svc, DestSpec(bytes([192, 0, 2, 11]), 8080, conn_flags=0))
    from scapy.layers.inet import IPOption_RR
    sent = IP(bytes(IP(src="203.0.113.7", dst="198.51.100.2", options=[IPOption_RR(routers=["0.0.0.0"] * 2)])
                    / TCP(sport=40000, dport=80, flags="S")))
    out = e.receive(bytes(sent), 1.0)
    assert len(out) == 1
    got = IP(out[0].packet)
    assert got.ihl == sent.ihl == 8 and bytes(got)[20:32] == bytes(sent)[20:32]
    assert got.dst == "192.0.2.11" and got[TCP].dport == 8080
    ref = got.copy()
    del ref.chksum
    del ref[TCP].chksum
    ref = IP(bytes(ref))
    assert (ref.chksum, ref[TCP].chksum) == (got.chksum, got[TCP].chksum)


def _nat_director(**sysctls):
    e = Engine(EngineConfig(**sysctls))
    svc = ServiceSpec(6, bytes([198, 51, 100, 2]), 80, sched_name="rr")
    e.add_service(svc)
    return e, svc


def _syn(flags="S", sport=1000):
    return bytes(IP(src="203.0.113.7", dst="198.51.100.2") / TCP(sport=sport, dport=80, flags=flags))


def test_reload_with_clear_and_restore_revives_real_servers_from_the_trash():
    """ip_vs_trash_get_dest matches the dest's old service address, not the service object."""
    e, svc = _nat_director()
    e.add_dest(svc, DestSpec(bytes([192, 0, 2, 11]), 8080, conn_flags=0))
    assert len(e.receive(_syn(), 1.0)) == 1
    old = e.services[svc.key].destinations[0]
    e.flush()                                              # ipvsadm -C ...
    e.add_service(svc)                                     # ... then -R
    e.add_dest(svc, DestSpec(bytes([192, 0, 2, 11]), 8080, conn_flags=0))
    dest = e.services[svc.key].destinations[0]
    assert dest is old and dest.activeconns == 1           # the connection's count is back
    assert dest.stats.counters() == (0, 0, 0, 0, 0)        # rebound to a new service: counters restart
    assert len(e.receive(_syn("A"), 2.0)) == 1             # and it keeps flowing


def test_without_services_ipvs_sees_nothing():
    e, svc = _nat_director()
    e.add_dest(svc, DestSpec(bytes([192, 0, 2, 11]), 8080, conn_flags=0))
    e.receive(_syn(), 1.0)
    e.del_service(svc)
    reply = bytes(IP(src="192.0.2.11", dst="203.0.113.7") / TCP(sport=8080, dport=1000, flags="SA"))
    assert e.receive(reply, 2.0) == [] and e.drops["no_service"] == 1


def test_expire_nodest_conn_flushes_connections_of_a_deleted_server():
    for on in (0, 1):
        e, svc = _nat_director(expire_nodest_conn=on)
        e.add_dest(svc, DestSpec(bytes([192, 0, 2, 11]), 8080, conn_flags=0))
        e.add_dest(svc, DestSpec(bytes([192, 0, 2, 12]), 8080, conn_flags=0))
        e.receive(_syn(), 1.0)
        e.del_dest(svc, DestSpec(bytes([192, 0, 2, 12]), 8080))   # rr's first pick was .12
        e.expire(1.01)
        assert len(e.conn_list()) == (0 if on else 1)


def test_deleted_servers_leave_the_trash_on_the_kernels_timer():
    """ip_vs_dest_trash_expire: a pass every 60 s; idle at one pass, freed 120 s after it."""
    e, svc = _nat_director()
    spec = DestSpec(bytes([192, 0, 2, 11]), 8080, conn_flags=0)
    e.add_dest(svc, spec)
    e.expire(0.0)
    e.del_dest(svc, spec)                 # t=0: trash timer at 60
    e.expire(60.0)                        # first pass: idle from now
    e.expire(179.0)
    assert len(e.trash) == 1              # 120 s after 60 is 180, and the pass is at 180
    e.expire(180.0)
    assert e.trash == [] and e.next_deadline() is not None


def test_nat_icmp_send_tells_a_real_server_about_unknown_connections():
    """ip_vs_out_hook with nat_icmp_send: port unreachable back to the real server, not for RST."""
    for on in (0, 1):
        e, svc = _nat_director(nat_icmp_send=on)
        e.add_dest(svc, DestSpec(bytes([192, 0, 2, 11]), 8080, conn_flags=0))
        stray = bytes(IP(src="192.0.2.11", dst="203.0.113.7") / TCP(sport=8080, dport=1000, flags="A"))
        out = e.receive(stray, 1.0)
        if not on:
            assert out == []
            continue
        err = IP(out[0].packet)
        assert out[0].nexthop == bytes([192, 0, 2, 11])
        assert (err.dst, err[ICMP].type, err[ICMP].code) == ("192.0.2.11", 3, 3)
        rst = bytes(IP(src="192.0.2.11", dst="203.0.113.7") / TCP(sport=8080, dport=1000, flags="R"))
        assert e.receive(rst, 10.0) == []
        assert e.drops["nat_icmp_send"] == 1


def test_drop_packet_always_drops_one_new_connection_in_am_droprate():
    """ip_vs_todrop with drop_packet=3: the 1st, 11th, 21st... new connection is dropped."""
    e, svc = _nat_director(drop_packet=3)
    e.add_dest(svc, DestSpec(bytes([192, 0, 2, 11]), 8080, conn_flags=0))
    sent = [bool(e.receive(_syn(sport=2000 + i), 1.0)) for i in range(22)]
    assert [i for i, ok in enumerate(sent) if not ok] == [0, 10, 20]
    assert e.drops["drop_packet"] == 3


def test_cache_bypass_routes_an_unserved_fwmark_packet_on():
    """ip_vs_leave + ip_vs_bypass_xmit: no real server, cache_bypass on: on to its own address."""
    for on in (0, 1):
        e = Engine(EngineConfig(cache_bypass=on), fwmark=lambda p, a, port: 5)
        e.add_service(ServiceSpec(0, bytes(4), 0, fwmark=5, sched_name="rr"))
        pkt = bytes(IP(src="203.0.113.7", dst="192.0.2.50", ttl=9) / TCP(sport=1000, dport=80, flags="S"))
        out = e.receive(pkt, 1.0)
        got = IP(out[0].packet)
        if not on:
            assert got[ICMP].type == 3 and e.drops["no_dest"] == 1
            continue
        assert out[0].nexthop == bytes([192, 0, 2, 50]) and got.dst == "192.0.2.50" and got.ttl == 8
        assert len(e.conn_list()) == 1 and e.conn_list()[0].dest is None


def test_replies_sharing_a_key_fall_back_to_the_older_connection():
    """ip_vs_conn_out_get walks the chain: when the newer entry goes, the older answers."""
    e = Engine()
    for vport in (80, 81):
        svc = ServiceSpec(6, bytes([198, 51, 100, 2]), vport, sched_name="rr")
        e.add_service(svc)
        e.add_dest(svc, DestSpec(bytes([192, 0, 2, 11]), 8080, conn_flags=0))
    e.receive(bytes(IP(src="203.0.113.7", dst="198.51.100.2") / TCP(sport=1000, dport=80, flags="S")), 1.0)
    e.receive(bytes(IP(src="203.0.113.7", dst="198.51.100.2") / TCP(sport=1000, dport=81, flags="S")), 2.0)
    e.receive(bytes(IP(src="203.0.113.7", dst="198.51.100.2") / TCP(sport=1000, dport=81, flags="A")), 3.0)
    e.receive(bytes(IP(src="203.0.113.7", dst="198.51.100.2") / TCP(sport=1000, dport=81, flags="R")), 4.0)
    e.expire(14.5)                                  # the port-81 connection (CLOSE, 10 s) is gone
    reply = bytes(IP(src="192.0.2.11", dst="203.0.113.7") / TCP(sport=8080, dport=1000, flags="SA"))
    out = e.receive(reply, 15.0)
    assert len(out) == 1 and IP(out[0].packet)[TCP].sport == 80


def test_a_cut_tcp_header_on_a_known_connection_is_counted_then_handled_by_method():
    """The lookup needs the ports only; the state stays; DR forwards it, NAT drops it."""
    for method, forwarded in ((3, True), (0, False)):
        e, svc = _nat_director()
        e.add_dest(svc, DestSpec(bytes([192, 0, 2, 11]), 80 if method == 3 else 8080, conn_flags=method))
        e.receive(_syn(), 1.0)
        cp = e.conn_list()[0]
        state = cp.state
        tcp14 = bytes(TCP(sport=1000, dport=80, flags="A"))[:14]  # ports, seq, ack, flags: no window
        out = e.receive(bytes(IP(src="203.0.113.7", dst="198.51.100.2", proto=6) / tcp14), 2.0)
        assert bool(out) is forwarded and cp.state == state
        assert e.services[svc.key].destinations[0].stats.counters()[1] == 2  # both packets counted


def test_duplicate_inside_a_run_of_fragments_is_only_itself_dropped():
    """inet_frag_queue_insert checks runs of contiguous fragments, not single ones."""
    from lvs.defrag import Reassembler
    r = Reassembler()

    def frag(off, data, more=True):
        return bytearray(bytes(IP(src="203.0.113.7", dst="198.51.100.2", id=9, proto=17,
                                  flags="MF" if more else 0, frag=off // 8) / data))

    assert r.add(frag(0, b"a" * 16), 20, 1.0) is None
    assert r.add(frag(16, b"b" * 16), 20, 1.0) is None
    assert r.add(frag(8, b"c" * 16), 20, 1.0) == "fragment_duplicate"
    done = r.add(frag(32, b"d" * 16, more=False), 20, 1.0)
    assert bytes(done.packet)[20:] == b"a" * 16 + b"b" * 16 + b"d" * 16
