"""`lvs sim`: one workload through several schedulers side by side, each in its own
real Engine on a simulated clock (no model of the schedulers: every connection's
packets go through Engine.receive). The workload file and its schema are
lvs/sim_workload.py; the connections of a capture (trace-driven runs)
lvs/sim_capture.py; the outputs lvs/sim_report.py.
"""

import bisect
import heapq
import math
import os
import random
import struct
import sys
import time
from collections import deque

from .errors import ConfigError
from .flags import IP_VS_DEST_F_OVERLOAD
from .sim_report import (_r, _ratio, capture_line, percentile, remap_lines, summary_table,
                         write_outputs)
from .sim_capture import capture_arrivals, workload_from_rules
from .sim_workload import QUANTILES, SimError, load_workload

# ---------------------------------------------------------------- arrivals

def generate_arrivals(wl, seed):
    """[(time, client index, client port, response size, hold, request size)], the same
    for every scheduler: a non-homogeneous Poisson process by thinning."""
    rng = random.Random(seed)
    lam = wl.max_rate()
    out = []
    if lam <= 0:
        return out
    n = len(wl.clients)
    if wl.skew > 0:
        weights = [1.0 / (k + 1) ** wl.skew for k in range(n)]
    else:
        weights = [1.0] * n
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    ports = [1024] * n
    t = 0.0
    while True:
        t += rng.expovariate(lam)
        if t >= wl.duration:
            break
        if rng.random() * lam > wl.rate_at(t):
            continue
        c = bisect.bisect_right(cum, rng.random() * total)
        if c >= n:
            c = n - 1
        port = ports[c]
        ports[c] = port + 1 if port < 65535 else 1024
        size = max(1, int(wl.size.draw(rng)))
        hold = wl.hold.draw(rng)
        request = max(1, min(65000, int(wl.request.draw(rng))))
        out.append((t, c, port, size, hold, request))
    return out


# ---------------------------------------------------------------- packets

_TCP4 = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")
_UDP4 = struct.Struct("!BBHHHBBH4s4sHHHH")
_TCP6 = struct.Struct("!IHBB16s16sHHIIBBHHH")
_UDP6 = struct.Struct("!IHBB16s16sHHHH")
SYN, RST, ACK, PSH, FIN = 0x02, 0x04, 0x10, 0x08, 0x01


def _words(addr):
    return sum((addr[i] << 8) | addr[i + 1] for i in range(0, len(addr), 2))


class Packets:
    """Builds the packets of the simulation: one struct.pack per packet, the IPv4
    header checksum from a per-address-pair sum (the engine checks it)."""

    def __init__(self, v6, protocol):
        self.v6 = v6
        self.tcp = protocol == "tcp"
        self.proto = 6 if self.tcp else 17

    def base(self, src, dst):
        """The checksum sum of an IPv4 header src -> dst but its length."""
        if self.v6:
            return 0
        return 0x4500 + 0x4000 + (0x4000 | self.proto) + _words(src) + _words(dst)

    def tcp4(self, src, dst, base, sport, dport, flags, n=0):
        tot = 40 + n
        s = base + tot
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        head = _TCP4.pack(0x45, 0, tot, 0, 0x4000, 64, 6, ~s & 0xFFFF, src, dst,
                          sport, dport, 1, 1, 0x50, flags, 65535, 0x1234, 0)
        return head + bytes(n) if n else head

    def udp4(self, src, dst, base, sport, dport, flags, n=0):
        tot = 28 + n
        s = base + tot
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        # A non-zero UDP checksum: IPVS does not verify it, and NAT updates it incrementally.
        return _UDP4.pack(0x45, 0, tot, 0, 0x4000, 64, 17, ~s & 0xFFFF, src, dst,
                          sport, dport, 8 + n, 0x1234) + bytes(n)

    def tcp6(self, src, dst, base, sport, dport, flags, n=0):
        head = _TCP6.pack(0x60000000, 20 + n, 6, 64, src, dst, sport, dport, 1, 1, 0x50, flags,
                          65535, 0x1234, 0)
        return head + bytes(n) if n else head

    def udp6(self, src, dst, base, sport, dport, flags, n=0):
        return _UDP6.pack(0x60000000, 8 + n, 17, 64, src, dst, sport, dport, 8 + n, 0x1234) + bytes(n)

    def builder(self):
        if self.v6:
            return self.tcp6 if self.tcp else self.udp6
        return self.tcp4 if self.tcp else self.udp4


# ---------------------------------------------------------------- one run

# Heap entry kinds, in the order they run at the same time.
EVENT, SAMPLE, DONE, CLOSE, GIVEUP, ARRIVE = range(6)
# Flow states
F_WAIT, F_SERVE, F_HOLD, F_CLOSED, F_DEAD = range(5)


class Flow:
    __slots__ = ("t0", "client", "caddr", "cport", "size", "hold", "request", "server",
                 "state", "base_c", "base_s", "start")


class Server:
    """The capacity model of one real server, and what it saw."""

    def __init__(self, spec):
        self.spec = spec
        self.key = (spec.addr_bytes, spec.port)
        self.present = spec.initially == "up"
        self.weight = spec.weight if self.present else 0
        self.up = True
        self.busy = 0
        self.waiting = deque()
        self.flows = set()          # flows it holds open (waiting, served, held)
        self.conns = self.bytes = self.completed = 0
        self.refused = self.lost = self.broken = self.queued = 0
        self.overloaded_samples = 0
        self.rt = []


def _imbalance(values):
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if mean <= 0:
        return None, None
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return max(values) / mean, math.sqrt(var) / mean


class Run:
    """One scheduler's run of the workload."""

    def __init__(self, wl, sched, arrivals, seed):
        from .config import EngineConfig
        from .engine import Engine
        self.wl, self.sched, self.arrivals, self.seed = wl, sched, arrivals, seed
        config = EngineConfig()
        for item in wl.sysctls:
            config.assign(item)
        # The fast path changes no result (lvs/fastpath.py), only the speed: it pays
        # for itself when connections carry several data packets, and costs on
        # short ones. PYLVS_FASTPATH, when set, decides as everywhere else.
        fast = None
        if "PYLVS_FASTPATH" not in os.environ:
            segs = sum(-(-a[3] // wl.segment) for a in arrivals)
            fast = bool(arrivals) and segs >= 3 * len(arrivals)
        self.engine = Engine(config, seed=seed, mtu=65535, fastpath=fast)
        self.commands = []          # (time, argv, stdout+stderr, status)
        self.status = 0
        self._adm(0.0, wl.service.add_args(sched))
        if self.commands[-1][3] != 0:
            raise SimError("scheduler %s: %s" % (sched, self.commands[-1][2].strip()
                                                 or "refused by the engine"))
        self.servers = [Server(s) for s in wl.servers]
        for srv in self.servers:
            if srv.present:
                self._adm(0.0, srv.spec.add_args(wl.service.vip))
        self.by_key = {srv.key: srv for srv in self.servers}
        svc_key = list(self.engine.services)[0]
        self.svc_key = svc_key

    def _adm(self, t, argv):
        from . import adm
        out, err, status = adm.run(self.engine, argv)
        self.commands.append((t, argv, (out + err), status))
        if status != 0:
            self.status = 1
        return status

    def service(self):
        return self.engine.services.get(self.svc_key)

    # -- events
    def apply_event(self, ev, t):
        wl = self.wl
        vip = wl.service.vip
        srv = None
        if ev.server is not None:
            srv = self.servers[wl.servers.index(ev.server)]
        a = ev.action
        if a == "lvsadm":
            argv = [x.replace("{vip}", wl.service.endpoint) for x in ev.args]
            self._adm(t, argv)
            self._sync_weights()
            return
        if a in ("fail", "drain", "remove"):
            if a == "remove" or (a == "fail" and ev.how == "delete"):
                if self._adm(t, ["-d", vip[0], vip[1], "-r", srv.spec.endpoint]) == 0:
                    srv.present = False
            else:
                if self._adm(t, srv.spec.edit_args(vip, 0)) == 0:
                    srv.weight = 0
            if a == "fail":
                self._fail(srv, t)
        elif a == "restore":
            srv.up = True
            if srv.present:
                if self._adm(t, srv.spec.edit_args(vip, srv.spec.weight)) == 0:
                    srv.weight = srv.spec.weight
            elif self._adm(t, srv.spec.add_args(vip)) == 0:
                srv.present, srv.weight = True, srv.spec.weight
        elif a == "weight":
            if self._adm(t, srv.spec.edit_args(vip, ev.weight)) == 0:
                srv.weight = ev.weight
        elif a == "add":
            srv.up = True
            if self._adm(t, srv.spec.add_args(vip)) == 0:
                srv.present, srv.weight = True, srv.spec.weight

    def _sync_weights(self):
        """After a raw lvsadm command: the servers' presence and weights as the engine has them."""
        svc = self.service()
        for srv in self.servers:
            dest = svc.find_dest(*srv.key) if svc is not None else None
            srv.present = dest is not None
            srv.weight = dest.weight if dest is not None else 0

    def _fail(self, srv, t):
        srv.up = False
        for flow in sorted(srv.flows, key=lambda f: f.t0):
            if flow.state in (F_WAIT, F_SERVE):
                srv.broken += 1
                self.broken += 1
            flow.state = F_DEAD
            self.open -= 1
            self.push(t + self.wl.client_timeout, GIVEUP, flow)
        srv.flows.clear()
        srv.busy = 0
        srv.waiting.clear()

    # -- the loop
    def push(self, t, kind, obj):
        self.seq += 1
        heapq.heappush(self.heap, (t, kind, self.seq, obj))

    def run(self):
        wl = self.wl
        engine = self.engine
        receive = engine.receive
        receive_batch = engine.receive_batch
        by_in = engine.conntab.by_in
        by_key = self.by_key
        pk = Packets(wl.service.address.version == 6, wl.protocol)
        build = pk.builder()
        tcp = pk.tcp
        proto = pk.proto
        vaddr = wl.service.address.packed
        vport = wl.service.port
        segment = wl.segment
        client_addrs = [a.packed for a in wl.clients]
        client_bases = [pk.base(a, vaddr) for a in client_addrs]
        server_bases = {}
        nat = {srv.key: srv.spec.method == "nat" for srv in self.servers}

        self.heap, self.seq = [], 0
        # per client: {server name (None: no destination): connections}
        self.client_conns = client_conns = [{} for _ in client_addrs]
        self.open = 0
        self.broken = 0
        self.packets = 0
        self.no_dest = 0
        self.unfinished = 0
        rts = []
        # time series
        times, series, imb, cvs = [], {s.spec.name: {"weight": [], "active": [], "inactive": [],
                                                      "load": [], "open": [], "overloaded": []}
                                       for s in self.servers}, [], []
        # remapping: windows between distinct event times
        bounds = sorted(set(e.at for e in wl.events))
        win_first, win_last = [{}], [{}]
        win = 0
        for ev in wl.events:
            self.push(ev.at, EVENT, ev)
        self.push(0.0, SAMPLE, None)
        arrivals = self.arrivals
        ai = 0
        if arrivals:
            self.push(arrivals[0][0], ARRIVE, None)
        until = wl.duration + wl.drain
        heap = self.heap
        pop, push = heapq.heappop, self.push
        packets = 0
        end = 0.0
        started = time.perf_counter()

        def start_service(srv, flow, now):
            flow.state = F_SERVE
            flow.start = now
            srv.busy += 1
            spec = srv.spec
            push(now + spec.latency + flow.size / spec.speed, DONE, flow)

        while heap:
            t, kind, _, obj = heap[0]
            if t > until:
                break
            pop(heap)
            end = t
            if kind == ARRIVE:
                t0, c, cport, size, hold, request = arrivals[ai]
                ai += 1
                if ai < len(arrivals):
                    push(arrivals[ai][0], ARRIVE, None)
                caddr = client_addrs[c]
                base_c = client_bases[c]
                first = build(caddr, vaddr, base_c, cport, vport, SYN, 0 if tcp else request)
                packets += 1
                receive(first, t)
                cp = by_in.get((proto, caddr, cport, vaddr, vport))
                dest = cp.dest if cp is not None else None
                srv = by_key.get((dest.addr, dest.port)) if dest is not None else None
                while win < len(bounds) and t >= bounds[win]:
                    win += 1
                    win_first.append({})
                    win_last.append({})
                cc = client_conns[c]
                if srv is None:
                    self.no_dest += 1
                    cc[None] = cc.get(None, 0) + 1
                    if c not in win_first[win]:
                        win_first[win][c] = None
                    continue
                name = srv.spec.name
                cc[name] = cc.get(name, 0) + 1
                if c not in win_first[win]:
                    win_first[win][c] = name
                win_last[win][c] = name
                srv.conns += 1
                if not srv.up:
                    srv.lost += 1
                    continue
                flow = Flow()
                flow.t0, flow.client, flow.caddr, flow.cport = t0, c, caddr, cport
                flow.size, flow.hold, flow.request, flow.server = size, hold, request, srv
                flow.base_c = base_c
                snat = nat[srv.key]
                if snat:
                    b = server_bases.get((srv.key, c))
                    if b is None:
                        b = server_bases[(srv.key, c)] = pk.base(srv.key[0], caddr)
                    flow.base_s = b
                else:
                    flow.base_s = None
                full = srv.busy >= srv.spec.capacity and len(srv.waiting) >= srv.spec.queue
                if full:
                    srv.refused += 1
                    if tcp and snat:
                        packets += 1
                        receive(build(srv.key[0], caddr, flow.base_s, srv.key[1], cport, RST | ACK), t)
                    continue
                if tcp:
                    if snat:
                        packets += 1
                        receive(build(srv.key[0], caddr, flow.base_s, srv.key[1], cport, SYN | ACK), t)
                    packets += 1
                    receive(build(caddr, vaddr, base_c, cport, vport, ACK | PSH, request), t)
                srv.flows.add(flow)
                self.open += 1
                if srv.busy < srv.spec.capacity:
                    start_service(srv, flow, t)
                else:
                    flow.state = F_WAIT
                    srv.queued += 1
                    srv.waiting.append(flow)
            elif kind == DONE:
                flow = obj
                if flow.state != F_SERVE:
                    continue
                srv = flow.server
                rt = t - flow.t0
                rts.append(rt)
                srv.rt.append(rt)
                srv.completed += 1
                srv.bytes += flow.size
                batch = []
                if flow.base_s is not None:
                    left = flow.size
                    saddr, sport = srv.key
                    while left > 0:
                        n = segment if left > segment else left
                        left -= n
                        batch.append(build(saddr, flow.caddr, flow.base_s, sport, flow.cport, ACK | PSH, n))
                if tcp:
                    batch.append(build(flow.caddr, vaddr, flow.base_c, flow.cport, vport, ACK))
                if batch:
                    packets += len(batch)
                    receive_batch(batch, t)
                srv.busy -= 1
                if srv.waiting:
                    start_service(srv, srv.waiting.popleft(), t)
                if tcp:
                    if flow.hold > 0:
                        flow.state = F_HOLD
                        push(t + flow.hold, CLOSE, flow)
                        continue
                    kind = CLOSE
                else:
                    flow.state = F_CLOSED
                    srv.flows.discard(flow)
                    self.open -= 1
                    continue
            if kind == CLOSE:
                flow = obj
                if flow.state == F_DEAD or flow.state == F_CLOSED:
                    continue
                srv = flow.server
                caddr, cport, base_c = flow.caddr, flow.cport, flow.base_c
                if flow.base_s is not None:
                    packets += 3
                    receive_batch((build(caddr, vaddr, base_c, cport, vport, FIN | ACK),
                                   build(srv.key[0], caddr, flow.base_s, srv.key[1], cport, FIN | ACK),
                                   build(caddr, vaddr, base_c, cport, vport, ACK)), t)
                else:
                    packets += 2
                    receive_batch((build(caddr, vaddr, base_c, cport, vport, FIN | ACK),
                                   build(caddr, vaddr, base_c, cport, vport, ACK)), t)
                flow.state = F_CLOSED
                srv.flows.discard(flow)
                self.open -= 1
            elif kind == GIVEUP:
                flow = obj
                if tcp:
                    packets += 1
                    receive(build(flow.caddr, vaddr, flow.base_c, flow.cport, vport, RST), t)
            elif kind == SAMPLE:
                engine.expire(t)
                svc = self.service()
                times.append(t)
                vals = []
                for srv in self.servers:
                    dest = svc.find_dest(*srv.key) if svc is not None else None
                    s = series[srv.spec.name]
                    active = dest.activeconns if dest is not None else 0
                    load = srv.busy + len(srv.waiting)
                    over = 1 if dest is not None and dest.flags & IP_VS_DEST_F_OVERLOAD else 0
                    srv.overloaded_samples += over
                    s["weight"].append(dest.weight if dest is not None else None)
                    s["active"].append(active)
                    s["inactive"].append(dest.inactconns if dest is not None else 0)
                    s["load"].append(load)
                    s["open"].append(len(srv.flows))
                    s["overloaded"].append(over)
                    if dest is not None and dest.weight > 0:
                        vals.append(active if tcp else load)
                # Over the arrivals only: while the last connections drain, a
                # handful on one server would read as imbalance.
                m, cv = _imbalance(vals) if t < wl.duration else (None, None)
                imb.append(m)
                cvs.append(cv)
                nxt = round((len(times)) * wl.sample, 9)
                if nxt <= wl.duration or (self.open > 0 and nxt <= until):
                    push(nxt, SAMPLE, None)
            elif kind == EVENT:
                engine.expire(t)
                self.apply_event(obj, t)
        self.wall = time.perf_counter() - started
        self.packets = packets
        self.unfinished = self.open
        self.end = end
        self.rts = rts
        self.times, self.series, self.imb, self.cvs = times, series, imb, cvs
        self.remaps = self._remaps(bounds, win_first, win_last)
        return self

    def _remaps(self, bounds, win_first, win_last):
        out = []
        for k, at in enumerate(bounds):
            events = [e for e in self.wl.events if e.at == at]
            named = {e.server.name for e in events if e.server is not None}
            before = win_last[k] if k < len(win_last) else {}
            after = win_first[k + 1] if k + 1 < len(win_first) else {}
            compared = moved = collateral = unscheduled = 0
            for c, was in before.items():
                if c not in after:
                    continue
                compared += 1
                now = after[c]
                if now is None:
                    unscheduled += 1
                elif now != was:
                    moved += 1
                    if was not in named and now not in named:
                        collateral += 1
            out.append({"at": at, "events": [e.describe() for e in events], "clients_compared": compared,
                        "moved": moved, "moved_share": _ratio(moved, compared),
                        "collateral": collateral, "collateral_share": _ratio(collateral, compared),
                        "unscheduled": unscheduled})
        return out

    # -- results
    def summary(self):
        rts = sorted(self.rts)
        offered = len(self.arrivals)
        servers = []
        total_conns = sum(s.conns for s in self.servers)
        svc = self.service()
        for srv in self.servers:
            rt = sorted(srv.rt)
            dest = svc.find_dest(*srv.key) if svc is not None else None
            row = {"server": srv.spec.name, "conns": srv.conns, "share": _ratio(srv.conns, total_conns),
                   "bytes": srv.bytes, "completed": srv.completed, "queued": srv.queued,
                   "refused": srv.refused, "lost": srv.lost, "broken": srv.broken,
                   "overloaded_seconds": _r(srv.overloaded_samples * self.wl.sample)}
            for q in QUANTILES:
                row["rt_p%d" % q] = _r(percentile(rt, q))
            c = dest.stats.counters() if dest is not None else (None,) * 5
            for name, v in zip(("conns", "inpkts", "outpkts", "inbytes", "outbytes"), c):
                row["engine_" + name] = v
            servers.append(row)
        imb = [v for v in self.imb if v is not None]
        cvs = [v for v in self.cvs if v is not None]
        out = {"scheduler": self.sched, "offered": offered, "scheduled": total_conns,
               "no_destination": self.no_dest, "completed": len(rts),
               "queued": sum(s.queued for s in self.servers),
               "refused": sum(s.refused for s in self.servers),
               "lost": sum(s.lost for s in self.servers), "broken": self.broken,
               "unfinished": self.unfinished,
               "bytes": sum(s.bytes for s in self.servers),
               "rt_mean": _r(sum(rts) / len(rts)) if rts else None}
        for q in QUANTILES:
            out["rt_p%d" % q] = _r(percentile(rts, q))
        out.update({"imbalance_mean": _r(sum(imb) / len(imb)) if imb else None,
                    "imbalance_max": _r(max(imb)) if imb else None,
                    "cv_mean": _r(sum(cvs) / len(cvs)) if cvs else None,
                    "cv_max": _r(max(cvs)) if cvs else None,
                    "packets": self.packets, "end": _r(self.end),
                    "engine_drops": dict(sorted((k, v) for k, v in self.engine.drops.items() if v)),
                    "commands_failed": sum(1 for c in self.commands if c[3] != 0),
                    "servers": servers, "remaps": self.remaps})
        return out


# ---------------------------------------------------------------- the command

def _load_scheduler_files(paths):
    names = []
    if not paths:
        return names
    from . import registry
    load = getattr(registry, "load_scheduler_file", None)
    if load is None:
        raise SimError("--scheduler-path needs lvs.registry.load_scheduler_file, which this pylvs lacks")
    for path in paths:
        try:
            got = load(path)
        except ConfigError as e:
            raise SimError("--scheduler-path: %s" % e.message)
        except (OSError, SyntaxError, ImportError, ValueError) as e:
            raise SimError("--scheduler-path %s: %s" % (path, e))
        items = got if isinstance(got, (list, tuple)) else [got]
        for item in items:
            name = item if isinstance(item, str) else getattr(item, "name", None)
            if name and name not in names:
                names.append(name)
    return names


def is_capture(path):
    """Whether the file starts as a pcap or pcapng file does."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
                    b"\x0a\x0d\x0d\x0a")


def simulate(workload_path, schedulers=None, scheduler_paths=(), outdir=None, seed=None,
             stdout=None, stderr=None, plots=True, rules=None, service=None, size=None):
    """Run `lvs sim`; returns the exit status (SimError for a bad workload or argument).

    With `rules`, `workload_path` is a capture and the rules file (as `lvs replay`
    takes it) gives the service and real servers (lvs/sim_capture.py); `service`
    (PROTO:VIP:PORT) picks one of several, `size` is the response bytes of
    connections whose response the capture lacks."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    # Scheduler files first: the rules may name their schedulers.
    loaded = _load_scheduler_files(scheduler_paths)
    if rules is not None:
        if not os.path.exists(workload_path):
            raise SimError("cannot read capture %s: no such file" % workload_path)
        wl = workload_from_rules(workload_path, rules, service, size)
    else:
        if service is not None or size is not None:
            raise SimError("--service and --size go with a capture and --rules (a workload file "
                           "gives [service] and connections.size)")
        if is_capture(workload_path):
            raise SimError("a capture: give --rules RULES (the service and real servers, as lvs "
                           "replay takes them), or a workload file with capture = \"PATH\"")
        wl = load_workload(workload_path)
    names = list(schedulers) if schedulers else list(wl.schedulers)
    for n in loaded:
        if n not in names:
            names.append(n)
    if not names:
        raise SimError("no scheduler to run")
    seed = wl.seed if seed is None else seed
    outdir = outdir or "sim-%s" % wl.name
    if wl.capture is not None:
        arrivals = capture_arrivals(wl, seed)
    else:
        arrivals = generate_arrivals(wl, seed)
    runs = [Run(wl, name, arrivals, seed) for name in names]   # every service first: bad names fail early
    packets = wall = 0
    summaries = []
    for run in runs:
        run.run()
        packets += run.packets
        wall += run.wall
        summaries.append(run.summary())
        run.engine = None       # its tables are done with: free them before the next run
    plots, why = write_outputs(outdir, wl, seed, runs, summaries, plots=plots)
    if wl.capture_info is not None:
        stdout.write(capture_line(wl) + "\n")
    stdout.write(summary_table(summaries))
    for line in remap_lines(summaries):
        stdout.write(line + "\n")
    stdout.write("%d connections offered; %d packets simulated in %.2f s: %.0f packets/s (%s %s)\n" % (
        len(arrivals), packets, wall, packets / wall if wall > 0 else 0.0,
        sys.implementation.name, sys.version.split()[0]))
    if plots is None:
        stdout.write("no plots: %s\n" % why)
    stdout.write("wrote %s\n" % os.path.join(outdir, "index.md"))
    status = 0
    for run in runs:
        for t, argv, text, st in run.commands:
            if st != 0:
                stderr.write("lvs sim: %s at %gs: lvsadm %s: %s\n" % (run.sched, t, " ".join(argv),
                                                                       text.strip()))
                status = 1
    return status


def _command(args):
    scheds = None
    if args.schedulers:
        scheds = [s for s in args.schedulers.split(",") if s]
    try:
        return simulate(args.workload, scheds, args.scheduler_path, args.output, args.seed,
                        rules=args.rules, service=args.service, size=args.size)
    except SimError as e:
        sys.stderr.write("lvs sim: %s: %s\n" % (args.workload, e))
        return 2


def add_subparser(sub):
    p = sub.add_parser("sim", help="run a workload through several schedulers, side by side",
                       description="Simulate a workload (TOML or JSON; schema in lvs/sim_workload.py), "
                                   "or the connections of a capture (lvs/sim_capture.py), through "
                                   "each scheduler in its own engine; write a summary, time series, "
                                   "plots and index.md.")
    p.add_argument("workload", metavar="WORKLOAD|CAPTURE",
                   help="the workload file (.toml, else JSON), or a capture (pcap, pcapng) with --rules")
    p.add_argument("--rules", metavar="RULES",
                   help="with a capture: the service and real servers, as lvs replay takes them")
    p.add_argument("--service", metavar="PROTO:VIP:PORT",
                   help="with --rules: the service to simulate, when the rules have several")
    p.add_argument("--size", type=float, metavar="BYTES",
                   help="with --rules: response bytes of connections whose response the capture lacks "
                        "(default: exponential, mean 20000)")
    p.add_argument("--schedulers", metavar="S[,S...]",
                   help="schedulers to compare (default: the workload's, else rr,wlc,sh,mh)")
    p.add_argument("--scheduler-path", action="append", default=[], metavar="FILE",
                   help="load a scheduler from this Python file and add it to the comparison (repeatable)")
    p.add_argument("-o", "--output", metavar="OUTDIR", help="output folder (default sim-WORKLOAD)")
    p.add_argument("--seed", type=int, help="random seed (default: the workload's, else 1)")
    p.set_defaults(func=_command)
    return p
