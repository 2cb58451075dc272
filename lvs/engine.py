"""The sans-IO IPVS core.

Engine is handed IPv4 and IPv6 packets and the time, and answers with the packets to
send and their next hop. It never reads a clock or touches a socket: `now`
is always an argument, and time only moves when the caller says so. It is
put together along the kernel's own lines, so that a reader holding the
kernel's files finds each counterpart:

  lvs/fastpath.py   FastPath: established connections with prepared rewrites;
                    everything else goes on to
  lvs/core.py       PacketPath: ip_vs_core.c -- receive_packet() is ip_vs_out_hook
                    (NAT replies) then ip_vs_in_hook (conn_in_get,
                    conn_reuse_mode, dest check, conn_schedule, in_stats,
                    set_state, packet_xmit, conn_put)
  lvs/core6.py      PacketPath6: the same for IPv6 (extension headers, reassembly)
  lvs/tables.py     Tables: ip_vs_ctl.c -- what lvsadm asks (apply)
  lvs/timers.py     Timers: ip_vs_conn.c's expiry and ip_vs_est.c -- expire()
  lvs/icmp_send.py  IcmpSender: net/ipv4/icmp.c's icmp_send and its rate limits
  lvs/sync.py       Sync: ip_vs_sync.c -- the master's send rules, the backup's install
  lvs/defense.py    Defense: update_defense_level, ip_vs_random_dropentry, ip_vs_todrop
  here              the state they share, and the views listings read

A malformed packet is dropped and counted under a named reason; nothing a
packet contains can raise out of receive(). Configuration mistakes raise
ConfigError carrying ipvsadm's text, and change nothing.
"""

from collections import Counter

from . import proto_tcp
from .config import EngineConfig
from .conntab import IP_VS_CTPL_S_ASSURED, ConnTable
from .core import PacketPath
from .core6 import PacketPath6
from .defrag import Reassembler
from .defense import DEFENSE_TIMER_PERIOD, Defense
from .defrag6 import Reassembler6
from .fastpath import FastPath, enabled_by_default
from .flags import IP_VS_CONN_F_TEMPLATE, IPPROTO_TCP, IPPROTO_UDP
from .icmp_send import ICMP_MSGS_BURST, IcmpSender
from .stats import ESTIMATOR_PERIOD, Stats
from .sync import Sync
from .tables import Tables
from .timers import Timers

UDP_TIMEOUT = 5 * 60
CONN_TAB_SIZE = 4096
IDENT_BUCKETS = 2048      # IP_IDENTS_SZ: the IP ID counters (ip_ident)
IDENT_PAIRS = 1 << 16     # address pairs whose hash into them is remembered


class Engine(PacketPath, PacketPath6, IcmpSender, Tables, Timers, Sync, Defense):
    """One director's IPVS: services, real servers, connections, counters and timers."""

    def __init__(self, config=None, seed=0, director_addr=None, mtu=1500, fwmark=None, fastpath=None,
                 max_conns=None, director_addr6=None):
        self.config = config if config is not None else EngineConfig()
        self.seed = seed & 0xFFFFFFFF
        self.director_addr = director_addr  # tunnel source; None: the connection's VIP
        self.director_addr6 = director_addr6  # the same for IPv6
        self.mtu = mtu
        self.fwmark = fwmark                # callable(protocol, daddr, dport) -> mark, or None
        self.services = {}                  # key -> Service, in creation order
        self.conntab = ConnTable()
        self.conntab.limit = max_conns      # the table's bound (lvs daemon --max-conns)
        self.tot_stats = Stats()
        self.trash = []                     # deleted dests kept while connections use them
        self._trash_timer = None
        self._nodest_flush = None
        self.tcp_timeouts = list(proto_tcp.TIMEOUTS)
        self.udp_timeout = UDP_TIMEOUT
        self.drops = Counter()
        self.now = None
        self._start = None
        self._next_estimate = None
        self._ident = {}          # bucket -> the next IP ID (ip_ident)
        self._ident_hash = {}     # address pair -> its hash (a bounded memo)
        self.defrag = Reassembler()
        self.defrag6 = Reassembler6()
        self.fragments_held = 0             # fragments queued for reassembly (not drops)
        self.relaying_icmp = False          # ip_vs_iph_icmp: an ICMP error is being relayed
        self.short = False                  # the packet in hand has a cut TCP/UDP header
        self._reasm = None                  # the datagram in hand, if it came in fragments
        self._timer_out = []
        self._icmp_peers = {}               # client address -> [tokens, last] (inet_peer)
        self._icmp_gc_at = float("-inf")    # when idle peers were last forgotten
        self._icmp_credit = ICMP_MSGS_BURST
        self._icmp_stamp = None
        self.icmp_ratelimited = 0
        self._out = []
        self.touched = None                 # the connection the last packet found
        self.resolved = None                # and the direction it was sent in
        self.generation = 0                 # moves with every table change (lvs/tables.py)
        self._sync_init()
        self._defense_init()
        # Debugging: callable(packet, exc) run inside the except clause that counts an
        # internal_error (so sys.exc_info() and exc.__traceback__ are the bug's), or None.
        # It may record the traceback, or re-raise. Never read on a packet's normal path.
        self.on_internal_error = None
        # With --workers, the copy a listing is made on holds each worker's tally (lvs/fanout.py).
        self.worker_parts = []
        self.fast = None
        self.set_fastpath(enabled_by_default() if fastpath is None else fastpath)

    def set_fastpath(self, on):
        """Turn the fast path (lvs/fastpath.py) on or off; results never depend on it."""
        if self.fast is not None:
            self.fast.clear()
        self.fast = FastPath(self) if on else None
        self.conntab.fast = self.fast

    def receive(self, packet, now):
        """Handle one IPv4 or IPv6 packet arriving at the director; return the Transmits it causes."""
        if self.fast is None:
            return self.receive_packet(packet, now)
        return self.fast.run((packet,), now)

    def receive_batch(self, packets, now, unclaimed=None):
        """Handle packets that arrived together at `now`, in order, as receive() would
        one by one. Packets dropped because no service claims them are appended to
        `unclaimed` (the live director refuses those, as a closed local port)."""
        if self.fast is not None:
            return self.fast.run(packets, now, unclaimed)
        out = []
        for packet in packets:
            out.extend(self.receive_general(packet, now, unclaimed))
        return out

    def receive_general(self, packet, now, unclaimed=None):
        """receive_packet, noting in `unclaimed` a packet no service claimed."""
        if unclaimed is None:
            return self.receive_packet(packet, now)
        before = self.drops["no_service"]
        out = self.receive_packet(packet, now)
        if self.drops["no_service"] != before:
            unclaimed.append(packet)
        return out

    def _advance(self, now):
        if self._start is None:
            self._start = now
            self._next_estimate = now + ESTIMATOR_PERIOD
            self._next_defense = now + DEFENSE_TIMER_PERIOD
        if self.now is None or now > self.now:
            self.now = now

    def is_local(self, addr):
        """One of the director's own addresses: its own, or a service's VIP."""
        return addr == self.director_addr or addr == self.director_addr6 or any(
            svc.addr == addr for svc in self.services.values() if not svc.fwmark)

    def own_address(self, like):
        """The director's own address of the family of `like` (an address), or
        `like` itself without one: where its errors and routed replies come from."""
        own = self.director_addr6 if len(like) == 16 else self.director_addr
        return own or like

    def path_mtu(self, dest):
        """The MTU towards a real server: the link's, or less if a router said so."""
        if dest is not None and dest.pmtu and self.now < dest.pmtu_expires:
            return min(self.mtu, dest.pmtu)
        return self.mtu

    def flow_hash(self, data):
        """A 32-bit hash keyed by the seed: where the kernel uses a boot-time random key."""
        h = self.seed ^ 0x811C9DC5
        for byte in data:
            h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
        return h

    def ip_ident(self, saddr, daddr, proto):
        """IP ID for packets without DF (__ip_select_ident).

        The kernel hashes (daddr, saddr, protocol) with a boot-time random key
        into a fixed table of IDENT_BUCKETS counters (ip_idents); the key here is
        the caller's seed, so a replay is reproducible. Pairs that share a bucket
        share its counter, as there; a counter never starts again.
        """
        return self._ident_next((saddr, daddr, proto), 0) & 0xFFFF

    def ip6_ident(self, saddr, daddr):
        """The identification of a Fragment header (ipv6_select_ident): the same table,
        the address pair's hash, 32 bits wide."""
        return self._ident_next((saddr, daddr, None), 1)

    def _ident_next(self, key, least):
        h = self._ident_hash.get(key)
        if h is None:
            if len(self._ident_hash) >= IDENT_PAIRS:
                self._ident_hash.clear()      # a memo only: the hashes come back the same
            saddr, daddr, proto = key
            h = self._ident_hash[key] = self.flow_hash(
                daddr + saddr if proto is None else saddr + daddr + bytes((proto,)))
        bucket = h & (IDENT_BUCKETS - 1)
        n = self._ident.get(bucket)
        if n is None:
            n = h or least          # a bucket's first use starts where its first pair's hash says
        self._ident[bucket] = (n + 1) & 0xFFFFFFFF
        return n

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
