"""`lvs replay`: a capture through the engine, offline and without root.

The capture's timestamps are the clock. Rule lines are ipvsadm-save lines
applied before the first packet; `@SECONDS <ipvsadm arguments>` lines are
applied when the clock reaches SECONDS after the first packet, before any
packet with that timestamp, in time then file order.
"""

import socket
import sys

from . import listing, rules
from .config import EngineConfig
from .engine import Engine
from .errors import ConfigError
from .pcap import CaptureError, PcapWriter, default_mac, ether_frame, parse_mac, read_capture


class ReplayError(Exception):
    """A problem with the replay's own arguments or files, found before anything runs."""


def _addr(text):
    try:
        return socket.inet_aton(text) if text.count(".") == 3 else None
    except OSError:
        return None


def parse_fwmark(text):
    """PROTO:ADDR[:PORT]=MARK -> (proto, addr bytes, port or None, mark)."""
    try:
        match, mark_text = text.rsplit("=", 1)
        parts = match.split(":")
        proto = {"tcp": 6, "udp": 17}[parts[0].lower()]
        addr = _addr(parts[1])
        if addr is None or len(parts) > 3:
            raise ValueError
        port = None
        if len(parts) == 3 and parts[2] != "any":
            port = int(parts[2])
            if not 0 <= port <= 65535:
                raise ValueError
        mark = int(mark_text, 0)
        if not 0 < mark <= 0xFFFFFFFF:
            raise ValueError
    except (ValueError, KeyError, IndexError):
        raise ReplayError("bad --fwmark %r: want PROTO:ADDR[:PORT]=MARK, e.g. tcp:198.51.100.2:80=1" % text)
    return proto, addr, port, mark


def fwmark_function(specs):
    if not specs:
        return None

    def mark(proto, daddr, dport):
        for p, addr, port, value in specs:
            if p == proto and addr == daddr and (port is None or port == dport):
                return value
        return 0
    return mark


def load_rules(path):
    """Split a rules file into (initial commands, timed lines).

    Initial lines are parsed here: one bad line is an error naming it, and
    nothing runs. Timed lines are parsed when they are due.
    """
    initial, timed = [], []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ReplayError("cannot read rules %s: %s" % (path, e.strerror))
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("@"):
            head, _, rest = text.partition(" ")
            try:
                at = float(head[1:])
            except ValueError:
                raise ReplayError("%s:%d: bad time %r" % (path, number, head))
            timed.append((at, number, rest))
            continue
        try:
            cmd = rules.parse_line(text)
        except ConfigError as e:
            raise ReplayError("%s:%d: %s" % (path, number, e.message))
        if cmd is not None:
            initial.append((number, cmd))
    timed.sort(key=lambda t: (t[0], t[1]))
    return initial, timed


def run_capture(engine, capture_path, send, before=None, shift=0.0):
    """Feed a capture to `engine`, its timestamps (plus `shift`) as the clock.

    send(ts, transmits) gets what the director sends; before(ts) runs first
    for each record (the replay's timed rules). Non-IPv4 frames run the
    timers and are counted under their kind. Returns the number of records.
    """
    count = 0
    for ts, kind, data in read_capture(capture_path):
        ts += shift
        count += 1
        if before is not None:
            before(ts)
        if kind != "ipv4":
            send(ts, engine.expire(ts))
            engine.count_drop(kind)
            continue
        send(ts, engine.receive(data, ts))
    return count


def replay(rules_path, capture_path, out_path=None, sysctls=(), fwmarks=(), neigh=(),
           mac="02:00:00:00:00:01", seed=0, director=None, stdout=None, stderr=None):
    """Run the replay; returns the exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    config = EngineConfig()
    for item in sysctls:
        try:
            config.assign(item)
        except ConfigError as e:
            raise ReplayError("--sysctl: %s" % e.message)
    marks = [parse_fwmark(text) for text in fwmarks]
    neighbours = {}
    for item in neigh:
        ip, sep, hw = item.partition("=")
        addr = _addr(ip)
        try:
            if not sep or addr is None:
                raise ValueError
            neighbours[addr] = parse_mac(hw)
        except ValueError:
            raise ReplayError("bad --neigh %r: want IP=MAC" % item)
    try:
        src_mac = parse_mac(mac)
    except ValueError:
        raise ReplayError("bad --mac %r" % mac)
    director_addr = None
    if director is not None:
        director_addr = _addr(director)
        if director_addr is None:
            raise ReplayError("bad --director %r" % director)

    engine = Engine(config, seed=seed, director_addr=director_addr, fwmark=fwmark_function(marks))
    initial, timed = load_rules(rules_path)
    try:
        for number, cmd in initial:
            engine.apply(cmd)
    except ConfigError as e:
        raise ReplayError("%s:%d: %s" % (rules_path, number, e.message))

    status = 0
    writer = PcapWriter(out_path) if out_path else None
    first = None
    pending = list(timed)

    def send(ts, transmits):
        if writer is not None:
            for tx in transmits:
                dst = neighbours.get(tx.nexthop) or default_mac(tx.nexthop)
                writer.write(ts, ether_frame(dst, src_mac, tx.packet))

    def run_timed(until):
        nonlocal status
        while pending and first + pending[0][0] <= until:
            at, number, text = pending.pop(0)
            send(first + at, engine.expire(first + at))
            try:
                cmd = rules.parse_line(text)
                if cmd is not None:
                    engine.apply(cmd)
            except ConfigError as e:
                stderr.write("%s:%d: %s\n" % (rules_path, number, e.message))
                status = 1

    def before(ts):
        nonlocal first
        if first is None:
            first = ts
        run_timed(ts)

    try:
        run_capture(engine, capture_path, send, before)
    except CaptureError as e:
        stderr.write("lvs replay: %s\n" % e)
        status = 2
    finally:
        if writer is not None:
            writer.close()
    if first is not None and pending:
        # Timed lines past the last packet still apply, at their time.
        run_timed(first + pending[-1][0])

    stdout.write(listing.list_services(engine, numeric=True, fmt="stats"))
    stdout.write("\n")
    stdout.write(listing.list_connections(engine, numeric=True))
    stdout.write("\n")
    stdout.write("drops:" + "".join(" %s=%d" % (k, v) for k, v in sorted(engine.drops.items()) if v) + "\n")
    return status
