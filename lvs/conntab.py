"""The connection table (ip_vs_conn.c): connections, persistence templates, expiry.

Lookups mirror the kernel's:
  in_get   client -> VIP packets:  (protocol, caddr, cport, vaddr, vport)
  out_get  replies, real server -> client: (protocol, daddr, dport, caddr, cport)
           for NAT, (protocol, vaddr, vport, caddr, cport) for DR and tunnels
  ct_get   persistence templates: (protocol, masked caddr, 0, vaddr or fwmark, vport)
Each connection carries an absolute deadline on the engine's clock; a heap
with lazy deletion replaces the kernel's per-connection timers.
"""

import heapq

from .flags import (IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_INACTIVE, IP_VS_CONN_F_NOOUTPUT,
                    IP_VS_CONN_F_SYNC, IP_VS_CONN_F_TEMPLATE)
from .tables import HZ

IP_VS_CTPL_S_ASSURED = 0x0001


class Connection:
    __slots__ = (
        "protocol", "caddr", "cport", "vaddr", "vport", "daddr", "dport",
        "fwmark", "flags", "state", "timeout", "expires", "dest",
        "control", "n_control", "seq", "in_pkts", "heap_at", "dead",
        "deltas", "fast", "old_state", "sync_endtime",
    )

    def __init__(self, protocol, caddr, cport, vaddr, vport, daddr, dport, flags, fwmark, seq):
        self.protocol = protocol
        self.caddr = caddr
        self.cport = cport
        self.vaddr = vaddr
        self.vport = vport
        self.daddr = daddr
        self.dport = dport
        self.flags = flags
        self.fwmark = fwmark
        self.state = 0
        self.timeout = 3.0     # ip_vs_conn_new's initial 3*HZ
        self.expires = 0.0
        self.dest = None
        self.control = None    # the template this connection belongs to
        self.n_control = 0     # connections this template controls
        self.seq = seq         # creation order
        self.in_pkts = 0
        self.heap_at = None
        self.dead = False
        self.deltas = None     # NAT's checksum deltas, computed once (forwarders/nat.py)
        self.fast = None       # its fast path key (bytes), or keys (a tuple): lvs/fastpath.py
        self.old_state = 0     # the state last synced (lvs/sync.py)
        # sync_endtime is set only once a sync master ran (ConnTable.sync_clock)

    @property
    def is_template(self):
        return bool(self.flags & IP_VS_CONN_F_TEMPLATE)

    def in_key(self):
        return (self.protocol, self.caddr, self.cport, self.vaddr, self.vport)

    def out_key(self):
        """ip_vs_conn_out_get: a NAT reply comes from the real server's address;
        one that passes the director for DR or a tunnel still says VIP:vport."""
        if self.flags & 0x0007 == 0:  # IP_VS_CONN_F_MASQ
            return (self.protocol, self.daddr, self.dport, self.caddr, self.cport)
        return (self.protocol, self.vaddr, self.vport, self.caddr, self.cport)


class TableFull(Exception):
    """The table holds `limit` entries: no new one (the engine drops and counts)."""


class ConnTable:
    def __init__(self):
        self.conns = {}       # seq -> Connection, creation order
        self.by_in = {}
        self.by_out = {}
        self.out_shadowed = {}  # reply key -> older connections under the indexed one
        self.templates = {}
        self._heap = []
        self._seq = 0
        self.fast = None        # the engine's FastPath, told when the lookup tables change
        self.sync_clock = False  # a sync master ran: connections note their sync time
        self.limit = None        # at most this many connections and templates (None: no bound)

    def __len__(self):
        return len(self.conns)

    def new(self, protocol, caddr, cport, vaddr, vport, daddr, dport, flags, dest, fwmark, now):
        """ip_vs_conn_new: create, bind to dest (counters), hash. TableFull at the limit,
        where the kernel's allocation would fail."""
        if self.limit is not None and len(self.conns) >= self.limit:
            raise TableFull()
        self._seq += 1
        cp = Connection(protocol, caddr, cport, vaddr, vport, daddr, dport, flags, fwmark, self._seq)
        if self.sync_clock:
            cp.sync_endtime = int(now * HZ) & ~3
        if dest is not None:
            self.bind_dest(cp, dest)
        self.conns[cp.seq] = cp
        cp.expires = now + cp.timeout
        if not flags & 0x2000:
            # A one-packet (-o) entry is never hashed nor timed: it ends
            # when its packet is sent (ip_vs_conn_hash, ip_vs_conn_put).
            self.hash(cp)
            self._push(cp)
        return cp

    @staticmethod
    def bind_dest(cp, dest):
        """ip_vs_bind_dest: the connection takes the dest's flags (method,
        NOOUTPUT, INACTIVE) and is counted at once. One made by sync keeps the
        activity it was sent with and takes this side's method."""
        cflags = dest.conn_flags
        if cp.protocol != 17:
            cflags &= ~0x2000  # ONE_PACKET is for UDP only
        if cp.flags & IP_VS_CONN_F_SYNC:
            if not cp.flags & IP_VS_CONN_F_TEMPLATE:
                cflags &= ~IP_VS_CONN_F_INACTIVE
            cp.flags &= ~(IP_VS_CONN_F_FWD_MASK | IP_VS_CONN_F_NOOUTPUT)
        cp.flags |= cflags
        cp.dest = dest
        dest.bind(bool(cp.flags & IP_VS_CONN_F_TEMPLATE), bool(cp.flags & IP_VS_CONN_F_INACTIVE))

    def hash(self, cp):
        if cp.flags & IP_VS_CONN_F_TEMPLATE:
            self.templates[cp.in_key()] = cp
        else:
            if self.fast is not None:
                self.fast.forget_keys(cp)
            self.by_in[cp.in_key()] = cp
            key = cp.out_key()
            older = self.by_out.get(key)
            if older is not None and older is not cp:
                # Two connections can share a reply key (one real server behind
                # two VIPs): the kernel's hash chain finds the newest, then the next.
                self.out_shadowed.setdefault(key, []).insert(0, older)
            self.by_out[key] = cp

    def unhash(self, cp):
        """Remove from the lookup indexes, only where this very entry is indexed."""
        if cp.flags & IP_VS_CONN_F_TEMPLATE:
            key = cp.in_key()
            if self.templates.get(key) is cp:
                del self.templates[key]
        else:
            if cp.fast is not None:
                self.fast.forget(cp)
            key = cp.in_key()
            if self.by_in.get(key) is cp:
                del self.by_in[key]
            key = cp.out_key()
            shadowed = self.out_shadowed.get(key)
            if self.by_out.get(key) is cp:
                if shadowed:
                    self.by_out[key] = shadowed.pop(0)
                    if not shadowed:
                        del self.out_shadowed[key]
                else:
                    del self.by_out[key]
            elif shadowed and cp in shadowed:
                shadowed.remove(cp)
                if not shadowed:
                    del self.out_shadowed[key]

    def refresh(self, cp, now):
        """__ip_vs_conn_put_timer: the timer restarts at now + timeout."""
        cp.expires = now + cp.timeout
        if cp.heap_at is None or cp.expires < cp.heap_at:
            self._push(cp)

    def expire_now(self, cp, now):
        """ip_vs_conn_expire_now: the timer fires at the next expiry run."""
        if cp.expires > now:
            cp.expires = now
            if cp.heap_at is None or now < cp.heap_at:
                self._push(cp)

    def _push(self, cp):
        cp.heap_at = cp.expires
        heapq.heappush(self._heap, (cp.expires, cp.seq, cp))

    def next_deadline(self):
        heap = self._heap
        while heap:
            t, _, cp = heap[0]
            if cp.dead or t != cp.heap_at:
                heapq.heappop(heap)
                continue
            return cp.expires if cp.expires < t else t
        return None

    def pop_due(self, now):
        """The next connection whose timer fires at or before `now`, or None."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, cp = heapq.heappop(heap)
            if cp.dead or t != cp.heap_at:
                continue
            if cp.expires > now:
                # Refreshed since: wait for the new deadline.
                self._push(cp)
                continue
            cp.heap_at = None
            return cp
        return None

    def remove(self, cp):
        self.unhash(cp)
        cp.dead = True
        self.conns.pop(cp.seq, None)
