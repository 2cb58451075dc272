"""IPv4 reassembly in front of IPVS (nf_defrag_ipv4 -> ip_defrag), and refragmentation
on the way out (ip_do_fragment).

IPVS never sees a fragment: conntrack's defrag hook reassembles first, and
the transmit path cuts the datagram again. Reassembly follows ip_frag_queue:
a queue per (source, destination, ID, protocol) lives 30 s (ipfrag_time)
from its first fragment; an overlapping fragment discards the whole queue
(RFC 5722), a fragment inside data already held is a duplicate and only it
is dropped; a last fragment that disagrees with the length known so far
discards the queue; ECN marks combine by ip_frag_ecn_table. The datagram
keeps the first fragment's header, gets DF only if every fragment had it,
and remembers the largest fragment (frag_max_size) and the pieces, so that
ip_do_fragment can give the same geometry back when it fits.
"""

import struct

from .checksum import checksum

IPFRAG_TIME = 30.0
HIGH_THRESH = 4 * 1024 * 1024      # ipfrag_high_thresh, bytes held
IP_DF, IP_MF, IP_OFFSET = 0x4000, 0x2000, 0x1FFF

# ip_frag_ecn_table, indexed by the OR of 1 << (tos & 3) over the fragments
# (NOT_ECT=1, ECT_1=2, ECT_0=4, CE=8): 3 = CE, 0xff = invalid (drop), 0 = keep.
_ECN = [0] * 16
for _i in (8 | 4, 8 | 2, 8 | 4 | 2):
    _ECN[_i] = 3
for _i in range(16):
    if _i & 1 and _i & 14:
        _ECN[_i] = 0xFF


class Reassembled:
    """A whole datagram and what ip_do_fragment needs to cut it the same way again."""

    __slots__ = ("packet", "pieces", "max_size", "pmtu")

    def __init__(self, packet, pieces, max_size, pmtu):
        self.packet = packet
        self.pieces = pieces      # payload lengths of the fragments, in offset order
        self.max_size = max_size  # IPCB(skb)->frag_max_size
        self.pmtu = pmtu          # IPSKB_FRAG_PMTU: every fragment had DF


class _Queue:
    __slots__ = ("frags", "length", "last_in", "meat", "max_size", "max_df_size",
                 "ecn", "expires", "held")

    def __init__(self, expires):
        self.frags = []           # (offset, end, header bytes, payload bytes), sorted
        self.length = 0
        self.last_in = False
        self.meat = 0
        self.max_size = 0
        self.max_df_size = 0
        self.ecn = 0
        self.expires = expires
        self.held = 0


class Reassembler:
    def __init__(self):
        self.queues = {}          # key -> _Queue, in creation (= expiry) order
        self.held = 0

    def next_deadline(self):
        for q in self.queues.values():
            return q.expires
        return None

    def expire(self, now):
        """Queues whose 30 s ran out, with the first fragment's header if it came (ip_expire)."""
        gone = []
        for key, q in list(self.queues.items()):
            if q.expires > now:
                break
            self._kill(key)
            first = q.frags[0] if q.frags and q.frags[0][0] == 0 else None
            gone.append((q.expires, first[2] + first[3] if first else None))
        return gone

    def _kill(self, key):
        q = self.queues.pop(key)
        self.held -= q.held

    def add(self, buf, ihl, now):
        """Queue one fragment. Returns a Reassembled, or a drop reason, or None (kept)."""
        frag_off = struct.unpack_from("!H", buf, 6)[0]
        key = (bytes(buf[12:16]), bytes(buf[16:20]), bytes(buf[4:6]), buf[9])
        q = self.queues.get(key)
        if q is None:
            if self.held > HIGH_THRESH:
                return "fragment_memory"
            q = self.queues[key] = _Queue(now + IPFRAG_TIME)
        offset = (frag_off & IP_OFFSET) << 3
        payload = bytes(buf[ihl:])
        end = offset + len(payload)
        if not frag_off & IP_MF:
            if end < q.length or (q.last_in and end != q.length):
                self._kill(key)
                return "fragment_invalid"
            q.last_in = True
            q.length = end
        else:
            if end & 7:
                end &= ~7
            if end > q.length:
                if q.last_in:
                    self._kill(key)
                    return "fragment_invalid"
                q.length = end
        if end == offset:
            self._kill(key)
            return "fragment_invalid"
        payload = payload[:end - offset]
        verdict = _place(q.frags, offset, end)
        if verdict == "fragment_overlap":
            self._kill(key)
        if verdict:
            return verdict
        q.frags.append((offset, end, bytes(buf[:ihl]), payload))
        q.frags.sort(key=lambda f: f[0])
        q.meat += len(payload)
        q.held += len(payload) + 256
        self.held += len(payload) + 256
        q.ecn |= 1 << (buf[1] & 3)
        size = len(payload) + ihl
        q.max_size = max(q.max_size, size)
        if frag_off & IP_DF:
            q.max_df_size = max(q.max_df_size, size)
        if not (q.last_in and q.frags[0][0] == 0 and q.meat == q.length):
            return None
        self._kill(key)
        return self._reassemble(q)

    @staticmethod
    def _reassemble(q):
        ecn = _ECN[q.ecn]
        if ecn == 0xFF:
            return "fragment_invalid"
        header = bytearray(q.frags[0][2])
        total = len(header) + q.length
        if total > 65535:
            return "fragment_oversize"
        struct.pack_into("!H", header, 2, total)
        header[1] |= ecn
        # DF only if every fragment carried it (max_df_size == max_size).
        struct.pack_into("!H", header, 6, IP_DF if q.max_df_size == q.max_size else 0)
        struct.pack_into("!H", header, 10, 0)
        struct.pack_into("!H", header, 10, checksum(header))
        packet = bytes(header) + b"".join(f[3] for f in q.frags)
        return Reassembled(packet, [len(f[3]) for f in q.frags], max(q.max_df_size, q.max_size),
                           q.max_df_size == q.max_size)


def _place(frags, offset, end):
    """inet_frag_queue_insert: None if [offset, end) can go in, else why not.

    The kernel keeps runs of contiguous fragments: a fragment inside one run
    is a duplicate (only it is dropped), one that straddles data it holds is
    an overlap (the whole datagram is dropped)."""
    if not frags:
        return None
    last_end = frags[-1][1]
    if last_end < end:
        return "fragment_overlap" if offset < last_end else None
    start = run_end = None
    for o, e, _, _ in frags:
        if start is not None and o == run_end:
            run_end = e  # the run goes on
            continue
        if start is not None and _clash(offset, end, start, run_end):
            return _clash(offset, end, start, run_end)
        start, run_end = o, e
    return _clash(offset, end, start, run_end)


def _clash(offset, end, start, run_end):
    if end <= start or offset >= run_end:
        return None
    if offset >= start and end <= run_end:
        return "fragment_duplicate"
    return "fragment_overlap"


def _frag_header(header, total, offset, more, keep_df, first):
    h = bytearray(header)
    if not first:
        _options_fragment(h)
    struct.pack_into("!H", h, 2, total)
    df = struct.unpack_from("!H", header, 6)[0] & IP_DF if keep_df else 0
    struct.pack_into("!H", h, 6, df | (offset >> 3) | (IP_MF if more else 0))
    struct.pack_into("!H", h, 10, 0)
    struct.pack_into("!H", h, 10, checksum(h))
    return bytes(h)


def _options_fragment(h):
    """ip_options_fragment: options without the copied bit become NOPs, in place."""
    i = 20
    while i < len(h):
        kind = h[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(h) or h[i + 1] < 2:
            break
        length = h[i + 1]
        if not kind & 0x80:
            h[i:i + length] = b"\x01" * len(h[i:i + length])
        i += length


def fragment(packet, mtu, reasm=None):
    """ip_do_fragment: cut `packet` (a datagram that came in fragments) for a link of `mtu`.

    With the original pieces intact and fitting, the fast path reuses them;
    otherwise the slow path cuts (mtu - header) & ~7 bytes at a time. The
    effective MTU is never above the largest fragment received.
    """
    if reasm is not None and reasm.max_size and reasm.max_size < mtu:
        mtu = reasm.max_size
    hlen = (packet[0] & 0x0F) * 4
    space = mtu - hlen
    header = packet[:hlen]
    data = packet[hlen:]
    fast = False
    if reasm is not None:
        pieces = reasm.pieces
        inner = len(data) - sum(pieces)  # bytes an encapsulation added in front
        first = pieces[0] + inner
        fast = first <= space and not first & 7 and all(
            p <= space and (not p & 7 or i == len(pieces) - 1) for i, p in enumerate(pieces))
    if not fast:
        pieces, left = [], len(data)
        while left > 0:
            n = min(left, space)
            if n < left:
                n &= ~7
            pieces.append(n)
            left -= n
        first = pieces[0]
    else:
        pieces = [first] + list(pieces[1:])
    # DF: never on the fast path (ip_fraglist_init sets just MF); on the slow
    # path only when every fragment received had it (IPSKB_FRAG_PMTU).
    keep_df = not fast and reasm is not None and reasm.pmtu
    out, offset = [], 0
    for i, n in enumerate(pieces):
        more = i < len(pieces) - 1
        hdr = _frag_header(header, hlen + n, offset, more, keep_df, i == 0)
        out.append(hdr + data[offset:offset + n])
        offset += n
    return out
