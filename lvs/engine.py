"""The sans-IO IPVS core.

Engine is handed IPv4 packets and the time, and answers with the packets to
send and their next hop. It never reads a clock or touches a socket: `now`
is always an argument, and time only moves when the caller says so. The
packet path reads like the kernel's hooks:

  receive  -> ip_vs_out_hook (NAT replies), then ip_vs_in_hook (client side)
  in path  -> conn_in_get, conn_reuse_mode, dest check, conn_schedule,
              in_stats, set_state, packet_xmit, conn_put
  expire   -> the connection timers, the 2 s rate estimator, scheduler timers

A malformed packet is dropped and counted under a named reason; nothing a
packet contains can raise out of receive(). Configuration mistakes raise
ConfigError carrying ipvsadm's text, and change nothing.
"""

import struct
from collections import Counter

from . import proto_icmp, proto_tcp
from .checksum import checksum
from .config import EngineConfig
from .conntab import IP_VS_CTPL_S_ASSURED, ConnTable
from .control import (ADD_DEST, ADD_SERVICE, DEL_DEST, DEL_SERVICE, EDIT_DEST,
                      EDIT_SERVICE, FLUSH, SET_TIMEOUT, ZERO)
from .errors import ConfigError
from .flags import (IP_VS_CONN_F_BYPASS, IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_INACTIVE,
                    IP_VS_CONN_F_MASQ, IP_VS_CONN_F_NOOUTPUT, IP_VS_CONN_F_ONE_PACKET,
                    IP_VS_CONN_F_TEMPLATE, IP_VS_CONN_F_TUNNEL, IP_VS_DEST_F_AVAILABLE,
                    IP_VS_SVC_F_ONEPACKET, IP_VS_SVC_F_PERSISTENT, IPPROTO_ICMP,
                    IPPROTO_TCP, IPPROTO_UDP)
from .icmp import ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED, build_error
from .registry import scheduler_class
from .service import Dest, Service
from .stats import ESTIMATOR_PERIOD, Stats
from .verdicts import Transmit
from .defrag import Reassembler, fragment
from forwarders import bypass, dr, nat, tunnel

ICMP_EXC_FRAGTIME = 1

_IPHDR = struct.Struct("!10H")
ICMP_RATEMASK = 0x1818          # net.ipv4.icmp_ratemask
ICMP_RATELIMIT = 1.0            # net.ipv4.icmp_ratelimit, 1000 ms
XRLIM_BURST_FACTOR = 6
ICMP_MSGS_PER_SEC, ICMP_MSGS_BURST = 1000, 50
ESTIMATOR_CATCH_UP = 256       # ticks after which idle rates are surely 0
FTPPORT = 21
HZ = 250                       # Debian's kernel: timeouts are kept in jiffies
TEMPLATE_EXPIRE_LATER = 60.0   # ip_vs_conn_expire: a template still in use lives on 60 s
DEST_TRASH_PERIOD = 120.0      # IP_VS_DEST_TRASH_PERIOD
UDP_TIMEOUT = 5 * 60
CONN_TAB_SIZE = 4096
ZERO_ADDR = b"\0\0\0\0"

_XMIT = {IP_VS_CONN_F_MASQ: nat.xmit, IP_VS_CONN_F_TUNNEL: tunnel.xmit, IP_VS_CONN_F_BYPASS: bypass.xmit,
         IP_VS_CONN_F_DROUTE: dr.xmit}

EINVAL_TEXT = "Invalid operation.  Possibly wrong module version, address not unicast, ..."


class PacketInfo:
    """What a scheduler may look at (the kernel hands it the skb and ip_vs_iphdr)."""

    __slots__ = ("protocol", "saddr", "daddr", "sport", "dport")

    def __init__(self, protocol, saddr, daddr, sport, dport):
        self.protocol = protocol
        self.saddr = saddr
        self.daddr = daddr
        self.sport = sport
        self.dport = dport


class Engine:
    def __init__(self, config=None, seed=0, director_addr=None, mtu=1500, fwmark=None):
        self.config = config if config is not None else EngineConfig()
        self.seed = seed & 0xFFFFFFFF
        self.director_addr = director_addr  # tunnel source; None: the connection's VIP
        self.mtu = mtu
        self.fwmark = fwmark                # callable(protocol, daddr, dport) -> mark, or None
        self.services = {}                  # key -> Service, in creation order
        self.conntab = ConnTable()
        self.tot_stats = Stats()
        self.trash = []                     # deleted dests kept while connections use them
        self._trash_timer = None
        self._drop_counter = 0
        self._nodest_flush = None
        self.tcp_timeouts = list(proto_tcp.TIMEOUTS)
        self.udp_timeout = UDP_TIMEOUT
        self.drops = Counter()
        self.now = None
        self._start = None
        self._next_estimate = None
        self._ident = {}
        self.defrag = Reassembler()
        self.fragments_held = 0             # fragments queued for reassembly (not drops)
        self.relaying_icmp = False          # ip_vs_iph_icmp: an ICMP error is being relayed
        self.short = False                  # the packet in hand has a cut TCP/UDP header
        self._reasm = None                  # the datagram in hand, if it came in fragments
        self._timer_out = []
        self._icmp_peers = {}               # client address -> [tokens, last] (inet_peer)
        self._icmp_credit = ICMP_MSGS_BURST
        self._icmp_stamp = None
        self.icmp_ratelimited = 0
        self._out = []

    # ------------------------------------------------------------------ clock

    def _advance(self, now):
        if self._start is None:
            self._start = now
            self._next_estimate = now + ESTIMATOR_PERIOD
        if self.now is None or now > self.now:
            self.now = now

    def next_deadline(self):
        """When expire() next has work to do (connection, fragment and estimator timers)."""
        times = [t for t in (self.conntab.next_deadline(), self.defrag.next_deadline(),
                             self._next_estimate, self._trash_timer, self._nodest_flush)
                 if t is not None]
        return min(times) if times else None

    def expire(self, now):
        """Run every timer due up to `now`, in time order; return what the timers send."""
        self._advance(now)
        tab = self.conntab
        self._timer_out = sent = []
        if self.defrag.queues:
            self._expire_fragments(now)
        if self._nodest_flush is not None and self._nodest_flush <= now:
            self._nodest_flush = None
            self._flush_nodest(now)
        trash = self._trash_timer
        if self._next_estimate > now and (trash is None or trash > now):
            top = tab._heap[0][0] if tab._heap else None
            if top is None or top > now:
                return sent  # nothing due: the common case on the packet path
        while True:
            est = self._next_estimate
            trash = self._trash_timer
            bound = est if est < now else now
            if trash is not None and trash < bound:
                bound = trash
            cp = tab.pop_due(bound)
            if cp is not None:
                self._conn_expire(cp, max(cp.expires, self._start))
                continue
            if trash is not None and trash <= now and trash <= est:
                self._trash_expire(trash)
                continue
            if est <= now:
                self._estimate()
                self._next_estimate = est + ESTIMATOR_PERIOD
                due = int((now - est) // ESTIMATOR_PERIOD)
                if due > ESTIMATOR_CATCH_UP:
                    # A long quiet gap: no packet comes between these ticks, so
                    # after the first they only decay the averages, which reach
                    # zero well within ESTIMATOR_CATCH_UP ticks; skip the rest.
                    for _ in range(ESTIMATOR_CATCH_UP):
                        self._estimate()
                    self._next_estimate = est + (due + 1) * ESTIMATOR_PERIOD
                # Housekeeping on the estimator's beat: scheduler timers
                # (lblc/lblcr catch up on their own when they schedule) and
                # the trash of deleted real servers.
                beat = self._next_estimate - ESTIMATOR_PERIOD
                for svc in self.services.values():
                    if svc.scheduler is not None:
                        svc.scheduler.tick(beat)
                continue
            break
        return sent

    def _expire_fragments(self, now):
        """ip_expire: an incomplete datagram to one of our addresses earns its
        sender a time exceeded (fragment reassembly) once its first part came."""
        for _, head in self.defrag.expire(now):
            self.count_drop("fragment_timeout")
            if head is not None and self.is_local(head[16:20]):
                saved, self._out = self._out, self._timer_out
                self.send_icmp_error(bytearray(head), ICMP_TIME_EXCEEDED, ICMP_EXC_FRAGTIME, 0)
                self._out = saved

    def is_local(self, addr):
        """One of the director's own addresses: its own, or a service's VIP."""
        return addr == self.director_addr or any(
            svc.addr == addr for svc in self.services.values() if not svc.fwmark)

    def path_mtu(self, dest):
        """The MTU towards a real server: the link's, or less if a router said so."""
        if dest is not None and dest.pmtu and self.now < dest.pmtu_expires:
            return min(self.mtu, dest.pmtu)
        return self.mtu

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
            self.count_drop("no_dest")
        return cp

    def _estimate(self):
        if not self.config.run_estimation:
            return
        self.tot_stats.estimate()
        for svc in self.services.values():
            svc.stats.estimate()
            for dest in svc.destinations:
                dest.stats.estimate()

    def _conn_expire(self, cp, now):
        """ip_vs_conn_expire."""
        if cp.n_control:
            # A template that still controls connections is kept 60 s more.
            cp.timeout = TEMPLATE_EXPIRE_LATER
            self.conntab.refresh(cp, now)
            return
        self.conntab.remove(cp)
        ct = cp.control
        if ct is not None:
            has_ref = cp.timeout == 0
            ct.n_control -= 1
            cp.control = None
            if has_ref and not ct.n_control and (
                    not ct.flags & IP_VS_CONN_F_TEMPLATE or not ct.state & IP_VS_CTPL_S_ASSURED):
                self.conntab.expire_now(ct, now)
        dest = cp.dest
        if dest is not None:
            dest.unbind(bool(cp.flags & IP_VS_CONN_F_TEMPLATE), bool(cp.flags & IP_VS_CONN_F_INACTIVE))

    # ----------------------------------------------------------- packet path

    def receive(self, packet, now):
        """Handle one IPv4 packet arriving at the director; return the Transmits it causes."""
        self._out = out = self.expire(now)
        self._reasm = None
        self.short = False
        try:
            self._receive(packet)
        except Exception:  # a bug must not take the director down: count it
            self.count_drop("internal_error")
            return []
        return out

    def output(self, nexthop, packet, mtu):
        """ip_finish_output: send `packet` towards `nexthop` on a path of `mtu`, in
        fragments if it is too big or came in fragments (frag_max_size)."""
        reasm = self._reasm
        if reasm is None and len(packet) <= mtu:
            self._out.append(Transmit(nexthop, packet))
            return True
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
        if tot_len - ihl < 4:
            return self.count_drop("truncated")  # not even the ports to look up
        # A header cut short still finds its connection and is counted; then
        # the TCP state stays as it was, and NAT, which must rewrite it, drops it.
        self.short = tot_len - ihl < (20 if proto == IPPROTO_TCP else 8)
        saddr = bytes(buf[12:16])
        daddr = bytes(buf[16:20])
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
                                     self.director_addr or dest.svc.addr)
                return self.count_drop("nat_icmp_send")

        # ip_vs_in_hook
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
        self._in_stats(cp, tot_len)
        self._set_state(cp, buf, ihl, proto_tcp.DIR_INPUT)
        self.transmit(cp, buf, ihl)
        cp.in_pkts += 1
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
        if self.short:
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
                    dest.activeconns -= 1
                    dest.inactconns += 1
                    cp.flags |= IP_VS_CONN_F_INACTIVE
                elif cp.flags & IP_VS_CONN_F_INACTIVE and active:
                    dest.activeconns += 1
                    dest.inactconns -= 1
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

    # ------------------------------------------------------------ scheduling

    def _service_find(self, proto, daddr, dport):
        """ip_vs_service_find: fwmark first, then the exact service, FTP, port zero."""
        services = self.services
        if self.fwmark is not None:
            mark = self.fwmark(proto, daddr, dport)
            if mark:
                svc = services.get(("f", mark))
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
            self._leave(svc, buf, dport)
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

    def _todrop(self):
        """ip_vs_todrop: the drop_packet defense drops one new connection in
        am_droprate; only its "always" mode (3) is ever on without memory pressure."""
        if self.config.drop_packet != 3 or self.config.am_droprate <= 0:
            return False
        self._drop_counter -= 1
        if self._drop_counter > 0:
            return False
        self._drop_counter = self.config.am_droprate
        return True

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
        cp = self.conntab.new(pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport, dest.addr,
                              dest.port or pkt.dport, flags, dest, svc.fwmark, self.now)
        self._conn_stats(cp, svc)
        return cp

    def _bypass(self, svc, buf):
        """A cache_bypass connection: no real server, the packet goes where it was sent."""
        ihl = (buf[0] & 0x0F) * 4
        proto = buf[9]
        sport, dport = struct.unpack_from("!HH", buf, ihl)
        flags = IP_VS_CONN_F_BYPASS | (IP_VS_CONN_F_ONE_PACKET if (
            svc.flags & IP_VS_SVC_F_ONEPACKET and proto == IPPROTO_UDP) else 0)
        cp = self.conntab.new(proto, bytes(buf[12:16]), sport, bytes(buf[16:20]), dport,
                              ZERO_ADDR, 0, flags, None, svc.fwmark, self.now)
        self._set_state(cp, buf, ihl, proto_tcp.DIR_INPUT)
        self.transmit(cp, buf, ihl)
        cp.in_pkts += 1
        self._conn_put(cp)

    def _sched_persist(self, svc, pkt):
        """ip_vs_sched_persist: connections follow the client's template."""
        tab = self.conntab
        now = self.now
        snet = (int.from_bytes(pkt.saddr, "big") & svc.netmask).to_bytes(4, "big")
        protocol, vaddr, vport = pkt.protocol, pkt.daddr, 0
        if pkt.dport == svc.port:
            if svc.port != FTPPORT:
                vport = pkt.dport
        elif svc.fwmark:
            protocol, vaddr = 0, svc.fwmark.to_bytes(4, "big")
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
        cp = tab.new(pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport, dest.addr,
                     dport, flags, dest, svc.fwmark, now)
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

    def _leave(self, svc, buf, dport):
        """ip_vs_leave: no real server, so the client hears port unreachable."""
        daddr = bytes(buf[16:20])
        if (self.config.cache_bypass and svc.fwmark and 0 < daddr[0] < 224
                and daddr != b"\xff\xff\xff\xff"):
            return self._bypass(svc, buf)
        if svc.port == FTPPORT and dport != FTPPORT:
            return self.count_drop("no_service")
        self.send_icmp_error(buf, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0)
        self.count_drop("no_dest")

    # ------------------------------------------------------------ replies

    def _handle_response(self, cp, buf, ihl, proto):
        """ip_vs_out + handle_response: NAT replies get the VIP back as source."""
        length = len(buf)
        if cp.flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ:
            sent = nat.reply(self, cp, buf, ihl)
        else:
            sent = nat.forward(self, buf, cp)  # routed through us: plain forwarding
        if sent is None:
            return
        self._out_stats(cp, length)
        self._set_state(cp, buf, ihl, proto_tcp.DIR_OUTPUT)
        self._conn_put(cp)

    # ------------------------------------------------------------ ICMP

    def _icmp(self, buf, ihl):
        proto_icmp.handle(self, buf, ihl)

    def transmit(self, cp, buf, ihl):
        """cp->packet_xmit: send by the connection's forwarding method."""
        xmit = _XMIT.get(cp.flags & IP_VS_CONN_F_FWD_MASK)
        if xmit is None:
            self.count_drop("local")
            return None
        return xmit(self, cp, buf, ihl)

    def send_icmp_error(self, buf, icmp_type, code, info, src=None):
        """icmp_send back to the packet's source: from the address it was sent to
        when that is ours (the VIP), else from `src`, the director's own address."""
        if src is None:
            src = bytes(buf[16:20])
        if not self._icmp_allow(bytes(buf[12:16]), icmp_type, code):
            self.icmp_ratelimited += 1
            return
        packet = build_error(buf, icmp_type, code, info, src,
                             self.ip_ident(src, bytes(buf[12:16]), IPPROTO_ICMP))
        if packet is not None:
            self._out.append(Transmit(bytes(buf[12:16]), packet))

    def _icmp_allow(self, dst, icmp_type, code):
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
        peer = self._icmp_peers.get(dst)
        if peer is None:
            peer = self._icmp_peers[dst] = [0.0, now - 60.0]
        tokens = min(peer[0] + now - peer[1], XRLIM_BURST_FACTOR * ICMP_RATELIMIT)
        peer[1] = now
        allowed = tokens >= ICMP_RATELIMIT
        if allowed:
            tokens -= ICMP_RATELIMIT
        peer[0] = tokens
        return allowed

    def flow_hash(self, data):
        """A 32-bit hash keyed by the seed: where the kernel uses a boot-time random key."""
        h = self.seed ^ 0x811C9DC5
        for byte in data:
            h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
        return h

    def ip_ident(self, saddr, daddr, proto):
        """IP ID for packets without DF (__ip_select_ident).

        The kernel hashes (daddr, saddr, protocol) with a boot-time random key
        into a table of counters; the key here is the caller's seed, so a
        replay is reproducible.
        """
        key = (saddr, daddr, proto)
        n = self._ident.get(key)
        if n is None:
            n = self.flow_hash(saddr + daddr + bytes((proto,))) & 0xFFFF
        self._ident[key] = (n + 1) & 0xFFFF
        return n

    # ------------------------------------------------------------ control

    def apply(self, command):
        """Carry out a lvs.control.Command (what ipvsadm asks of the kernel)."""
        cmd = command.cmd
        if cmd == ADD_SERVICE:
            self.add_service(command.svc)
        elif cmd == EDIT_SERVICE:
            self.edit_service(command.svc)
        elif cmd == DEL_SERVICE:
            self.del_service(command.svc)
        elif cmd == FLUSH:
            self.flush()
        elif cmd == ADD_DEST:
            self.add_dest(command.svc, command.dest)
        elif cmd == EDIT_DEST:
            self.edit_dest(command.svc, command.dest)
        elif cmd == DEL_DEST:
            self.del_dest(command.svc, command.dest)
        elif cmd == ZERO:
            self.zero(command.svc)
        elif cmd == SET_TIMEOUT:
            self.set_timeouts(*command.timeouts)
        else:
            raise ConfigError("unsupported command %r" % cmd, 2)

    def _find_service(self, spec):
        return self.services.get(spec.key)

    def _make_scheduler(self, svc, name):
        if name == "none":
            return None
        return scheduler_class(name)(svc, self.config)

    @staticmethod
    def _check_service_spec(spec):
        if spec.pe_name:
            # No persistence engine is built (the kernel's only one, sip, needs
            # SIP parsing and conntrack helpers): answered as a missing module.
            raise ConfigError("Scheduler or persistence engine not found")

    def add_service(self, spec):
        if spec.key in self.services:
            raise ConfigError("Service already exists")
        if not spec.fwmark and spec.protocol not in (IPPROTO_TCP, IPPROTO_UDP):
            raise ConfigError("Protocol not available")
        self._check_service_spec(spec)
        svc = Service(0 if spec.fwmark else spec.protocol, spec.addr, spec.port, spec.fwmark)
        sched = self._make_scheduler(svc, spec.sched_name)  # may raise: nothing changed yet
        self._set_service(svc, spec)
        svc.scheduler = sched
        svc.sched_name = spec.sched_name
        self.services[svc.key] = svc
        return svc

    def edit_service(self, spec):
        svc = self._find_service(spec)
        if svc is None:
            raise ConfigError("No such service")
        self._check_service_spec(spec)
        if spec.sched_name != svc.sched_name:
            sched = self._make_scheduler(svc, spec.sched_name)
            if svc.scheduler is not None:
                svc.scheduler.done_service(svc)
            svc.scheduler = sched
            svc.sched_name = spec.sched_name
        self._set_service(svc, spec)

    @staticmethod
    def _set_service(svc, spec):
        svc.flags = spec.flags & ~0x0002  # HASHED is the kernel's own business
        svc.timeout = spec.timeout
        svc.netmask = spec.netmask
        svc.pe_name = spec.pe_name

    def del_service(self, spec):
        svc = self.services.pop(spec.key, None)
        if svc is None:
            raise ConfigError("No such service")
        self._unlink_service(svc)

    def _unlink_service(self, svc):
        for dest in list(svc.destinations):
            self._unlink_dest(svc, dest, svcupd=False)
        if svc.scheduler is not None:
            svc.scheduler.done_service(svc)

    def flush(self):
        for svc in list(self.services.values()):
            self._unlink_service(svc)
        self.services.clear()

    @staticmethod
    def _check_dest_spec(spec):
        if spec.weight < 0 or spec.l_threshold > spec.u_threshold:
            raise ConfigError("Numerical result out of range")
        if spec.tun_type == 1 and spec.tun_port == 0:  # GUE needs a port
            raise ConfigError(EINVAL_TEXT)

    def add_dest(self, svc_spec, spec):
        svc = self._find_service(svc_spec)
        if svc is None:
            raise ConfigError("Service not defined")
        self._check_dest_spec(spec)
        if svc.find_dest(spec.addr, spec.port) is not None:
            raise ConfigError("Destination already exists")
        a = spec.addr
        if a[0] == 0 or a[0] >= 224 or a == b"\xff\xff\xff\xff":
            raise ConfigError(EINVAL_TEXT)  # not RTN_UNICAST/RTN_LOCAL
        dest = self._trash_get(svc, spec.addr, spec.port)
        if dest is None:
            dest = Dest(svc, spec.addr, spec.port)
        self._update_dest(svc, dest, spec, add=True)

    def _update_dest(self, svc, dest, spec, add):
        dest.update(spec.weight, spec.conn_flags, spec.u_threshold, spec.l_threshold,
                    spec.tun_type, spec.tun_port, spec.tun_flags, add=add)
        if add:
            svc.destinations.insert(0, dest)  # list_add_rcu: at the head
            if svc.scheduler is not None:
                svc.scheduler.add_dest(svc, dest)
        elif svc.scheduler is not None:
            svc.scheduler.upd_dest(svc, dest)

    def edit_dest(self, svc_spec, spec):
        svc = self._find_service(svc_spec)
        if svc is None:
            raise ConfigError("Service not defined")
        self._check_dest_spec(spec)
        dest = svc.find_dest(spec.addr, spec.port)
        if dest is None:
            raise ConfigError("No such destination")
        self._update_dest(svc, dest, spec, add=False)

    def del_dest(self, svc_spec, spec):
        svc = self._find_service(svc_spec)
        if svc is None:
            raise ConfigError("Service not defined")
        dest = svc.find_dest(spec.addr, spec.port)
        if dest is None:
            raise ConfigError("No such destination")
        self._unlink_dest(svc, dest, svcupd=True)

    def _unlink_dest(self, svc, dest, svcupd):
        """__ip_vs_unlink_dest + __ip_vs_del_dest: unavailable at once, kept in trash."""
        dest.flags &= ~IP_VS_DEST_F_AVAILABLE
        svc.destinations.remove(dest)
        if svcupd and svc.scheduler is not None:
            svc.scheduler.del_dest(svc, dest)
        if not self.trash:
            self._trash_timer = (self.now or 0.0) + DEST_TRASH_PERIOD / 2
        dest.idle_start = 0.0
        self.trash.insert(0, dest)
        if self.config.expire_nodest_conn:
            # ip_vs_enqueue_expire_nodest_conns: a flush one jiffy later.
            self._nodest_flush = (self.now or 0.0) + 1.0 / HZ

    def _trash_get(self, svc, addr, port):
        """ip_vs_trash_get_dest: a dest deleted from this service's address (the
        service itself may be a new one, after -C and -R) comes back, with its
        connections and counters."""
        for i, dest in enumerate(self.trash):
            old = dest.svc
            if (dest.addr == addr and dest.port == port and old.fwmark == svc.fwmark
                    and old.protocol == svc.protocol
                    and (svc.fwmark or (old.addr == svc.addr and old.port == svc.port))):
                del self.trash[i]
                if old is not svc:
                    # __ip_vs_update_dest: bound to another service, counters restart.
                    dest.stats = Stats()
                    dest.svc = svc
                return dest
        return None

    def _trash_expire(self, now):
        """ip_vs_dest_trash_expire: every 60 s; a dest unused at one pass is freed 120 s later."""
        keep = []
        wake = None  # when a later pass can next change something
        for dest in self.trash:
            if dest.refcnt:
                t = self.conntab.next_deadline()  # only an expiry can free it
            elif not dest.idle_start:
                dest.idle_start = now
                t = now
            elif now < dest.idle_start + DEST_TRASH_PERIOD:
                t = dest.idle_start + DEST_TRASH_PERIOD
            else:
                continue
            keep.append(dest)
            if t is not None and (wake is None or t < wake):
                wake = t
        self.trash = keep
        if not keep:
            self._trash_timer = None
            return
        period = DEST_TRASH_PERIOD / 2
        passes = 1
        if wake is not None and wake > now + period:
            passes = int((wake - now) // period)  # passes that could change nothing
        elif wake is None:
            passes = 1 << 40
        self._trash_timer = now + passes * period

    def _flush_nodest(self, now):
        """ip_vs_expire_nodest_conn_flush: connections to deleted dests go at once."""
        for cp in self.conn_list():
            dest = cp.dest
            if cp.dead or dest is None or dest.flags & IP_VS_DEST_F_AVAILABLE or cp.n_control:
                continue
            ct = cp.control
            self._conn_del(cp, now)
            if ct is not None and not ct.n_control and not ct.dead:
                self._conn_del(ct, now)

    def _conn_del(self, cp, now):
        """ip_vs_conn_del: expire now; a controlled one takes its unused template along."""
        if cp.control is not None:
            cp.timeout = 0
        self._conn_expire(cp, now)

    def zero(self, svc_spec=None):
        if svc_spec is not None:
            svc = self._find_service(svc_spec)
            if svc is None:
                raise ConfigError("No such service")
            targets = [svc]
        else:
            targets = list(self.services.values())
            self.tot_stats.zero_out()
        for svc in targets:
            svc.stats.zero_out()
            for dest in svc.destinations:
                dest.stats.zero_out()

    def set_timeouts(self, tcp, tcpfin, udp):
        """ip_vs_set_timeout: 0 keeps a value."""
        for value in (tcp, tcpfin, udp):
            if value < 0 or value > 2147483647 // HZ:
                raise ConfigError(EINVAL_TEXT)
        if tcp:
            self.tcp_timeouts[proto_tcp.ESTABLISHED] = tcp
        if tcpfin:
            self.tcp_timeouts[proto_tcp.FIN_WAIT] = tcpfin
        if udp:
            self.udp_timeout = udp

    def timeouts(self):
        return (self.tcp_timeouts[proto_tcp.ESTABLISHED],
                self.tcp_timeouts[proto_tcp.FIN_WAIT], self.udp_timeout)

    # ------------------------------------------------------------ views

    def conn_list(self):
        """Connections and templates in creation order."""
        return list(self.conntab.conns.values())

    @staticmethod
    def state_name(cp):
        """ip_vs_state_name: templates have their own two states."""
        if cp.flags & IP_VS_CONN_F_TEMPLATE:
            return "ASSURED" if cp.state & IP_VS_CTPL_S_ASSURED else "NONE"
        if cp.protocol == IPPROTO_TCP:
            return proto_tcp.STATE_NAMES[cp.state]
        if cp.protocol == IPPROTO_UDP:
            return "UDP"
        return "NONE"

    conn_tab_size = CONN_TAB_SIZE
