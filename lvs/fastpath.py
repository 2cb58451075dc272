"""The fast path: packets of established connections without the general path.

Most packets a director sees belong to connections it already knows, in a
state their packet does not change: a data segment of an ESTABLISHED TCP
connection, a datagram of a UDP one. For those the general path
(lvs/core.py) does the same work every time: parse and check the headers,
two table lookups, the state machine, statistics, the method's rewrite. Here
that work is prepared once per connection and direction, when the general
path has just handled one of its packets, and kept under the packet's raw
bytes 12..24 (source, destination, ports) in one dict per protocol:

  NAT     a new address and port at fixed offsets, the TTL decrement and the
          IP and TCP/UDP checksum deltas (RFC 1624) folded into constants
  ROUTE   direct routing, and replies the director only routes: TTL and
          IP checksum
  TUN     the outer header built from constants and the inner packet's
          TOS, length, DF and TTL (IPIP, GRE and GUE without checksums)

  NAT6    IPv6 NAT: the address and port, the hop limit, the TCP/UDP
          checksum delta over the pseudo-header (no header checksum)
  ROUTE6  IPv6 direct routing and routed replies: the hop limit

IPv6 keys are the raw bytes 8..44 (addresses, then ports): never an IPv4 key's
length. A packet takes an entry only if the general path would do exactly that
to it: IPv4 without options, not a fragment, a good header checksum, TTL above
1; or IPv6 with TCP or UDP right after the fixed header (no extension header,
so no fragment), a payload length that fits, hop limit above 1; no longer than
the path allows, for TCP a plain ACK (no SYN, FIN or RST) in a state an ACK
leaves as it is, for NAT'd UDP a non-zero checksum. IPv6 tunnels (either outer
family) always take the general path.
Anything else goes to the general path, whose answer is the specification:
afterwards the entry is learnt again from what it did. Entries go when their
connection leaves the lookup tables, when a new connection takes one of their
keys (lvs/conntab.py tells us), and all at once when lvsadm changes a table,
a sysctl changes, or the MTU, director address or a real server's path MTU
moves. Statistics are added up per real server and direction and folded
into the engine's counters before anything else can read them: before the
general path or the timers run, and at the end of every batch.

The live director takes each batch in two parts (run's `defer`): the packets
that take an entry first, sent at once, then the general path's and every
packet that may depend on one of them (same client address and port, or all
that follow one whose connection cannot be told so). No flow's packets change
order, so the tables and counters end as in arrival order; only the order of
different flows' frames on the wire moves (tests/test_fastpath.py).

Set PYLVS_FASTPATH=0 to run without it; the results are the same, bit for bit.
"""

import os
import struct

from . import proto_tcp
from .checksum import fold
from .flags import (IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_MASQ,
                    IP_VS_CONN_F_NOOUTPUT, IP_VS_CONN_F_ONE_PACKET, IP_VS_CONN_F_TEMPLATE,
                    IP_VS_CONN_F_TUNNEL, IP_VS_CONN_F_TUNNEL_TYPE_GRE, IP_VS_CONN_F_TUNNEL_TYPE_GUE,
                    IP_VS_DEST_F_AVAILABLE, IP_VS_TUNNEL_ENCAP_FLAG_CSUM,
                    IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM, IPPROTO_TCP, IPPROTO_UDP)
from .verdicts import Transmit
from forwarders import nat, tunnel

NAT, ROUTE, TUN, NAT6, ROUTE6 = 0, 1, 2, 3, 4
TTL_DELTA = 0xFEFF            # the checksum update of a TTL decrement
PREPS_SHARED = 1 << 16        # prepared rewrites kept for sharing, at most
_TCP_EVENTS = 0x17            # the flags tcp_state_idx looks at: RST SYN FIN ACK
_ECN = bytes(tunnel.ecn_encapsulate(tos) for tos in range(256))
_PORTS = struct.Struct("!HH")
_TTL_PROTO_CHECK = struct.Struct("!BBH")
_CHECK = struct.Struct("!H")
_OUTER = struct.Struct("!BBHHBBBBH4s4s")
_GUE = struct.Struct("!HHHH")


def enabled_by_default():
    return os.environ.get("PYLVS_FASTPATH", "1") != "0"


def key_bytes(a, aport, b, bport):
    """The raw bytes 12..24 of a packet from a:aport to b:bport."""
    return a + b + _PORTS.pack(aport, bport)


def _words(addr):
    return (addr[0] << 8 | addr[1]) + (addr[2] << 8 | addr[3])


class FastPath:
    """The engine's cache of prepared rewrites (see the module's notes)."""

    def __init__(self, engine):
        self.engine = engine
        self.tables = {IPPROTO_TCP: {}, IPPROTO_UDP: {}}
        self.accs = {}          # (dest, direction) -> [packets, bytes, stats blocks, direction]
        self.preps = {}         # the prepared rewrites entries share (see learn)
        self.snapshots = {}     # and the (state, flags, timeout) they were prepared under
        self.pending = []       # accumulators holding counts not yet folded
        self.hits = 0           # packets that took an entry
        self._seen = None       # what the entries were prepared under
        self._server_ends = frozenset()   # run(defer=...): the ends that are no client's
        self._servers_seen = None

    # ------------------------------------------------------------ the batch

    def run(self, packets, now, unclaimed=None, defer=None):
        """Handle packets that arrived at `now`, in order; return what to send, in order.

        With `defer` (a list: the live director's "established first"), a packet for the
        general path is appended to it instead of handled, and so is every later packet
        that may belong to a connection it touches: one sharing its client's address and
        port (the end of it that is no service's and no real server's), or every later
        one after a packet whose connection cannot be told so (not plain TCP or UDP:
        ICMP, fragments, IPv4 options, IPv6 extension headers). The caller sends what
        this returns, then runs `defer` as a batch of its own: each flow keeps its order, and a packet that may
        depend on the general path's work waits for it. Timers and table changes
        cannot come between (the batch shares one `now`, and expiry runs first)."""
        engine = self.engine
        if self._seen != self._state():
            self.clear()
        out = engine.expire(now)
        if defer is not None:
            held, barrier = set(), False
            servers = self._servers()
        tcp_get = self.tables[IPPROTO_TCP].get
        udp_get = self.tables[IPPROTO_UDP].get
        pending = self.pending
        append = out.append
        pack_ttl = _TTL_PROTO_CHECK.pack_into
        pack_check = _CHECK.pack_into
        from_bytes = int.from_bytes
        hits = 0
        dirty = False
        sync = engine.sync_master is not None
        if sync:
            config = engine.config
            threshold, period = config.sync_threshold
            by_count = period > 0 and not config.sync_refresh_period and not config.sync_persist_mode
        for p in packets:
            if dirty:
                # The general path ran: timers may be due again, tables may have moved.
                dirty = False
                due = engine.expire(now)
                if due:
                    out.extend(due)
                if self._seen != self._state():
                    self.clear()
            if p.__class__ is not bytes:
                p = bytes(p)  # keys must hash; the general path copies anyway
            e = None
            n = len(p)
            if n >= 28 and p[0] == 0x45:
                proto = p[9]
                if proto == 6:
                    if n >= 40 and p[33] & _TCP_EVENTS == 0x10:
                        e = tcp_get(p[12:24])
                elif proto == 17:
                    e = udp_get(p[12:24])
                if e is not None:
                    tot = (p[2] << 8) | p[3]
                    if tot != n and (tot > n or tot < (40 if proto == 6 else 28)):
                        e = None
                    elif (p[6] & 0x3F or p[7] or p[8] <= 1 or tot > e[0][2]
                          or from_bytes(p[:20], "big") % 0xFFFF):
                        e = None
                    elif proto == 17 and not (p[26] or p[27]) and e[0][0] == NAT:
                        e = None  # sent without a checksum: NAT computes a full one
            elif n >= 48 and p[0] >> 4 == 6:
                proto = p[6]
                if proto == 6:
                    if n >= 60 and p[53] & _TCP_EVENTS == 0x10:
                        e = tcp_get(p[8:44])
                elif proto == 17:
                    e = udp_get(p[8:44])
                if e is not None:
                    tot = 40 + ((p[4] << 8) | p[5])
                    if tot > n or tot < (60 if proto == 6 else 48) or p[7] <= 1 or tot > e[0][2]:
                        e = None
                    elif proto == 17 and not (p[46] or p[47]) and e[0][0] == NAT6:
                        e = None
            if defer is not None and (e is None or held or barrier):
                if barrier or e is None:
                    if not barrier:
                        barrier = self._hold(p, held, servers)
                    defer.append(p)
                    continue
                if (p[12:16] + p[20:22] in held or p[16:20] + p[22:24] in held if p[0] == 0x45
                        else p[8:24] + p[40:42] in held or p[24:40] + p[42:44] in held):
                    defer.append(p)
                    continue
            if e is None:
                if pending:
                    self.fold()
                out.extend(engine.receive_general(p, now, unclaimed))
                self.learn(p)
                dirty = True
                continue
            if tot != n:
                p = p[:tot]  # link-layer padding
            prep, cp, _ = e
            kind, acc, _, timeout, nexthop, a, b, c, d, zero, inbound = prep
            if kind == NAT:
                # a: where the TCP/UDP checksum is; b: the new address and port
                t = (((p[a] << 8) | p[a + 1]) ^ 0xFFFF) + d
                s = (((p[10] << 8) | p[11]) ^ 0xFFFF) + c
                buf = bytearray(p)
                pack_ttl(buf, 8, p[8] - 1, proto, ((s & 0xFFFF) + (s >> 16)) ^ 0xFFFF)
                if inbound:
                    buf[16:20] = b[0]
                    buf[22:24] = b[1]
                else:
                    buf[12:16] = b[0]
                    buf[20:22] = b[1]
                pack_check(buf, a, (((t & 0xFFFF) + (t >> 16)) ^ 0xFFFF) or zero)
                append(Transmit(nexthop, bytes(buf)))
            elif kind == ROUTE:
                s = (((p[10] << 8) | p[11]) ^ 0xFFFF) + TTL_DELTA
                buf = bytearray(p)
                pack_ttl(buf, 8, p[8] - 1, proto, ((s & 0xFFFF) + (s >> 16)) ^ 0xFFFF)
                append(Transmit(p[16:20] if nexthop is None else nexthop, bytes(buf)))
            elif kind == NAT6:
                t = (((p[a] << 8) | p[a + 1]) ^ 0xFFFF) + d
                buf = bytearray(p)
                buf[7] = p[7] - 1
                if inbound:
                    buf[24:40] = b[0]
                    buf[42:44] = b[1]
                else:
                    buf[8:24] = b[0]
                    buf[40:42] = b[1]
                pack_check(buf, a, (((t & 0xFFFF) + (t >> 16)) ^ 0xFFFF) or zero)
                append(Transmit(nexthop, bytes(buf)))
            elif kind == ROUTE6:
                buf = bytearray(p)
                buf[7] = p[7] - 1
                append(Transmit(p[24:40] if nexthop is None else nexthop, bytes(buf)))
            else:
                append(Transmit(nexthop, self._encapsulate(p, tot, a, b, c, d)))
            if not acc[0]:
                pending.append(acc)
            acc[0] += 1
            acc[1] += tot
            if inbound:
                n = cp.in_pkts = cp.in_pkts + 1
                # ip_vs_sync_conn_needed, its common "no" first: by the packet count
                # alone when no refresh period, persist mode or template is involved.
                if sync and (not by_count or n % period == threshold or cp.control is not None
                             or cp.state != cp.old_state):
                    engine.sync_conn(cp, n)
            cp.expires = now + timeout
            hits += 1
        self.hits += hits
        if pending:
            self.fold()
        return out

    def _hold(self, p, held, servers):
        """A general-path packet deferred: hold back its client's end (address and
        port; the ends of services and real servers are not a client's). True when
        its connection cannot be told that way: everything after it waits too."""
        if len(p) >= 24 and p[0] == 0x45 and p[9] in (6, 17) and not (p[6] & 0x3F or p[7]):
            ends = (p[12:16] + p[20:22], p[16:20] + p[22:24])
        elif len(p) >= 44 and p[0] >> 4 == 6 and p[6] in (6, 17):
            ends = (p[8:24] + p[40:42], p[24:40] + p[42:44])   # no extension header
        else:
            return True
        barrier = True
        for end in ends:
            if end not in servers:
                held.add(end)
                barrier = False
        return barrier

    def _servers(self):
        """The address+port ends of every service and real server (trash included)."""
        engine = self.engine
        seen = (engine.generation, len(engine.trash))
        if self._servers_seen != seen:
            ends = set()
            for svc in engine.services.values():
                if not svc.fwmark:
                    ends.add(svc.addr + svc.port.to_bytes(2, "big"))
                for dest in svc.destinations:
                    ends.add(dest.addr + dest.port.to_bytes(2, "big"))
            for dest in engine.trash:
                ends.add(dest.addr + dest.port.to_bytes(2, "big"))
            self._server_ends, self._servers_seen = frozenset(ends), seen
        return self._server_ends

    def _encapsulate(self, p, tot, outer, prefix, base, gue):
        """ip_vs_tunnel_xmit with everything the connection fixes prepared."""
        saddr, daddr, proto, df_copy = outer
        ttl = p[8] - 1
        s = (((p[10] << 8) | p[11]) ^ 0xFFFF) + TTL_DELTA
        inner = bytearray(p)
        _TTL_PROTO_CHECK.pack_into(inner, 8, ttl, p[9], ((s & 0xFFFF) + (s >> 16)) ^ 0xFFFF)
        if gue is not None:
            prefix = _GUE.pack(gue[0], gue[1], 8 + 4 + tot, 0) + tunnel.GUE_HEADER
        length = 20 + len(prefix) + tot
        df = p[6] & 0x40 if df_copy else 0
        ident = 0 if df else self.engine.ip_ident(saddr, daddr, proto)
        tos = _ECN[p[1]]
        s = base + tos + length + ident + (df << 8) + (ttl << 8)
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        return _OUTER.pack(0x45, tos, length, ident, df, 0, ttl, proto, s ^ 0xFFFF,
                           saddr, daddr) + prefix + inner

    # ------------------------------------------------------------ learning

    def learn(self, p):
        """After the general path handled `p`: prepare what it did, if the next
        packet of its flow and direction will need exactly the same."""
        engine = self.engine
        cp = engine.touched
        if cp is None:
            return
        snapshot = (cp.state, cp.flags, cp.timeout)
        snapshot = self.snapshots.setdefault(snapshot, snapshot)  # few distinct ones: shared
        if cp.fast is not None:
            self.forget(cp, snapshot)
        direction = engine.resolved
        if direction is None or engine._reasm is not None or engine.short:
            return
        v6 = p[0] >> 4 == 6
        if (p[6] != cp.protocol or len(p) < 44) if v6 else p[0] != 0x45:
            return  # IPv4 options, IPv6 extension headers: the general path every time
        flags = cp.flags
        dest = cp.dest
        if (flags & (IP_VS_CONN_F_ONE_PACKET | IP_VS_CONN_F_TEMPLATE) or cp.dead
                or dest is None or not dest.flags & IP_VS_DEST_F_AVAILABLE):
            return
        inbound = direction == proto_tcp.DIR_INPUT
        proto = cp.protocol
        if proto == IPPROTO_TCP:
            if flags & IP_VS_CONN_F_NOOUTPUT:
                if not inbound:
                    return
                direction = proto_tcp.DIR_INPUT_ONLY
            states = proto_tcp.TCP_STATES_DOS if engine.config.secure_tcp_on else proto_tcp.TCP_STATES
            if states[direction + 2][cp.state] != cp.state:
                return  # an ACK moves this state: every packet needs the state machine
            timeout = engine.tcp_timeouts[cp.state]
        elif proto == IPPROTO_UDP:
            timeout = engine.udp_timeout
        else:
            return
        if cp.timeout != timeout:
            return
        mtu = engine.mtu
        path = min(mtu, dest.pmtu) if dest.pmtu else mtu
        method = flags & IP_VS_CONN_F_FWD_MASK
        zero = 0xFFFF if proto == IPPROTO_UDP else 0  # a computed UDP checksum 0 is sent as 0xFFFF
        csum_off = (56 if proto == IPPROTO_TCP else 46) if v6 else (36 if proto == IPPROTO_TCP else 26)
        a = b = c = d = None
        if v6:
            if inbound:
                nexthop = cp.daddr
                if method == IP_VS_CONN_F_MASQ:
                    kind, limit = NAT6, path
                    _, d, _, _ = nat.conn_deltas(cp)
                    a, b = csum_off, (cp.daddr, cp.dport.to_bytes(2, "big"))
                elif method == IP_VS_CONN_F_DROUTE:
                    kind, limit = ROUTE6, path
                else:
                    return  # tunnels: the general path builds the outer header
            elif method == IP_VS_CONN_F_MASQ:
                kind, limit, nexthop = NAT6, mtu, cp.caddr
                _, _, _, d = nat.conn_deltas(cp)
                a, b = csum_off, (cp.vaddr, cp.vport.to_bytes(2, "big"))
            else:
                kind, limit, nexthop = ROUTE6, mtu, None
        elif inbound:
            nexthop = cp.daddr
            if method == IP_VS_CONN_F_MASQ:
                kind, limit = NAT, path
                ip_d, d, _, _ = nat.conn_deltas(cp)
                a, b, c = csum_off, (cp.daddr, cp.dport.to_bytes(2, "big")), fold(ip_d + TTL_DELTA)
            elif method == IP_VS_CONN_F_DROUTE:
                kind, limit = ROUTE, path
            elif method == IP_VS_CONN_F_TUNNEL:
                if len(cp.daddr) == 16:
                    return  # an IPv6 outer header: the general path builds it
                kind = TUN
                prepared = self._tunnel(cp, dest, p, path)
                if prepared is None:
                    return
                limit, a, b, c, d = prepared
            else:
                return
        else:
            if method == IP_VS_CONN_F_MASQ:
                kind, limit, nexthop = NAT, mtu, cp.caddr
                _, _, ip_d, d = nat.conn_deltas(cp)
                a, b, c = csum_off, (cp.vaddr, cp.vport.to_bytes(2, "big")), fold(ip_d + TTL_DELTA)
            else:
                kind, limit, nexthop = ROUTE, mtu, None  # routed on to where it was sent
        # What does not depend on the connection is shared by all those it is the
        # same for (the memory of a million connections).
        shared = (dest, kind, limit, timeout, nexthop, a, b, c, d, zero, inbound)
        prep = self.preps.get(shared)
        if prep is None:
            prep = (kind, self._acc(dest, inbound), limit, timeout, nexthop, a, b, c, d, zero, inbound)
            if len(self.preps) < PREPS_SHARED:  # replies name their client: bounded
                self.preps[shared] = prep
        entry = (prep, cp, snapshot)
        key = p[8:44] if v6 else p[12:24]
        self.tables[proto][key] = entry
        # cp.fast: its one key (bytes), or a tuple of its keys (both directions)
        keys = cp.fast
        if keys is None:
            cp.fast = key
        elif keys.__class__ is bytes:
            if keys != key:
                cp.fast = (keys, key)
        elif key not in keys:
            cp.fast = keys + (key,)
        self._seen = self._state()

    def _tunnel(self, cp, dest, p, path):
        """(limit, outer, prefix, checksum base, GUE ports) for a tunnel connection."""
        engine = self.engine
        tun_type = dest.tun_type
        if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GUE:
            if dest.tun_flags & (IP_VS_TUNNEL_ENCAP_FLAG_CSUM | IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM):
                return None
            proto, prefix = IPPROTO_UDP, b""
            gue = (tunnel.gue_source_port(engine, p), dest.tun_port)
        elif tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GRE:
            if dest.tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM:
                return None
            proto, prefix, gue = tunnel.IPPROTO_GRE, tunnel.GRE_HEADER, None
        else:
            proto, prefix, gue = tunnel.IPPROTO_IPIP, b"", None
        saddr = engine.director_addr or cp.vaddr
        base = 0x4500 + proto + _words(saddr) + _words(cp.daddr)
        outer = (saddr, cp.daddr, proto, bool(engine.config.pmtu_disc))
        return path - tunnel.overhead(dest), outer, prefix, base, gue

    def _acc(self, dest, inbound):
        acc = self.accs.get((dest, inbound))
        if acc is None:
            acc = [0, 0, (dest.stats, dest.svc.stats, self.engine.tot_stats), inbound]
            self.accs[(dest, inbound)] = acc
        return acc

    # ------------------------------------------------------------ upkeep

    def fold(self):
        """Add the counts gathered since the last fold to the engine's counters."""
        for acc in self.pending:
            packets, octets, blocks, inbound = acc
            acc[0] = acc[1] = 0
            if inbound:
                for st in blocks:
                    st.inpkts += packets
                    st.inbytes += octets
            else:
                for st in blocks:
                    st.outpkts += packets
                    st.outbytes += octets
        self.pending.clear()

    def forget(self, cp, snapshot=None):
        """cp's entries go: all of them when it leaves the lookup tables; after the
        general path handled one of its packets, those prepared for another state,
        flags or timeout than `snapshot` (the other direction's too)."""
        tab = self.tables.get(cp.protocol)
        keys = cp.fast
        keep = []
        for key in ((keys,) if keys.__class__ is bytes else keys):
            e = tab.get(key)
            if e is None or e[1] is not cp:
                continue
            if e[2] != snapshot:
                del tab[key]
            else:
                keep.append(key)
        cp.fast = None if not keep else keep[0] if len(keep) == 1 else tuple(keep)

    def forget_keys(self, cp):
        """cp enters the lookup tables: whatever its packets found before may change."""
        tab = self.tables.get(cp.protocol)
        if tab:
            tab.pop(key_bytes(cp.caddr, cp.cport, cp.vaddr, cp.vport), None)
            _, a, aport, b, bport = cp.out_key()
            tab.pop(key_bytes(a, aport, b, bport), None)

    def clear(self):
        self.fold()
        for tab in self.tables.values():
            for e in tab.values():
                e[1].fast = None
            tab.clear()
        self.accs.clear()
        self.preps.clear()
        self.snapshots.clear()
        self._seen = self._state()

    def _state(self):
        """What every entry was prepared under: the tables, the sysctls, the MTU, our address."""
        engine = self.engine
        return (engine.generation, engine.config.generation, engine.mtu, engine.director_addr,
                engine.director_addr6)

    def __len__(self):
        return sum(len(tab) for tab in self.tables.values())
