"""Sending ICMP errors as net/ipv4/icmp.c's icmp_send and net/ipv6/icmp.c's
icmp6_send do: from the right address, within the global and per-peer rate
limits (one global bucket for both families). A mixin of Engine.
"""

from .flags import IPPROTO_ICMP
from .icmp import build_error
from .icmp6 import FROM_IPV4, ICMPV6_PKT_TOOBIG, build_error6
from .verdicts import Transmit

ICMP_RATEMASK = 0x1818          # net.ipv4.icmp_ratemask
ICMP_RATELIMIT = 1.0            # net.ipv4.icmp_ratelimit, 1000 ms
XRLIM_BURST_FACTOR = 6
ICMP_PEERS_GC = 4096            # clients' buckets held before the idle ones are forgotten
ICMP_MSGS_PER_SEC, ICMP_MSGS_BURST = 1000, 50
# net.ipv6.icmp.ratelimit (1000 ms), shortened for wider prefixes by icmpv6_xrlim_allow:
# >> ((128 - plen) >> 5); pylvs takes the clients' route to be a /64 (on link).
ICMPV6_RATELIMIT = 1.0 / (1 << ((128 - 64) >> 5))


class IcmpSender:
    """Engine's icmp_send (net/ipv4/icmp.c)."""

    def send_icmp_error(self, buf, icmp_type, code, info, src=None):
        """icmp_send back to the packet's source: from the address it was sent to
        when that is ours (the VIP), else from `src`, the director's own address."""
        if buf[0] >> 4 == 6:
            return self._send_icmp6_error(buf, FROM_IPV4[icmp_type, code], info, src)
        if src is None:
            src = bytes(buf[16:20])
        if not self._icmp_allow(bytes(buf[12:16]), icmp_type, code):
            self.icmp_ratelimited += 1
            return
        packet = build_error(buf, icmp_type, code, info, src,
                             self.ip_ident(src, bytes(buf[12:16]), IPPROTO_ICMP))
        if packet is not None:
            self._out.append(Transmit(bytes(buf[12:16]), packet))

    def _send_icmp6_error(self, buf, type_code, info, src):
        """icmp6_send: from the VIP the packet was sent to, else from `src`."""
        icmp_type, code = type_code
        dst = bytes(buf[8:24])
        if src is None:
            src = bytes(buf[24:40])
        label = self.flow_hash(src + dst + bytes((58, icmp_type, code))) & 0xFFFFF
        packet = build_error6(buf, icmp_type, code, info, src, label)
        if packet is None:
            return
        # icmpv6_ratemask "0-1,3-127": every error but packet too big is limited.
        if icmp_type != ICMPV6_PKT_TOOBIG and not self._icmp_allow(dst, 3, 3, ICMPV6_RATELIMIT):
            self.icmp_ratelimited += 1
            return
        self._out.append(Transmit(dst, packet))

    def _icmp_peers_gc(self, now):
        """Forget the clients whose bucket is full again: one idle for the longest burst
        window is indistinguishable from a new one (inet_peer's GC, without changing any
        answer). A spoofed flood then holds at most a window's worth of peers."""
        self._icmp_gc_at = now
        window = XRLIM_BURST_FACTOR * max(ICMP_RATELIMIT, ICMPV6_RATELIMIT)
        for dst in [d for d, (_, last) in self._icmp_peers.items() if now - last >= window]:
            del self._icmp_peers[dst]

    def _icmp_allow(self, dst, icmp_type, code, ratelimit=ICMP_RATELIMIT):
        """icmpv4_global_allow and icmpv4_xrlim_allow with the default sysctls.

        Errors of the types in icmp_ratemask (unreachable, quench, time
        exceeded, parameter problem; never frag-needed) draw from a global
        bucket (1000/s, burst 50) and from one per client address: a token
        per icmp_ratelimit (1 s), at most 6 saved, the first error always
        allowed (inet_peer_xrlim_allow). The kernel takes 0-2 global credits
        at random per error; we take 1, its average.
        """
        if not (1 << icmp_type) & ICMP_RATEMASK or (icmp_type == 3 and code == 4):
            return True
        now = self.now
        if self._icmp_stamp is None:
            self._icmp_stamp = now
        delta = min(now - self._icmp_stamp, 1.0)
        if delta >= 0.02:
            incr = int(ICMP_MSGS_PER_SEC * delta)
            if incr:
                self._icmp_stamp = now
            self._icmp_credit = min(self._icmp_credit + incr, ICMP_MSGS_BURST)
        if not self._icmp_credit:
            return False
        self._icmp_credit -= 1
        peers = self._icmp_peers
        peer = peers.get(dst)
        if peer is None:
            if len(peers) >= ICMP_PEERS_GC and now - self._icmp_gc_at >= 1.0:
                self._icmp_peers_gc(now)   # at most once a second: the global credit admits
                                           # at most ~1000 new clients in between
            peer = peers[dst] = [0.0, now - 60.0]
        tokens = min(peer[0] + now - peer[1], XRLIM_BURST_FACTOR * ratelimit)
        peer[1] = now
        allowed = tokens >= ratelimit
        if allowed:
            tokens -= ratelimit
        peer[0] = tokens
        return allowed
