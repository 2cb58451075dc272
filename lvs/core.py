"""The packet path: what ip_vs_core.c does to each packet.

receive_packet() is ip_vs_out_hook (replies from real servers) then ip_vs_in_hook:
connection lookup, conn_reuse_mode, the dest check, ip_vs_schedule (with
persistence templates and cache bypass), statistics, the TCP state
machine, packet_xmit; ICMP errors go to lvs/proto_icmp.py. PacketPath is a
mixin of Engine (lvs/engine.py) and works on the engine's tables.
"""

import struct

from . import ipv6, proto_icmp, proto_tcp
from .checksum import checksum
from .conntab import IP_VS_CTPL_S_ASSURED, TableFull
from .control import service_key
from .defrag import Reassembled, fragment
from .flags import (IP_VS_CONN_F_BYPASS, IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_INACTIVE,
                    IP_VS_CONN_F_MASQ, IP_VS_CONN_F_NOOUTPUT, IP_VS_CONN_F_ONE_PACKET,
                    IP_VS_CONN_F_TEMPLATE, IP_VS_CONN_F_TUNNEL, IP_VS_DEST_F_AVAILABLE,
                    IP_VS_SVC_F_ONEPACKET, IP_VS_SVC_F_PERSISTENT, IPPROTO_ICMP,
                    IPPROTO_TCP, IPPROTO_UDP)
from .icmp import ICMP_DEST_UNREACH, ICMP_PORT_UNREACH
from .verdicts import Transmit
from forwarders import bypass, dr, nat, tunnel

_IPHDR = struct.Struct("!10H")
FTPPORT = 21
_XMIT = {IP_VS_CONN_F_MASQ: nat.xmit, IP_VS_CONN_F_TUNNEL: tunnel.xmit, IP_VS_CONN_F_BYPASS: bypass.xmit,
         IP_VS_CONN_F_DROUTE: dr.xmit}
_XMIT6 = {IP_VS_CONN_F_MASQ: nat.xmit_v6, IP_VS_CONN_F_TUNNEL: tunnel.xmit, IP_VS_CONN_F_BYPASS: bypass.xmit_v6,
          IP_VS_CONN_F_DROUTE: dr.xmit_v6}


def _addresses(buf):
    """(source, destination) of an IPv4 or IPv6 packet, as bytes."""
    if buf[0] >> 4 == 6:
        return bytes(buf[8:24]), bytes(buf[24:40])
    return bytes(buf[12:16]), bytes(buf[16:20])


def _no_dest_reason(svc):
    """The drop reason when svc found no real server: no_dest, or the fault a
    scheduler loaded from a file left (lvs.registry's guard: scheduler_error,
    scheduler_bad_dest). Read only on this path: the schedule call is unchanged."""
    fault = getattr(svc.scheduler, "fault", None)
    if fault is None:
        return "no_dest"
    svc.scheduler.fault = None
    return fault


class PacketInfo:
    """What a scheduler may look at (the kernel hands it the skb and ip_vs_iphdr)."""

    __slots__ = ("protocol", "saddr", "daddr", "sport", "dport")

    def __init__(self, protocol, saddr, daddr, sport, dport):
        self.protocol = protocol
        self.saddr = saddr
        self.daddr = daddr
        self.sport = sport
        self.dport = dport


class PacketPath:
    """Engine's packet path (ip_vs_core.c)."""

    def receive_packet(self, packet, now):
        """Handle one IPv4 packet arriving at the director; return the Transmits it causes.
        This is the general path; Engine.receive goes through the fast path first."""
        self._out = out = self.expire(now)
        self._reasm = None
        self.short = False
        self.touched = None      # the connection the packet found, for the fast path:
        self.resolved = None     # the direction it went by, if it was sent
        try:
            self._receive(packet)
        except TableFull:
            # ip_vs_conn_new failed (*ignored = -1): the packet is dropped, no ICMP.
            self.count_drop("table_full")
        except Exception as exc:  # a bug must not take the director down: count it
            self.count_drop("internal_error")
            if self.on_internal_error is not None:
                self.on_internal_error(packet, exc)   # a debugging hook (Engine); off: None
            return []
        return out

    def output(self, nexthop, packet, mtu):
        """ip_finish_output: send `packet` towards `nexthop` on a path of `mtu`, in
        fragments if it is too big or came in fragments (frag_max_size)."""
        reasm = self._reasm
        if reasm is not None and packet[0] >> 4 == 4 and not isinstance(reasm, Reassembled):
            # An IPv6 datagram in an IPv4 tunnel: the outer packet is new. (Once
            # ip_vs_tunnel_xmit clears IPCB's opt, IPCB->frag_max_size reads IP6CB's srhoff, 0.)
            reasm = None
        if reasm is None and len(packet) <= mtu:
            self._out.append(Transmit(nexthop, packet))
            return True
        if packet[0] >> 4 == 6:
            return self._output6(nexthop, packet, mtu, reasm)
        if packet[6] & 0x40 and reasm is not None and reasm.max_size > mtu:
            # ip_fragment: DF, and one of the fragments we got is bigger than the path.
            self.send_icmp_error(bytearray(packet), ICMP_DEST_UNREACH, 4, mtu)
            self.count_drop("frag_needed")
            return None
        for piece in fragment(packet, mtu, reasm):
            self._out.append(Transmit(nexthop, piece))
        return True

    def count_drop(self, reason):
        self.drops[reason] += 1

    def _receive(self, packet):
        n = len(packet)
        if n < 20:
            return self.count_drop("truncated")
        b0 = packet[0]
        if b0 >> 4 != 4:
            if b0 >> 4 == 6:
                return self._receive6(packet)  # lvs/core6.py
            return self.count_drop("not_ipv4")
        ihl = (b0 & 0x0F) << 2
        if ihl < 20:
            return self.count_drop("bad_header_length")
        if n < ihl:
            return self.count_drop("truncated")
        tot_len = (packet[2] << 8) | packet[3]
        if tot_len < ihl:
            return self.count_drop("bad_total_length")
        if tot_len > n:
            return self.count_drop("truncated")
        if ihl == 20:
            s = sum(_IPHDR.unpack_from(packet))
            s = (s & 0xFFFF) + (s >> 16)
            if (s & 0xFFFF) + (s >> 16) != 0xFFFF:
                return self.count_drop("bad_ip_checksum")
        elif checksum(packet[:ihl]) != 0:
            return self.count_drop("bad_ip_checksum")
        if not self.services:
            # The last service gone, IPVS unregisters its hooks (ip_vs_del_service):
            # packets, replies to surviving connections included, pass it by.
            return self.count_drop("no_service")
        buf = bytearray(packet[:tot_len])  # ip_rcv trims link-layer padding
        if ((buf[6] << 8) | buf[7]) & 0x3FFF:
            # IPVS sees datagrams, not fragments: conntrack's defrag hook
            # (nf_defrag_ipv4) reassembles them first.
            r = self.defrag.add(buf, ihl, self.now)
            if r is None:
                self.fragments_held += 1
                return None
            if isinstance(r, str):
                return self.count_drop(r)
            self._reasm = r
            buf = bytearray(r.packet)
            tot_len = len(buf)
        proto = buf[9]
        if proto == IPPROTO_ICMP:
            return self._icmp(buf, ihl)
        if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
            return self.count_drop("unknown_protocol")
        return self._transport(buf, ihl, proto, bytes(buf[12:16]), bytes(buf[16:20]), tot_len)

    def _transport(self, buf, ihl, proto, saddr, daddr, tot_len):
        """ip_vs_out_hook then ip_vs_in_hook for a TCP or UDP datagram of either
        family, its transport header at `ihl`."""
        if tot_len - ihl < 4:
            return self.count_drop("truncated")  # not even the ports to look up
        # A header cut short still finds its connection and is counted; then
        # the TCP state stays as it was, and NAT, which must rewrite it, drops it.
        self.short = tot_len - ihl < (20 if proto == IPPROTO_TCP else 8)
        sport = (buf[ihl] << 8) | buf[ihl + 1]
        dport = (buf[ihl + 2] << 8) | buf[ihl + 3]
        tab = self.conntab

        # ip_vs_out_hook: replies from a real server back to a client.
        cp = tab.by_out.get((proto, saddr, sport, daddr, dport))
        if cp is not None:
            return self._handle_response(cp, buf, ihl, proto)
        if self.config.nat_icmp_send:
            dest = self._real_service(proto, saddr, sport)
            if dest is not None and not (proto == IPPROTO_TCP and not self.short
                                         and buf[ihl + 13] & proto_tcp.RST):
                # A NAT real server talks on a connection we do not know: tell it.
                self.send_icmp_error(buf, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0,
                                     self.own_address(dest.svc.addr))
                return self.count_drop("nat_icmp_send")

        # ip_vs_in_hook
        if self.backup_only():
            return self.count_drop("backup_only")
        cp = tab.by_in.get((proto, saddr, sport, daddr, dport))
        config = self.config
        if cp is not None and proto == IPPROTO_TCP and not self.short and buf[ihl + 13] & proto_tcp.SYN:
            cp = self._conn_reuse(cp)
        if cp is not None and cp.dest is not None and not cp.dest.flags & IP_VS_DEST_F_AVAILABLE:
            if config.expire_nodest_conn:
                tab.expire_now(cp, self.now)
                cp = None
            else:
                return self.count_drop("dest_unavailable")
        if cp is None:
            cp = self._conn_schedule(buf, ihl, proto, saddr, daddr, sport, dport)
            if cp is None:
                return
        self.touched = cp
        self._in_stats(cp, tot_len)
        self._set_state(cp, buf, ihl, proto_tcp.DIR_INPUT)
        if self.transmit(cp, buf, ihl):
            self.resolved = proto_tcp.DIR_INPUT
        # The packet count, and the backups told if it is time (lvs/sync.py).
        if cp.flags & IP_VS_CONN_F_ONE_PACKET:
            pkts = config.sync_threshold[0]
        else:
            cp.in_pkts += 1
            pkts = cp.in_pkts
        if self.sync_master is not None:
            self.sync_conn(cp, pkts)
        elif cp.flags & IP_VS_CONN_F_ONE_PACKET and cp.control is not None:
            cp.control.in_pkts += 1
        self._conn_put(cp)

    def _conn_reuse(self, cp):
        """A SYN for a known connection: reschedule instead of reusing (conn_reuse_mode)."""
        config = self.config
        resched = False
        if config.expire_nodest_conn and cp.dest is not None and not cp.dest.weight:
            resched = True
        elif config.conn_reuse_mode and cp.control is None and (
                cp.state in (proto_tcp.TIME_WAIT, proto_tcp.CLOSE)
                or (config.conn_reuse_mode & 2 and cp.state == proto_tcp.FIN_WAIT
                    and cp.flags & IP_VS_CONN_F_NOOUTPUT)):
            resched = True  # no conntrack here, so never the "old_ct" drop
        if not resched:
            return cp
        if not cp.n_control:
            self.conntab.expire_now(cp, self.now)
        return None

    def _conn_put(self, cp):
        """ip_vs_conn_put: restart the timer; a one-packet connection ends at once."""
        if cp.flags & IP_VS_CONN_F_ONE_PACKET and cp.heap_at is None:
            self._conn_expire(cp, self.now)
        else:
            self.conntab.refresh(cp, self.now)

    def _in_stats(self, cp, length):
        dest = cp.dest
        if dest is not None and dest.flags & IP_VS_DEST_F_AVAILABLE:
            for st in (dest.stats, dest.svc.stats, self.tot_stats):
                st.inpkts += 1
                st.inbytes += length

    def _out_stats(self, cp, length):
        dest = cp.dest
        if dest is not None and dest.flags & IP_VS_DEST_F_AVAILABLE:
            for st in (dest.stats, dest.svc.stats, self.tot_stats):
                st.outpkts += 1
                st.outbytes += length

    def _conn_stats(self, cp, svc):
        for st in (cp.dest.stats, svc.stats, self.tot_stats):
            st.conns += 1

    def _set_state(self, cp, buf, ihl, direction):
        if cp.protocol == IPPROTO_UDP:
            cp.timeout = self.udp_timeout
            if direction == proto_tcp.DIR_OUTPUT:
                self._assure_ct(cp)
            return
        if buf[0] >> 4 == 6:
            # tcp_state_transition reads IPv6's TCP header at sizeof(struct ipv6hdr),
            # past no extension header: behind one, the flags it sees are not TCP's.
            ihl = 40
            if len(buf) < 60:
                return
        elif self.short:
            return  # tcp_state_transition: no header, no transition
        # set_tcp_state
        if cp.flags & IP_VS_CONN_F_NOOUTPUT:
            if direction == proto_tcp.DIR_OUTPUT:
                cp.flags &= ~IP_VS_CONN_F_NOOUTPUT
            else:
                direction = proto_tcp.DIR_INPUT_ONLY
        table = proto_tcp.TCP_STATES_DOS if self.config.secure_tcp_on else proto_tcp.TCP_STATES
        new_state = proto_tcp.next_state(table, direction, buf[ihl + 13], cp.state)
        if new_state != cp.state:
            dest = cp.dest
            if dest is not None:
                active = proto_tcp.ACTIVE[new_state]
                if not cp.flags & IP_VS_CONN_F_INACTIVE and not active:
                    dest.to_inactive()
                    cp.flags |= IP_VS_CONN_F_INACTIVE
                elif cp.flags & IP_VS_CONN_F_INACTIVE and active:
                    dest.to_active()
                    cp.flags &= ~IP_VS_CONN_F_INACTIVE
            if new_state == proto_tcp.ESTABLISHED:
                self._assure_ct(cp)
        cp.state = new_state
        cp.timeout = self.tcp_timeouts[new_state]

    @staticmethod
    def _assure_ct(cp):
        ct = cp.control
        if ct is not None and ct.flags & IP_VS_CONN_F_TEMPLATE:
            ct.state |= IP_VS_CTPL_S_ASSURED

    def _service_find(self, proto, daddr, dport):
        """ip_vs_service_find for a packet: its firewall mark, if any, first."""
        mark = self.fwmark(proto, daddr, dport) if self.fwmark is not None else 0
        return self._service_by_mark(mark, proto, daddr, dport)

    def _service_by_mark(self, mark, proto, daddr, dport):
        """ip_vs_service_find: fwmark first, then the exact service, FTP, port zero."""
        services = self.services
        if mark:
            svc = services.get(service_key(0, daddr, 0, mark))  # by mark and daddr's family
            if svc is not None:
                return svc
        svc = services.get((proto, daddr, dport))
        if svc is None and proto == IPPROTO_TCP and (dport == 20 or dport >= 1024):
            # The packet may be an FTP data connection (inet_port_requires_bind_service).
            ftp = services.get((proto, daddr, FTPPORT))
            if ftp is not None:
                return ftp
        if svc is None:
            svc = services.get((proto, daddr, 0))
        return svc

    def _conn_schedule(self, buf, ihl, proto, saddr, daddr, sport, dport):
        """tcp_conn_schedule / udp_conn_schedule and ip_vs_schedule."""
        if self.short:
            return self.count_drop("truncated")  # tcp/udp_conn_schedule: no header
        if proto == IPPROTO_TCP:
            flags = buf[ihl + 13]
            if flags & proto_tcp.RST or not (self.config.sloppy_tcp or flags & proto_tcp.SYN):
                # Not a connection start: the director's own stack gets it.
                return self.count_drop("no_connection")
        svc = self._service_find(proto, daddr, dport)
        if svc is None:
            return self.count_drop("no_service")
        if self._todrop():
            return self.count_drop("drop_packet")
        if sport == 20:  # never schedule active FTP data from a real server
            return self.count_drop("ftp_data")
        cp = self._schedule(svc, PacketInfo(proto, saddr, daddr, sport, dport))
        if cp is None:
            self._leave(svc, buf, ihl, proto, dport)
        return cp

    def _real_service(self, proto, addr, port):
        """ip_vs_has_real_service: a NAT real server at addr:port."""
        for svc in self.services.values():
            if svc.protocol == proto or svc.fwmark:
                for dest in svc.destinations:
                    if (dest.addr == addr and dest.port == port
                            and dest.conn_flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ):
                        return dest
        return None

    def _schedule(self, svc, pkt):
        """ip_vs_schedule: a new connection (and template) for svc, or None."""
        if svc.flags & IP_VS_SVC_F_PERSISTENT:
            return self._sched_persist(svc, pkt)
        if not svc.fwmark and pkt.dport != svc.port:
            return None  # port-zero services must be persistent
        dest = svc.scheduler.schedule(svc, pkt, self.now) if svc.scheduler else None
        if dest is None:
            return None
        flags = IP_VS_CONN_F_ONE_PACKET if (
            svc.flags & IP_VS_SVC_F_ONEPACKET and pkt.protocol == IPPROTO_UDP) else 0
        # The VIP is the service's own bytes object: one for all its connections.
        vaddr = pkt.daddr if svc.fwmark else svc.addr
        cp = self.conntab.new(pkt.protocol, pkt.saddr, pkt.sport, vaddr, pkt.dport, dest.addr,
                              dest.port or pkt.dport, flags, dest, svc.fwmark, self.now)
        self._conn_stats(cp, svc)
        return cp

    def _bypass(self, svc, buf, ihl, proto):
        """A cache_bypass connection: no real server, the packet goes where it was sent."""
        sport, dport = struct.unpack_from("!HH", buf, ihl)
        flags = IP_VS_CONN_F_BYPASS | (IP_VS_CONN_F_ONE_PACKET if (
            svc.flags & IP_VS_SVC_F_ONEPACKET and proto == IPPROTO_UDP) else 0)
        saddr, daddr = _addresses(buf)
        cp = self.conntab.new(proto, saddr, sport, daddr, dport,
                              bytes(len(saddr)), 0, flags, None, svc.fwmark, self.now)
        self._set_state(cp, buf, ihl, proto_tcp.DIR_INPUT)
        self.transmit(cp, buf, ihl)
        cp.in_pkts += 1
        self._conn_put(cp)

    def _sched_persist(self, svc, pkt):
        """ip_vs_sched_persist: connections follow the client's template."""
        tab = self.conntab
        now = self.now
        if len(pkt.saddr) == 16:   # ipv6_addr_prefix: the netmask is a prefix length
            snet = ((int.from_bytes(pkt.saddr, "big") >> (128 - svc.netmask)) << (128 - svc.netmask)
                    ).to_bytes(16, "big")
        else:
            snet = (int.from_bytes(pkt.saddr, "big") & svc.netmask).to_bytes(4, "big")
        protocol, vaddr, vport = pkt.protocol, pkt.daddr, 0
        if pkt.dport == svc.port:
            if svc.port != FTPPORT:
                vport = pkt.dport
        elif svc.fwmark:
            # The mark in the address's first word (union nf_inet_addr .ip), of the family's size.
            protocol, vaddr = 0, svc.fwmark.to_bytes(4, "big") + bytes(len(pkt.saddr) - 4)
        ct = tab.templates.get((protocol, snet, 0, vaddr, vport))
        if ct is None or not self._check_template(ct):
            dest = svc.scheduler.schedule(svc, pkt, now) if svc.scheduler else None
            if dest is None:
                return None
            dport = dest.port if pkt.dport == svc.port and svc.port != FTPPORT else 0
            ct = tab.new(protocol, snet, 0, vaddr, vport, dest.addr, dport,
                         IP_VS_CONN_F_TEMPLATE, dest, svc.fwmark, now)
            ct.timeout = float(svc.timeout)
        else:
            dest = ct.dest
        dport = pkt.dport
        if dport == svc.port and dest.port:
            dport = dest.port
        flags = IP_VS_CONN_F_ONE_PACKET if (
            svc.flags & IP_VS_SVC_F_ONEPACKET and pkt.protocol == IPPROTO_UDP) else 0
        try:
            cp = tab.new(pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr if svc.fwmark else svc.addr,
                         pkt.dport, dest.addr, dport, flags, dest, svc.fwmark, now)
        except TableFull:
            tab.refresh(ct, now)   # ip_vs_conn_put(ct): the template's timer restarts
            raise
        cp.control = ct  # ip_vs_control_add
        ct.n_control += 1
        tab.refresh(ct, now)
        self._conn_stats(cp, svc)
        return cp

    def _check_template(self, ct):
        """ip_vs_check_template: a template whose dest is gone or quiescent is invalidated."""
        dest = ct.dest
        if dest is not None and dest.flags & IP_VS_DEST_F_AVAILABLE and not (
                self.config.expire_quiescent_template and dest.weight == 0):
            return True
        if ct.vport != 0xFFFF:
            # Unhashed and rehashed under ports no packet carries: it can no
            # longer be found, and lives on only until its timer fires.
            self.conntab.unhash(ct)
            ct.dport = ct.vport = 0xFFFF
            ct.cport = 0
            self.conntab.hash(ct)
        return False

    def _leave(self, svc, buf, ihl, proto, dport):
        """ip_vs_leave: no real server, so the client hears port unreachable."""
        reason = _no_dest_reason(svc)
        daddr = _addresses(buf)[1]
        if self.config.cache_bypass and svc.fwmark and (
                ipv6.is_unicast(daddr) if len(daddr) == 16
                else 0 < daddr[0] < 224 and daddr != b"\xff\xff\xff\xff"):
            return self._bypass(svc, buf, ihl, proto)
        if svc.port == FTPPORT and dport != FTPPORT:
            return self.count_drop("no_service")
        self.send_icmp_error(buf, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0)
        self.count_drop(reason)

    def _handle_response(self, cp, buf, ihl, proto):
        """ip_vs_out + handle_response: NAT replies get the VIP back as source."""
        length = len(buf)
        self.touched = cp
        v6 = buf[0] >> 4 == 6
        if cp.flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ:
            sent = (nat.reply_v6 if v6 else nat.reply)(self, cp, buf, ihl)
        else:
            # routed through us: plain forwarding
            sent = (nat.forward_v6 if v6 else nat.forward)(self, buf, cp)
        if sent is None:
            return
        self._out_stats(cp, length)
        self._set_state(cp, buf, ihl, proto_tcp.DIR_OUTPUT)
        self._conn_put(cp)
        self.resolved = proto_tcp.DIR_OUTPUT

    def _icmp(self, buf, ihl):
        proto_icmp.handle(self, buf, ihl)

    def transmit(self, cp, buf, ihl):
        """cp->packet_xmit: send by the connection's forwarding method."""
        xmit = (_XMIT6 if buf[0] >> 4 == 6 else _XMIT).get(cp.flags & IP_VS_CONN_F_FWD_MASK)
        if xmit is None:
            self.count_drop("local")
            return None
        return xmit(self, cp, buf, ihl)

    def schedule_icmp(self, buf, inner, cihl, proto, caddr, vaddr, cport, vport):
        """ip_vs_try_to_schedule for an ICMP error (schedule_icmp): the quoted packet
        VIP -> client is read the other way round; no port unreachable is sent back."""
        svc = self._service_find(proto, vaddr, vport)
        if svc is None:
            self.count_drop("icmp_not_related")
            return None
        if cport == 20:
            self.count_drop("ftp_data")
            return None
        cp = self._schedule(svc, PacketInfo(proto, caddr, vaddr, cport, vport))
        if cp is None:
            self.count_drop(_no_dest_reason(svc))
        return cp
