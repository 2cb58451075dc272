"""The fast path changes nothing but speed (lvs/fastpath.py).

Two engines get the same random sequences of packets and lvsadm commands:
one with the fast path, fed in batches, one without, fed packet by packet.
Every frame they send, every listing (-Ln --stats, -Lnc), every counter and
every drop must be the same. Other tests check that the fast path is taken.
"""

import random
import socket
import struct

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvs import adm
from lvs.checksum import checksum, l4_checksum
from lvs.engine import Engine

VIP = "203.0.113.200"
CLIENTS = ("198.51.100.7", "198.51.100.8")
RS = ("192.0.2.11", "192.0.2.12", "192.0.2.13")
# port -> (protocol, method of the real servers, extra dest options)
SERVICES = {
    80: ("-t", "-m", ()),
    53: ("-u", "-m", ()),
    443: ("-t", "-g", ()),
    8080: ("-t", "-i", ()),
    8081: ("-t", "-i", ("--tun-type", "gue", "--tun-port", "6080")),
    8082: ("-u", "-i", ("--tun-type", "gre")),
}


# The same flows over IPv6 (family 6): each address has its IPv6 counterpart.
V6 = {VIP: "2001:db8::c8", "198.51.100.7": "2001:db8:2::7", "198.51.100.8": "2001:db8:2::8",
      "192.0.2.11": "2001:db8:1::b", "192.0.2.12": "2001:db8:1::c", "192.0.2.13": "2001:db8:1::d"}


def a2b(text):
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def b2a(addr):
    return socket.inet_ntop(socket.AF_INET6 if len(addr) == 16 else socket.AF_INET, addr)


def to6(argv):
    """lvsadm arguments with each IPv4 ADDR:PORT of the services turned into [ADDR6]:PORT."""
    out = []
    for arg in argv:
        host, _, port = arg.partition(":")
        out.append("[%s]:%s" % (V6[host], port) if host in V6 and port else arg)
    return out


def ipv6(src, dst, proto, l4, hlim=64, tc=0, ext=None, frag=None):
    """An IPv6 packet; `ext`: a hop-by-hop (0) or destination options (60) header first;
    `frag`: a Fragment header with this offset/M field."""
    head, nxt = b"", proto
    if frag is not None:
        head = struct.pack("!BBHI", nxt, 0, frag, 0x1234) + head
        nxt = 44
    if ext is not None:
        head = struct.pack("!BB", nxt, 0) + b"\x01\x04\0\0\0\0" + head    # PadN
        nxt = ext
    body = head + l4
    return struct.pack("!IHBB16s16s", 0x60000000 | tc << 20, len(body), nxt, hlim,
                       a2b(src), a2b(dst)) + body


def ipv4(src, dst, proto, l4, ttl=64, df=True, tos=0, frag=0, options=b"", bad_check=False):
    ihl = 5 + len(options) // 4
    head = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + len(l4), 0x1234,
                                 (0x4000 if df else 0) | frag, ttl, proto, 0, a2b(src), a2b(dst)))
    head += options
    struct.pack_into("!H", head, 10, checksum(bytes(head)) ^ (0x0101 if bad_check else 0))
    return bytes(head) + l4


def tcp(src, dst, sport, dport, flags, payload):
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 0x50, flags, 8192, 0, 0) + payload)
    struct.pack_into("!H", seg, 16, l4_checksum(a2b(src), a2b(dst), 6, bytes(seg)))
    return bytes(seg)


def udp(src, dst, sport, dport, payload, zero_check=False):
    seg = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    if not zero_check:
        struct.pack_into("!H", seg, 6, l4_checksum(a2b(src), a2b(dst), 17, bytes(seg)) or 0xFFFF)
    return bytes(seg)


@st.composite
def oddities(draw):
    """Now and then a packet is made odd in one of the ways the fast path must
    leave to the general path; (what, value)."""
    odd = draw(st.integers(0, 19))
    value = None
    if odd == 1:
        value = draw(st.sampled_from([0, 1, 2]))          # TTL
    elif odd == 3:
        value = draw(st.sampled_from([0x2000, 0x0010, 0x2010]))  # MF, offset, both
    elif odd == 8:
        value = draw(st.floats(0, 1, exclude_max=True))    # where to cut it
    return odd, value, draw(st.sampled_from([0, 0, 10, 200, 1400, 1480])), draw(st.integers(0, 9)) == 0


def segment(eng, move, family=4):
    """The packet of one move of a flow. A NAT reply comes from the real server
    the connection went to (as the reference engine knows it); DR and tunnel
    replies routed through the director still carry the VIP."""
    port, client, cport, tos, reply, flags, (odd, value, size, zero_check) = move
    proto = 6 if SERVICES[port][0] == "-t" else 17
    vip = VIP
    if family == 6:
        client, vip = V6[client], V6[VIP]
    if reply:
        src = vip
        if SERVICES[port][1] == "-m":
            cp = eng.conntab.by_in.get((proto, a2b(client), cport, a2b(vip), port))
            src = b2a(cp.daddr) if cp is not None else RS[0] if family == 4 else V6[RS[0]]
        dst, sport, dport = client, port, cport
    else:
        src, dst, sport, dport = client, vip, cport, port
    if proto == 6:
        l4 = tcp(src, dst, sport, dport, flags, bytes(size))
    else:
        l4 = udp(src, dst, sport, dport, bytes(size), zero_check=zero_check)
    if family == 6:
        kw = {1: {"hlim": value}, 2: {"ext": 60}, 4: {"ext": 0}, 5: {"frag": 0}}.get(odd, {})  # 5: atomic
        if odd == 3:
            kw = {"frag": (value & 0x1FFF) << 3 | value >> 13 & 1}
        packet = ipv6(src, dst, proto, l4, tc=tos, **kw)
    else:
        kw = {1: {"ttl": value}, 2: {"bad_check": True}, 3: {"frag": value},
              4: {"options": b"\x01\x01\x01\x00"}, 5: {"df": False}}.get(odd, {})
        packet = ipv4(src, dst, proto, l4, tos=tos, **kw)
    if odd == 7:
        packet += b"\0" * 6          # link-layer padding
    elif odd == 8:
        packet = packet[:int(value * len(packet))]
    return packet


# What flows do: (reply?, TCP flags) in the order a client and server send them.
OPEN = [(False, 0x02), (True, 0x12), (False, 0x10)]
DATA = [(False, 0x18), (True, 0x18), (False, 0x10), (True, 0x10)]
CLOSE = [(False, 0x11), (True, 0x10), (True, 0x11), (False, 0x10)]
ODD = [(False, 0x04), (False, 0x00), (False, 0x50), (True, 0x14), (False, 0x02)]


@st.composite
def conversations(draw):
    """Packets of one flow: mostly what real clients and servers send, in order."""
    port = draw(st.sampled_from(sorted(SERVICES)))
    client = draw(st.sampled_from(CLIENTS))
    cport = draw(st.sampled_from([40000, 40001, 40002]))
    tos = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 0xB8, 0xBB]))  # ECN bits: tunnels map CE
    moves = list(OPEN) if draw(st.integers(0, 3)) else []
    for part in draw(st.lists(st.sampled_from(["open", "data", "data", "close", "odd"]), min_size=1, max_size=4)):
        if part == "open":
            moves += OPEN
        elif part == "data":
            moves += draw(st.lists(st.sampled_from(DATA), min_size=1, max_size=6))
        elif part == "close":
            moves += CLOSE
        else:
            moves.append(draw(st.sampled_from(ODD)))
    # Now and then a packet is lost, or its direction passes the director by.
    return [(port, client, cport, tos, reply, flags, draw(oddities())) for reply, flags in moves
            if draw(st.integers(0, 4))]


COMMANDS = [
    ["-e", "-t", VIP + ":80", "-r", RS[0] + ":80", "-m", "-w", "0"],
    ["-e", "-t", VIP + ":80", "-r", RS[0] + ":80", "-m", "-w", "3"],
    ["-d", "-t", VIP + ":80", "-r", RS[1] + ":80"],
    ["-a", "-t", VIP + ":80", "-r", RS[1] + ":80", "-m"],
    ["-d", "-u", VIP + ":53", "-r", RS[0] + ":53"],
    ["-a", "-u", VIP + ":53", "-r", RS[0] + ":53", "-m"],
    ["-e", "-t", VIP + ":443", "-r", RS[2] + ":443", "-g", "-w", "2"],
    ["--set", "30", "20", "10"],
    ["--set", "900", "120", "300"],
    ["-Z"],
    ["-E", "-t", VIP + ":80", "-s", "wlc"],
]
SYSCTLS = [("expire_nodest_conn", 1), ("expire_nodest_conn", 0), ("secure_tcp", 3), ("secure_tcp", 0),
           ("pmtu_disc", 0), ("pmtu_disc", 1), ("nat_icmp_send", 1), ("conn_reuse_mode", 0),
           ("conn_reuse_mode", 1), ("run_estimation", 0), ("run_estimation", 1)]

@st.composite
def interleaved(draw):
    """One to three conversations in one batch, their packets interleaved in order."""
    flows = draw(st.lists(conversations(), min_size=1, max_size=3))
    order = draw(st.permutations([i for i, flow in enumerate(flows) for _ in flow]))
    positions = [0] * len(flows)
    moves = []
    for i in order:
        moves.append(flows[i][positions[i]])
        positions[i] += 1
    return moves


steps = st.one_of(
    st.tuples(st.just("packets"), interleaved()),
    st.tuples(st.just("packets"), interleaved()),
    st.tuples(st.just("packets"), interleaved()),
    st.tuples(st.just("time"), st.sampled_from([0.0, 0.001, 1.0, 2.0, 11.0, 35.0, 70.0, 130.0, 400.0])),
    st.tuples(st.just("adm"), st.sampled_from(COMMANDS)),
    st.tuples(st.just("sysctl"), st.sampled_from(SYSCTLS)),
    st.tuples(st.just("mtu"), st.sampled_from([1500, 1000])),
)


def make_pair(seed, family=4):
    pair = tuple(Engine(seed=seed, director_addr=a2b("203.0.113.1"), director_addr6=a2b("2001:db8::1"),
                        fastpath=fastpath) for fastpath in (True, False))
    for eng in pair:
        for port, (flag, method, extra) in SERVICES.items():
            sched = "rr" if port != 443 else "wlc"
            opts = ["-p", "30"] if port == 8080 else []
            add = ["-A", flag, "%s:%d" % (VIP, port), "-s", sched] + opts
            assert adm.run(eng, to6(add) if family == 6 else add)[2] == 0
            for rs in RS:
                add = ["-a", flag, "%s:%d" % (VIP, port), "-r", "%s:%d" % (rs, port), method] + list(extra)
                assert adm.run(eng, to6(add) if family == 6 else add)[2] == 0
    return pair


def state(eng):
    stats = [(st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes)
             for st in [eng.tot_stats] + [s.stats for s in eng.services.values()]
             + [d.stats for s in eng.services.values() for d in s.destinations]]
    conns = [(cp.seq, cp.state, cp.flags, cp.expires, cp.timeout, cp.in_pkts, cp.daddr)
             for cp in eng.conn_list()]
    return (dict(eng.drops), stats, conns, adm.run(eng, ["-Ln", "--stats"])[0],
            adm.run(eng, ["-Lnc"])[0], eng.icmp_ratelimited)


def frames(out):
    return [(bytes(tx.nexthop), bytes(tx.packet)) for tx in out]


@pytest.mark.parametrize("family", [4, 6])
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), script=st.lists(steps, min_size=1, max_size=30))
def test_fast_path_on_and_off_agree(family, seed, script):
    fast, slow = make_pair(seed, family)
    now = 1.0
    for kind, arg in script:
        if kind == "packets":
            want, batch = [], []
            for move in arg:
                batch.append(segment(slow, move, family))
                want.extend(slow.receive(batch[-1], now))
            got = fast.receive_batch(batch, now)
            assert frames(got) == frames(want)
        elif kind == "time":
            now += arg
            assert frames(fast.expire(now)) == frames(slow.expire(now))
        elif kind == "adm":
            arg = to6(arg) if family == 6 else arg
            assert adm.run(fast, arg) == adm.run(slow, arg)
        elif kind == "sysctl":
            for eng in (fast, slow):
                eng.config.set(*arg)
        else:
            fast.mtu = slow.mtu = arg
        assert state(fast) == state(slow)


def _flow(eng, port, n, now=1.0, size=32):
    """A connection opened through `eng` and `n` data segments; returns what they sent."""
    client = CLIENTS[0]
    eng.receive(ipv4(client, VIP, 6, tcp(client, VIP, 40000, port, 0x02, b"")), now)
    eng.receive(ipv4(client, VIP, 6, tcp(client, VIP, 40000, port, 0x10, b"")), now)
    data = ipv4(client, VIP, 6, tcp(client, VIP, 40000, port, 0x18, bytes(size)))
    return eng.receive_batch([data] * n, now)


def test_established_segments_take_the_fast_path_for_every_method():
    for port in (80, 443, 8080, 8081):
        fast, slow = make_pair(7)
        before = fast.fast.hits
        got = _flow(fast, port, 50)
        assert fast.fast.hits - before >= 49, port
        assert frames(got) == frames(_flow(slow, port, 50))
        assert state(fast) == state(slow)


def test_ipv6_established_segments_take_the_fast_path_for_nat_and_dr():
    """NAT and direct routing of IPv6 flows without extension headers; tunnels, and
    segments with an extension header, take the general path. The same frames either way."""
    client, vip = V6[CLIENTS[0]], V6[VIP]
    for port, fast_expected in ((80, True), (443, True), (8080, False), (53, True)):
        fast, slow = make_pair(7, 6)
        sent = []
        for eng in (fast, slow):
            if port == 53:
                data = ipv6(client, vip, 17, udp(client, vip, 40000, port, bytes(32)))
                eng.receive(data, 1.0)
            else:
                eng.receive(ipv6(client, vip, 6, tcp(client, vip, 40000, port, 0x02, b"")), 1.0)
                eng.receive(ipv6(client, vip, 6, tcp(client, vip, 40000, port, 0x10, b"")), 1.0)
                data = ipv6(client, vip, 6, tcp(client, vip, 40000, port, 0x18, bytes(32)))
            with_ext = data[:6] + b"\x3c" + data[7:40] + bytes([data[6], 0]) + b"\x01\x04\0\0\0\0" + data[40:]
            with_ext = with_ext[:4] + struct.pack("!H", len(with_ext) - 40) + with_ext[6:]
            before = eng.fast.hits if eng.fast else 0
            sent.append(frames(eng.receive_batch([data] * 20 + [with_ext] * 5, 1.0)))
            if eng.fast:
                assert (eng.fast.hits - before >= 19) == fast_expected, port
                assert eng.fast.hits - before <= 20
        assert sent[0] == sent[1] and len(sent[0]) == 25
        assert state(fast) == state(slow)


def test_a_table_change_is_seen_by_the_next_packet():
    fast, slow = make_pair(3)
    for eng in (fast, slow):
        _flow(eng, 80, 5)
    # Deleting the connection's real server makes its packets be dropped
    # (expire_nodest_conn off): the fast path must not keep forwarding them.
    cp = fast.conn_list()[0]
    rs = ".".join(map(str, cp.daddr))
    for eng in (fast, slow):
        assert adm.run(eng, ["-d", "-t", VIP + ":80", "-r", rs + ":80"])[2] == 0
    client = CLIENTS[0]
    data = ipv4(client, VIP, 6, tcp(client, VIP, 40000, 80, 0x18, b"x"))
    assert fast.receive_batch([data] * 3, 2.0) == []
    assert fast.drops["dest_unavailable"] == 3
    for _ in range(3):
        assert slow.receive(data, 2.0) == []
    assert state(fast) == state(slow)


def test_random_mixture_stays_equal_over_many_packets():
    """A longer run than hypothesis gives: 3 000 packets of 40 flows with
    state changes, replies and odd packets, in batches of 64."""
    rnd = random.Random(5)
    fast, slow = make_pair(11)
    pool = []
    for i in range(40):
        client, cport = CLIENTS[i % 2], 41000 + i
        port = rnd.choice([80, 443, 8080, 8081])
        pool.append((client, cport, port))
    now = 1.0
    batch = []
    for i in range(3000):
        client, cport, port = rnd.choice(pool)
        flags = rnd.choice([0x02, 0x10, 0x18, 0x18, 0x18, 0x18, 0x11, 0x04])
        batch.append(ipv4(client, VIP, 6, tcp(client, VIP, cport, port, flags, bytes(rnd.randrange(0, 100)))))
        if len(batch) == 64:
            want = []
            for p in batch:
                want.extend(slow.receive(p, now))
            assert frames(fast.receive_batch(batch, now)) == frames(want)
            batch = []
            now += rnd.choice([0.0, 0.5, 3.0])
    assert state(fast) == state(slow)
    assert fast.fast.hits > 1000


def _both(pair, packets, now):
    fast, slow = pair
    want = []
    for p in packets:
        want.extend(slow.receive(p, now))
    assert frames(fast.receive_batch(packets, now)) == frames(want)
    assert state(fast) == state(slow)


def test_a_connection_reused_mid_batch_is_expired_before_the_next_packet():
    """conn_reuse_mode: a SYN on a CLOSE connection expires it at once; the
    next packet of the batch, fast or not, must find it gone."""
    pair = make_pair(2)
    a, b = CLIENTS
    for client in (a, b):
        _both(pair, [ipv4(client, VIP, 6, tcp(client, VIP, 40000, 443, flags, b""))
                     for flags in (0x02, 0x10, 0x18)], 1.0)
    _both(pair, [ipv4(a, VIP, 6, tcp(a, VIP, 40000, 443, 0x04, b""))], 2.0)
    assert pair[0].conn_list()[0].state == 6  # CLOSE
    syn = ipv4(a, VIP, 6, tcp(a, VIP, 40000, 443, 0x02, b""))
    data = ipv4(b, VIP, 6, tcp(b, VIP, 40000, 443, 0x18, b"more"))
    hits = pair[0].fast.hits
    _both(pair, [syn, data, data], 3.0)
    assert pair[0].fast.hits == hits + 2


def test_a_nat_udp_checksum_that_comes_out_zero_is_sent_as_ffff():
    pair = make_pair(4)
    client = CLIENTS[0]
    first = ipv4(client, VIP, 17, udp(client, VIP, 40000, 53, b"\0\0"))
    out = pair[0].receive_batch([first], 1.0)
    pair[1].receive(first, 1.0)
    check = struct.unpack_from("!H", out[0].packet, 26)[0]
    # One's complement: adding the sent checksum to a payload word makes the sum 0xFFFF.
    word = (~check & 0xFFFF) ^ 0xFFFF
    packet = ipv4(client, VIP, 17, udp(client, VIP, 40000, 53, struct.pack("!H", word)))
    hits = pair[0].fast.hits
    _both(pair, [packet], 1.0)
    assert pair[0].fast.hits == hits + 1
    assert pair[1].receive(packet, 1.0)[0].packet[26:28] == b"\xff\xff"


# ---------------------------------------------------------------- established first


def _deferred_split(batch, later):
    """Which packets of `batch` run(defer=...) handled at once, in order: `later`
    is a subsequence of it (identical packets belong to one flow, whose deferred
    ones come last), matched greedily."""
    first, j = [], 0
    for p in batch:
        if j < len(later) and p == later[j]:
            j += 1
        else:
            first.append(p)
    assert j == len(later)
    return first


def _masked(out):
    """Frames with IP ID and header checksum masked: IDs come from counters per
    address pair that flows share, so another order hands them out otherwise."""
    return sorted(p[:4] + b"--" + p[6:10] + b"--" + p[12:] for _, p in frames(out)) + \
        sorted(hop for hop, _ in frames(out))


@pytest.mark.parametrize("family", [4, 6])
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), script=st.lists(steps, min_size=1, max_size=30))
def test_established_first_is_the_same_work_in_another_order(family, seed, script):
    """The live director's order (lvs/director.py): the fast path's packets of a batch
    first, the general path's and what may depend on it after. That is exactly the
    packets handled one by one in that order (same frames, bit for bit); and since no
    flow's packets change order, the tables, counters and listings end as in arrival
    order, with the same frames sent (IP IDs aside)."""
    fast, slow = make_pair(seed, family)
    again = make_pair(seed, family)[1]
    now = 1.0
    for kind, arg in script:
        if kind == "packets":
            batch = [segment(slow, move, family) for move in arg]
            want = []
            for p in batch:
                want.extend(slow.receive(p, now))
            later = []
            got = fast.fast.run(batch, now, defer=later)
            got += fast.receive_batch(later, now)
            same = []
            for p in _deferred_split(batch, later) + later:
                same.extend(again.receive(p, now))
            assert frames(got) == frames(same)
            assert _masked(got) == _masked(want)
        elif kind == "time":
            now += arg
            out = frames(fast.expire(now))
            assert out == frames(slow.expire(now)) == frames(again.expire(now))
        elif kind == "adm":
            arg = to6(arg) if family == 6 else arg
            assert adm.run(fast, arg) == adm.run(slow, arg) == adm.run(again, arg)
        elif kind == "sysctl":
            for eng in (fast, slow, again):
                eng.config.set(*arg)
        else:
            fast.mtu = slow.mtu = again.mtu = arg
        assert state(fast) == state(slow) == state(again)


def _syn(client, cport, port=80):
    return ipv4(client, VIP, 6, tcp(client, VIP, cport, port, 0x02, b""))


def test_established_first_sends_data_ahead_of_new_connections():
    """A batch of SYNs with an established connection's segments among them:
    the segments go out first, the SYNs after, each flow in order."""
    fast, slow = make_pair(9)
    for eng in (fast, slow):
        _flow(eng, 80, 2)
    client = CLIENTS[0]
    data = ipv4(client, VIP, 6, tcp(client, VIP, 40000, 80, 0x18, b"payload"))
    flood = [_syn("203.0.113.%d" % (1 + i), 1024 + i) for i in range(6)]
    batch = flood[:3] + [data] + flood[3:] + [data]
    later = []
    first = fast.fast.run(batch, 1.0, defer=later)
    assert later == flood and len(first) == 2
    hits = fast.fast.hits
    rest = fast.receive_batch(later, 1.0)
    assert fast.fast.hits == hits and len(rest) == 6
    want = []
    for p in batch:
        want.extend(slow.receive(p, 1.0))
    assert _masked(first + rest) == _masked(want)
    assert state(fast) == state(slow)


@pytest.mark.parametrize("family", [4, 6])
def test_established_first_holds_a_flow_behind_its_own_general_packet(family):
    """A FIN (general path) holds back the segments after it of the same client
    address and port; another client's segments go ahead; a fragment (IPv4) or an
    extension header (IPv6) holds back everything after it."""
    fast, slow = make_pair(9, family)
    vip, (a, b) = VIP, CLIENTS
    if family == 6:
        vip, a, b = V6[VIP], V6[a], V6[b]

    def seg(client, cport, flags, payload, **odd):
        l4 = tcp(client, vip, cport, 80, flags, payload)
        return ipv4(client, vip, 6, l4, **odd) if family == 4 else ipv6(client, vip, 6, l4, **odd)

    for eng in (fast, slow):
        for client, cport in ((a, 40000), (b, 40001)):
            for flags in (0x02, 0x10):
                eng.receive(seg(client, cport, flags, b""), 1.0)
    fin = seg(a, 40000, 0x11, b"")
    data_a = seg(a, 40000, 0x18, b"after the fin")
    data_b = seg(b, 40001, 0x18, b"other flow")
    later = []
    first = fast.fast.run([data_b, fin, data_a, data_b], 1.0, defer=later)   # data_b learnt on its ACK
    assert later == [fin, data_a] and len(first) == 2
    fast.receive_batch(later, 1.0)
    for p in (data_b, fin, data_a, data_b):
        slow.receive(p, 1.0)
    assert state(fast) == state(slow)
    odd = seg(a, 40002, 0x18, b"x", **({"frag": 0x2000} if family == 4 else {"ext": 60}))
    later = []
    fast.fast.run([odd, data_b, data_b], 1.0, defer=later)
    assert later == [odd, data_b, data_b]
