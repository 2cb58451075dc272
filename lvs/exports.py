"""`lvs daemon --procfs DIR` and `--metrics ADDR:PORT`: the daemon's state for operators' tools.

The daemon holds one Exports (lvs/daemon.py calls open() before detaching, so a bad folder or
a busy port stops the start; start(loop) once its loop runs; publish() after each control
request; close() on the way out). --procfs rewrites DIR/net/ip_vs* (lvs/procfs.py) at most
once a second and before each lvsadm command is answered; --metrics serves Prometheus
(lvs/metrics.py) from a thread that asks the loop for a snapshot at each scrape. With
--workers both show the daemon and its workers added up (Daemon.view), as the kernel's files
add up its CPUs, and ip_vs_stats_percpu has a row per process.
"""

PERIOD = 1.0  # seconds between two --procfs rewrites, at most


class ExportError(Exception):
    """Why --procfs or --metrics cannot start."""


class Exports:
    def __init__(self, daemon, procfs=None, metrics=None):
        self.daemon = daemon
        self.procfs_dir = procfs
        self.metrics_addr = metrics
        self.writer = None     # lvs/procfs.py's ProcWriter
        self.next = None       # when the writer writes next
        self.server = None     # lvs/metrics.py's MetricsServer
        self.call = None       # and the LoopCall it reads the engine through

    def open(self):
        if self.procfs_dir:
            from .procfs import ProcWriter
            writer = ProcWriter(self.procfs_dir)
            try:
                writer.open()
            except OSError as e:
                raise ExportError("--procfs %s: %s" % (self.procfs_dir, e.strerror))
            self.writer = writer
        if self.metrics_addr:
            from .metrics import parse_listen
            try:
                addr, port = parse_listen(self.metrics_addr)
            except ValueError as e:
                raise ExportError(str(e))
            try:
                from .metrics import MetricsServer
                self.server = MetricsServer(addr, port, self.snapshot)
            except ImportError:
                raise ExportError("--metrics needs the prometheus_client package "
                                  "(tools/setup.sh installs it)")
            except OSError as e:
                raise ExportError("--metrics %s: %s" % (self.metrics_addr, e.strerror or e))

    def start(self, loop):
        """In the serving process, once its loop exists."""
        if self.writer is not None:
            loop.add_timer(lambda: self.next, self._timer)
            self.publish()
        if self.server is not None:
            from .metrics import LoopCall
            self.call = LoopCall()
            loop.add_reader(self.call.r, self.call.readable)
            self.server.start()

    def _timer(self, now):
        if self.next is not None and now >= self.next:
            self.publish()

    def publish(self):
        """Rewrite the --procfs files that changed, the engine's timers run up to now."""
        if self.writer is None:
            return
        daemon = self.daemon
        daemon.tick()
        try:
            self.writer.write(daemon.view(conns=True))
        except OSError as e:
            daemon.log("lvs daemon: --procfs: %s" % e)
        self.next = daemon.now() + PERIOD

    def snapshot(self):
        """What a scrape reads (lvs/metrics.py), taken in the loop's thread."""
        from .metrics import snapshot
        daemon = self.daemon

        def take():
            daemon.tick()
            if not daemon.workers:
                return snapshot(daemon.engine, daemon.director)
            snap = snapshot(daemon.view())
            snap["director"] = daemon.handle({"pylvs": 1, "op": "stats"})["director"] or None
            return snap
        if self.call is None:
            return take()
        return self.call.call(take)

    def forget(self):
        """In a forked worker: let go of the inherited socket; the files are the daemon's."""
        if self.server is not None:
            self.server.close()
            self.server = None
        self.writer = None

    def close(self):
        """Stop serving, remove the files."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.call is not None:
            self.call.close()
            self.call = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
