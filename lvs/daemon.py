"""`lvs daemon`: the engine's tables behind the control socket (see lvs/ctl.py).

It holds one Engine, answers lvsadm's requests one at a time, and runs with
no packet interface (control plane only) unless a later part attaches one.
Its clock is the monotonic clock, shifted so that it never runs backwards:
after a fed capture, time goes on from the capture's last packet. With
`--clock capture` time moves only with fed packets, which makes listings
reproducible in tests and teaching.
"""

import errno
import json
import os
import selectors
import signal
import socket
import sys
import time

from . import __version__, ctl
from .engine import Engine
from .errors import ConfigError
from .pcap import CaptureError


class DaemonError(Exception):
    """Why the daemon cannot start or stop; printed, non-zero exit."""


class Daemon:
    def __init__(self, path, engine=None, clock="monotonic"):
        self.path = path
        self.engine = engine if engine is not None else Engine()
        self.clock = clock
        self.offset = 0.0
        self.listener = None
        self.stopping = False

    # ---------------------------------------------------------------- clock

    def now(self):
        if self.clock == "capture":
            return self.engine.now if self.engine.now is not None else 0.0
        t = time.monotonic() + self.offset
        if self.engine.now is not None and t < self.engine.now:
            self.offset += self.engine.now - t
            t = self.engine.now
        return t

    def tick(self):
        """Run the engine's timers up to now (what sent packets would be lost: no interface)."""
        self.engine.expire(self.now())

    # ---------------------------------------------------------------- setup

    def bind(self):
        """Create the socket; replace a stale one, refuse a live one."""
        path = self.path
        if os.path.exists(path) or os.path.islink(path):
            if ctl.alive(path):
                pid = ctl.request(path, {"op": "ping"}).get("pid")
                raise DaemonError("a daemon is already running on %s (pid %s)" % (path, pid))
            os.unlink(path)  # left by a daemon that died
        directory = os.path.dirname(path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(path)
        except OSError as e:
            s.close()
            raise DaemonError("cannot create %s: %s" % (path, e.strerror))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.listen(16)
        self.listener = s

    def load_rules(self, path):
        """--rules FILE: ipvsadm-save lines, all or nothing."""
        from .replay import ReplayError, load_rules
        try:
            commands, timed = load_rules(path)
        except ReplayError as e:
            raise DaemonError(str(e))
        if timed:
            raise DaemonError("%s:%d: timed lines are for lvs replay" % (path, timed[0][1]))
        scratch = Engine()
        for number, cmd in commands:
            try:
                scratch.apply(cmd)
            except ConfigError as e:
                raise DaemonError("%s:%d: %s" % (path, number, e.message))
        for _, cmd in commands:
            self.engine.apply(cmd)

    def feed(self, path):
        """Run a capture through the engine, as `lvs replay` does."""
        from .replay import run_capture
        engine = self.engine
        stats = {"sent": 0}

        def send(ts, transmits):
            stats["sent"] += len(transmits)

        shift = 0.0
        if engine.now is not None:
            # Captures may be older than our clock; time must not run backwards.
            from .pcap import read_capture
            for ts, _, _ in read_capture(path):
                if ts < engine.now:
                    shift = engine.now - ts
                break
        before = dict(engine.drops)
        packets = run_capture(engine, path, send, shift=shift)
        if self.clock != "capture" and engine.now is not None:
            self.offset = engine.now - time.monotonic()
        drops = {k: v - before.get(k, 0) for k, v in engine.drops.items() if v - before.get(k, 0)}
        return {"status": 0, "packets": packets, "sent": stats["sent"], "drops": drops}

    # ---------------------------------------------------------------- serving

    def handle(self, message):
        op = message.get("op")
        if message.get("pylvs") != ctl.PROTOCOL:
            return {"error": "unsupported protocol version %r" % message.get("pylvs")}
        if op == "ping":
            return {"pid": os.getpid(), "version": __version__, "socket": self.path}
        if op == "stop":
            self.stopping = True
            return {"stopping": True}
        if op == "adm":
            from . import adm
            self.tick()
            argv = message.get("argv")
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                return {"error": "argv must be a list of strings"}
            out, err, status = adm.run(self.engine, argv, message.get("stdin"),
                                       prog=message.get("prog") or "ipvsadm")
            return {"stdout": out, "stderr": err, "status": status}
        if op == "replace":
            # lvsadm-restore: ipvsadm -C then -R, but only once the whole input
            # has restored cleanly onto empty tables.
            from . import adm
            self.tick()
            text = message.get("stdin") or ""
            prog = message.get("prog") or "ipvsadm"
            out, err, status = adm.run(Engine(), ["-R"], text, prog=prog)
            if status == 0:
                adm.run(self.engine, ["-C"], None, prog=prog)
                out, err, status = adm.run(self.engine, ["-R"], text, prog=prog)
            return {"stdout": out, "stderr": err, "status": status}
        if op == "feed":
            path = message.get("path")
            if not isinstance(path, str):
                return {"error": "feed needs a path"}
            try:
                return self.feed(path)
            except (OSError, CaptureError) as e:
                return {"status": 1, "error": str(e)}
        return {"error": "unknown op %r" % op}

    def serve_one(self, conn):
        try:
            conn.settimeout(10.0)
            data = ctl.read_line(conn)
            try:
                message = json.loads(data.decode())
                if not isinstance(message, dict):
                    raise ValueError("not an object")
                answer = self.handle(message)
            except (ValueError, UnicodeDecodeError) as e:
                answer = {"error": "bad request: %s" % e}
            answer["pylvs"] = ctl.PROTOCOL
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass  # the client went away
        finally:
            conn.close()

    def serve_forever(self):
        """Answer requests until stopped by a request, SIGTERM or SIGINT."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)

        def on_signal(signum, frame):
            self.stopping = True

        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        try:
            while not self.stopping:
                for key, _ in sel.select(timeout=1.0):
                    if key.fileobj is wake_r:
                        try:
                            wake_r.recv(64)
                        except OSError:
                            pass
                        continue
                    try:
                        conn, _ = self.listener.accept()
                    except OSError as e:
                        if e.errno in (errno.EAGAIN, errno.EINTR):
                            continue
                        raise
                    self.serve_one(conn)
                    if self.stopping:
                        break
        finally:
            sel.close()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
            self.close()

    def close(self):
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.path)
            except OSError:
                pass


def start(path, rules_path=None, feed_paths=(), detach=False, clock="monotonic", out=sys.stdout):
    """`lvs daemon`: returns the exit status."""
    daemon = Daemon(path, clock=clock)
    if rules_path:
        daemon.load_rules(rules_path)
    daemon.bind()
    for capture in feed_paths:
        try:
            daemon.feed(capture)
        except (OSError, CaptureError) as e:
            daemon.close()
            raise DaemonError("cannot feed %s: %s" % (capture, e))
    if not detach:
        daemon.serve_forever()
        return 0
    pid = os.fork()
    if pid == 0:  # the daemon
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            daemon.serve_forever()
        finally:
            os._exit(0)
    daemon.listener.close()  # the child serves it now
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if ctl.alive(path, timeout=1.0):
            out.write("lvs daemon: started, pid %d, socket %s\n" % (pid, path))
            return 0
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            raise DaemonError("the daemon exited before answering on %s" % path)
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    raise DaemonError("no answer on %s within 10 s" % path)


def _running(pid):
    """Is `pid` a live process (a zombie left for a busy init does not count)?"""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop(path, out=sys.stdout):
    """`lvs daemon --stop`: stop the daemon on `path` and wait until it is gone."""
    try:
        pid = ctl.request(path, {"op": "ping"}, timeout=5.0).get("pid")
        ctl.request(path, {"op": "stop"}, timeout=5.0)
    except ctl.NoDaemon:
        out.write("lvs daemon: no daemon running on %s\n" % path)
        return 0
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if not _running(pid):
            break
        time.sleep(0.05)
    else:
        raise DaemonError("the daemon (pid %s) did not stop within 10 s" % pid)
    out.write("lvs daemon: stopped pid %s\n" % pid)
    return 0
