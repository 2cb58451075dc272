"""The live director's IPv6 side without root, on fake ports: Neighbour Discovery for the VIPs
(lvs/ndp.py), next-hop resolution by NDP, echo replies, closed VIP ports, the ip6 nft sets,
and --workers refusing IPv6 services."""

import ipaddress
import socket

import pytest
from scapy.layers.inet import TCP, UDP, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, IPv6,
)
from scapy.layers.l2 import Ether

from lvs import adm, ndp
from lvs import director as director_mod
from lvs import director6
from lvs.director import Director
from lvs.engine import Engine
from lvs.neigh import MCAST_SOLICIT, RETRANS_TIME, HostNeigh6, Neighbours, Routes
from helpers import FakePort

MAC = bytes.fromhex("020000000003")
CLIENT_MAC = bytes.fromhex("020000000001")
RS_MAC = bytes.fromhex("02000000000c")
ROUTER_MAC = bytes.fromhex("0200000000fe")
DIP, VIP, CLIENT, RS = "2001:db8::3", "2001:db8::2", "2001:db8::1", "2001:db8::12"
LLA = "fe80::3"
FAR_CLIENT, ROUTER = "2001:db8:99::7", "fe80::fe"


def a6(text):
    return socket.inet_pton(socket.AF_INET6, text)


def mac(b):
    return b.hex(":")


@pytest.fixture
def rig(monkeypatch):
    nft = []
    monkeypatch.setattr(director_mod.hostconf, "run", lambda argv, check=True, input=None: nft.append(input))
    engine = Engine(director_addr6=a6(DIP))
    logs = []
    d = Director(engine, ["eth0"], changes=None, log=logs.append)
    port = FakePort()
    d.ports, d.by_name = [port], {"eth0": port}
    d.addrs = {"eth0": []}
    d.addrs6 = {"eth0": [(a6(DIP), 64, "global"), (a6(LLA), 64, "link")]}
    d.routes6 = Routes(["eth0"], loader=lambda: [
        (ipaddress.IPv6Network("2001:db8::/64"), None, "eth0"),
        (ipaddress.IPv6Network("fe80::/64"), None, "eth0"),
        (ipaddress.IPv6Network("::/0"), a6(ROUTER), "eth0")], family=6)
    d.routes6.load(0.0)
    host_neigh = {}
    d.neigh6 = Neighbours(host_table=lambda: host_neigh)

    def lvsadm(*argv):
        out, err, status = adm.run(engine, list(argv), None)
        assert status == 0, err
        d.sync()

    lvsadm("-A", "-t", "[%s]:80" % VIP, "-s", "rr")
    lvsadm("-a", "-t", "[%s]:80" % VIP, "-r", "[%s]:8080" % RS, "-m")
    lvsadm("-A", "-u", "[%s]:53" % VIP, "-s", "rr")
    lvsadm("-a", "-u", "[%s]:53" % VIP, "-r", "[%s]:5353" % RS, "-m")
    return d, port, engine, nft, host_neigh, lvsadm, logs


def to_us(pkt, src_mac=CLIENT_MAC):
    return bytes(Ether(src=src_mac, dst=mac(MAC)) / pkt)


def syn(sport=40000, src=CLIENT, dport=80):
    return to_us(IPv6(src=src, dst=VIP) / TCP(sport=sport, dport=dport, flags="S", seq=1000))


def ns(target, src=CLIENT, dst=None, lladdr=CLIENT_MAC, hlim=255, eth_dst=None):
    dst = dst or socket.inet_ntop(socket.AF_INET6, ndp.solicited_node(a6(target)))
    pkt = IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6ND_NS(tgt=target)
    if lladdr is not None:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=mac(lladdr))
    eth_dst = eth_dst or (mac(ndp.multicast_mac(a6(dst))) if dst.startswith("ff") else mac(MAC))
    return bytes(Ether(src=mac(lladdr or CLIENT_MAC), dst=eth_dst) / pkt)


def checksum_ok(pkt):
    """scapy recomputes the upper-layer checksum over the pseudo-header: equal to what was sent."""
    ip = IPv6(bytes(pkt[IPv6]))
    field = "chksum" if ip.haslayer(TCP) or ip.haslayer(UDP) and not ip.haslayer(ICMPv6DestUnreach) else "cksum"
    layer = ip.payload
    sent = getattr(layer, field)
    delattr(layer, field)
    return getattr(IPv6(bytes(ip)).payload, field) == sent


# ---------------------------------------------------------------- the ndp module

def test_solicited_node_address_and_its_mac():
    group = ndp.solicited_node(a6("2001:db8::12:3456:789a"))
    assert socket.inet_ntop(socket.AF_INET6, group) == "ff02::1:ff56:789a"
    assert ndp.multicast_mac(group) == bytes.fromhex("3333ff56789a")
    assert ndp.is_solicited_node(group) and not ndp.is_solicited_node(a6(VIP))


def test_built_messages_are_what_scapy_reads_and_parse_back():
    ns_pkt = ndp.solicitation(MAC, a6(LLA), a6(RS))
    p = IPv6(ns_pkt)
    assert p.hlim == 255 and p.dst == "ff02::1:ff00:12" and p[ICMPv6ND_NS].tgt == RS
    assert p[ICMPv6NDOptSrcLLAddr].lladdr == mac(MAC) and checksum_ok(p)
    msg, why = ndp.parse(ns_pkt)
    assert why is None and msg.target == a6(RS) and msg.lladdr == MAC
    dad = ndp.solicitation(MAC, ndp.UNSPECIFIED, a6(RS))
    assert not IPv6(dad).haslayer(ICMPv6NDOptSrcLLAddr)   # no source link-layer option in DAD
    na = ndp.advertisement(MAC, a6(VIP), a6(CLIENT), a6(VIP), True, True, True)
    p = IPv6(na)
    assert (p[ICMPv6ND_NA].R, p[ICMPv6ND_NA].S, p[ICMPv6ND_NA].O) == (1, 1, 1)
    assert p[ICMPv6NDOptDstLLAddr].lladdr == mac(MAC) and checksum_ok(p) and p.hlim == 255
    msg, why = ndp.parse(na)
    assert msg.flags == ndp.NA_ROUTER | ndp.NA_SOLICITED | ndp.NA_OVERRIDE and msg.lladdr == MAC


@pytest.mark.parametrize("mangle, reason", [
    (lambda p: p.__setitem__(7, 64), "ndp_bad_hop_limit"),         # crossed a router
    (lambda p: p.__setitem__(41, 1), "ndp_bad_code"),
    (lambda p: p.__setitem__(60, p[60] ^ 1), "ndp_bad_checksum"),
    (lambda p: p.__setitem__(65, 0), "ndp_bad_option"),            # option length 0
])
def test_ndp_that_ndisc_would_drop_is_refused_by_name(mangle, reason):
    p = bytearray(ndp.solicitation(MAC, a6(LLA), a6(RS)))
    mangle(p)
    if reason != "ndp_bad_checksum" and reason != "ndp_bad_hop_limit":
        # keep the checksum right, so that the named check is the one that fails
        p[42:44] = b"\0\0"
        from lvs.checksum import l4_checksum
        p[42:44] = l4_checksum(bytes(p[8:24]), bytes(p[24:40]), 58, bytes(p[40:])).to_bytes(2, "big")
    assert ndp.parse(bytes(p)) == (None, reason)


def test_dad_probes_must_go_to_a_solicited_node_address_without_lladdr():
    bad = bytes(IPv6(src="::", dst=VIP, hlim=255) / ICMPv6ND_NS(tgt=VIP))
    assert ndp.parse(bad) == (None, "ndp_bad_dad")
    multicast_solicited = bytes(IPv6(src=CLIENT, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=CLIENT, S=1))
    assert ndp.parse(multicast_solicited) == (None, "ndp_multicast_solicited")


# ---------------------------------------------------------------- answering for the VIPs

def test_solicitations_for_a_vip_are_answered_and_others_are_not(rig):
    d, port, *_ = rig
    d.receive(port, [ns(VIP), ns("2001:db8::99"), ns(DIP)], 1.0)
    assert len(port.sent) == 1
    answer = Ether(port.sent[0])
    assert answer.dst == mac(CLIENT_MAC) and answer.src == mac(MAC) and answer.type == 0x86DD
    assert answer[IPv6].src == VIP and answer[IPv6].dst == CLIENT and answer[IPv6].hlim == 255
    na = answer[ICMPv6ND_NA]
    assert na.tgt == VIP and (na.R, na.S, na.O) == (1, 1, 1)
    assert answer[ICMPv6NDOptDstLLAddr].lladdr == mac(MAC) and checksum_ok(answer)
    assert d.counters["na_replies"] == 1
    # The sender was learnt from its solicitation: what we send it goes straight out.
    assert d.neigh6.entries[a6(CLIENT)][0] == CLIENT_MAC


def test_a_unicast_probe_is_answered_without_override_or_lladdr(rig):
    """ndisc_recv_ns: override and the target link-layer option only for multicast solicitations."""
    d, port, *_ = rig
    d.receive(port, [ns(VIP, dst=VIP)], 1.0)
    na = Ether(port.sent[0])
    assert na[ICMPv6ND_NA].S == 1 and na[ICMPv6ND_NA].O == 0 and not na.haslayer(ICMPv6NDOptDstLLAddr)
    assert na.dst == mac(CLIENT_MAC)


def test_a_multicast_solicitation_without_lladdr_from_a_stranger_gets_no_answer(rig):
    d, port, *_ = rig
    d.receive(port, [ns(VIP, lladdr=None)], 1.0)
    assert port.sent == []


def test_ndp_with_a_hop_limit_below_255_is_ignored_and_counted(rig):
    d, port, *_ = rig
    d.receive(port, [ns(VIP, hlim=254)], 1.0)
    assert port.sent == [] and d.counters["ndp_bad_hop_limit"] == 1 and d.counters["ndp_invalid"] == 1


def test_dad_probes_for_a_vip_are_not_answered_but_said(rig):
    d, port, engine, nft, host, lvsadm, logs = rig
    probe = bytes(Ether(src=mac(RS_MAC), dst="33:33:ff:00:00:02") /
                  IPv6(src="::", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt=VIP))
    d.receive(port, [probe, probe], 1.0)
    assert port.sent == []
    said = [line for line in logs if "duplicate address detection" in line]
    assert len(said) == 1 and VIP in said[0] and mac(RS_MAC) in said[0]


def test_a_standby_director_leaves_the_vips_solicitations_to_another(rig):
    d, port, *_ = rig
    d.vip_owner = False
    d.receive(port, [ns(VIP)], 1.0)
    assert port.sent == []


def test_a_takeover_sends_an_unsolicited_advertisement_per_vip(rig):
    d, port, *_ = rig
    assert d.own_vips(True) == 1
    una = Ether(port.sent[0])
    assert una.dst == "33:33:00:00:00:01" and una[IPv6].dst == "ff02::1" and una[IPv6].src == VIP
    na = una[ICMPv6ND_NA]
    assert na.tgt == VIP and (na.R, na.S, na.O) == (1, 0, 1)
    assert una[ICMPv6NDOptDstLLAddr].lladdr == mac(MAC) and checksum_ok(una)
    assert d.counters["unsolicited_na"] == 1


# ---------------------------------------------------------------- forwarding and resolution

def test_nat_forwarding_resolves_the_real_server_by_ndp_and_sends_what_waited(rig):
    d, port, engine, *_ = rig
    d.receive(port, [syn()], 1.0)
    assert len(port.sent) == 1
    req = Ether(port.sent[0])
    assert req.dst == "33:33:ff:00:00:12" and req[IPv6].dst == "ff02::1:ff00:12"
    assert req[IPv6].src == LLA and req[IPv6].hlim == 255       # from the link-local address
    assert req[ICMPv6ND_NS].tgt == RS and req[ICMPv6NDOptSrcLLAddr].lladdr == mac(MAC)
    assert checksum_ok(req)
    reply = bytes(Ether(src=mac(RS_MAC), dst=mac(MAC)) / IPv6(src=RS, dst=LLA, hlim=255) /
                  ICMPv6ND_NA(tgt=RS, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac(RS_MAC)))
    d.receive(port, [reply], 1.1)
    assert len(port.sent) == 2
    out = Ether(port.sent[1])
    assert out.type == 0x86DD and out.dst == mac(RS_MAC) and out.src == mac(MAC)
    assert out[IPv6].dst == RS and out[IPv6].src == CLIENT and out[TCP].dport == 8080
    d.receive(port, [syn(40001)], 1.2)
    assert len(port.sent) == 3 and Ether(port.sent[2])[TCP].sport == 40001


def test_a_solicitation_from_the_host_we_asked_answers_too(rig):
    """ndisc_recv_ns learns the sender of a solicitation: a real server that asks for our
    address while we ask for its own."""
    d, port, *_ = rig
    d.receive(port, [syn()], 1.0)
    d.receive(port, [ns(DIP, src=RS, lladdr=RS_MAC)], 1.05)
    out = Ether(port.sent[-1])
    assert out.dst == mac(RS_MAC) and out[TCP].dport == 8080


def test_an_advertisement_nobody_asked_for_creates_nothing(rig):
    d, port, *_ = rig
    una = bytes(Ether(src=mac(RS_MAC), dst="33:33:00:00:00:01") / IPv6(src=RS, dst="ff02::1", hlim=255) /
                ICMPv6ND_NA(tgt=RS, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac(RS_MAC)))
    d.receive(port, [una], 1.0)
    assert a6(RS) not in d.neigh6.entries


def test_a_neighbour_that_never_answers_costs_its_queued_packets(rig):
    d, port, *_ = rig
    d.receive(port, [syn()], 1.0)
    t = 1.0
    for _ in range(MCAST_SOLICIT + 1):
        t += RETRANS_TIME
        d.timers(t)
    requests = [f for f in port.sent if Ether(f).haslayer(ICMPv6ND_NS)]
    assert len(requests) == MCAST_SOLICIT
    assert d.neigh6.failed == 1 and d.next_deadline() is None
    assert d.stats()["neigh_failed"] == 1


def test_the_host_neighbour_table_is_used_before_asking(rig):
    d, port, engine, nft, host, *_ = rig
    host[a6(RS)] = (RS_MAC, "eth0")
    d.receive(port, [syn()], 1.0)
    assert len(port.sent) == 1 and Ether(port.sent[0]).dst == mac(RS_MAC)


def test_a_stale_entry_is_reconfirmed_by_a_unicast_solicitation(rig):
    d, port, engine, nft, host, *_ = rig
    host[a6(RS)] = (RS_MAC, "eth0")
    d.receive(port, [syn()], 1.0)
    d.receive(port, [syn(40001)], 40.0)        # past REACHABLE_TIME: used, and asked again
    d.timers(40.0)
    assert Ether(port.sent[1])[TCP].sport == 40001
    probe = Ether(port.sent[2])
    assert probe.dst == mac(RS_MAC) and probe[IPv6].dst == RS and probe[ICMPv6ND_NS].tgt == RS


def test_replies_to_a_client_off_link_go_through_the_router(rig):
    d, port, engine, nft, host, *_ = rig
    host[a6(RS)] = (RS_MAC, "eth0")
    host[a6(ROUTER)] = (ROUTER_MAC, "eth0")
    d.receive(port, [syn(src=FAR_CLIENT)], 1.0)
    synack = to_us(IPv6(src=RS, dst=FAR_CLIENT) / TCP(sport=8080, dport=40000, flags="SA"), RS_MAC)
    d.receive(port, [synack], 1.01)
    out = Ether(port.sent[-1])
    assert out.dst == mac(ROUTER_MAC) and out[IPv6].src == VIP and out[TCP].sport == 80


def test_frames_for_other_macs_and_the_hosts_own_traffic_stay_out_of_the_engine(rig):
    d, port, engine, *_ = rig
    other = bytes(Ether(src=mac(CLIENT_MAC), dst="02:00:00:00:00:99") / IPv6(src=CLIENT, dst=VIP) / TCP(flags="S"))
    own = to_us(IPv6(src=CLIENT, dst=DIP) / TCP(dport=22, flags="S"))
    d.receive(port, [other, own], 1.0)
    assert port.sent == [] and engine.conn_list() == []
    assert d.counters["not_for_us"] == 1 and d.counters["to_engine"] == 0


def test_host_neigh6_is_reread_at_most_once_a_second():
    reads = []
    clock = [0.0]
    table = HostNeigh6(reader=lambda: reads.append(1) or {}, clock=lambda: clock[0])
    table(), table()
    clock[0] = 1.5
    table()
    assert len(reads) == 2


# ---------------------------------------------------------------- the director's own answers

def test_echo_requests_to_a_vip_are_answered_from_the_vip(rig):
    d, port, engine, nft, host, *_ = rig
    host[a6(CLIENT)] = (CLIENT_MAC, "eth0")
    ping = to_us(IPv6(src=CLIENT, dst=VIP, hlim=7, tc=0x28) / ICMPv6EchoRequest(id=7, seq=3, data=b"data"))
    d.receive(port, [ping], 1.0)
    pong = Ether(port.sent[0])
    assert pong[IPv6].src == VIP and pong[IPv6].dst == CLIENT and pong[IPv6].hlim == 64
    assert pong[IPv6].tc == 0x28 and pong.haslayer(ICMPv6EchoReply)
    assert pong[ICMPv6EchoReply].id == 7 and pong[ICMPv6EchoReply].seq == 3
    assert pong[ICMPv6EchoReply].data == b"data" and checksum_ok(pong)
    assert d.counters["echo_replies"] == 1 and engine.conn_list() == []


def test_a_bad_echo_checksum_gets_no_answer(rig):
    d, port, engine, nft, host, *_ = rig
    host[a6(CLIENT)] = (CLIENT_MAC, "eth0")
    ping = to_us(IPv6(src=CLIENT, dst=VIP) / ICMPv6EchoRequest(id=7, seq=3, cksum=0x1234))
    d.receive(port, [ping], 1.0)
    assert d.counters["echo_replies"] == 0


def test_a_vip_port_no_service_claims_is_refused_as_a_closed_local_port(rig):
    d, port, engine, nft, host, *_ = rig
    host[a6(CLIENT)] = (CLIENT_MAC, "eth0")
    d.receive(port, [syn(dport=81)], 1.0)
    rst = Ether(port.sent[-1])
    assert rst[IPv6].src == VIP and rst[IPv6].dst == CLIENT and rst[IPv6].hlim == 64
    assert rst[TCP].sport == 81 and rst[TCP].dport == 40000
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 1001 and rst[TCP].seq == 0 and rst[TCP].window == 0
    assert checksum_ok(rst)
    # To a segment with ACK (the engine takes only SYNs as unclaimed, as for IPv4): its ack is our seq.
    ack = bytes(IPv6(src=CLIENT, dst=VIP, tc=0x2B) / TCP(sport=40002, dport=81, flags="A", seq=5, ack=777))
    rst = IPv6(director6.tcp_reset6(ack, 40, len(ack), 0x12345))
    assert rst[TCP].flags == "R" and rst[TCP].seq == 777 and rst[TCP].ack == 0
    assert rst.tc == 0x28 and rst.fl == 0x12345     # the traffic class less its ECN bits
    udp = lambda sport: to_us(IPv6(src=CLIENT, dst=VIP) / UDP(sport=sport, dport=54) / b"q")
    d.receive(port, [udp(5000)], 2.0)
    icmp = Ether(port.sent[-1])
    assert icmp[IPv6].src == VIP and icmp[ICMPv6DestUnreach].code == 4 and checksum_ok(icmp)
    assert icmp[ICMPv6DestUnreach].payload[UDPerror].sport == 5000
    # The per-client limit (a token per ICMPV6_RATELIMIT, a burst of 6): of ten more at once,
    # five are answered.
    n = len(port.sent)
    d.receive(port, [udp(5001 + i) for i in range(10)], 2.0)
    assert len(port.sent) == n + 5 and engine.icmp_ratelimited == 5
    n = len(port.sent)
    # A RST to a closed port gets no answer; a claimed port is not refused.
    d.receive(port, [to_us(IPv6(src=CLIENT, dst=VIP) / TCP(sport=40001, dport=81, flags="R"))], 3.0)
    assert len(port.sent) == n and d.counters["refused"] == 7


# ---------------------------------------------------------------- the host's side

def test_ip6_nft_sets_follow_lvsadm(rig):
    d, port, engine, nft, host, lvsadm, _ = rig
    text = "".join(nft)
    assert "add element ip6 pylvs vips { 2001:db8::2 }" in text
    assert "add element ip6 pylvs masq { tcp . 2001:db8::12 . 8080 }" in text
    assert "add element ip6 pylvs masq_addrs { 2001:db8::12 }" in text
    assert " ip pylvs" not in text        # the IPv4 table is not touched
    nft.clear()
    lvsadm("-a", "-t", "[%s]:80" % VIP, "-r", "[2001:db8::10]:80", "-g")
    assert nft == []
    lvsadm("-A", "-t", "198.51.100.2:80", "-s", "rr")
    assert nft == ["add element ip pylvs vips { 198.51.100.2 }\n"]
    assert d.vips6 == frozenset([a6(VIP)])


def test_workers_take_ipv6_services_too(tmp_path):
    """--workers hashes IPv6 as well (lvs/fanout.py): an IPv6 service is carried out by
    the daemon and then by every worker."""
    from lvs.daemon import Daemon

    class Workers:
        procs = []
        asked = []

        def ask(self, message):
            self.asked.append(message)
            return [{"stdout": "", "stderr": "", "status": 0}]

    daemon = Daemon(str(tmp_path / "lvs.sock"))
    daemon.workers = Workers()
    ask = lambda *argv: daemon.handle({"pylvs": 1, "op": "adm", "argv": list(argv)})
    assert ask("-A", "-t", "[2001:db8::2]:80", "-s", "rr")["status"] == 0
    assert len(daemon.engine.services) == 1 and daemon.workers.asked[-1]["argv"][:2] == ["-A", "-t"]
    answer = daemon.handle({"pylvs": 1, "op": "replace", "stdin": "-A -t [2001:db8::3]:80 -s rr\n"})
    assert answer["status"] == 0 and len(daemon.engine.services) == 1
    assert daemon.workers.asked[-1]["op"] == "replace"



def test_a_vip_the_host_would_answer_for_itself_is_said(rig, monkeypatch):
    d, port, engine, nft, host, lvsadm, logs = rig
    monkeypatch.setattr(director_mod.hostconf, "read_sysctl", lambda name: "1" if "forwarding" in name else "0")
    lvsadm("-A", "-t", "[%s]:80" % DIP, "-s", "rr")
    lvsadm("-A", "-t", "[2001:db8::]:80", "-s", "rr")
    said = [line for line in logs if "the host answers its neighbour solicitations too" in line]
    assert len(said) == 2 and "is an address of eth0" in said[0] and "subnet-router anycast" in said[1]
    lvsadm("-E", "-t", "[%s]:80" % DIP, "-s", "wrr")
    assert len([line for line in logs if "solicitations too" in line]) == 2     # once each


def test_short_and_odd_ipv6_frames_raise_nothing(rig):
    d, port, engine, *_ = rig
    base = bytes(Ether(src=mac(CLIENT_MAC), dst=mac(MAC)) / IPv6(src=CLIENT, dst=VIP, nh=58, plen=0))
    frames = [base[:54], base[:40], base + b"\x80", base + b"\x87", base + b"\x88\x00",
              bytes(Ether(src=mac(CLIENT_MAC), dst="33:33:ff:00:00:02") / IPv6(src=CLIENT, dst="ff02::1:ff00:2",
                                                                                nh=0) / b"\x3a\x00")]
    d.receive(port, frames, 1.0)
    assert port.sent == []
