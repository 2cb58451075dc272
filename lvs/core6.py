"""The IPv6 half of the packet path (ip_vs_core.c under CONFIG_IP_VS_IPV6).

An IPv6 packet is checked as ip6_rcv_core checks it (length, hop-by-hop
options), its transport header found by the extension-header walk
(ipv6_find_hdr), fragments reassembled first (nf_defrag_ipv6, lvs/defrag6.py),
and then it takes the same path as IPv4 (PacketPath._transport): connection
lookup, scheduling, state, statistics and the connection's forwarding method,
which has an IPv6 form in each forwarder. ICMPv6 errors go to
lvs/proto_icmp6.py. A mixin of Engine, like PacketPath.
"""

from . import defrag6, ipv6, proto_icmp6
from .flags import IPPROTO_TCP, IPPROTO_UDP
from .verdicts import Transmit


class PacketPath6:
    """Engine's IPv6 receive (ipv6_rcv's checks, then ip_vs_in_hook for AF_INET6)."""

    def _receive6(self, packet):
        n = len(packet)
        if n < 40:
            return self.count_drop("truncated")
        plen = (packet[4] << 8) | packet[5]
        if plen == 0:
            # A jumbogram (RFC 2675) or no payload at all: nothing IPVS serves.
            return self.count_drop("bad_payload_length")
        tot_len = 40 + plen
        if tot_len > n:
            return self.count_drop("truncated")
        if packet[6] == ipv6.NEXTHDR_HOP:
            bad = ipv6.hop_options_verdict(packet[:tot_len])   # ip6_rcv_core: ipv6_parse_hopopts
            if bad is not None:
                reason, problem = bad
                if problem is not None:
                    # icmpv6_param_prob, from the VIP the packet was sent to
                    self._send_icmp6_error(bytearray(packet[:tot_len]), (ipv6.ICMPV6_PARAMPROB, problem[0]),
                                           problem[1], None)
                return self.count_drop(reason)
        if not self.services:
            return self.count_drop("no_service")
        buf = bytearray(packet[:tot_len])  # ipv6_rcv trims link-layer padding
        h = ipv6.find_hdr(buf)
        if h is None:
            return self.count_drop("bad_ext_header")
        if h.frag_at is not None:
            # IPVS sees datagrams, not fragments (nf_defrag_ipv6 reassembles first);
            # an atomic fragment (offset 0, no more) loses its Fragment header there too.
            found = defrag6.find_frag_header(buf)   # find_prev_fhdr, its u8 offset and all
            r = self.defrag6.add(buf, *found, self.now) if found else "frag_truncated"
            if r is None:
                self.fragments_held += 1
                return None
            if isinstance(r, str):
                if r not in defrag6.PASS_REASONS or h.fragoffs:
                    return self.count_drop(r)
                # nf_ct_frag6_gather gave up without dropping: the first fragment goes
                # on as it is, its transport header past the Fragment header.
            else:
                self._reasm = r
                buf = bytearray(r.packet)
                tot_len = len(buf)
                h = ipv6.find_hdr(buf)
                if h is None:
                    return self.count_drop("bad_ext_header")
        proto = h.protocol
        if proto == ipv6.NEXTHDR_ICMP:
            return proto_icmp6.handle(self, buf, h.offset)
        if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
            return self.count_drop("unknown_protocol")
        return self._transport(buf, h.offset, proto, bytes(buf[8:24]), bytes(buf[24:40]), tot_len)

    def _output6(self, nexthop, packet, mtu, reasm):
        """ip6_finish_output: a datagram longer than the path, or than the largest
        fragment it came in, leaves in fragments (ip6_fragment; IPVS set ignore_df,
        so no packet too big here: ensure_mtu_is_adequate refused what it had to)."""
        if not isinstance(reasm, defrag6.Reassembled6):
            reasm = None    # an IPv4 datagram inside a tunnel: the outer packet is new
        if len(packet) <= mtu and (reasm is None or len(packet) <= reasm.max_size):
            self._out.append(Transmit(nexthop, packet))
            return True
        ident = self.ip6_ident(bytes(packet[8:24]), bytes(packet[24:40]))
        for piece in defrag6.fragment6(packet, mtu, reasm, ident):
            self._out.append(Transmit(nexthop, piece))
        return True
