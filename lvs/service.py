"""Virtual services and their real servers (struct ip_vs_service, ip_vs_dest).

Addresses are kept as raw bytes (the form they have in a packet: 4 for IPv4,
16 for IPv6, so their length is the family) and ports as ints, so the packet
path compares them without conversion.
"""

from .control import service_key
from .flags import (
    AF_INET, AF_INET6, IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_INACTIVE, IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_NOOUTPUT, IP_VS_DEST_F_AVAILABLE, IP_VS_DEST_F_OVERLOAD,
    IP_VS_SVC_F_PERSISTENT,
)
from .stats import Stats


class Dest:
    """A real server of one service."""

    __slots__ = (
        "svc", "addr", "port", "weight", "last_weight", "u_threshold",
        "l_threshold", "conn_flags", "flags", "activeconns", "inactconns",
        "persistconns", "refcnt", "stats", "tun_type", "tun_port", "tun_flags",
        "idle_start", "pmtu", "pmtu_expires", "watch",
    )

    def __init__(self, svc, addr, port):
        self.svc = svc
        self.addr = addr
        self.port = port
        self.weight = 1
        self.last_weight = 1
        self.u_threshold = 0
        self.l_threshold = 0
        self.conn_flags = IP_VS_CONN_F_INACTIVE
        self.flags = 0
        self.activeconns = 0
        self.inactconns = 0
        self.persistconns = 0
        self.refcnt = 0  # connections and templates bound to this dest
        self.stats = Stats()
        self.tun_type = 0
        self.tun_port = 0
        self.tun_flags = 0
        self.idle_start = 0.0
        self.pmtu = 0             # path MTU learned from frag-needed (tunnels), 0: none
        self.pmtu_expires = 0.0
        # Called with the dest after its counts, weight or flags change: the
        # scheduler's index (schedulers/_index.py) keeps its tree in step.
        self.watch = None

    @property
    def af(self):
        return AF_INET6 if len(self.addr) == 16 else AF_INET

    @property
    def fwd(self):
        return self.conn_flags & IP_VS_CONN_F_FWD_MASK

    @property
    def available(self):
        return bool(self.flags & IP_VS_DEST_F_AVAILABLE)

    @property
    def overloaded(self):
        return bool(self.flags & IP_VS_DEST_F_OVERLOAD)

    def overhead(self):
        """ip_vs_dest_conn_overhead: an active connection weighs 256 inactive ones."""
        return (self.activeconns << 8) + self.inactconns

    def totalconns(self):
        return self.activeconns + self.inactconns

    def update(self, weight, fwd, u_threshold, l_threshold,
               tun_type=0, tun_port=0, tun_flags=0, add=False):
        """__ip_vs_update_dest: apply user settings to a new or existing dest."""
        if add or weight != 0:
            self.last_weight = weight  # the latest non-zero weight
        self.weight = weight
        conn_flags = (fwd & IP_VS_CONN_F_FWD_MASK) | IP_VS_CONN_F_INACTIVE
        if fwd != IP_VS_CONN_F_MASQ:
            conn_flags |= IP_VS_CONN_F_NOOUTPUT
        self.conn_flags = conn_flags
        self.tun_type, self.tun_port, self.tun_flags = tun_type, tun_port, tun_flags
        self.flags |= IP_VS_DEST_F_AVAILABLE
        # A lowered or cleared upper threshold lifts the overload mark at once.
        if u_threshold == 0 or u_threshold > self.u_threshold:
            self.flags &= ~IP_VS_DEST_F_OVERLOAD
        self.u_threshold = u_threshold
        self.l_threshold = l_threshold
        if self.watch is not None:
            self.watch(self)

    # Binding a connection or template (ip_vs_bind_dest / ip_vs_unbind_dest).
    def bind(self, template, inactive):
        self.refcnt += 1
        if template:
            self.persistconns += 1
        elif inactive:
            self.inactconns += 1
        else:
            self.activeconns += 1
        if self.u_threshold and self.activeconns + self.inactconns >= self.u_threshold:
            self.flags |= IP_VS_DEST_F_OVERLOAD
        if self.watch is not None:
            self.watch(self)

    def unbind(self, template, inactive):
        self.refcnt -= 1
        if template:
            self.persistconns -= 1
        elif inactive:
            self.inactconns -= 1
        else:
            self.activeconns -= 1
        total = self.activeconns + self.inactconns
        if self.l_threshold:
            if total < self.l_threshold:
                self.flags &= ~IP_VS_DEST_F_OVERLOAD
        elif self.u_threshold:
            # Without a lower threshold, the mark lifts below 3/4 of the upper one.
            if total * 4 < self.u_threshold * 3:
                self.flags &= ~IP_VS_DEST_F_OVERLOAD
        else:
            self.flags &= ~IP_VS_DEST_F_OVERLOAD
        if self.watch is not None:
            self.watch(self)

    def to_inactive(self):
        """A connection bound here left the active states (ip_vs_set_state)."""
        self.activeconns -= 1
        self.inactconns += 1
        if self.watch is not None:
            self.watch(self)

    def to_active(self):
        self.activeconns += 1
        self.inactconns -= 1
        if self.watch is not None:
            self.watch(self)


class Service:
    """A virtual service: TCP/UDP VIP:port, or a firewall mark (protocol 0 in the key)."""

    __slots__ = (
        "protocol", "addr", "port", "fwmark", "sched_name", "scheduler",
        "flags", "timeout", "netmask", "pe_name", "destinations", "stats",
    )

    def __init__(self, protocol, addr, port, fwmark=0):
        self.protocol = protocol
        self.addr = addr          # 4 or 16 bytes; all zero for fwmark services
        self.port = port
        self.fwmark = fwmark
        self.sched_name = ""
        self.scheduler = None
        self.flags = 0
        self.timeout = 0          # persistence timeout, seconds
        # persistence netmask: host order for IPv4, a prefix length for IPv6
        self.netmask = 128 if len(addr) == 16 else 0xFFFFFFFF
        self.pe_name = ""
        # Kernel list order: ip_vs_ctl.c adds a new dest at the HEAD of
        # svc->destinations (list_add_rcu), so the newest dest comes first and
        # schedulers that walk the list (rr, wlc, ...) see it first.
        self.destinations = []
        self.stats = Stats()

    @property
    def persistent(self):
        return bool(self.flags & IP_VS_SVC_F_PERSISTENT)

    @property
    def af(self):
        return AF_INET6 if len(self.addr) == 16 else AF_INET

    @property
    def key(self):
        return service_key(self.protocol, self.addr, self.port, self.fwmark)

    def find_dest(self, addr, port):
        for dest in self.destinations:
            if dest.addr == addr and dest.port == port:
                return dest
        return None
