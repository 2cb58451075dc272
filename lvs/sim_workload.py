"""`lvs sim`: one workload through several schedulers, each in its own real Engine.

    lvs sim WORKLOAD [--schedulers rr,wlc,sh,mh] [--scheduler-path FILE]... [-o OUTDIR] [--seed N]
    lvs sim CAPTURE --rules RULES [--service PROTO:VIP:PORT] [--size BYTES] [the same options]

There is no model of the schedulers here: every connection's packets go
through `Engine.receive` on a simulated clock, and the real server each one
reaches is the one the engine chose (its connection table says which). What
is modelled is the world around the director: clients that open connections,
and real servers that can serve only so many at a time.

Per connection (TCP): the client's SYN; the server's SYN-ACK through the
director (NAT only: with DR and tunnels replies bypass the director, as in
life); the client's ACK carrying the request; when the server has served it,
the response (NAT) in segments of `connections.segment` bytes (default 1460,
an Ethernet MSS; up to 65000, as GRO/TSO would hand them over) and the
client's ACK; after the connection's `hold` time the client's FIN, the
server's FIN-ACK (NAT) and the last ACK. A
server whose waiting room is full answers the SYN with an RST. UDP: the
client's request datagram, the response datagrams (NAT); no close (the
engine's UDP timeout ends the entry). Timed events run lvsadm commands
(`lvs.adm.run`) at their time, before any packet of that time.

Capacity model: a real server serves at most `capacity` connections at once;
more wait in a FIFO of at most `queue` (then they are refused). Serving one
takes `latency + size / speed` seconds; its response time is the wait plus
that. A failed server (event `fail`) answers nothing: what it was serving or
holding is broken (the client sends an RST after `client_timeout`), and a SYN
the director still sends it is lost.

Workload file: TOML (`.toml`; tomllib, or the `tomli` package before 3.11) or
JSON (any other name), one table:

  duration = 120            seconds of arrivals (required, > 0; with a capture: its span,
                            and a duration keeps the connections that start before it)
  capture = "PATH"          trace-driven: the connections are a capture's (pcap or pcapng, as
                            lvs replay reads it; PATH relative to the workload file), those
                            to the service below: their clients, ports, start times, request
                            bytes, response bytes where the capture has the server's side
                            (else connections.size) and hold times (lvs/sim_capture.py). It
                            replaces [clients] and [arrivals] (an error beside them), and
                            connections.request and .hold; addresses need not be in the
                            documentation ranges. `lvs sim CAPTURE --rules RULES` makes such
                            a workload from a rules file, servers with the default model.
  seed = 1                  default seed (--seed wins); the same seed gives the same run
  schedulers = ["rr", ...]  default list (--schedulers wins); default rr,wlc,sh,mh
  sample = 1.0              seconds between time-series samples (default duration/200)
  drain = 120               after `duration`, go on at most this long for open connections
                            (default: duration)
  client_timeout = 5.0      a client of a failed server gives up (RST) after this long
  sysctls = {NAME = VALUE}  IPVS sysctls (/proc/sys/net/ipv4/vs names)

  [clients]
  count = 200               distinct client addresses (default 100)
  networks = ["198.51.100.0/24", "203.0.113.0/24"]
                            where they are, in order; only within 198.51.100.0/24,
                            203.0.113.0/24, 192.0.2.0/24 or 2001:db8::/32, and of the
                            service's family; the service's and servers' addresses are
                            skipped (default 198.51.100.0/24, or 2001:db8:c::/64 for IPv6)
  skew = 0.0                Zipf exponent of how often each client connects (0: uniform)

  [arrivals]
  rate = 100.0              Poisson arrivals, connections/s
  curve = [[0, 50], [60, 200]]   rate at given times, linear between (replaces rate)
  bursts = [{at = 30, duration = 2, rate = 1000}]   extra rate during [at, at+duration)

  [connections]
  protocol = "tcp"          or "udp"
  size = DIST               response bytes (default {dist="exponential", mean=20000})
  request = 200             request bytes (a number or a DIST)
  hold = DIST               seconds the client keeps the connection after the response (0)
  segment = 1460            bytes per response packet (1..65000; the director's MTU is 65535)

  DIST: a number (constant), or a table {dist = ..., max = CAP (optional)} with
    "constant" value; "exponential" mean; "pareto" alpha, min (scale);
    "lognormal" sigma and mu, median or mean; "uniform" min, max.

  [service]
  address = "192.0.2.1"     the VIP (IPv4 or IPv6, documentation ranges)
  port = 80
  method = "nat"            nat, dr or tunnel (each server may override)
  persistent = 0            -p seconds (0: no persistence)
  netmask = "..."           -M (IPv4 mask, or IPv6 prefix length)
  flags = {sh = "sh-fallback", mh = "mh-fallback,mh-port"}   -b per scheduler name

  [[servers]]               at least one
  address = "192.0.2.10"    (required)
  port = 80                 (default the service's)
  name = "rs1"              (default ADDR:PORT, IPv6 in brackets)
  weight = 1
  upper = 0                 -x (0: none)
  lower = 0                 -y
  capacity = 50             connections served at once
  queue = 1000              connections that may wait; more are refused
  speed = 1e6               bytes/s per connection being served
  latency = 0.001           fixed seconds of service per connection
  method = "nat"
  initially = "up"          "absent": not in the service until an `add` event

  [[events]]
  at = 40                   seconds from the start (required)
  action = "fail"           fail (down; how = "weight0" (default) or "delete"),
                            drain (weight 0, still serving), remove (deleted, still serving
                            its connections), restore (up again: its weight back, or
                            added back), weight (weight = N), add (an `initially = "absent"`
                            server joins), lvsadm (args = "ipvsadm arguments"; {vip} is
                            replaced by the service, e.g. "-e -t {vip} -s wrr")
  server = "rs1"            a server's name or ADDR:PORT (all but lvsadm)

Outputs (OUTDIR, default sim-<workload name>): summary.json and summary.csv
(per scheduler), servers.csv (per scheduler and server), timeseries.csv and
timeseries.json (per sample: each server's weight, the engine's ActiveConn and
InActConn, the model's load (served + waiting) and open connections, the
overload mark; per scheduler the imbalance max/mean and the coefficient of
variation of the active connections over the servers in service with weight >
0; for UDP, where IPVS counts no active connection, the model's load stands
in), events.csv (every command and its status, and per event time the share
of clients whose server changed: among clients that connected both in the
window before and in the window after, those whose first server after differs
from their last before; `collateral` counts those where neither server is one
the events named), clients.csv (per scheduler and client: its connections
and the servers they reached), response_times.csv (quantiles), plots (PNG and SVG, with
matplotlib where it is installed) and index.md linking them. The summary is
printed too ("conns" there are the connections the engine scheduled; refused,
lost and broken ones among them), with the simulated packets per second: the
only output that is not the same from run to run. The engine's fast path is
on when the connections carry three data packets or more on average (it
changes no result, only the speed), unless PYLVS_FASTPATH says otherwise.
"""

import bisect
import ipaddress
import json
import math
import os
import shlex

from .errors import ConfigError

DEFAULT_SCHEDULERS = ("rr", "wlc", "sh", "mh")
ALLOWED_NETS = tuple(ipaddress.ip_network(n) for n in
                     ("198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24", "2001:db8::/32"))
METHOD_FLAGS = {"nat": "-m", "dr": "-g", "tunnel": "-i"}
QUANTILES = (50, 90, 99)


class SimError(Exception):
    """A problem with the workload or the arguments, found before anything runs."""


# ---------------------------------------------------------------- the workload

_REQUIRED = object()


def _type_name(kinds):
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names[k] for k in kinds)


def _get(table, key, path, kinds, default=_REQUIRED, check=None, what=None):
    """table[key] checked to be of `kinds` (int counts as float) and to pass check()."""
    name = path + key
    if key not in table:
        if default is _REQUIRED:
            raise SimError("field %s: missing" % name)
        return default
    value = table[key]
    ok = any((isinstance(value, k) and not (k in (int, float) and isinstance(value, bool)))
             or (k is float and isinstance(value, int) and not isinstance(value, bool))
             for k in kinds)
    if not ok:
        raise SimError("field %s: must be %s (got %r)" % (name, what or _type_name(kinds), value))
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if check is not None and not check(value):
        raise SimError("field %s: must be %s (got %r)" % (name, what, value))
    return value


def _only(table, path, keys):
    for key in table:
        if key not in keys:
            raise SimError("field %s%s: unknown (known: %s)" % (path, key, ", ".join(sorted(keys))))


def _table(parent, key, path):
    value = _get(parent, key, path, (dict,), {})
    return value


def _positive(v):
    return v > 0 and math.isfinite(v)


def _nonneg(v):
    return v >= 0 and math.isfinite(v)


class Dist:
    """A distribution of positive numbers, drawn from a random.Random."""

    def __init__(self, spec, name):
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            if not _nonneg(float(spec)):
                raise SimError("field %s: must be >= 0 (got %r)" % (name, spec))
            self.kind, self.args, self.cap = "constant", (float(spec),), None
            return
        if not isinstance(spec, dict):
            raise SimError("field %s: must be a number or a table {dist = ...} (got %r)" % (name, spec))
        path = name + "."
        kind = _get(spec, "dist", path, (str,))
        self.cap = _get(spec, "max", path, (float,), None, _positive, "> 0")
        if kind == "constant":
            _only(spec, path, ("dist", "value", "max"))
            self.args = (_get(spec, "value", path, (float,), check=_nonneg, what=">= 0"),)
        elif kind == "exponential":
            _only(spec, path, ("dist", "mean", "max"))
            self.args = (_get(spec, "mean", path, (float,), check=_positive, what="> 0"),)
        elif kind == "pareto":
            _only(spec, path, ("dist", "alpha", "min", "max"))
            self.args = (_get(spec, "alpha", path, (float,), check=_positive, what="> 0"),
                         _get(spec, "min", path, (float,), check=_positive, what="> 0"))
        elif kind == "lognormal":
            _only(spec, path, ("dist", "mu", "median", "mean", "sigma", "max"))
            sigma = _get(spec, "sigma", path, (float,), check=_nonneg, what=">= 0")
            given = [k for k in ("mu", "median", "mean") if k in spec]
            if len(given) != 1:
                raise SimError("field %smu: give exactly one of mu, median, mean" % path)
            if given[0] == "mu":
                mu = _get(spec, "mu", path, (float,), check=math.isfinite, what="finite")
            else:
                v = _get(spec, given[0], path, (float,), check=_positive, what="> 0")
                mu = math.log(v) - (sigma * sigma / 2 if given[0] == "mean" else 0.0)
            self.args = (mu, sigma)
        elif kind == "uniform":
            _only(spec, path, ("dist", "min", "max"))
            lo = _get(spec, "min", path, (float,), check=_nonneg, what=">= 0")
            hi = _get(spec, "max", path, (float,), check=lambda v: v >= lo and math.isfinite(v),
                      what=">= min")
            self.args, self.cap = (lo, hi), None
        else:
            raise SimError("field %sdist: must be one of constant, exponential, pareto, lognormal, "
                           "uniform (got %r)" % (path, kind))
        self.kind = kind

    def draw(self, rng):
        k, a = self.kind, self.args
        if k == "constant":
            v = a[0]
        elif k == "exponential":
            v = rng.expovariate(1.0 / a[0])
        elif k == "pareto":
            v = a[1] * rng.paretovariate(a[0])
        elif k == "lognormal":
            v = rng.lognormvariate(a[0], a[1])
        else:
            v = rng.uniform(a[0], a[1])
        if self.cap is not None and v > self.cap:
            v = self.cap
        return v


def _address(text, name, strict=True):
    """An address of the workload; `strict`: within the documentation ranges (a
    synthetic workload's; a capture's service and servers are what they are)."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise SimError("field %s: not an IP address (got %r)" % (name, text))
    if strict and not any(addr in net for net in ALLOWED_NETS):
        raise SimError("field %s: %s is outside the documentation ranges 198.51.100.0/24, "
                       "203.0.113.0/24, 192.0.2.0/24, 2001:db8::/32" % (name, addr))
    return addr


def _endpoint(addr, port):
    return ("[%s]:%d" if addr.version == 6 else "%s:%d") % (addr, port)


class ServerSpec:
    def __init__(self, table, path, service, strict=True):
        _only(table, path, ("address", "port", "name", "weight", "upper", "lower", "capacity",
                            "queue", "speed", "latency", "method", "initially"))
        self.address = _address(_get(table, "address", path, (str,)), path + "address", strict)
        if self.address.version != service.address.version:
            raise SimError("field %saddress: %s is not of the service's family" % (path, self.address))
        self.port = _get(table, "port", path, (int,), service.port,
                         lambda v: 0 < v < 65536, "a port (1-65535)")
        self.endpoint = _endpoint(self.address, self.port)
        self.name = _get(table, "name", path, (str,), self.endpoint, lambda v: v != "", "not empty")
        self.weight = _get(table, "weight", path, (int,), 1, lambda v: 0 <= v <= 0x7FFFFFFF, ">= 0")
        self.upper = _get(table, "upper", path, (int,), 0, lambda v: v >= 0, ">= 0")
        self.lower = _get(table, "lower", path, (int,), 0, lambda v: v >= 0, ">= 0")
        self.capacity = _get(table, "capacity", path, (int,), 50, lambda v: v > 0, "a positive integer")
        self.queue = _get(table, "queue", path, (int,), 1000, lambda v: v >= 0, "an integer >= 0")
        self.speed = _get(table, "speed", path, (float,), 1e6, _positive, "> 0")
        self.latency = _get(table, "latency", path, (float,), 0.001, _nonneg, ">= 0")
        self.method = _get(table, "method", path, (str,), service.method,
                           lambda v: v in METHOD_FLAGS, "nat, dr or tunnel")
        self.initially = _get(table, "initially", path, (str,), "up",
                              lambda v: v in ("up", "absent"), '"up" or "absent"')
        self.addr_bytes = self.address.packed

    def add_args(self, vip):
        argv = ["-a", vip[0], vip[1], "-r", self.endpoint, METHOD_FLAGS[self.method],
                "-w", str(self.weight)]
        if self.upper:
            argv += ["-x", str(self.upper)]
        if self.lower:
            argv += ["-y", str(self.lower)]
        return argv

    def edit_args(self, vip, weight):
        argv = ["-e", vip[0], vip[1], "-r", self.endpoint, METHOD_FLAGS[self.method], "-w", str(weight)]
        if self.upper:
            argv += ["-x", str(self.upper)]
        if self.lower:
            argv += ["-y", str(self.lower)]
        return argv


class ServiceSpec:
    def __init__(self, table, protocol, strict=True):
        path = "service."
        _only(table, path, ("address", "port", "method", "persistent", "netmask", "flags"))
        self.address = _address(_get(table, "address", path, (str,), "192.0.2.1"), path + "address",
                                strict)
        self.port = _get(table, "port", path, (int,), 80, lambda v: 0 < v < 65536, "a port (1-65535)")
        self.method = _get(table, "method", path, (str,), "nat", lambda v: v in METHOD_FLAGS,
                           "nat, dr or tunnel")
        self.persistent = _get(table, "persistent", path, (int,), 0, lambda v: v >= 0, ">= 0")
        self.netmask = _get(table, "netmask", path, (str, int), None)
        flags = _get(table, "flags", path, (dict,), {})
        for k, v in flags.items():
            if not isinstance(v, str):
                raise SimError("field %sflags.%s: must be a string of -b flags (got %r)" % (path, k, v))
        self.flags = flags
        self.protocol = protocol
        self.option = "-t" if protocol == "tcp" else "-u"
        self.endpoint = _endpoint(self.address, self.port)
        self.vip = (self.option, self.endpoint)

    def add_args(self, sched):
        argv = ["-A", self.option, self.endpoint, "-s", sched]
        if self.flags.get(sched):
            argv += ["-b", self.flags[sched]]
        if self.persistent:
            argv += ["-p", str(self.persistent)]
        if self.netmask is not None:
            argv += ["-M", str(self.netmask)]
        return argv


EVENT_ACTIONS = ("fail", "drain", "remove", "restore", "weight", "add", "lvsadm")


class EventSpec:
    def __init__(self, table, path, index, servers, duration):
        _only(table, path, ("at", "action", "server", "how", "weight", "args"))
        self.index = index
        self.at = _get(table, "at", path, (float,), check=_nonneg, what="a time >= 0")
        self.action = _get(table, "action", path, (str,), check=lambda v: v in EVENT_ACTIONS,
                           what="one of " + ", ".join(EVENT_ACTIONS))
        self.server = None
        if self.action != "lvsadm":
            ref = _get(table, "server", path, (str,))
            found = [s for s in servers if ref in (s.name, s.endpoint)]
            if len(found) != 1:
                raise SimError("field %sserver: %s %r" % (
                    path, "no server is" if not found else "several servers are", ref))
            self.server = found[0]
        self.how = _get(table, "how", path, (str,), "weight0", lambda v: v in ("weight0", "delete"),
                        '"weight0" or "delete"')
        self.weight = _get(table, "weight", path, (int,), None if self.action != "weight" else _REQUIRED,
                           lambda v: v >= 0, "an integer >= 0")
        self.args = None
        if self.action == "lvsadm":
            text = _get(table, "args", path, (str,))
            try:
                self.args = shlex.split(text)
            except ValueError as e:
                raise SimError("field %sargs: %s" % (path, e))
            if not self.args:
                raise SimError("field %sargs: empty" % path)

    def describe(self):
        if self.action == "lvsadm":
            return "lvsadm " + " ".join(self.args)
        text = "%s %s" % (self.action, self.server.name)
        if self.action == "fail":
            text += " (%s)" % self.how
        if self.action == "weight":
            text += " -> %d" % self.weight
        return text


class Workload:
    def __init__(self, raw, name="workload", base_dir=None):
        if not isinstance(raw, dict):
            raise SimError("the workload must be a table (got %s)" % type(raw).__name__)
        _only(raw, "", ("duration", "seed", "schedulers", "sample", "drain", "client_timeout",
                        "sysctls", "clients", "arrivals", "connections", "service", "servers",
                        "events", "capture"))
        self.name = name
        # Trace-driven: the connections (clients, ports, times, bytes) come from a capture
        # (lvs/sim_capture.py), read when the run starts; `duration` defaults to its span.
        self.capture = _get(raw, "capture", "", (str,), None, lambda v: v != "", "a file name")
        if self.capture is not None:
            for key in ("arrivals", "clients"):
                if key in raw:
                    raise SimError("field %s: give either capture or [%s]: a capture's connections "
                                   "arrive from its clients at its times" % (key, key))
            if base_dir is not None:
                self.capture = os.path.join(base_dir, self.capture)
        strict = self.capture is None
        self.duration = _get(raw, "duration", "", (float,), _REQUIRED if strict else None,
                             check=_positive, what="> 0 (seconds)")
        self.seed = _get(raw, "seed", "", (int,), 1)
        scheds = _get(raw, "schedulers", "", (list,), list(DEFAULT_SCHEDULERS))
        for i, s in enumerate(scheds):
            if not isinstance(s, str) or not s:
                raise SimError("field schedulers[%d]: must be a scheduler name (got %r)" % (i, s))
        self.schedulers = list(scheds)
        self._sample = _get(raw, "sample", "", (float,), None, _positive, "> 0")
        self._drain = _get(raw, "drain", "", (float,), None, _nonneg, ">= 0")
        self.sample = self.drain = None
        if self.duration is not None:
            self.set_duration(self.duration)
        self.client_timeout = _get(raw, "client_timeout", "", (float,), 5.0, _nonneg, ">= 0")
        self.sysctls = []
        from .config import EngineConfig
        probe = EngineConfig()
        for k, v in _get(raw, "sysctls", "", (dict,), {}).items():
            item = "%s=%s" % (k, int(v) if isinstance(v, bool) else v)
            try:
                probe.assign(item)
            except ConfigError as e:
                raise SimError("field sysctls.%s: %s" % (k, e.message))
            self.sysctls.append(item)

        conns = _table(raw, "connections", "")
        path = "connections."
        _only(conns, path, ("protocol", "size", "request", "hold", "segment"))
        if not strict:
            for key in ("request", "hold"):
                if key in conns:
                    raise SimError("field %s%s: the capture gives each connection's %s: remove it"
                                   % (path, key, key))
        self.protocol = _get(conns, "protocol", path, (str,), "tcp", lambda v: v in ("tcp", "udp"),
                             '"tcp" or "udp"')
        self.size = Dist(conns.get("size", {"dist": "exponential", "mean": 20000}), path + "size")
        self.request = Dist(conns.get("request", 200), path + "request")
        self.hold = Dist(conns.get("hold", 0), path + "hold")
        self.segment = _get(conns, "segment", path, (int,), 1460, lambda v: 0 < v <= 65000, "1..65000")

        self.service = ServiceSpec(_table(raw, "service", ""), self.protocol, strict)
        servers = _get(raw, "servers", "", (list,))
        if not servers:
            raise SimError("field servers: at least one server is needed")
        self.servers = []
        seen = set()
        for i, t in enumerate(servers):
            p = "servers[%d]." % i
            if not isinstance(t, dict):
                raise SimError("field servers[%d]: must be a table (got %r)" % (i, t))
            s = ServerSpec(t, p, self.service, strict)
            for key in (s.name,) if s.name == s.endpoint else (s.name, s.endpoint):
                if key in seen:
                    raise SimError("field %sname: %s is given twice" % (p, key))
                seen.add(key)
            self.servers.append(s)

        self.events = []
        for i, t in enumerate(_get(raw, "events", "", (list,), [])):
            if not isinstance(t, dict):
                raise SimError("field events[%d]: must be a table (got %r)" % (i, t))
            self.events.append(EventSpec(t, "events[%d]." % i, i, self.servers, self.duration))
        self.events.sort(key=lambda e: (e.at, e.index))
        self.capture_info = None
        if not strict:
            self.clients, self.skew = [], 0.0       # lvs/sim_capture.py sets them
            self.curve, self.bursts = [(0.0, 0.0)], []
            return

        clients = _table(raw, "clients", "")
        path = "clients."
        _only(clients, path, ("count", "networks", "skew"))
        v6 = self.service.address.version == 6
        count = _get(clients, "count", path, (int,), 100, lambda v: v > 0, "a positive integer")
        nets = _get(clients, "networks", path, (list,), ["2001:db8:c::/64" if v6 else "198.51.100.0/24"])
        taken = {self.service.address} | {s.address for s in self.servers}
        self.clients = _client_addresses(nets, count, taken, self.service.address.version, path)
        self.skew = _get(clients, "skew", path, (float,), 0.0, _nonneg, ">= 0")

        arr = _table(raw, "arrivals", "")
        path = "arrivals."
        _only(arr, path, ("rate", "curve", "bursts"))
        rate = _get(arr, "rate", path, (float,), None, _nonneg, ">= 0 (connections/s)")
        curve = _get(arr, "curve", path, (list,), None)
        if curve is not None:
            points = []
            for i, pt in enumerate(curve):
                if (not isinstance(pt, list) or len(pt) != 2
                        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in pt)
                        or pt[1] < 0 or (points and pt[0] <= points[-1][0])):
                    raise SimError("field %scurve[%d]: must be [time, rate], rate >= 0, times "
                                   "increasing (got %r)" % (path, i, pt))
                points.append((float(pt[0]), float(pt[1])))
            if not points:
                raise SimError("field %scurve: empty" % path)
            self.curve = points
        elif rate is not None:
            self.curve = [(0.0, rate)]
        else:
            raise SimError("field %srate: missing (or give arrivals.curve)" % path)
        self.bursts = []
        for i, b in enumerate(_get(arr, "bursts", path, (list,), [])):
            p = "%sbursts[%d]." % (path, i)
            if not isinstance(b, dict):
                raise SimError("field %sbursts[%d]: must be a table (got %r)" % (path, i, b))
            _only(b, p, ("at", "duration", "rate"))
            self.bursts.append((_get(b, "at", p, (float,), check=_nonneg, what=">= 0"),
                                _get(b, "duration", p, (float,), check=_positive, what="> 0"),
                                _get(b, "rate", p, (float,), check=_nonneg, what=">= 0")))

    def set_duration(self, duration):
        """The run's length, and what defaults to a share of it (a capture's workload
        learns it from the capture)."""
        self.duration = duration
        self.sample = self._sample if self._sample is not None else duration / 200
        self.drain = self._drain if self._drain is not None else duration

    def rate_at(self, t):
        pts = self.curve
        if t <= pts[0][0]:
            r = pts[0][1]
        elif t >= pts[-1][0]:
            r = pts[-1][1]
        else:
            i = bisect.bisect_right([p[0] for p in pts], t)
            (t0, r0), (t1, r1) = pts[i - 1], pts[i]
            r = r0 + (r1 - r0) * (t - t0) / (t1 - t0)
        for at, length, extra in self.bursts:
            if at <= t < at + length:
                r += extra
        return r

    def max_rate(self):
        return max(p[1] for p in self.curve) + sum(b[2] for b in self.bursts)


def _client_addresses(nets, count, taken, version, path):
    addresses = []
    for i, text in enumerate(nets):
        name = "%snetworks[%d]" % (path, i)
        try:
            net = ipaddress.ip_network(text, strict=False)
        except (ValueError, TypeError):
            raise SimError("field %s: not a network (got %r)" % (name, text))
        if not any(net.version == a.version and net.subnet_of(a) for a in ALLOWED_NETS):
            raise SimError("field %s: %s is outside the documentation ranges 198.51.100.0/24, "
                           "203.0.113.0/24, 192.0.2.0/24, 2001:db8::/32" % (name, net))
        if net.version != version:
            raise SimError("field %s: %s is not of the service's family" % (name, net))
        first = int(net.network_address) + 1
        last = int(net.broadcast_address) - (1 if version == 4 else 0)
        n = first
        while n <= last and len(addresses) < count:
            a = ipaddress.ip_address(n)
            if a not in taken:
                addresses.append(a)
            n += 1
        if len(addresses) >= count:
            break
    if len(addresses) < count:
        raise SimError("field %scount: %d clients do not fit in clients.networks (%d addresses)"
                       % (path, count, len(addresses)))
    return addresses


def load_workload(path):
    """Read and check a workload file (TOML or JSON); SimError names the field."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SimError("cannot read %s: %s" % (path, e.strerror))
    if path.endswith(".toml"):
        try:
            import tomllib as toml
        except ImportError:
            try:
                import tomli as toml
            except ImportError:
                raise SimError("reading TOML needs Python 3.11 or the tomli package (pip install tomli)")
        try:
            raw = toml.loads(data.decode("utf-8"))
        except (toml.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SimError("not valid TOML: %s" % e)
    else:
        try:
            raw = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise SimError("not valid JSON: %s" % e)
    return Workload(raw, os.path.splitext(os.path.basename(path))[0], os.path.dirname(path))


