"""Fragments: reassembled before IPVS (ip_defrag), cut again on the way out (ip_do_fragment)."""

from scapy.all import ICMP, IP, UDP, fragment as scapy_fragment, raw, defragment

from lvs.control import DestSpec, ServiceSpec
from lvs.engine import Engine
from lvs.flags import IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_MASQ, IP_VS_CONN_F_TUNNEL

VIP, RS, CLIENT = "198.51.100.2", "192.0.2.11", "203.0.113.7"


def A(text):
    return bytes(int(x) for x in text.split("."))


def director(method, rport=53):
    e = Engine()
    svc = ServiceSpec(17, A(VIP), 53, sched_name="rr")
    e.add_service(svc)
    e.add_dest(svc, DestSpec(A(RS), rport, conn_flags=method))
    return e


def datagram(size=3000, ident=4242, tos=0):
    return IP(src=CLIENT, dst=VIP, id=ident, tos=tos, ttl=64) / UDP(sport=5353, dport=53) / (b"q" * size)


def frags(pkt, size=1480):
    return [raw(f) for f in scapy_fragment(pkt, fragsize=size)]


def feed(e, pieces, now=1.0):
    out = []
    for p in pieces:
        out += e.receive(p, now)
    return [IP(t.packet) for t in out]


def test_nat_datagram_leaves_in_the_same_pieces():
    e = director(IP_VS_CONN_F_MASQ, rport=5300)
    sent = frags(datagram())
    out = feed(e, sent)
    assert [len(p) for p in out] == [len(s) for s in sent]           # 1500, 1500, 68
    assert all(p.dst == RS and p.id == 4242 and p.ttl == 63 for p in out)
    assert [p.frag for p in out] == [IP(s).frag for s in sent]
    assert [bool(p.flags.MF) for p in out] == [True, True, False]
    whole = defragment(out)[0]
    assert whole[UDP].dport == 5300 and raw(whole[UDP].payload) == b"q" * 3000
    ref = whole.copy()
    del ref[UDP].chksum
    assert IP(raw(ref))[UDP].chksum == whole[UDP].chksum  # checksum over the whole datagram
    assert e.fragments_held == 2 and not e.drops


def test_out_of_order_and_duplicate():
    e = director(IP_VS_CONN_F_DROUTE)
    a, b, c = frags(datagram())
    assert feed(e, [c, b, b]) == []
    assert e.drops["fragment_duplicate"] == 1
    out = feed(e, [a])
    assert [len(p) for p in out] == [1500, 1500, 68] and all(p.dst == VIP for p in out)


def test_overlap_discards_the_whole_datagram():
    e = director(IP_VS_CONN_F_DROUTE)
    a, b, c = frags(datagram())
    shifted = IP(b)
    shifted.frag -= 1      # 8 bytes into the first fragment
    del shifted.chksum
    assert feed(e, [a, raw(shifted), c]) == []
    assert e.drops["fragment_overlap"] == 1
    # The overlap killed the queue; the last fragment then starts a new one, alone.
    assert [q.meat for q in e.defrag.queues.values()] == [len(c) - 20]
    assert e.conntab.conns == {}


def test_reassembly_timeout_tells_the_sender():
    e = director(IP_VS_CONN_F_MASQ)
    a, b, c = frags(datagram())
    assert feed(e, [a, c], now=1.0) == []
    out = [IP(t.packet) for t in e.expire(31.5)]
    assert e.drops["fragment_timeout"] == 1
    assert len(out) == 1 and out[0][ICMP].type == 11 and out[0][ICMP].code == 1
    assert out[0].src == VIP and out[0].dst == CLIENT
    assert raw(out[0][ICMP].payload)[:20] == a[:20]  # quotes the first fragment


def test_tunnel_cuts_the_outer_packet():
    e = director(IP_VS_CONN_F_TUNNEL, rport=53)
    out = feed(e, frags(datagram()))
    # With 20 more bytes the first piece no longer fits: the slow path cuts
    # (1500 - 20) & ~7 = 1480 bytes of the outer payload at a time.
    assert [len(p) for p in out] == [1500, 1500, 88]
    assert all(p.proto == 4 and p.dst == RS for p in out)
    inner = IP(raw(defragment(out)[0].payload))
    assert inner.dst == VIP and inner.flags.MF == 0 and len(inner) == 3028


def test_all_df_fragments_keep_df_and_their_size_limit():
    e = director(IP_VS_CONN_F_MASQ)
    e.mtu = 1400
    pieces = []
    for f in scapy_fragment(datagram(), fragsize=1480):
        f.flags |= "DF"
        del f.chksum
        pieces.append(raw(f))
    out = feed(e, pieces)
    assert len(out) == 1 and out[0][ICMP].type == 3 and out[0][ICMP].code == 4
    assert out[0][ICMP].nexthopmtu == 1400 and e.drops["frag_needed"] == 1


def test_ecn_marks_combine():
    e = director(IP_VS_CONN_F_DROUTE)
    a, b, c = frags(datagram(tos=0x02))
    b = IP(b)
    b.tos = 0x03  # one fragment met congestion: the datagram is CE
    del b.chksum
    out = feed(e, [a, raw(b), c])
    assert {p.tos for p in out} == {0x03}
    e = director(IP_VS_CONN_F_DROUTE)
    a, b, c = frags(datagram(tos=0x00))
    b = IP(b)
    b.tos = 0x02  # ECT mixed with not-ECT: invalid, dropped
    del b.chksum
    assert feed(e, [a, raw(b), c]) == [] and e.drops["fragment_invalid"] == 1
