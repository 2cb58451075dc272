"""IPv6 fragments: reassembled before IPVS (nf_ct_frag6_gather), cut again on the way out (ip6_fragment)."""

import json
import struct
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from scapy.all import TCP, UDP, raw
from scapy.layers.inet6 import (HBHOptUnknown, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, fragment6 as scapy_fragment6)

from lvs.defrag6 import (DROP_REASONS, FRAG6_TIMEOUT, PASS_REASONS, Reassembled6, Reassembler6,
                         find_1stfragopt, find_frag_header, fragment6, mtu_too_big6,
                         needs_fragment6)

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden-v6" / "xmit-v6.json").read_text())
CLIENT, VIP, RS = "2001:db8:100::250", "2001:db8::200", "2001:db8:2::11"


def golden(case):
    return next(c for c in GOLDEN["cases"] if c["mode"] == "nat" and c.get("case") == case)


def frames(case, wire, dst):
    """The IPv6 packets on a wire going to dst (the Ethernet header cut off)."""
    return [bytearray.fromhex(f["hex"])[14:] for f in case[wire] if f["layers"][1].get("dst") == dst]


def add(r, pkt, now=1.0, **kw):
    fo, prev = find_frag_header(pkt)
    return r.add(bytearray(pkt), fo, prev, now, **kw)


def feed(r, pkts, now=1.0):
    return [add(r, p, now) for p in pkts]


def datagram(size=3000, tc=0, ident=0x1234, hbh=False, src=CLIENT, dst=VIP):
    """A UDP datagram with a Fragment header (to be cut), and the same without it (what comes back)."""
    head = IPv6(src=src, dst=dst, tc=tc, hlim=64)
    if hbh:
        head = head / IPv6ExtHdrHopByHop()
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    whole = raw(head / UDP(sport=40000, dport=53) / payload)
    udp = UDP(whole[-(8 + size):])                # its checksum taken over the whole datagram
    return head / IPv6ExtHdrFragment(id=ident) / udp, whole


def cut(pkt, size):
    return [raw(f) for f in scapy_fragment6(pkt, size)]


def piece(whole, a, data, more, ident=7):
    """One fragment of `whole` (no extension headers): offset a, these bytes, M flag."""
    hdr = bytearray(whole[:40])
    hdr[6] = 44
    struct.pack_into("!H", hdr, 4, 8 + len(data))
    return bytes(hdr) + struct.pack("!BBHI", whole[6], 0, a | more, ident) + data


def by_hand(whole, cuts, ident=7):
    """Fragments of `whole` (no extension headers) cut at the given offsets (multiples of 8)."""
    data = whole[40:]
    bounds = [0] + sorted(cuts) + [len(data)]
    return [piece(whole, a, data[a:b], int(b < len(data)), ident) for a, b in zip(bounds, bounds[1:])]


def geometry(pkts):
    out = []
    for p in pkts:
        fo, _ = find_frag_header(p)
        off = struct.unpack_from("!H", p, fo + 2)[0]
        out.append((off & ~7, off & 1, len(p)))
    return out


# -- the kernel's recording ------------------------------------------------------------------


def test_golden_udp_fragmented_nat():
    case = golden("udp-fragmented")
    sent = frames(case, "captured_on_client_eth0", VIP)
    r = Reassembler6()
    first, whole = feed(r, sent)
    assert first is None and isinstance(whole, Reassembled6)
    assert whole.pieces == [1232, 568] and whole.max_size == 1280 and not r.queues and r.held == 0
    p = IPv6(bytes(whole.packet))
    assert p.nh == 17 and p.plen == 1800 and len(p[UDP].payload) == 1792
    assert IPv6ExtHdrFragment not in p
    # The NAT rewrite the kernel did: destination, hop limit, UDP checksum (over the whole datagram).
    p.dst, p.hlim = RS, p.hlim - 1
    del p[UDP].chksum
    nat = raw(p)
    assert needs_fragment6(len(nat), 1500, whole) and not mtu_too_big6(len(nat), 1500, whole)
    got = fragment6(nat, 1500, whole, 333546398)
    out = frames(case, "captured_on_rs1_eth0", RS)
    assert geometry(got) == geometry(out) == geometry(sent) == [(0, 1, 1280), (1232, 0, 616)]
    assert got == [bytes(f) for f in out]           # byte for byte, new identification and all
    again = feed(Reassembler6(), out)[-1]
    assert again.packet == nat


def test_golden_atomic_fragment_leaves_without_fragment_header():
    case = golden("tcp-syn-atomic-fragment")
    (sent,) = frames(case, "captured_on_client_eth0", VIP)
    r = Reassembler6()
    whole = add(r, sent)
    assert isinstance(whole, Reassembled6) and whole.pieces == [24] and whole.max_size == 72
    assert not r.queues
    assert not needs_fragment6(len(whole.packet), 1500, whole)
    p = IPv6(bytes(whole.packet))
    p.dst, p.hlim = RS, p.hlim - 1
    del p[TCP].chksum
    (out,) = frames(case, "captured_on_rs1_eth0", RS)
    assert raw(p) == bytes(out)


# -- reassembly -----------------------------------------------------------------------------


def test_out_of_order_and_duplicate():
    pkt, whole = datagram()
    a, b, c = cut(pkt, 1280)
    r = Reassembler6()
    assert feed(r, [c, b, b]) == [None, None, "frag_duplicate"]
    res = add(r, a)
    assert bytes(res.packet) == whole and res.pieces == [1232, 1232, 544] and res.max_size == 1280


def test_overlap_discards_the_whole_queue():
    pkt, _ = datagram()
    a, b, c = cut(pkt, 1280)
    shifted = IPv6(b)
    shifted[IPv6ExtHdrFragment].offset -= 1
    r = Reassembler6()
    assert feed(r, [a, raw(shifted)]) == [None, "frag_overlap"]
    assert not r.queues and r.held == 0
    assert add(r, c) is None and [q.meat for q in r.queues.values()] == [544]


def test_runs_are_not_merged_afterwards():
    """Runs grow only at the tail: [16,24) then [0,8) then [8,16) are three runs, so
    [0,16) straddles two of them: an overlap, not a duplicate."""
    _, whole = datagram(size=24)
    parts = by_hand(whole, [8, 16, 24])           # 0-8, 8-16, 16-24, 24-32
    r = Reassembler6()
    assert feed(r, [parts[2], parts[0], parts[1]]) == [None, None, None]
    span = by_hand(whole, [16])[0]
    assert add(r, span) == "frag_overlap" and not r.queues
    r = Reassembler6()
    assert feed(r, [parts[0], parts[1], span]) == [None, None, "frag_duplicate"]


def test_bad_lengths():
    _, whole = datagram(size=100)
    a, b = by_hand(whole, [48])
    r = Reassembler6()
    assert add(r, a) is None
    odd = bytearray(a[:-3])                       # M=1 and 45 bytes: not a multiple of 8
    struct.pack_into("!H", odd, 4, len(odd) - 40)
    assert add(r, odd) == "frag_bad_length" and "frag_bad_length" in PASS_REASONS
    assert not r.queues                           # the queue is killed, the packet goes on
    assert add(r, b) is None
    data = whole[40:]
    early = piece(whole, 0, data[:8], 0)          # a last fragment ending before known data
    assert add(r, early) == "frag_invalid"
    assert len(r.queues) == 1                     # only the fragment is dropped
    past = piece(whole, 112, b"z" * 8, 1)         # data past the known end
    assert add(r, past) == "frag_invalid"
    empty = piece(whole, 16, b"", 1)
    assert add(r, empty) == "frag_invalid" and len(r.queues) == 1
    assert isinstance(add(r, a), Reassembled6)


def test_truncated_and_too_big():
    _, whole = datagram(size=100)
    a, b = by_hand(whole, [48])
    r = Reassembler6()
    assert r.add(bytearray(a[:-1]), 40, 6, 1.0) == "frag_truncated"   # shorter than Payload Length
    assert r.add(bytearray(a[:20]), 40, 6, 1.0) == "frag_truncated"
    far = bytearray(b)
    struct.pack_into("!H", far, 42, 65528)
    assert add(r, far) == "frag_too_big"
    # The queue was made before the check: it stays, empty, until it times out.
    assert len(r.queues) == 1 and r.expire(1.0 + FRAG6_TIMEOUT) == [(1.0 + FRAG6_TIMEOUT, None)]
    jumbo = bytearray(a)
    struct.pack_into("!H", jumbo, 4, 0)
    assert add(r, jumbo) == "frag_jumbo"
    # A first fragment that does not hold the whole UDP header passes unreassembled.
    cropped = bytearray(a[:52])
    struct.pack_into("!H", cropped, 4, 12)
    assert add(r, cropped) == "frag_thdr_truncated" and not r.queues


def test_ecn_marks_combine():
    pkt, whole = datagram(tc=0x02)
    a, b, c = cut(pkt, 1280)
    b = IPv6(b)
    b.tc = 0x03                                   # one fragment met congestion: CE
    res = feed(Reassembler6(), [a, raw(b), c])[-1]
    assert IPv6(bytes(res.packet)).tc == 0x03
    pkt, whole = datagram(tc=0x00)
    a, b, c = cut(pkt, 1280)
    b = IPv6(b)
    b.tc = 0x02                                   # ECT with not-ECT: invalid, dropped
    r = Reassembler6()
    assert feed(r, [a, raw(b), c])[-1] == "frag_invalid" and not r.queues


def test_timeout_and_first_fragment_quote():
    pkt, _ = datagram()
    a, b, c = cut(pkt, 1280)
    r = Reassembler6()
    assert feed(r, [a, c], now=5.0) == [None, None]
    other, _ = datagram(ident=99)
    feed(r, cut(other, 1280)[1:], now=10.0)       # no first fragment: no ICMP quote
    assert r.next_deadline() == 65.0
    assert r.expire(64.9) == []
    assert r.expire(65.0) == [(65.0, a)]
    assert r.next_deadline() == 70.0
    assert r.expire(100.0) == [(70.0, None)] and r.held == 0 and r.next_deadline() is None


def test_key_and_memory_bound():
    pkt, _ = datagram()
    a, b, c = cut(pkt, 1280)
    r = Reassembler6()
    feed(r, [a, b])
    add(r, c, ifindex=7)                          # global destination: the interface is not in the key
    assert not r.queues
    pkt, _ = datagram(dst="fe80::1")
    a, b, c = cut(pkt, 1280)
    feed(r, [a, b])
    assert add(r, c, ifindex=7) is None and len(r.queues) == 2
    r = Reassembler6(high_thresh=3000)
    pkt, _ = datagram()
    a, b, c = cut(pkt, 1280)
    assert feed(r, [a, b]) == [None, None]
    assert add(r, c) == "frag_memory"             # even for a queue that exists
    assert r.expire(1.0 + FRAG6_TIMEOUT) and add(r, c) is None


def test_extension_headers_before_and_after_the_fragment_header():
    pkt, whole = datagram(size=2000, hbh=True)
    pieces = cut(pkt, 1280)
    assert find_frag_header(pieces[0]) == (48, 40)
    res = feed(Reassembler6(), pieces)[-1]
    assert bytes(res.packet) == whole             # the HBH's next header is UDP again
    out = fragment6(res.packet, 1500, res, 5)
    assert all(IPv6ExtHdrHopByHop in IPv6(o) and len(o) <= 1280 for o in out)
    assert geometry(out) == geometry(pieces)
    # Destination options after the Fragment header come in front on the way out:
    # ip6_find_1stfragopt counts them unfragmentable (no routing header before them).
    head = IPv6(src=CLIENT, dst=VIP)
    body = IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2) / (b"x" * 2000)
    frags = cut(head / IPv6ExtHdrFragment(id=3) / body, 1280)
    res = feed(Reassembler6(), frags)[-1]
    assert bytes(res.packet) == raw(head / body)
    assert find_1stfragopt(res.packet) == (48, 40)
    out = fragment6(res.packet, 1500, res, 3)
    assert [IPv6(o).nh for o in out] == [60] * len(out)
    assert feed(Reassembler6(), out)[-1].packet == res.packet


def test_previous_header_offset_wraps_at_256():
    """find_prev_fhdr keeps the offset of the header before the Fragment header in
    a u8: past 255 the next header goes into the wrong byte."""
    hbh = IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=0x1E, optdata=b"h" * 250)] * 2)
    head = IPv6(src=CLIENT, dst=VIP) / hbh / IPv6ExtHdrDestOpt()
    body = UDP(sport=1, dport=2) / (b"x" * 100)
    pkt = raw(head / IPv6ExtHdrFragment(id=9, nh=17) / body)
    dest_at = 40 + len(raw(hbh))
    assert dest_at >= 256
    assert find_frag_header(pkt) == (dest_at + 8, dest_at & 0xFF)
    res = add(Reassembler6(), pkt)
    want = bytearray(raw(head / body))
    want[dest_at] = 44                            # still naming a Fragment header ...
    want[dest_at & 0xFF] = 17                     # ... and an option byte overwritten
    assert res.packet == want


def test_fragment6_limits():
    pkt, whole = datagram()
    res = feed(Reassembler6(), cut(pkt, 1400))[-1]
    assert res.max_size == 1400
    assert mtu_too_big6(len(whole), 1300, res) and fragment6(whole, 1300, res, 1) == []
    assert not mtu_too_big6(len(whole), 1400, res)
    assert not mtu_too_big6(1400, 1400, None) and mtu_too_big6(1401, 1400, None)
    # A smaller largest fragment still gives fragments of at least IPV6_MIN_MTU.
    res = feed(Reassembler6(), by_hand(whole, list(range(512, 3008, 512))))[-1]
    assert res.max_size == 40 + 8 + 512
    assert needs_fragment6(len(whole), 9000, res)
    out = fragment6(whole, 9000, res, 1)
    assert [len(o) for o in out] == [560] * 5 + [40 + 8 + 3008 - 2560]   # the fast path: as received
    res.pieces = [len(whole) - 40]                # pieces gone: the slow path at 1280
    assert [len(o) for o in fragment6(whole, 9000, res, 1)] == [1280, 1280, 48 + 3008 - 2464]


# -- properties -----------------------------------------------------------------------------


@given(st.integers(1, 6000), st.integers(1280, 3000), st.randoms())
def test_any_order_reassembles(size, fragsize, rnd):
    pkt, whole = datagram(size=size)
    pieces = cut(pkt, fragsize)
    rnd.shuffle(pieces)
    r = Reassembler6()
    got = feed(r, pieces)
    assert got[:-1] == [None] * (len(pieces) - 1)
    assert bytes(got[-1].packet) == whole and not r.queues and r.held == 0


@given(st.lists(st.integers(1, 200), min_size=1, max_size=12), st.randoms())
def test_any_cut_any_order(cells, rnd):
    """Cuts anywhere on 8-byte boundaries, fragments in any order, some doubled."""
    _, whole = datagram(size=sum(cells) * 8 - 8 + rnd.randrange(1, 8))
    cuts, at = [], 0
    for c in cells[:-1]:
        at += c * 8
        cuts.append(at)
    pieces = by_hand(whole, cuts)
    order = pieces + [rnd.choice(pieces) for _ in range(rnd.randrange(3))]
    rnd.shuffle(order)
    r = Reassembler6()
    done = [x for x in feed(r, order) if isinstance(x, Reassembled6)]
    assert bytes(done[0].packet) == whole
    assert done[0].pieces == [len(p) - 48 for p in pieces]
    assert done[0].max_size == max(len(p) for p in pieces)


@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 300), st.booleans(),
                          st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=20))
def test_random_fragments_never_raise(frags):
    r = Reassembler6(high_thresh=6000)
    for i, (off, length, more, cropped, tc) in enumerate(frags):
        data = bytes((off + j) & 0xFF for j in range(length))
        hdr = struct.pack("!IHBB", 0x60000000 | tc << 20, 8 + length, 44, 64)
        pkt = hdr + b"\x20\x01" + b"\0" * 14 + b"\x20\x01" + b"\0" * 13 + b"\1"
        pkt += struct.pack("!BBHI", 17, 0, (off * 8) & 0xFFF8 | more, 1) + data
        pkt = pkt[:len(pkt) - cropped]
        got = r.add(bytearray(pkt), 40, 6, float(i))
        assert got is None or got in DROP_REASONS | PASS_REASONS or isinstance(got, Reassembled6)
        r.expire(float(i))
    assert r.held >= 0


@given(st.binary(min_size=0, max_size=120), st.integers(0, 130), st.integers(0, 130))
def test_garbage_never_raises(blob, fo, prev):
    buf = bytearray(b"\x60\0\0\0" + struct.pack("!H", max(0, len(blob) - 34)) + blob)
    found = find_frag_header(buf)
    for fo, prev in ([found] if found else []) + [(fo, prev)]:
        got = Reassembler6().add(bytearray(buf), fo, prev, 0.0)
        assert got is None or got in DROP_REASONS | PASS_REASONS or isinstance(got, Reassembled6)
    find_1stfragopt(buf)
    fragment6(bytes(buf), 1280, None, 1)


@given(st.integers(0, 9000), st.integers(1280, 9000), st.booleans(), st.integers(0, 2**32 - 1),
       st.randoms())
def test_fragment6_then_reassemble(size, mtu, hbh, ident, rnd):
    _, whole = datagram(size=size, hbh=hbh)
    out = fragment6(whole, mtu, None, ident)
    assert all(len(o) <= mtu for o in out)
    assert all((len(o) - 48 - 8 * hbh) % 8 == 0 for o in out[:-1])
    rnd.shuffle(out)
    got = feed(Reassembler6(), out)
    assert bytes(got[-1].packet) == whole and got[:-1] == [None] * (len(out) - 1)
    assert got[-1].max_size == max(len(o) for o in out)


@given(st.integers(1, 9000), st.integers(1280, 3000), st.integers(1280, 9000))
def test_refragmenting_gives_the_received_geometry(size, fragsize, mtu):
    pkt, _ = datagram(size=size)
    pieces = cut(pkt, fragsize)
    res = feed(Reassembler6(), pieces)[-1]
    if mtu_too_big6(len(res.packet), mtu, res):
        assert fragment6(res.packet, mtu, res, 1) == []
        return
    if len(pieces) == 1:
        assert not needs_fragment6(len(res.packet), mtu, res)
        return
    out = fragment6(res.packet, mtu, res, 0x1234)
    assert geometry(out) == geometry(pieces)
    assert [o[48:] for o in out] == [p[48:] for p in pieces]
    res.pieces = [sum(res.pieces)]                # the slow path too: the sender cut greedily
    assert geometry(fragment6(res.packet, mtu, res, 1)) == geometry(pieces)

