"""Prometheus metrics of the engine (`lvs daemon --metrics ADDR:PORT`).

Two groups, read from the engine at scrape time only (no per-packet work):

node_exporter's ipvs collector, the same names, help texts, types, labels and values as
node_exporter computes from /proc/net/ip_vs and /proc/net/ip_vs_stats (collector/ipvs_linux.go
with prometheus/procfs' parser), so dashboards and alerts made for a kernel director read a
pylvs one unchanged:
  node_ipvs_connections_total, node_ipvs_incoming_packets_total,
  node_ipvs_outgoing_packets_total, node_ipvs_incoming_bytes_total,
  node_ipvs_outgoing_bytes_total      (counters: the totals since the last -Z, as of the
                                       last estimator tick, as /proc/net/ip_vs_stats has them)
  node_ipvs_backend_connections_active, node_ipvs_backend_connections_inactive,
  node_ipvs_backend_weight            (gauges, one per real server, labels below)
  labels: local_address, local_port, remote_address, remote_port, proto, local_mark
  - addresses as Go's net.IP.String(): dotted IPv4, RFC 5952 IPv6 ("2001:db8::200"), an
    IPv4-mapped IPv6 address dotted;
  - a fwmark service (either family): proto "FWM", local_address "", local_port "0",
    local_mark the mark as /proc writes it (8 upper-case hex digits: "00000001"); other
    services have local_mark "";
  - ports in decimal; real servers with the same label values are added up.

pylvs's own, prefixed pylvs_:
  pylvs_drops_total{reason}                    packets dropped, by the engine's reason
  pylvs_fastpath_hits_total                    packets that took the fast path (lvs/fastpath.py)
  pylvs_fastpath_hit_ratio                     those hits / every packet a connection counted
  pylvs_connection_entries{kind}               entries in the table: connection, template
  pylvs_sync_daemon_running{state,mcast_interface,syncid}  1 per running sync daemon
  pylvs_sync_events_total{event}               the sync counters (lvs daemon --stats "sync")
  pylvs_director_events_total{event}           the live side's counters (with --iface)
  pylvs_director_vip_owner                     1 if this director answers for the VIPs
  pylvs_backend_{connections,incoming_packets,outgoing_packets,incoming_bytes,
                 outgoing_bytes}_total         per real server, node_exporter's labels
  pylvs_info{version}

The collector reads a plain snapshot (snapshot(), built where the engine lives: the
daemon's loop thread); the HTTP server runs in its own thread (prometheus_client's
WSGI server) and asks the loop for a snapshot through LoopCall.
"""

import ipaddress
import socket
import threading
from collections import Counter

from . import __version__
from .flags import IP_VS_CONN_F_TEMPLATE
from .listing import kernel_service_order, proto_name

NODE_TOTALS = (
    ("node_ipvs_connections_total", "The total number of connections made."),
    ("node_ipvs_incoming_packets_total", "The total number of incoming packets."),
    ("node_ipvs_outgoing_packets_total", "The total number of outgoing packets."),
    ("node_ipvs_incoming_bytes_total", "The total amount of incoming data."),
    ("node_ipvs_outgoing_bytes_total", "The total amount of outgoing data."),
)
NODE_BACKEND = (
    ("node_ipvs_backend_connections_active",
     "The current active connections by local and remote address."),
    ("node_ipvs_backend_connections_inactive",
     "The current inactive connections by local and remote address."),
    ("node_ipvs_backend_weight", "The current backend weight by local and remote address."),
)
BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto",
                  "local_mark")
PYLVS_BACKEND = (
    ("pylvs_backend_connections_total", "Connections scheduled to the real server."),
    ("pylvs_backend_incoming_packets_total", "Packets from clients to the real server."),
    ("pylvs_backend_outgoing_packets_total", "Packets from the real server to clients."),
    ("pylvs_backend_incoming_bytes_total", "Bytes from clients to the real server."),
    ("pylvs_backend_outgoing_bytes_total", "Bytes from the real server to clients."),
)


def go_ip(addr):
    """Go's net.IP.String() of the address prometheus/procfs parses from /proc/net/ip_vs."""
    if len(addr) == 4:
        return socket.inet_ntop(socket.AF_INET, addr)
    if addr[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, addr[12:])  # To4() succeeds: dotted
    return ipaddress.IPv6Address(addr).compressed


def backend_labels(svc, dest):
    """node_exporter's label values for one real server of one service."""
    if svc.fwmark:
        local_address, local_port, proto, mark = "", "0", "FWM", "%08X" % (svc.fwmark & 0xFFFFFFFF)
    else:
        local_address, local_port = go_ip(svc.addr), "%d" % svc.port
        proto, mark = proto_name(svc.protocol), ""
    return (local_address, local_port, go_ip(dest.addr), "%d" % dest.port, proto, mark)


def snapshot(engine, director=None):
    """The numbers a scrape shows, as plain data (call it where the engine is safe to read)."""
    backends = {}
    for svc in kernel_service_order(engine):
        for dest in svc.destinations:
            key = backend_labels(svc, dest)
            row = backends.setdefault(key, [0, 0, 0, 0, 0, 0, 0, 0])
            row[0] += dest.activeconns
            row[1] += dest.inactconns
            row[2] += dest.weight
            for i, v in enumerate(dest.stats.shown()):
                row[3 + i] += v
    templates = sum(1 for cp in engine.conntab.conns.values() if cp.flags & IP_VS_CONN_F_TEMPLATE)
    conns = len(engine.conntab.conns) - templates
    live = engine.tot_stats.counters()
    packets = live[1] + live[2]
    drops = Counter(engine.drops)
    fast = engine.fast
    hits = None if fast is None else fast.hits
    for part in engine.worker_parts:   # --workers: the copy holds each worker's part
        drops.update(part["drops"])
        packets += part["live"][1] + part["live"][2]
        hits = None if hits is None else hits + part["fast"]
        conns += part["entries"][0]
        templates += part["entries"][1]
    snap = {
        "totals": tuple(engine.tot_stats.shown()),
        "backends": backends,
        "drops": dict(drops),
        "fastpath": None if hits is None else (hits, packets),
        "entries": {"connection": conns, "template": templates},
        "sync_daemons": [(state, cfg.get("mcast_ifn", ""), cfg.get("syncid", 0))
                         for state, cfg in sorted(engine.sync_daemons.items())],
        "sync": dict(engine.sync_stats),
        "director": None,
    }
    if director is not None:
        snap["director"] = director.stats()
    return snap


class EngineCollector:
    """A prometheus_client custom collector: get_snapshot() is called at each scrape."""

    def __init__(self, get_snapshot):
        self.get_snapshot = get_snapshot

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        snap = self.get_snapshot()
        for (name, doc), value in zip(NODE_TOTALS, snap["totals"]):
            m = CounterMetricFamily(name, doc)
            m.add_metric([], float(value))
            yield m
        families = [GaugeMetricFamily(name, doc, labels=BACKEND_LABELS) for name, doc in NODE_BACKEND]
        own = [CounterMetricFamily(name, doc, labels=BACKEND_LABELS) for name, doc in PYLVS_BACKEND]
        for key, row in snap["backends"].items():
            for i, m in enumerate(families):
                m.add_metric(list(key), float(row[i]))
            for i, m in enumerate(own):
                m.add_metric(list(key), float(row[3 + i]))
        for m in families + own:
            yield m

        m = CounterMetricFamily("pylvs_drops", "Packets the engine dropped, by reason.",
                                labels=("reason",))
        for reason, n in sorted(snap["drops"].items()):
            m.add_metric([reason], float(n))
        yield m
        if snap["fastpath"] is not None:
            hits, packets = snap["fastpath"]
            m = CounterMetricFamily("pylvs_fastpath_hits",
                                    "Packets of established connections that took the fast path.")
            m.add_metric([], float(hits))
            yield m
            g = GaugeMetricFamily("pylvs_fastpath_hit_ratio",
                                  "Fast path hits over every packet counted to a connection "
                                  "(0 before the first).")
            g.add_metric([], float(hits) / packets if packets else 0.0)
            yield g
        g = GaugeMetricFamily("pylvs_connection_entries",
                              "Entries in the connection table.", labels=("kind",))
        for kind, n in sorted(snap["entries"].items()):
            g.add_metric([kind], float(n))
        yield g
        g = GaugeMetricFamily("pylvs_sync_daemon_running", "1 for each running sync daemon.",
                              labels=("state", "mcast_interface", "syncid"))
        for state, ifname, syncid in snap["sync_daemons"]:
            g.add_metric([state, ifname, "%d" % syncid], 1.0)
        yield g
        m = CounterMetricFamily("pylvs_sync_events", "Connection sync counters.", labels=("event",))
        for event, n in sorted(snap["sync"].items()):
            m.add_metric([event], float(n))
        yield m
        director = snap["director"]
        if director is not None:
            g = GaugeMetricFamily("pylvs_director_vip_owner",
                                  "1 if this director answers ARP and NDP for the VIPs.")
            g.add_metric([], float(director.get("vip_owner", 0)))
            yield g
            m = CounterMetricFamily("pylvs_director_events",
                                    "The live data plane's counters.", labels=("event",))
            for event, n in sorted(director.items()):
                if event != "vip_owner":
                    m.add_metric([event], float(n))
            yield m
        g = GaugeMetricFamily("pylvs_info", "pylvs, its version.", labels=("version",))
        g.add_metric([__version__], 1.0)
        yield g


def registry_for(get_snapshot):
    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(get_snapshot))
    return registry


def exposition(engine, director=None):
    """The text a scrape returns, read from `engine` now (tests, one-off use)."""
    from prometheus_client import generate_latest
    return generate_latest(registry_for(lambda: snapshot(engine, director))).decode()


def parse_listen(text):
    """ADDR:PORT, [IPV6]:PORT or :PORT (all addresses) -> (addr, port); ValueError if not."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("--metrics: ADDR:PORT expected, got %r" % text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


class LoopCall:
    """Runs a function in the event loop's thread for another thread, and hands the result
    back: the scrape thread waits (bounded) while the loop builds the snapshot between two
    packet batches."""

    def __init__(self):
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)
        self.lock = threading.Lock()
        self.pending = []

    def readable(self):
        """The loop's reader callback."""
        try:
            while self.r.recv(64):
                pass
        except OSError:
            pass
        with self.lock:
            pending, self.pending = self.pending, []
        for fn, box, done in pending:
            try:
                box["value"] = fn()
            except Exception as e:  # handed to the caller
                box["error"] = e
            done.set()

    def call(self, fn, timeout=5.0):
        box, done = {}, threading.Event()
        with self.lock:
            self.pending.append((fn, box, done))
        try:
            self.w.send(b"x")
        except (BlockingIOError, InterruptedError):
            pass  # a wake-up is already waiting
        if not done.wait(timeout):
            raise TimeoutError("the daemon's loop did not answer within %g s" % timeout)
        if "error" in box:
            raise box["error"]
        return box["value"]

    def close(self):
        self.r.close()
        self.w.close()


class MetricsServer:
    """prometheus_client's WSGI server on (addr, port), bound at once (so a busy port is
    an error before the daemon detaches), serving from a thread once start() is called."""

    def __init__(self, addr, port, get_snapshot):
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client import make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):
                pass

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            daemon_threads = True

        self.httpd = make_server(addr, port, make_wsgi_app(registry_for(get_snapshot)), Server,
                                 handler_class=Quiet)
        self.thread = None

    @property
    def port(self):
        return self.httpd.server_address[1]

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="pylvs-metrics",
                                       daemon=True)
        self.thread.start()

    def close(self):
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join(5.0)
            self.thread = None
        self.httpd.server_close()
