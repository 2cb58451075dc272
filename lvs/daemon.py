"""`lvs daemon`: the engine's tables behind the control socket (see lvs/ctl.py),
and, with --iface, the live data plane (lvs/director.py) on those interfaces.

It holds one Engine and runs one event loop (lvs/loop.py): lvsadm's requests
are answered one at a time between packet batches, so a command changes
live behaviour from the next packet on. Its clock is the monotonic clock,
shifted so that it never runs backwards: after a fed capture, time goes on
from the capture's last packet. With `--clock capture` time moves only with
fed packets, which makes listings reproducible in tests and teaching.

What the live side changes on the host is journalled (lvs/hostconf.py) and
undone when the daemon ends, whatever the reason; after a SIGKILL,
`lvs daemon --cleanup` undoes it from the state file.
"""

import errno
import json
import os
import signal
import socket
import stat
import sys
import time

from . import __version__, ctl
from .engine import Engine
from .errors import ConfigError
from .hostconf import HostChanges, HostError, process_alive
from .loop import Loop
from .pcap import CaptureError
from .ports.raw import PortGone

BATCH = 64
NO_SYNC_WITH_WORKERS = {"stdout": "", "status": 255,
                        "stderr": "lvs daemon: the sync daemons are not available with --workers\n"}


# The control socket (lvs/ctl.py): a client has CLIENT_TIMEOUT seconds to send its request,
# and as long again to read its answer; at most MAX_CLIENTS connections are open at once
# (more are answered "busy"), holding at most MAX_PENDING bytes of unfinished requests.
CLIENT_TIMEOUT = 10.0
MAX_CLIENTS = 64
MAX_PENDING = 4 * ctl.MAX_REQUEST


class _Client:
    """One control connection: its request as it arrives, then its answer as it leaves."""

    __slots__ = ("sock", "fd", "buf", "out", "deadline", "reading", "closed")

    def __init__(self, sock, deadline):
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.out = None
        self.deadline = deadline
        self.reading = True
        self.closed = False


def _parse_int(text):
    """JSON integers: no more digits than CPython converts (4300), on every interpreter,
    so that a huge one costs no time."""
    if len(text) > 4300:
        raise ValueError("integer of %d digits" % len(text))
    return int(text)


def _no_constant(name):
    raise ValueError("%s is not JSON" % name)


def _short(value, limit=60):
    text = repr(value) if not isinstance(value, int) or abs(value) < 10 ** 60 else "<a huge integer>"
    return text if len(text) <= limit else text[:limit] + "..."


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
        self.director = None     # the live data plane, when attached to interfaces
        self.changes = None      # its host changes (lvs/hostconf.py)
        self.loop = None
        self.worker_count = 1    # --workers: processes sharing the interfaces (lvs/fanout.py)
        self.workers = None      # the daemon's fanout.Workers, once forked
        self.worker_index = 0    # 0: the daemon itself
        self._extra_reader = None  # a worker's channel to the daemon
        self.sync_socks = {}     # "master"/"backup" -> (settings, socket): lvs/ports/mcast.py
        self.sync_backlog = []   # messages the master's socket had no room for yet
        self.exports = None      # --procfs, --metrics (lvs/exports.py)
        self.clients = {}        # fd -> _Client: the open control connections
        self.client_timeout = CLIENT_TIMEOUT
        self.pending = 0         # bytes of unfinished requests, all clients
        self.internal_errors = 0  # requests that tripped a bug (answered with an error)
        self.timed_out = 0       # control connections closed for silence
        self.busy_refused = 0    # refused for MAX_CLIENTS

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
        """Run the engine's timers up to now (what they send goes out if a director is attached)."""
        self._expire(self.now())

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
        s.listen(128)
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
        version = message.get("pylvs")
        if type(version) is not int or version != ctl.PROTOCOL:
            return {"error": "unsupported protocol version %s" % _short(version)}
        if not isinstance(op, str):
            return {"error": "bad request: op must be a string, not %s" % _short(op)}
        if op == "ping":
            return {"pid": os.getpid(), "version": __version__, "socket": self.path,
                    "workers": [os.getpid()] + [pid for pid, _ in self.workers.procs]
                    if self.workers else [os.getpid()]}
        if op == "stats":
            answer = {"drops": dict(self.engine.drops),
                      "director": self.director.stats() if self.director is not None else None,
                      "sync": dict(self.engine.sync_stats),
                      "conns": len(self.engine.conntab),
                      "defense": self.engine.defense_state()}
            if self.workers:
                answer = _sum_stats([answer] + self.workers.ask(message))
            return answer
        if op == "top":
            # `lvs top`: the tables with their counts and rates, and the counters.
            from .top import snapshot
            self.tick()
            answer = snapshot(self.view())
            stats = self.handle({"pylvs": ctl.PROTOCOL, "op": "stats"})
            answer.update(pid=os.getpid(), drops=stats["drops"], director=stats["director"])
            return answer
        if op == "tally":
            from .fanout import tally
            self.tick()
            return {"tally": tally(self.engine, conns=message.get("conns") is True)}
        if op == "stop":
            self.stopping = True
            return {"stopping": True}
        if op == "sysctl":
            # /proc/sys/net/ipv4/vs/*: all of "set" or none (checked on a copy first).
            from .config import EngineConfig
            changes = message.get("set")
            changes = {} if changes is None else changes
            if not isinstance(changes, dict):
                return {"error": "set must be an object of sysctl names and values"}
            changes = {name: str(value) for name, value in changes.items()}
            try:
                for config in (EngineConfig(), self.engine.config):
                    for name, value in changes.items():
                        config.set(name, value)
            except ConfigError as e:
                return {"error": e.message}
            if changes and self.workers:
                self.workers.ask(message)
            return {"values": self.engine.config.values}
        if op == "vips":
            # A standby director's switch (keepalived's notify scripts): own the VIPs or not.
            if self.director is None:
                return {"error": "no live data plane (--iface): no VIPs to own"}
            own = bool(message.get("own"))
            sent = self.director.own_vips(own)
            if self.workers:
                self.workers.ask(message)
            return {"owner": own, "gratuitous_arp": sent}
        if op in ("adm", "replace"):
            for key in ("stdin", "prog"):
                if message.get(key) is not None and not isinstance(message.get(key), str):
                    return {"error": "%s must be a string" % key}
        if op == "adm":
            from . import adm
            self.tick()
            argv = message.get("argv")
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                return {"error": "argv must be a list of strings"}
            self.engine.interfaces = _interfaces()
            if self.workers:
                if adm.command_kind(argv, message.get("prog") or "ipvsadm") == "daemon":
                    return dict(NO_SYNC_WITH_WORKERS)
                return self._adm_everywhere(message, argv)
            out, err, status = adm.run(self.engine, argv, message.get("stdin"),
                                       prog=message.get("prog") or "ipvsadm")
            return self._changed(out, err, status)
        if op == "replace":
            # lvsadm-restore: ipvsadm -C then -R, but only once the whole input
            # has restored cleanly onto empty tables.
            from . import adm
            self.tick()
            text = message.get("stdin") or ""
            prog = message.get("prog") or "ipvsadm"
            if self.workers and any(adm.command_kind(argv[1:], prog) == "daemon"
                                    for _, argv in adm.config_stream_lines(text)):
                return dict(NO_SYNC_WITH_WORKERS)
            # The trial: empty tables, but the sync daemons as they run (-C leaves them).
            trial = Engine()
            trial.interfaces = _interfaces()
            trial.sync_daemons = dict(self.engine.sync_daemons)
            out, err, status = adm.run(trial, ["-R"], text, prog=prog)
            if status == 0:
                adm.run(self.engine, ["-C"], None, prog=prog)
                out, err, status = adm.run(self.engine, ["-R"], text, prog=prog)
                if self.workers:
                    self.workers.ask(message)
                return self._changed(out, err, status)
            return {"stdout": out, "stderr": err, "status": status}
        if op == "feed":
            if self.workers:
                return {"status": 1, "error": "feed: not with --workers (captures go to one process)"}
            path = message.get("path")
            if not isinstance(path, str):
                return {"error": "feed needs a path"}
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    # a FIFO or a device would hold the loop up
                    return {"status": 1, "error": "%s: not a regular file" % path}
                return self.feed(path)
            except (OSError, ValueError, CaptureError) as e:
                return {"status": 1, "error": str(e)}
        return {"error": "unknown op %s" % _short(op)}

    def view(self, conns=False):
        """The engine to list: with --workers, a copy of its tables with every worker's
        counts added (lvs/fanout.py), and with `conns` their connections' procfs rows."""
        if not self.workers:
            return self.engine
        from . import adm
        from .fanout import add_tally
        view = adm._scratch_copy(self.engine)
        for answer in self.workers.ask({"pylvs": ctl.PROTOCOL, "op": "tally", "conns": conns}):
            if answer is not None:
                add_tally(view, answer["tally"])
        return view

    def _adm_everywhere(self, message, argv):
        """A command for a daemon with workers (lvs/fanout.py): changes run in
        every process, listings add every process up."""
        from . import adm
        from .fanout import merge_connection_listings
        prog = message.get("prog") or "ipvsadm"
        kind = adm.command_kind(argv, prog)
        if kind == "connections":
            out, err, status = adm.run(self.engine, argv, None, prog=prog)
            texts = [out] + [(a or {}).get("stdout", "") for a in self.workers.ask(message)]
            return {"stdout": merge_connection_listings(texts), "stderr": err, "status": status}
        if kind == "services":
            out, err, status = adm.run(self.view(), argv, None, prog=prog)
            return {"stdout": out, "stderr": err, "status": status}
        out, err, status = adm.run(self.engine, argv, message.get("stdin"), prog=prog)
        if kind == "change":
            for answer in self.workers.ask(message):
                if answer is None or answer.get("status") != status:
                    self.log("lvs daemon: a worker answered %r to %r (the daemon: %d)"
                             % (answer, argv, status))
            self._follow()
        return {"stdout": out, "stderr": err, "status": status}

    def answer(self, data, too_long=False):
        """The answer line (bytes) to one request line; never raises: a request the
        daemon cannot read, or one that trips a bug, gets {"error": ...}."""
        try:
            if too_long:
                answer = {"error": "bad request: longer than %d bytes without a newline"
                                   % ctl.MAX_REQUEST}
            else:
                answer = self._answer(data)
        except Exception as e:
            # A bug must not take the daemon down, nor be silent: say it once, keep serving.
            self.internal_errors += 1
            if self.internal_errors == 1:
                import traceback
                self.log("lvs daemon: internal error answering a request (counted; first one "
                         "shown):\n" + traceback.format_exc())
            answer = {"error": "internal error: %s: %s" % (type(e).__name__, e)}
        answer["pylvs"] = ctl.PROTOCOL
        if self.exports is not None:
            try:
                self.exports.publish()  # --procfs follows each lvsadm change before its answer
            except Exception as e:
                self.log("lvs daemon: --procfs: %s" % e)
        return json.dumps(answer).encode() + b"\n"

    def _answer(self, data):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            return {"error": "bad request: not UTF-8 (byte 0x%02x at offset %d)"
                             % (data[e.start], e.start)}
        if not text.strip():
            return {"error": "bad request: empty request"}
        try:
            message = json.loads(text, parse_int=_parse_int, parse_constant=_no_constant)
        except RecursionError:
            return {"error": "bad request: nested too deeply"}
        except ValueError as e:
            return {"error": "bad request: %s" % e}
        if not isinstance(message, dict):
            return {"error": "bad request: not a JSON object"}
        return self.handle(message)

    # The control connections, served without blocking: a client that is slow, silent
    # or does not read its answer holds up nobody (requests are still handled one at a
    # time, whole, in the loop).

    def _accept(self):
        for _ in range(64):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR, errno.ECONNABORTED, errno.EMFILE,
                               errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # out of descriptors: the client waits in the backlog
                raise
            conn.setblocking(False)
            if len(self.clients) >= MAX_CLIENTS:
                self.busy_refused += 1
                try:
                    conn.send(json.dumps({"pylvs": ctl.PROTOCOL, "error": "busy: %d control "
                                          "connections are open" % MAX_CLIENTS}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()
                continue
            client = _Client(conn, time.monotonic() + self.client_timeout)
            self.clients[conn.fileno()] = client
            self.loop.add_reader(conn, lambda c=client: self._client_read(c))

    def _client_read(self, client):
        if client.closed:
            return
        for _ in range(16):  # at most 1 MiB a turn: the others and the packets go on
            try:
                chunk = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._client_close(client)
                return
            if not chunk:
                self._client_request(client, bytes(client.buf))   # EOF ends the request
                return
            start = len(client.buf)
            client.buf += chunk
            self.pending += len(chunk)
            end = client.buf.find(b"\n", max(0, start))
            if 0 <= end <= ctl.MAX_REQUEST:
                self._client_request(client, bytes(client.buf[:end]))
                return
            if len(client.buf) > ctl.MAX_REQUEST:
                self._client_request(client, b"", too_long=True)
                return
            if self.pending > MAX_PENDING:
                self._client_reply(client, {"error": "busy: %d bytes of requests are waiting; "
                                                     "try again" % self.pending})
                return

    def _client_request(self, client, data, too_long=False):
        self.pending -= len(client.buf)
        client.buf = bytearray()
        self.loop.remove_reader(client.sock)
        client.reading = False
        client.out = memoryview(self.answer(data, too_long))
        client.deadline = time.monotonic() + self.client_timeout
        if self.stopping:
            # The last answer: out before the loop ends, the client's fault if not in a second.
            try:
                client.sock.settimeout(1.0)
                client.sock.sendall(client.out)
            except OSError:
                pass
            self._client_close(client)
            self.loop.stop()
            return
        self._client_write(client, registered=False)

    def _client_reply(self, client, answer):
        """Answer at once, without reading further."""
        answer["pylvs"] = ctl.PROTOCOL
        self.pending -= len(client.buf)
        client.buf = bytearray()
        self.loop.remove_reader(client.sock)
        client.reading = False
        client.out = memoryview(json.dumps(answer).encode() + b"\n")
        self._client_write(client, registered=False)

    def _client_write(self, client, registered=True):
        if client.closed:
            return
        while client.out:
            try:
                sent = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                if not registered:
                    self.loop.add_writer(client.sock, lambda c=client: self._client_write(c))
                return
            except OSError:
                break  # the client went away
            client.out = client.out[sent:]
        if registered:
            self.loop.remove_writer(client.sock)
        self._client_close(client, registered=False)

    def _client_close(self, client, registered=True):
        if client.closed:
            return
        client.closed = True
        if registered:
            try:
                self.loop.remove_reader(client.sock)  # as a reader or as a writer
            except (KeyError, ValueError):
                pass
        self.pending -= len(client.buf)
        client.buf = bytearray()
        self.clients.pop(client.fd, None)
        client.sock.close()

    def _client_deadline(self):
        """The next client timeout, on the loop's clock (which --clock capture holds still)."""
        if not self.clients:
            return None
        first = min(c.deadline for c in self.clients.values())
        return self.now() + max(0.0, first - time.monotonic())

    def _client_timeouts(self, now):
        t = time.monotonic()
        for client in [c for c in self.clients.values() if c.deadline <= t]:
            self.timed_out += 1
            if client.reading:
                # Silent or too slow: say so (if there is room), then hang up.
                self._client_reply(client, {"error": "timeout: no complete request within %g s"
                                                     % self.client_timeout})
                if not client.closed:
                    client.deadline = t + 1.0   # a last second to read that answer
            else:
                self._client_close(client)  # it does not read its answer

    def serve_forever(self):
        """Answer requests, and move packets if a director is attached, until
        stopped by a request, SIGTERM or SIGINT. The host changes the director
        made are undone on the way out, whatever the reason."""
        if self.worker_count > 1 and self.director is not None and self.worker_index == 0 \
                and self.workers is None:
            from .fanout import FanoutError, Workers
            self.workers = Workers()
            try:
                self.workers.spawn(self.worker_count, self._run_worker)
            except BaseException as e:
                self.workers.stop()
                self.close()
                if isinstance(e, (FanoutError, OSError)):
                    raise DaemonError("--workers: %s" % e)
                raise
            self.log("lvs daemon: %d workers share the interfaces (pids %s)"
                     % (self.worker_count, " ".join(str(p) for p in
                                                    [os.getpid()] + [p for p, _ in self.workers.procs])))
        loop = self.loop = Loop(self.now)
        if self.listener is not None:
            self.listener.setblocking(False)
            loop.add_reader(self.listener, self._accept)
            loop.add_timer(self._client_deadline, self._client_timeouts)
        director = self.director
        if director is not None:
            for port in director.ports:
                loop.add_reader(port, self._port_reader(port))
            loop.add_timer(director.next_deadline, director.timers)
        loop.add_timer(self.engine.next_deadline, self._expire)
        loop.add_timer(self.engine.sync_deadline, self._sync_send)
        loop.add_timer(self._sync_backlog_deadline, self._sync_send)
        for sock in self.sync_socks.get("backup", (None, ()))[1]:
            loop.add_reader(sock, self._sync_reader(sock))
        if self._extra_reader is not None:
            loop.add_reader(*self._extra_reader)
        if self.exports is not None:
            self.exports.start(loop)
        try:
            loop.run()
        finally:
            loop.close()
            self.close()

    def _run_worker(self, index, sock):
        """A forked worker: its own ports in the groups, the daemon's requests on `sock`."""
        from .fanout import Channel
        self.listener.close()
        self.listener = None
        self.workers = None
        self.worker_index = index
        self.changes = None
        self.director.become_worker()
        if self.exports is not None:
            self.exports.forget()   # --procfs and --metrics are the daemon's
            self.exports = None

        def handle(message):
            answer = self.handle(message)
            if self.stopping:
                self.loop.stop()
            return answer
        channel = Channel(sock, handle, on_eof=lambda: self.loop.stop())
        self._extra_reader = (channel, channel.readable)
        self.serve_forever()

    def _port_reader(self, port):
        director = self.director

        def read():
            try:
                frames = port.recv_batch(BATCH)
            except PortGone as e:
                # Nothing more can come in or go out there: stop, undoing the host changes.
                raise DaemonError("%s: the data plane stops" % e.strerror)
            if not frames:
                return
            try:
                director.receive(port, frames, self.now())
            except Exception:
                # A bug on the live side must not take the director down:
                # count it, say it once, keep serving.
                director.counters["internal_error"] = director.counters.get("internal_error", 0) + 1
                if director.counters["internal_error"] == 1:
                    import traceback
                    self.log("lvs daemon: internal error (counted; first one shown):\n"
                             + traceback.format_exc())
        return read

    def _expire(self, now):
        trash = len(self.engine.trash)
        sent = self.engine.expire(now)
        if self.director is not None:
            if sent:
                self.director.send(sent, now)
            if len(self.engine.trash) != trash:
                self._follow()  # a NAT server left the trash: its replies are no longer ours

    def _changed(self, out, err, status):
        """The answer to a command that may have changed the tables or the sync
        daemons, once the live side and the sync sockets follow them."""
        self._follow()
        failure = self._follow_sync()
        if failure:
            err, status = err + failure + "\n", 255
        return {"stdout": out, "stderr": err, "status": status}

    # ---------------------------------------------------------------- sync daemons

    def _follow_sync(self):
        """After a command: open or close the sync sockets the engine's daemons need (one
        per sync port). Returns the error text if one cannot be opened (the daemon is
        then stopped)."""
        from .ports.mcast import SyncSocketError, receive_socket, send_socket
        daemons = self.engine.sync_daemons
        for state in ("master", "backup"):
            cfg = daemons.get(state)
            have = self.sync_socks.get(state)
            if have is not None and have[0] is not cfg:
                self._close_sync(state)
                have = None
            if cfg is None or have is not None:
                continue
            opened = []
            try:
                for tid in range(self.engine.sync_ports):
                    opened.append((send_socket if state == "master" else receive_socket)(cfg, tid))
            except (SyncSocketError, OSError, ValueError) as e:
                for sock in opened:
                    sock.close()
                del daemons[state]
                self.engine.sync_stopped(state)
                self.log("lvs daemon: the %s sync daemon cannot start: %s" % (state, e))
                return str(e)
            self.sync_socks[state] = (cfg, opened)
            if state == "backup" and self.loop is not None:
                for sock in opened:
                    self.loop.add_reader(sock, self._sync_reader(sock))
            self.log("lvs daemon: %s sync daemon started (mcast=%s, syncid=%d, group=%s:%d%s)"
                     % (state, cfg["mcast_ifn"], cfg["syncid"], cfg["mcast_group"], cfg["mcast_port"],
                        "-%d" % (cfg["mcast_port"] + len(opened) - 1) if len(opened) > 1 else ""))
        return None

    def _close_sync(self, state):
        cfg, socks = self.sync_socks.pop(state)
        if state == "master":
            self.sync_backlog = []   # stop_sync_thread frees what was not sent
        for sock in socks:
            if state == "backup" and self.loop is not None:
                self.loop.remove_reader(sock)
            sock.close()
        self.log("lvs daemon: %s sync daemon stopped" % state)

    def _sync_send(self, now):
        """The master's datagrams: what the engine has due, after what waited for room.
        A full socket buffer keeps them for the next turn (sync_thread_master waits and
        retries); the backlog is bounded as the kernel's queue is (sync_qlen_max)."""
        have = self.sync_socks.get("master")
        backlog = self.sync_backlog + self.engine.sync_take(now)
        self.sync_backlog = []
        if have is None:
            return
        stats = self.engine.sync_stats
        for i, (tid, m) in enumerate(backlog):
            try:
                have[1][tid].send(m)
            except (BlockingIOError, InterruptedError):
                rest = backlog[i:]
                room = self.engine.config.sync_qlen_max
                if len(rest) > room:
                    stats["sync_queue_full"] += len(rest) - room
                    rest = rest[:room]
                self.sync_backlog = rest
                return
            except OSError:
                stats["sync_send_failed"] += 1

    def _sync_backlog_deadline(self):
        return self.now() + 0.005 if self.sync_backlog else None

    def _sync_reader(self, sock):
        def read():
            have = self.sync_socks.get("backup")
            if have is None:
                return
            for _ in range(64):  # bounded: packets and commands wait for no flood
                try:
                    data = sock.recv(have[0]["sync_maxlen"])
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    self.engine.sync_stats["sync_receive_failed"] += 1
                    return
                self.engine.sync_receive(data, self.now())
        return read

    def _follow(self):
        """After a command: the live side follows the tables (ARP, nftables)."""
        if self.director is not None:
            try:
                self.director.sync()
            except HostError as e:
                self.log("lvs daemon: %s" % e)

    def log(self, text):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def attach(self, ifnames, state_path, ring=True):
        """Attach the live data plane to the interfaces (lvs/director.py)."""
        from .director import Director
        self.changes = HostChanges(state_path, log=self.log, owner="lvs daemon")
        self.changes.claim()
        self.director = Director(self.engine, ifnames, self.changes, self.log, ring=ring,
                                 fanout=self.worker_count > 1)
        try:
            self.director.start(self.now())
        except BaseException:
            self.detach_live()
            raise

    def detach_live(self):
        if self.director is not None:
            self.director.close()
            self.director = None
        if self.changes is not None:
            for failure in self.changes.undo():
                self.log("lvs daemon: could not undo: %s" % failure)
            self.changes = None

    def close(self):
        if self.exports is not None:
            self.exports.close()
            self.exports = None
        for state in list(self.sync_socks):
            self._close_sync(state)
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        self.detach_live()
        for client in list(self.clients.values()):
            client.closed = True
            client.sock.close()
        self.clients = {}
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.path)
            except OSError:
                pass


def start(path, rules_path=None, feed_paths=(), detach=False, clock="monotonic", out=sys.stdout,
          ifaces=(), state_path=None, log_path=None, ring=True, workers=1, standby=False,
          max_conns=None, sysctls=(), procfs=None, metrics=None, scheduler_paths=()):
    """`lvs daemon`: returns the exit status."""
    if max_conns is not None and max_conns < 1:
        raise DaemonError("--max-conns: at least 1")
    if standby and not ifaces:
        raise DaemonError("--standby needs --iface: it is about answering ARP for the VIPs")
    if not 1 <= workers <= 64:
        raise DaemonError("--workers: 1 to 64")
    if workers > 1 and not ifaces:
        raise DaemonError("--workers needs --iface: the workers share interfaces")
    if workers > 1 and feed_paths:
        raise DaemonError("--workers and --feed: a capture goes to one process")
    if scheduler_paths:
        # --scheduler-path FILE: before the rules, which may name them; a fault
        # refuses the connection (counted) and is logged once per scheduler.
        from .registry import set_fault_reporter
        from .replay import load_schedulers
        load_schedulers(scheduler_paths, DaemonError)
        set_fault_reporter(lambda name, reason, text: daemon.log(
            "lvs daemon: scheduler %s: %s (%s; connections it fails are refused and counted, "
            "shown once)" % (name, text, reason)))
    daemon = Daemon(path, engine=Engine(max_conns=max_conns), clock=clock)
    for item in sysctls:
        try:
            daemon.engine.config.assign(item)
        except ConfigError as e:
            raise DaemonError("--sysctl: %s" % e.message)
    daemon.worker_count = workers
    log_file = None
    if log_path:
        try:
            log_file = open(log_path, "a", buffering=1)
        except OSError as e:
            raise DaemonError("cannot open the log %s: %s" % (log_path, e.strerror))
    if log_file is not None:
        def log(text):
            # Setup lines reach the terminal and the log; once detached,
            # stderr is the log itself.
            log_file.write(text + "\n")
            if daemon.loop is None or not detach:
                sys.stderr.write(text + "\n")
        daemon.log = log
    if rules_path:
        daemon.load_rules(rules_path)
    if ifaces and os.geteuid() != 0:
        raise DaemonError("--iface needs root (AF_PACKET sockets, nftables)")
    daemon.bind()
    if procfs or metrics:
        from .exports import ExportError, Exports
        daemon.exports = Exports(daemon, procfs, metrics)
        try:
            daemon.exports.open()
        except ExportError as e:
            daemon.close()
            raise DaemonError(str(e))
    for capture in feed_paths:
        try:
            daemon.feed(capture)
        except (OSError, CaptureError) as e:
            daemon.close()
            raise DaemonError("cannot feed %s: %s" % (capture, e))
    if ifaces:
        try:
            daemon.attach(ifaces, state_path or default_state_path(), ring=ring)
        except (HostError, OSError) as e:
            daemon.close()
            raise DaemonError(str(e))
        daemon.director.vip_owner = not standby
    if not detach:
        daemon.serve_forever()
        return 0
    pid = os.fork()
    if pid == 0:  # the daemon
        status = 1
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            target = log_file.fileno() if log_file is not None else devnull
            os.dup2(target, 1)
            os.dup2(target, 2)
            if daemon.changes is not None:
                daemon.changes.save()  # the state file names the process that will undo
            daemon.serve_forever()
            status = 0
        except BaseException:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(status)
    daemon.listener.close()  # the child serves it now
    if daemon.director is not None:
        daemon.director.close()  # our copies of the ports; the child keeps its own
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


def _interfaces():
    """This namespace's interfaces and their MTUs (for --mcast-interface)."""
    found = {}
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return None
    for name in names:
        try:
            with open("/sys/class/net/%s/mtu" % name) as f:
                found[name] = int(f.read())
        except (OSError, ValueError):
            continue
    return found


def _sum_stats(answers):
    """The daemon's and its workers' "stats" answers added up, and each kept."""
    drops, director = {}, {}
    for a in answers:
        if not a:
            continue
        for k, v in (a.get("drops") or {}).items():
            drops[k] = drops.get(k, 0) + v
        for k, v in (a.get("director") or {}).items():
            director[k] = director.get(k, 0) + v
    return {"drops": drops, "director": director, "per_process": answers}


def default_state_path():
    from .hostconf import run_dir
    return os.path.join(run_dir(), "daemon.state")


def cleanup(state_path=None, out=sys.stdout):
    """`lvs daemon --cleanup`: undo what a killed daemon changed on the host."""
    from .hostconf import cleanup as undo
    path = state_path or default_state_path()
    found, failures = undo(path, log=lambda text: out.write(text + "\n"), owner="lvs daemon")
    if not found:
        out.write("lvs daemon: nothing to clean up (%s does not exist)\n" % path)
        return 0
    for failure in failures:
        sys.stderr.write("lvs daemon: %s\n" % failure)
    if failures:
        return 1
    out.write("lvs daemon: host restored from %s\n" % path)
    return 0


def _ask(path, message, timeout=10.0):
    """One request to the running daemon; DaemonError if there is none or it refuses."""
    try:
        answer = ctl.request(path, message, timeout=timeout)
    except ctl.NoDaemon:
        raise DaemonError("no daemon running on %s" % path)
    if "error" in answer:
        raise DaemonError(answer["error"])
    return answer


def sysctl(path, items, out=sys.stdout):
    """`lvs sysctl [NAME[=VALUE]]...`: show or set the running daemon's IPVS sysctls,
    printed as `sysctl` prints net.ipv4.vs.* (all of them without NAME)."""
    changes, names = {}, []
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if name.startswith("net.ipv4.vs."):
            name = name[len("net.ipv4.vs."):]
        names.append(name)
        if sep:
            changes[name] = value.strip()
    values = _ask(path, {"op": "sysctl", "set": changes})["values"]
    for name in names or sorted(values):
        if name not in values:
            raise DaemonError("unknown sysctl %r" % name)
        value = values[name]
        shown = "\t".join(str(v) for v in value) if isinstance(value, list) else value
        out.write("net.ipv4.vs.%s = %s\n" % (name, shown))
    return 0


def print_stats(path, out=sys.stdout):
    """`lvs daemon --stats`: the daemon's counters, as its stats request answers them."""
    answer = _ask(path, {"op": "stats"})
    answer.pop("pylvs", None)
    out.write(json.dumps(answer, indent=1, sort_keys=True) + "\n")
    return 0


def own_vips(path, own, out=sys.stdout):
    """`lvs daemon --own-vips/--release-vips`: switch the running daemon's VIP ownership."""
    answer = _ask(path, {"op": "vips", "own": own})
    out.write("lvs daemon: VIPs %s%s\n" % ("owned" if own else "released",
              " (%d gratuitous ARP)" % answer["gratuitous_arp"] if own else ""))
    return 0


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
        if not process_alive(pid):
            break
        time.sleep(0.05)
    else:
        raise DaemonError("the daemon (pid %s) did not stop within 10 s" % pid)
    out.write("lvs daemon: stopped pid %s\n" % pid)
    return 0
