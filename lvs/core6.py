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
        hop = packet[6] == ipv6.NEXTHDR_HOP
        if plen or not hop:     # ip6_rcv_core: a zero length may be a jumbogram's
            if 40 + plen > n:
                return self.count_drop("truncated")
            packet = packet[:40 + plen]     # ipv6_rcv trims link-layer padding
        if hop:
            bad = ipv6.hop_options_verdict(packet)   # ipv6_parse_hopopts
            if bad is not None:
                reason, problem = bad
                if problem is not None:
                    self._param_problem(packet, *problem)
                return self.count_drop(reason)
        if plen == 0:
            # No payload at all, or a jumbogram's options that passed: nothing IPVS serves
            # (the kernel would go on with the packet as long as it came).
            return self.count_drop("bad_payload_length")
        tot_len = 40 + plen
        if not self.services:
            return self.count_drop("no_service")
        buf = bytearray(packet)
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

    def _param_problem(self, packet, code, pointer):
        """icmpv6_param_prob: from the address the packet was sent to if it is ours (a VIP),
        else from our own (icmp6_send's source choice); none without one."""
        dst = bytes(packet[24:40])
        src = dst if self.is_local(dst) else self.director_addr6
        if src is not None:
            self._send_icmp6_error(bytearray(packet), (ipv6.ICMPV6_PARAMPROB, code), pointer, src)

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
