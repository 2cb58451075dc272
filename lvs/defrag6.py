"""IPv6 reassembly in front of IPVS (nf_defrag_ipv6 -> nf_ct_frag6_gather), and
refragmentation on the way out (ip6_finish_output -> ip6_fragment).

IPVS never sees an IPv6 fragment: conntrack's defrag hook reassembles first
and the output path cuts the datagram again. Reassembly follows
nf_ct_frag6_queue, which differs from the IPv4 ip_frag_queue (lvs/defrag.py)
in ways that show:

- A queue is keyed by (source, destination, identification), plus the input
  interface only when the destination is multicast or link-local (fq_find);
  the next header is not part of the key. The kernel also keys by "user"
  (IP6_DEFRAG_CONNTRACK_IN + conntrack zone): we are that single user, zone 0.
- A queue lives 60 s (nf_conntrack_frag6_timeout) from its first fragment;
  the timer is not pushed back by later fragments. A queue is created before
  the fragment is checked, so a rejected fragment may leave an empty queue
  that just times out.
- Most bad fragments (a last fragment that disagrees with the length known
  so far, data past a known end, no data) drop only themselves: the queue
  lives on. An overlap (RFC 5722) discards the whole queue; a fragment inside
  one run of data already held is a duplicate and only it goes (the kernel
  pretends it was queued).
- A fragment with M=1 whose end is not a multiple of 8 kills its queue and is
  NOT dropped: nf_ct_frag6_gather returns 0 and the packet goes on as it is
  (see PASS_REASONS). So does a first fragment that does not hold the whole
  upper-layer header (RFC 8200 4.5), and a jumbogram (payload length 0).
- An atomic fragment (offset 0, M=0) gets no special case: it makes a queue
  that completes at once, and leaves without its Fragment header (the golden
  recording: forwarded to the real server with no Fragment header).
- frag_max_size is 40 + the largest Payload Length field of the fragments
  queued, i.e. the size of the largest fragment as received.
- On expiry (ip6frag_expire_frag_queue) the queue is dropped and, if its
  first fragment (offset 0) came, ICMPv6 Time Exceeded code 1 (fragment
  reassembly time exceeded) goes to the source quoting that fragment as
  received; netfilter's queues send it like the local ones do.
- Memory: while the bytes held pass nf_conntrack_frag6_high_thresh (4 MiB),
  inet_frag_find refuses every fragment, for new and existing queues alike;
  nothing is evicted early, queues leave by completion, error or timeout.

The datagram keeps the first fragment's headers up to the Fragment header,
which is cut out (the byte naming it takes its next header), the Payload
Length is recomputed, ECN marks combine by ip_frag_ecn_table.

Refragmentation (ip6_fragment) repeats the unfragmentable part
(ip6_find_1stfragopt on the datagram as it leaves) in every fragment and never
sends fragments larger than frag_max_size (at least IPV6_MIN_MTU). While the
received pieces are kept (the skb's frag_list) and fit, they are reused (the
fast path), else the slow path cuts (mtu - hlen - 8) & ~7 bytes at a time.
Both give the received geometry back for a datagram the sender cut greedily
(the usual case, and the golden one); the fast path also for any other.
Caveat: on drivers whose buffers skb_try_coalesce can merge, the kernel loses
the frag_list at reassembly and always takes the slow path; we model the
fast path as the code reads.
"""

import heapq
import struct

from .defrag import _ECN

FRAG6_TIMEOUT = 60.0                  # nf_conntrack_frag6_timeout (IPV6_FRAG_TIMEOUT)
FRAG6_HIGH_THRESH = 4 * 1024 * 1024   # nf_conntrack_frag6_high_thresh (IPV6_FRAG_HIGH_THRESH)
IPV6_MIN_MTU = 1280
IPV6_MAXPLEN = 65535
NEXTHDR_FRAGMENT = 44
IP6_MF = 0x0001
IP6_OFFSET = 0xFFF8

_HOP, _ROUTING, _AUTH, _NONE, _DEST = 0, 43, 51, 59, 60
_EXT = frozenset((_HOP, _ROUTING, NEXTHDR_FRAGMENT, _AUTH, _NONE, _DEST))   # ipv6_ext_hdr
_UPPER_MIN = {6: 20, 17: 8, 58: 8}    # ipv6frag_thdr_truncated: tcphdr, udphdr, icmp6hdr
_TLV_HAO = 0xC9                       # IPV6_TLV_HAO (Mobile IPv6 home address)

# Memory as the kernel counts it, roughly: each queue costs sizeof(struct
# frag_queue) (inet_frag_alloc), each fragment its skb->truesize (which
# depends on the driver: here its length plus a fixed overhead).
QUEUE_COST = 184
FRAG_OVERHEAD = 256

# Reasons add() gives. Drops: the fragment (or, where said, its queue) is gone.
DROP_REASONS = frozenset((
    "frag_memory",      # more than high_thresh bytes held: inet_frag_find refuses
    "frag_truncated",   # shorter than its Payload Length or its Fragment header
    "frag_too_big",     # offset + length past 65535, or the datagram's payload would be (queue killed)
    "frag_invalid",     # last fragment disagreeing with the known length, data past a
                        # known end, no data; or ECN marks that do not combine (queue killed)
    "frag_overlap",     # RFC 5722: the whole queue is discarded
    "frag_duplicate",   # inside data already held: only this fragment is dropped
))
# Not drops: nf_ct_frag6_gather returns 0 (NF_ACCEPT) and the packet goes on
# unreassembled, Fragment header and all; the engine decides what follows.
PASS_REASONS = frozenset((
    "frag_bad_length",      # M=1 and the end not a multiple of 8: the queue is killed too
    "frag_thdr_truncated",  # first fragment without the whole upper-layer header (RFC 8200 4.5)
    "frag_jumbo",           # Payload Length 0: a jumbogram, no fragment header processing
))


class Reassembled6:
    """A whole datagram and what ip6_fragment needs to cut it again."""

    __slots__ = ("packet", "pieces", "max_size")

    def __init__(self, packet, pieces, max_size):
        self.packet = packet      # bytearray: Fragment header removed, Payload Length fixed
        self.pieces = pieces      # fragmentable bytes of each fragment, in offset order
        self.max_size = max_size  # IP6CB(skb)->frag_max_size: 40 + largest Payload Length


class _Queue:
    __slots__ = ("frags", "starts", "ends", "length", "first_in", "last_in", "meat",
                 "max_size", "ecn", "expires", "held", "first", "fhoff", "nhoff")

    def __init__(self, expires):
        self.frags = []           # (offset, data)
        self.starts = []          # runs of fragments (inet_frag_queue_insert), sorted, disjoint
        self.ends = []
        self.length = 0
        self.first_in = False
        self.last_in = False
        self.meat = 0
        self.max_size = 0         # largest Payload Length field
        self.ecn = 0
        self.expires = expires
        self.held = QUEUE_COST
        self.first = None         # the offset-0 fragment as received
        self.fhoff = 0            # its Fragment header's offset
        self.nhoff = 0            # the offset of the byte naming its Fragment header


class Reassembler6:
    """The netfilter IPv6 fragment queues (one fqdir: one network namespace)."""

    def __init__(self, timeout=FRAG6_TIMEOUT, high_thresh=FRAG6_HIGH_THRESH):
        self.timeout = timeout            # read when a queue is created
        self.high_thresh = high_thresh
        self.queues = {}                  # key -> _Queue
        self.held = 0                     # bytes held, as frag_mem_limit
        self._timers = []                 # heap of (expires, seq, key, queue)
        self._seq = 0

    def next_deadline(self):
        timers = self._timers
        while timers and self.queues.get(timers[0][2]) is not timers[0][3]:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def expire(self, now):
        """Queues whose time ran out (nf_ct_frag6_expire), oldest first, as
        (deadline, first fragment as received or None). With the first fragment
        the kernel sends ICMPv6 Time Exceeded, code 1, quoting it."""
        gone = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            expires, _, key, q = heapq.heappop(timers)
            if self.queues.get(key) is not q:
                continue
            self._kill(key)
            gone.append((expires, q.first if q.first_in else None))
        return gone

    def _kill(self, key):
        q = self.queues.pop(key)
        self.held -= q.held

    def add(self, buf, frag_off, prev_nh_off, now, ifindex=0):
        """Queue one fragment: `buf` a whole IPv6 packet, `frag_off` the offset of
        its Fragment header, `prev_nh_off` that of the byte naming it (6, or the
        first byte of the extension header before it), `ifindex` the input
        interface (part of the key only for multicast and link-local
        destinations). Returns a Reassembled6, a reason (DROP_REASONS,
        PASS_REASONS), or None: held, the datagram is not complete."""
        n = len(buf)
        if n < 40:
            return "frag_truncated"
        plen = (buf[4] << 8) | buf[5]
        if plen == 0:
            return "frag_jumbo"
        if n < 40 + plen:
            return "frag_truncated"       # ip6_rcv_core drops it before the hook
        n = 40 + plen                     # ... and trims what follows the payload
        if not (frag_off >= 40 and 0 <= prev_nh_off < frag_off):
            return "frag_invalid"
        if _thdr_truncated(buf, n, frag_off):
            return "frag_thdr_truncated"
        if frag_off + 8 > n:
            return "frag_truncated"
        if not self.high_thresh or self.held > self.high_thresh:
            return "frag_memory"
        dst = bytes(buf[24:40])
        scoped = dst[0] == 0xFF or (dst[0] == 0xFE and dst[1] & 0xC0 == 0x80)
        key = (bytes(buf[8:24]), dst, bytes(buf[frag_off + 4:frag_off + 8]),
               ifindex if scoped else 0)
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = _Queue(now + self.timeout)
            self.held += q.held
            self._seq += 1
            heapq.heappush(self._timers, (q.expires, self._seq, key, q))

        fo = (buf[frag_off + 2] << 8) | buf[frag_off + 3]
        offset = fo & IP6_OFFSET
        start = frag_off + 8
        end = offset + n - start
        if end > IPV6_MAXPLEN:
            return "frag_too_big"
        if not fo & IP6_MF:
            if end < q.length or (q.last_in and end != q.length):
                return "frag_invalid"
            q.last_in = True
            q.length = end
        else:
            if end & 7:
                self._kill(key)
                return "frag_bad_length"
            if end > q.length:
                if q.last_in:
                    return "frag_invalid"
                q.length = end
        if end == offset:
            return "frag_invalid"
        verdict = _insert(q, offset, end)
        if verdict == "frag_overlap":
            self._kill(key)
        if verdict:
            return verdict
        q.frags.append((offset, bytes(buf[start:n])))
        q.meat += end - offset
        q.ecn |= 1 << ((buf[1] >> 4) & 3)
        if plen > q.max_size:
            q.max_size = plen
        cost = n + FRAG_OVERHEAD
        q.held += cost
        self.held += cost
        if offset == 0:
            q.first_in = True
            q.first = bytes(buf[:n])
            q.fhoff = frag_off
            q.nhoff = prev_nh_off
        if q.first_in and q.last_in and q.meat == q.length:
            self._kill(key)
            return _reassemble(q)
        return None


def _insert(q, offset, end):
    """inet_frag_queue_insert: None if [offset, end) goes in, else why not.

    The kernel keeps runs: a fragment that starts where the last one ends
    extends the last run, any other makes a run of its own (a run is never
    merged with its neighbours later). Inside one run: a duplicate; touching
    held data in any other way: an overlap."""
    starts, ends = q.starts, q.ends
    if not ends:
        starts.append(offset)
        ends.append(end)
        return None
    if ends[-1] < end:                # the common case: past the tail
        if offset < ends[-1]:
            return "frag_overlap"
        if offset == ends[-1]:
            ends[-1] = end
        else:
            starts.append(offset)
            ends.append(end)
        return None
    # The runs are disjoint and sorted: find the first that ends past offset.
    lo, hi = 0, len(ends)
    while lo < hi:
        mid = (lo + hi) // 2
        if ends[mid] <= offset:
            lo = mid + 1
        else:
            hi = mid
    if starts[lo] >= end:             # touches nothing: a run of its own
        starts.insert(lo, offset)
        ends.insert(lo, end)
        return None
    if starts[lo] <= offset and end <= ends[lo]:
        return "frag_duplicate"
    return "frag_overlap"


def _reassemble(q):
    """nf_ct_frag6_reasm."""
    ecn = _ECN[q.ecn]
    if ecn == 0xFF:
        return "frag_invalid"
    payload_len = q.fhoff - 40 + q.length
    if payload_len > IPV6_MAXPLEN:
        return "frag_too_big"
    first, fhoff = q.first, q.fhoff
    packet = bytearray(first[:fhoff])
    packet[q.nhoff] = first[fhoff]
    struct.pack_into("!H", packet, 4, payload_len)
    packet[1] |= ecn << 4
    frags = sorted(q.frags, key=lambda f: f[0])
    for _, data in frags:
        packet += data
    return Reassembled6(packet, [len(d) for _, d in frags], 40 + q.max_size)


def _skip_exthdr(buf, n, start, nexthdr):
    """ipv6_skip_exthdr: (offset of the upper-layer header, its number, the last
    Fragment header's frag_off field), or None."""
    frag_field = 0
    while nexthdr in _EXT:
        if nexthdr == _NONE or start + 2 > n:
            return None
        if nexthdr == NEXTHDR_FRAGMENT:
            if start + 4 > n:
                return None
            frag_field = (buf[start + 2] << 8) | buf[start + 3]
            if frag_field & IP6_OFFSET:
                break
            hdrlen = 8
        elif nexthdr == _AUTH:
            hdrlen = (buf[start + 1] + 2) << 2
        else:
            hdrlen = (buf[start + 1] + 1) << 3
        nexthdr = buf[start]
        start += hdrlen
    return start, nexthdr, frag_field


def _thdr_truncated(buf, n, frag_off):
    """ipv6frag_thdr_truncated, from the Fragment header on."""
    found = _skip_exthdr(buf, n, frag_off, NEXTHDR_FRAGMENT)
    if found is None or found[2] & IP6_OFFSET:
        return False
    offset, nexthdr, _ = found
    return offset + _UPPER_MIN.get(nexthdr, 1) > n


def find_frag_header(buf):
    """find_prev_fhdr: (offset of the first Fragment header, offset of the byte
    naming it) for add(), or None when the packet has none reachable.

    As in the kernel, that second offset is kept in a u8: when the header
    before the Fragment header starts at 256 or beyond, it wraps, and
    reassembly writes the next header into the wrong byte (the real one keeps
    saying 44)."""
    n = len(buf)
    if n < 40:
        return None
    nexthdr, prev, start = buf[6], 6, 40
    while nexthdr != NEXTHDR_FRAGMENT:
        if nexthdr not in _EXT or nexthdr == _NONE or start + 2 > n:
            return None
        hdrlen = (buf[start + 1] + 2) << 2 if nexthdr == _AUTH else (buf[start + 1] + 1) << 3
        prev, nexthdr = start & 0xFF, buf[start]
        start += hdrlen
    if start > n:
        return None
    return start, prev


def _find_tlv(packet, offset, kind):
    """ipv6_find_tlv: whether the options header at offset holds option `kind`."""
    n = len(packet)
    if offset + 2 > n:
        return False
    left = (packet[offset + 1] + 1) << 3
    if offset + left > n:
        return False
    offset += 2
    left -= 2
    while left > 0:
        t = packet[offset]
        if t == kind:
            return True
        if t == 0:                    # Pad1
            optlen = 1
        else:
            if left < 2:
                return False
            optlen = packet[offset + 1] + 2
            if optlen > left:
                return False
        offset += optlen
        left -= optlen
    return False


def find_1stfragopt(packet):
    """ip6_find_1stfragopt: (length of the unfragmentable part, offset of the byte
    that names what follows it), or None (malformed: the kernel drops)."""
    n = len(packet)
    offset, nh_off, found_rhdr = 40, 6, False
    while offset <= n:
        nh = packet[nh_off]
        if nh == _ROUTING:
            found_rhdr = True
        elif nh == _DEST:
            # CONFIG_IPV6_MIP6 (on in Debian): a home address option stays in front
            if not _find_tlv(packet, offset, _TLV_HAO) and found_rhdr:
                return offset, nh_off
        elif nh != _HOP:
            return offset, nh_off
        if offset + 2 > n:
            return None
        nh_off = offset
        offset += (packet[offset + 1] + 1) << 3
        if offset > IPV6_MAXPLEN:
            return None
    return None


def needs_fragment6(packet_len, mtu, reasm):
    """__ip6_finish_output: does a packet of this length leave in fragments?
    (Larger than the path MTU, or than the largest fragment it came in.)"""
    if packet_len > mtu:
        return True
    return bool(reasm is not None and reasm.max_size and packet_len > reasm.max_size)


def mtu_too_big6(packet_len, mtu, reasm):
    """__mtu_check_toobig_v6 (ip_vs_xmit.c): Packet Too Big instead of sending?
    A reassembled datagram by its largest fragment, any other by its length."""
    if reasm is not None and reasm.max_size:
        return reasm.max_size > mtu
    return packet_len > mtu


def fragment6(packet, mtu, reasm, ident):
    """ip6_fragment: cut `packet` for a path of `mtu`, with identification `ident`
    (ipv6_select_ident's, from the caller). Returns the fragments (bytes), or []
    where the kernel gives up: a malformed extension header chain, or fail_toobig
    (frag_max_size above mtu, or no room for 8 bytes after the headers)."""
    found = find_1stfragopt(packet)
    if found is None:
        return []
    hlen, nh_off = found
    if reasm is not None and reasm.max_size:
        if reasm.max_size > mtu:
            return []
        mtu = max(reasm.max_size, IPV6_MIN_MTU)   # no fragment larger than received
    if mtu < hlen + 8 + 8:
        return []
    space = mtu - hlen - 8
    total = len(packet)
    pieces = None
    if reasm is not None and len(reasm.pieces) > 1:
        rest = list(reasm.pieces[1:])
        first = total - hlen - sum(rest)  # what the head skb holds after the headers
        if 0 < first <= space and not first & 7 and all(
                p <= space and (not p & 7 or i == len(rest) - 1) for i, p in enumerate(rest)):
            pieces = [first] + rest
    if pieces is None:
        pieces, left = [], total - hlen
        while left > 0:
            k = min(left, space)
            if k < left:
                k &= ~7
            pieces.append(k)
            left -= k
    header = bytearray(packet[:hlen])
    nexthdr = header[nh_off]
    header[nh_off] = NEXTHDR_FRAGMENT
    tag = struct.pack("!I", ident & 0xFFFFFFFF)
    out, offset = [], 0
    for i, k in enumerate(pieces):
        struct.pack_into("!H", header, 4, hlen - 40 + 8 + k)
        more = IP6_MF if i < len(pieces) - 1 else 0
        fh = struct.pack("!BBH", nexthdr, 0, offset | more) + tag
        out.append(bytes(header) + fh + bytes(packet[hlen + offset:hlen + offset + k]))
        offset += k
    return out
