"""The live director's L2 side without root: ARP answers, neighbour resolution,
framing, echo replies and the nftables sets, on fake ports."""

import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from lvs import director as director_mod
from lvs import adm
from lvs.director import Director
from lvs.engine import Engine
from lvs.neigh import MCAST_SOLICIT, RETRANS_TIME, Neighbours, Routes
from helpers import FakePort

MAC = bytes.fromhex("020000000003")
CLIENT_MAC = bytes.fromhex("020000000001")
RS_MAC = bytes.fromhex("02000000000c")
DIP, VIP, CLIENT, RS = "198.51.100.3", "198.51.100.2", "198.51.100.1", "198.51.100.12"


@pytest.fixture
def rig(monkeypatch):
    nft = []
    monkeypatch.setattr(director_mod.hostconf, "run", lambda argv, check=True, input=None: nft.append(input))
    engine = Engine(director_addr=socket.inet_aton(DIP))
    d = Director(engine, ["eth0"], changes=None, log=lambda text: None)
    port = FakePort()
    d.ports, d.by_name = [port], {"eth0": port}
    d.addrs = {"eth0": [(socket.inet_aton(DIP), 24)]}
    import ipaddress
    d.routes = Routes(["eth0"], loader=lambda: [(ipaddress.IPv4Network("198.51.100.0/24"), None, "eth0")])
    d.routes.load(0.0)
    host_arp = {}
    d.neigh = Neighbours(host_table=lambda: host_arp)

    def lvsadm(*argv):
        out, err, status = adm.run(engine, list(argv), None)
        assert status == 0, err
        d.sync()

    lvsadm("-A", "-t", VIP + ":80", "-s", "rr")
    lvsadm("-a", "-t", VIP + ":80", "-r", RS + ":12", "-m")
    return d, port, engine, nft, host_arp, lvsadm


def syn(sport=40000):
    return bytes(Ether(src=CLIENT_MAC, dst=MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags="S"))


def test_arp_requests_for_a_vip_are_answered_and_others_are_not(rig):
    d, port, *_ = rig
    who_has = lambda target: bytes(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") /
                                   ARP(op=1, hwsrc=CLIENT_MAC, psrc=CLIENT, pdst=target))
    d.receive(port, [who_has(VIP), who_has("198.51.100.99"), who_has(DIP)], 1.0)
    assert len(port.sent) == 1
    answer = Ether(port.sent[0])
    assert answer.dst == "02:00:00:00:00:01" and answer[ARP].op == 2
    assert answer[ARP].psrc == VIP and answer[ARP].hwsrc == "02:00:00:00:00:03"
    assert answer[ARP].pdst == CLIENT


def test_nat_forwarding_resolves_the_real_server_by_arp_and_sends_what_waited(rig):
    d, port, engine, *_ = rig
    d.receive(port, [syn()], 1.0)
    # No MAC for the real server yet: one ARP request, the SYN waits.
    assert len(port.sent) == 1
    req = Ether(port.sent[0])
    assert req.dst == "ff:ff:ff:ff:ff:ff" and req[ARP].op == 1
    assert req[ARP].pdst == RS and req[ARP].psrc == DIP
    reply = bytes(Ether(src=RS_MAC, dst=MAC) / ARP(op=2, hwsrc=RS_MAC, psrc=RS, hwdst=MAC, pdst=DIP))
    d.receive(port, [reply], 1.1)
    assert len(port.sent) == 2
    out = Ether(port.sent[1])
    assert out.dst == "02:00:00:00:00:0c" and out.src == "02:00:00:00:00:03"
    assert out[IP].dst == RS and out[TCP].dport == 12 and out[IP].src == CLIENT
    # Known now: the next packet goes straight out.
    d.receive(port, [syn(40001)], 1.2)
    assert len(port.sent) == 3 and Ether(port.sent[2])[TCP].sport == 40001


def test_a_neighbour_that_never_answers_costs_its_queued_packets(rig):
    d, port, *_ = rig
    d.receive(port, [syn()], 1.0)
    t = 1.0
    for _ in range(MCAST_SOLICIT + 1):
        t += RETRANS_TIME
        d.timers(t)
    requests = [f for f in port.sent if Ether(f).haslayer(ARP)]
    assert len(requests) == MCAST_SOLICIT
    assert d.neigh.failed == 1 and d.next_deadline() is None


def test_the_neighbour_table_is_bounded_as_the_kernels():
    """gc_thresh3 entries at most: those being resolved stay, and unused ones older than
    5 s go (down to gc_thresh2) when room is needed; with none to free, the packet is dropped."""
    from lvs import neigh as neigh_mod
    table = Neighbours(host_table=dict)
    addr = [socket.inet_aton("203.0.113.%d" % (i % 250)) + bytes([i // 250]) for i in range(2000)]
    for i in range(neigh_mod.GC_THRESH3):
        table.queue(addr[i], "eth0", b"x", 1.0)
    table.queue(addr[neigh_mod.GC_THRESH3], "eth0", b"x", 1.5)
    assert len(table.pending) == neigh_mod.GC_THRESH3 and table.table_fulls == 1 and table.failed == 1
    # The unanswered ones fail and go; learned entries fill the table again.
    for t in (2.0, 3.0, 4.0, 5.0):
        table.due(t)
    assert not table.pending
    for i in range(neigh_mod.GC_THRESH3):
        table.learn(addr[i], b"\2" * 6, "eth0", 6.0, create=True)
    assert not table.learn(addr[1500], b"\2" * 6, "eth0", 7.0, create=True) and table.table_fulls == 2
    assert addr[1500] not in table.entries
    table.queue(addr[1500], "eth0", b"x", 12.0)      # all older than 5 s now: down below gc_thresh2
    assert addr[1500] in table.pending
    assert len(table.entries) == neigh_mod.GC_THRESH2 - 1 and table.table_fulls == 2   # n + 1 - thresh2 gone


def test_the_forced_gc_frees_down_to_gc_thresh2_counting_the_new_entry():
    """neigh_forced_gc's max_clean counts the entry being made: at exactly gc_thresh2
    entries one stale entry goes, and the table stays at gc_thresh2."""
    from lvs import neigh as neigh_mod
    table = Neighbours(host_table=dict)
    for i in range(neigh_mod.GC_THRESH2):
        table.learn(socket.inet_aton("203.0.113.%d" % (i % 250)) + bytes([i // 250]), b"\2" * 6, "eth0", 0.0,
                    create=True)
    table.learn(socket.inet_aton("198.51.100.77"), b"\2" * 6, "eth0", 100.0, create=True)
    assert len(table.entries) == neigh_mod.GC_THRESH2 and table.table_fulls == 0


def test_the_route_cache_is_bounded(monkeypatch):
    import ipaddress
    from lvs import neigh as neigh_mod
    monkeypatch.setattr(neigh_mod, "ROUTE_CACHE_MAX", 100)
    routes = Routes(["eth0"], loader=lambda: [(ipaddress.IPv4Network("0.0.0.0/0"),
                                               socket.inet_aton("198.51.100.1"), "eth0")])
    routes.load(0.0)
    for i in range(1000):
        hop = routes.lookup(socket.inet_aton("203.0.%d.%d" % (i // 250, i % 250)), 1.0)
        assert hop == ("eth0", socket.inet_aton("198.51.100.1"))
        assert len(routes.cache) <= 100


def test_the_host_neighbour_table_is_used_before_asking(rig):
    d, port, engine, nft, host_arp, _ = rig
    host_arp[socket.inet_aton(RS)] = (RS_MAC, "eth0")
    d.receive(port, [syn()], 1.0)
    assert len(port.sent) == 1 and Ether(port.sent[0]).dst == "02:00:00:00:00:0c"


def test_nat_replies_go_back_to_the_client_from_the_vip(rig):
    d, port, engine, nft, host_arp, _ = rig
    host_arp[socket.inet_aton(RS)] = (RS_MAC, "eth0")
    host_arp[socket.inet_aton(CLIENT)] = (CLIENT_MAC, "eth0")
    d.receive(port, [syn()], 1.0)
    synack = bytes(Ether(src=RS_MAC, dst=MAC) / IP(src=RS, dst=CLIENT) / TCP(sport=12, dport=40000, flags="SA"))
    d.receive(port, [synack], 1.01)
    out = Ether(port.sent[-1])
    assert out.dst == "02:00:00:00:00:01" and out[IP].src == VIP and out[TCP].sport == 80


def test_frames_for_other_macs_and_the_hosts_own_traffic_stay_out_of_the_engine(rig):
    d, port, engine, *_ = rig
    other = bytes(Ether(src=CLIENT_MAC, dst="02:00:00:00:00:99") / IP(src=CLIENT, dst=VIP) / TCP(flags="S"))
    own = bytes(Ether(src=CLIENT_MAC, dst=MAC) / IP(src=CLIENT, dst=DIP) / TCP(dport=22, flags="S"))
    d.receive(port, [other, own], 1.0)
    assert port.sent == [] and engine.conn_list() == []
    assert d.counters["not_for_us"] == 1 and d.counters["to_engine"] == 0


def test_echo_requests_to_a_vip_are_answered_from_the_vip(rig):
    d, port, engine, nft, host_arp, _ = rig
    host_arp[socket.inet_aton(CLIENT)] = (CLIENT_MAC, "eth0")
    ping = bytes(Ether(src=CLIENT_MAC, dst=MAC) / IP(src=CLIENT, dst=VIP, ttl=64) / ICMP(id=7, seq=3) / b"data")
    d.receive(port, [ping], 1.0)
    pong = Ether(port.sent[0])
    assert pong[IP].src == VIP and pong[IP].dst == CLIENT and pong[ICMP].type == 0
    assert pong[ICMP].id == 7 and bytes(pong[ICMP].payload) == b"data"
    assert not pong[IP].flags.DF  # the kernel's ICMP socket does no PMTU discovery
    rebuilt = IP(bytes(pong[IP]))
    del rebuilt.chksum, rebuilt[ICMP].chksum
    assert IP(bytes(rebuilt)).chksum == pong[IP].chksum
    assert IP(bytes(rebuilt))[ICMP].chksum == pong[ICMP].chksum


def test_nft_sets_follow_lvsadm(rig):
    d, port, engine, nft, host_arp, lvsadm = rig
    assert "add element ip pylvs vips { 198.51.100.2 }" in nft[0]
    assert "add element ip pylvs masq { tcp . 198.51.100.12 . 12 }" in nft[1]
    nft.clear()
    lvsadm("-a", "-t", VIP + ":80", "-r", "198.51.100.10:80", "-g")
    assert nft == []  # a DR server changes nothing the host must be kept from
    lvsadm("-D", "-t", VIP + ":80")
    assert "delete element ip pylvs vips { 198.51.100.2 }" in nft[0]
    assert d.vips == frozenset()
    # The deleted NAT server waits in the trash (its connections may live on):
    # its replies are still ours until the trash lets it go.
    assert "masq" not in nft[0]
    nft.clear()
    engine.expire(1000.0)
    d.sync()
    assert "delete element ip pylvs masq { tcp . 198.51.100.12 . 12 }" in nft[0]


def test_an_exception_in_the_loop_undoes_the_host_changes(tmp_path):
    """Whatever ends the loop, the journal is played back before the daemon exits."""
    from lvs.daemon import Daemon
    from lvs.hostconf import HostChanges
    marker = tmp_path / "undone"
    log = []
    daemon = Daemon(str(tmp_path / "lvs.sock"))
    daemon.log = log.append
    daemon.bind()
    daemon.changes = HostChanges(str(tmp_path / "daemon.state"), log=log.append, owner="lvs daemon")
    daemon.changes.claim()
    daemon.changes.command(["true"], ["touch", str(marker)], "a change to undo")
    assert (tmp_path / "daemon.state").exists()

    class Broken:
        ports = []
        counters = {}

        def next_deadline(self):
            return 0.0

        def timers(self, now):
            raise RuntimeError("bug in a timer")

        def close(self):
            pass

    daemon.director = Broken()
    with pytest.raises(RuntimeError):
        daemon.serve_forever()
    assert marker.exists() and not (tmp_path / "daemon.state").exists()
    assert not (tmp_path / "lvs.sock").exists()
    assert any("undo: touch" in line for line in log)


def test_a_vip_port_no_service_claims_is_refused_as_a_closed_local_port(rig):
    d, port, engine, nft, host_arp, _ = rig
    host_arp[socket.inet_aton(CLIENT)] = (CLIENT_MAC, "eth0")
    closed = bytes(Ether(src=CLIENT_MAC, dst=MAC) / IP(src=CLIENT, dst=VIP) /
                   TCP(sport=40000, dport=81, flags="S", seq=1000))
    d.receive(port, [closed], 1.0)
    rst = Ether(port.sent[-1])
    assert rst[IP].src == VIP and rst[TCP].sport == 81 and rst[TCP].dport == 40000
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 1001 and rst[TCP].seq == 0
    assert rst[IP].flags.DF and rst[IP].id == 0
    check = IP(bytes(rst[IP]))
    del check[TCP].chksum
    assert IP(bytes(check))[TCP].chksum == rst[TCP].chksum
    d.receive(port, [bytes(Ether(src=CLIENT_MAC, dst=MAC) / IP(src=CLIENT, dst=VIP) /
                           UDP(sport=5000, dport=54) / b"q")], 2.0)
    icmp = Ether(port.sent[-1])
    assert icmp[IP].src == VIP and icmp[ICMP].type == 3 and icmp[ICMP].code == 3
    # A RST to a closed port gets no answer; a claimed port is not refused.
    n = len(port.sent)
    d.receive(port, [bytes(Ether(src=CLIENT_MAC, dst=MAC) / IP(src=CLIENT, dst=VIP) /
                           TCP(sport=40001, dport=81, flags="R"))], 3.0)
    assert len(port.sent) == n and d.counters["refused"] == 2


def _established(d, port, host_arp):
    """One NAT connection, ESTABLISHED with its fast-path entry; its next data segment.
    (The order and the shedding need the fast path: it is on here even under PYLVS_FASTPATH=0.)"""
    d.engine.set_fastpath(True)
    host_arp[socket.inet_aton(RS)] = (RS_MAC, "eth0")
    host_arp[socket.inet_aton(CLIENT)] = (CLIENT_MAC, "eth0")
    d.receive(port, [syn()], 1.0)
    ack = Ether(src=CLIENT_MAC, dst=MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="A")
    d.receive(port, [bytes(ack)], 1.0)
    return bytes(Ether(src=CLIENT_MAC, dst=MAC) / IP(src=CLIENT, dst=VIP)
                 / TCP(sport=40000, dport=80, flags="PA") / b"GET / HTTP/1.1\r\n\r\n")


def _spoofed(n):
    return bytes(Ether(src=CLIENT_MAC, dst=MAC) / IP(src="203.0.113.%d" % n, dst=VIP)
                 / TCP(sport=1024 + n, dport=80, flags="S"))


def test_established_segments_go_out_before_the_new_connections_of_their_batch(rig):
    d, port, engine, nft, host_arp, _ = rig
    data = _established(d, port, host_arp)
    host_arp.update({socket.inet_aton("203.0.113.%d" % n): (CLIENT_MAC, "eth0") for n in range(1, 4)})
    sent = len(port.sent)
    d.receive(port, [_spoofed(1), _spoofed(2), data, _spoofed(3)], 2.0)
    out = [Ether(f) for f in port.sent[sent:]]
    assert len(out) == 4 and out[0][TCP].flags == "PA" and all(f[TCP].flags == "S" for f in out[1:])
    assert [f[IP].src for f in out[1:]] == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    assert d.counters["deferred"] >= 3 and d.counters["shed_syn"] == 0
    assert len(engine.conn_list()) == 4


def test_while_the_ring_backs_up_new_connections_are_shed_and_established_ones_served(rig):
    d, port, engine, nft, host_arp, _ = rig
    data = _established(d, port, host_arp)
    port.backlog = True
    sent = len(port.sent)
    fin = bytes(Ether(src=CLIENT_MAC, dst=MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="FA"))
    d.receive(port, [_spoofed(1), data, _spoofed(2), fin], 2.0)
    out = [Ether(f) for f in port.sent[sent:]]
    assert [str(f[TCP].flags) for f in out] == ["PA", "FA"]     # the FIN is no SYN: it is kept
    assert d.counters["shed_syn"] == 2 and len(engine.conn_list()) == 1
    assert engine.drops == {} or sum(engine.drops.values()) == 0   # shed, not an engine drop


@pytest.mark.parametrize("mode", ["0", "order"])
def test_the_batch_order_can_be_arrival_order_or_nothing_shed(rig, monkeypatch, mode):
    monkeypatch.setenv("PYLVS_ESTABLISHED_FIRST", mode)
    d0, port0, engine, nft, host_arp, _ = rig
    d = Director(engine, ["eth0"], changes=None, log=lambda text: None)
    d.ports, d.by_name, d.addrs, d.routes, d.neigh = d0.ports, d0.by_name, d0.addrs, d0.routes, d0.neigh
    d.sync()
    data = _established(d, port0, host_arp)
    host_arp[socket.inet_aton("203.0.113.1")] = (CLIENT_MAC, "eth0")
    port0.backlog = True
    sent = len(port0.sent)
    d.receive(port0, [_spoofed(1), data], 2.0)
    flags = [str(Ether(f)[TCP].flags) for f in port0.sent[sent:]]
    assert flags == (["S", "PA"] if mode == "0" else ["PA", "S"])
    assert d.counters["shed_syn"] == 0


def test_shedding_takes_ipv6_syns_too(rig):
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
    d = rig[0]
    v6 = lambda flags, *ext: bytes(IPv6(src="2001:db8::7", dst="2001:db8::2") / (ext[0] if ext else TCP(
        sport=1, dport=80, flags=flags)) / (TCP(sport=1, dport=80, flags=flags) if ext else b""))
    syn4 = bytes(IP(src=CLIENT, dst=VIP) / TCP(sport=2, dport=80, flags="S"))
    packets = [v6("S"), v6("A"), syn4, v6("S", IPv6ExtHdrDestOpt()), v6("SA")]
    kept = d._shed(packets)
    assert kept == [packets[1], packets[3], packets[4]] and d.counters["shed_syn"] == 2
