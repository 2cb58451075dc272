"""Where a packet goes next on the wire: routes and the neighbour table.

The engine names a next hop by address (4 bytes for IPv4, 16 for IPv6); the
live director must turn it into an interface and a MAC address, as the
kernel's output path does:
  route    longest-prefix match over the host's main table (read with
           `ip -j -4 route` / `ip -6 -j route`, one Routes per family),
           giving the interface and the gateway, if any;
  neigh    the MAC of the on-link address, from our cache, else from the
           host's neighbour table (/proc/net/arp for IPv4; for IPv6, which
           /proc does not show, `ip -j -6 neigh show`, reread at most once a
           second), else resolved by ARP or Neighbour Solicitation:
           packets wait in a bounded queue (unres_qlen_bytes) while up to
           mcast_solicit requests go out a second apart, then are dropped.
Entries are trusted for REACHABLE_TIME, then re-confirmed by a new request
while the old MAC stays in use (the kernel's STALE -> PROBE).

Both stay bounded whatever sources a flood spoofs: the neighbour table as the
kernel's is (neigh_alloc's gc_thresh2/gc_thresh3 with neigh_forced_gc), and the
route cache, ours alone (the kernel has none since 3.6), is emptied when full.
"""

import ipaddress
import socket
import time

from . import hostconf

REACHABLE_TIME = 30.0        # base_reachable_time
RETRANS_TIME = 1.0           # retrans_time_ms
MCAST_SOLICIT = 3
UNRES_QLEN_BYTES = 212992    # unres_qlen_bytes (SK_WMEM_MAX)
ROUTE_RELOAD = 1.0           # reread routes at most this often on a miss
ROUTE_CACHE_MAX = 65536      # destinations remembered before the route cache starts again
GC_THRESH2 = 512             # neigh/default/gc_thresh2: above it, a forced gc every 5 s
GC_THRESH3 = 1024            # neigh/default/gc_thresh3: the table's hard size
GC_MIN_AGE = 5.0             # a forced gc removes entries not confirmed for this long


class Routes:
    """The host's main routing table of one family (4 or 6), for the interfaces we drive."""

    def __init__(self, ifnames, loader=None, family=4):
        self.ifnames = set(ifnames)
        self.loader = loader or (_load_routes6 if family == 6 else _load_routes)
        self.table = []
        self.cache = {}
        self.loaded_at = None

    def load(self, now):
        self.table = [r for r in self.loader() if r[2] in self.ifnames]
        self.table.sort(key=lambda r: -r[0].prefixlen)
        self.cache = {}
        self.loaded_at = now

    def lookup(self, addr, now):
        """(ifname, on-link address) for a destination (4 bytes, or 16 in an IPv6 table), or None."""
        hit = self.cache.get(addr)
        if hit is not None:
            return hit
        ip = ipaddress.ip_address(addr)
        for net, gateway, dev in self.table:
            if ip in net:
                hit = (dev, gateway or addr)
                if len(self.cache) >= ROUTE_CACHE_MAX:
                    self.cache = {}
                self.cache[addr] = hit
                return hit
        if self.loaded_at is None or now - self.loaded_at >= ROUTE_RELOAD:
            self.load(now)
            return self.lookup(addr, now) if self.table else None
        return None


def _load_routes():
    routes = []
    try:
        entries = hostconf.ip_json("-4", "route", "show", "table", "main")
    except hostconf.HostError:
        return routes
    for r in entries:
        if r.get("type", "unicast") != "unicast":
            continue
        dst = r.get("dst", "")
        try:
            net = ipaddress.IPv4Network("0.0.0.0/0" if dst == "default" else dst, strict=False)
        except ValueError:
            continue
        gw = r.get("gateway")
        routes.append((net, socket.inet_aton(gw) if gw else None, r.get("dev")))
    return routes


def _load_routes6():
    """The IPv6 main table: unicast routes with a device (no multipath), gateways as 16 bytes."""
    routes = []
    try:
        entries = hostconf.ip_json("-6", "route", "show", "table", "main")
    except hostconf.HostError:
        return routes
    for r in entries:
        if r.get("type", "unicast") != "unicast" or not r.get("dev"):
            continue
        dst = r.get("dst", "")
        try:
            net = ipaddress.IPv6Network("::/0" if dst == "default" else dst, strict=False)
            gw = r.get("gateway")
            gw = socket.inet_pton(socket.AF_INET6, gw) if gw else None
        except (ValueError, OSError):
            continue
        routes.append((net, gw, r.get("dev")))
    return routes


def ipv6_addresses(ifname):
    """[(address bytes, prefix length, scope)] of an interface's IPv6 addresses that are
    usable (not tentative, not failed DAD), in the order `ip -6 addr` gives them."""
    found = []
    try:
        links = hostconf.ip_json("-6", "addr", "show", "dev", ifname)
    except hostconf.HostError:
        return found
    for link in links:
        for a in link.get("addr_info", ()):
            if a.get("family") != "inet6" or a.get("tentative") or a.get("dadfailed"):
                continue
            try:
                found.append((socket.inet_pton(socket.AF_INET6, a["local"]), a.get("prefixlen", 128),
                              a.get("scope", "global")))
            except (KeyError, OSError):
                continue
    return found


_NUD_USABLE = ("REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP")


def _host_neigh6_now():
    table = {}
    try:
        entries = hostconf.ip_json("-6", "neigh", "show")
    except hostconf.HostError:
        return table
    for e in entries:
        mac, dev, state = e.get("lladdr"), e.get("dev"), e.get("state") or ()
        if not mac or not dev or not any(s in _NUD_USABLE for s in state):
            continue
        try:
            table[socket.inet_pton(socket.AF_INET6, e["dst"])] = (bytes.fromhex(mac.replace(":", "")), dev)
        except (KeyError, ValueError, OSError):
            continue
    return table


class HostNeigh6:
    """{IPv6 bytes: (MAC bytes, ifname)} of the host's usable IPv6 neighbour entries
    (`ip -j -6 neigh show`: /proc has no IPv6 table), reread at most every `max_age` s:
    a miss costs a process, not one per packet."""

    def __init__(self, max_age=ROUTE_RELOAD, reader=_host_neigh6_now, clock=time.monotonic):
        self.max_age, self.reader, self.clock = max_age, reader, clock
        self.table, self.read_at = {}, None

    def __call__(self):
        now = self.clock()
        if self.read_at is None or now - self.read_at >= self.max_age:
            self.table, self.read_at = self.reader(), now
        return self.table


def host_arp_table():
    """{IPv4 bytes: (MAC bytes, ifname)} of complete entries in /proc/net/arp."""
    table = {}
    try:
        with open("/proc/net/arp") as f:
            next(f)
            for line in f:
                ip, _, flags, mac, _, dev = line.split()[:6]
                if int(flags, 16) & 0x2:  # ATF_COM
                    table[socket.inet_aton(ip)] = (bytes.fromhex(mac.replace(":", "")), dev)
    except (OSError, ValueError, StopIteration):
        pass
    return table


class Neighbours:
    """The MAC of on-link addresses, with the packets waiting for one."""

    def __init__(self, host_table=host_arp_table):
        self.host_table = host_table
        self.entries = {}   # addr -> [mac, confirmed_at, ifname]
        self.pending = {}   # addr -> [ifname, tries, next_try, queue, queued_bytes]
        self.failed = 0     # packets dropped for want of a MAC
        self.table_fulls = 0  # entries the table had no room for (the kernel's table_fulls)
        self.last_flush = None

    def lookup(self, addr, ifname, now):
        """The MAC for `addr`, or None (then call queue())."""
        e = self.entries.get(addr)
        if e is not None:
            if now - e[1] > REACHABLE_TIME and addr not in self.pending:
                # Stale: keep using it, but ask again.
                self.pending[addr] = [ifname, 0, now, [], 0]
            return e[0]
        if addr in self.pending:
            return None  # already asked: packets wait for the answer, no rereading the host's table
        hit = self.host_table().get(addr)
        if hit is not None and hit[1] == ifname:
            self.entries[addr] = [hit[0], now, ifname]
            return hit[0]
        return None

    def queue(self, addr, ifname, frame_body, now):
        p = self.pending.get(addr)
        if p is None:
            if addr not in self.entries and not self._room(now):
                self.failed += 1
                return
            p = self.pending[addr] = [ifname, 0, now, [], 0]
        if p[4] + len(frame_body) > UNRES_QLEN_BYTES:
            self.failed += 1
            return
        p[3].append(frame_body)
        p[4] += len(frame_body)

    def learn(self, addr, mac, ifname, now, create=False):
        """ARP from `addr` on `ifname`: returns the packets that were waiting for it.

        Known and awaited entries are updated; a new one is made only when
        `create` (a request to one of our addresses: arp_process's neigh_event_ns),
        never from unsolicited traffic (arp_accept=0).
        """
        p = self.pending.pop(addr, None)
        if addr not in self.entries and p is None and (not create or not self._room(now)):
            return ()
        self.entries[addr] = [mac, now, ifname]
        return p[3] if p is not None else ()

    def _room(self, now):
        """Whether a new entry may be made, as neigh_alloc decides: at gc_thresh3 entries, or
        at gc_thresh2 with no forced gc for 5 s, unused entries older than 5 s go (down to
        gc_thresh2); with none gone at gc_thresh3 the table is full and the packet dropped.
        Entries being resolved are in use (their timer holds them) and stay."""
        n = len(self.entries) + sum(1 for a in self.pending if a not in self.entries)
        if n < GC_THRESH2 or (n < GC_THRESH3 and self.last_flush is not None
                              and now - self.last_flush <= GC_MIN_AGE):
            return True
        # neigh_forced_gc: up to (entries with the new one) - gc_thresh2, each unused entry
        # looked at counting towards the stop once one is freed
        self.last_flush, freed, most = now, 0, n + 1 - GC_THRESH2
        for addr, e in list(self.entries.items()):
            if addr in self.pending:
                continue            # resolving: its timer holds it
            if now - e[1] > GC_MIN_AGE:
                del self.entries[addr]
                freed += 1
            if freed >= most:
                break
        if not freed and n >= GC_THRESH3:
            self.table_fulls += 1
            return False
        return True

    def due(self, now):
        """Requests to send now: [(addr, ifname)]; drops what waited too long."""
        out = []
        for addr, p in list(self.pending.items()):
            if p[2] > now:
                continue
            if p[1] >= MCAST_SOLICIT:
                del self.pending[addr]
                self.failed += len(p[3])
                if addr in self.entries and p[1] >= MCAST_SOLICIT:
                    del self.entries[addr]  # a stale entry nobody confirms
                continue
            p[1] += 1
            p[2] = now + RETRANS_TIME
            out.append((addr, p[0]))
        return out

    def next_deadline(self):
        return min((p[2] for p in self.pending.values()), default=None)
