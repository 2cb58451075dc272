"""`lvs replay`: a capture through the engine, offline and without root.

The capture's timestamps are the clock. Rule lines are ipvsadm-save lines
applied before the first packet; `@SECONDS <ipvsadm arguments>` lines are
applied when the clock reaches SECONDS after the first packet, before any
packet with that timestamp, in time then file order.
"""

import math
import socket
import sys

from . import listing, registry, rules
from .config import EngineConfig
from .engine import Engine
from .errors import ConfigError
from .pcap import CaptureError, PcapWriter, default_mac, ether_frame, parse_mac, read_capture


class ReplayError(Exception):
    """A problem with the replay's own arguments or files, found before anything runs."""


def _addr(text):
    """A dotted-quad IPv4 address (4 bytes) or an IPv6 address, bare or in
    brackets (16 bytes); None for anything else."""
    try:
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
            if "[" in text or "]" in text:
                return None
            return socket.inet_pton(socket.AF_INET6, text) if ":" in text else None
        if ":" in text:
            return socket.inet_pton(socket.AF_INET6, text)
        return socket.inet_aton(text) if text.count(".") == 3 else None
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def parse_fwmark(text):
    """PROTO:ADDR[:PORT]=MARK -> (proto, addr bytes, port or None, mark).

    An IPv6 ADDR is written in brackets when a PORT follows
    (tcp:[2001:db8::1]:80=1); a bare IPv6 ADDR has no port."""
    try:
        match, mark_text = text.rsplit("=", 1)
        proto_text, _, rest = match.partition(":")
        proto = {"tcp": 6, "udp": 17}[proto_text.lower()]
        if rest.startswith("["):
            close = rest.index("]")
            addr, after = _addr(rest[:close + 1]), rest[close + 1:]
            if after and not after.startswith(":"):
                raise ValueError
            port_text = after[1:] if after else None
        elif rest.count(":") > 1:
            addr, port_text = _addr(rest), None
        else:
            addr_text, sep, port_text = rest.partition(":")
            addr, port_text = _addr(addr_text), (port_text if sep else None)
            if addr is not None and len(addr) != 4:
                raise ValueError
        if addr is None:
            raise ValueError
        port = None
        if port_text is not None and port_text != "any":
            if not port_text.isdigit():
                raise ValueError
            port = int(port_text)
            if not 0 <= port <= 65535:
                raise ValueError
        mark = int(mark_text, 0)
        if not 0 < mark <= 0xFFFFFFFF:
            raise ValueError
    except (ValueError, KeyError, IndexError):
        raise ReplayError("bad --fwmark %r: want PROTO:ADDR[:PORT]=MARK, e.g. tcp:198.51.100.2:80=1 "
                          "or tcp:[2001:db8::2]:80=1" % text)
    return proto, addr, port, mark


def parse_directors(director):
    """--director values -> (IPv4 address or None, IPv6 address or None).

    `director` is None, one address text, or a list of them: at most one per
    family, so `--director 192.0.2.1 --director 2001:db8::1` sets both."""
    if director is None:
        return None, None
    texts = [director] if isinstance(director, str) else list(director)
    found = {}
    for text in texts:
        addr = _addr(text)
        if addr is None:
            raise ReplayError("bad --director %r" % text)
        if len(addr) in found:
            raise ReplayError("--director given twice for %s (%s, %s): one address per family"
                              % ("IPv6" if len(addr) == 16 else "IPv4", found[len(addr)][0], text))
        found[len(addr)] = (text, addr)
    return (found[4][1] if 4 in found else None), (found[16][1] if 16 in found else None)


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
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ReplayError("cannot read rules %s: %s" % (path, e.strerror))
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ReplayError("%s:%d: not UTF-8 text (byte 0x%02x)"
                          % (path, data.count(b"\n", 0, e.start) + 1, data[e.start]))
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("@"):
            head, _, rest = text.partition(" ")
            try:
                at = float(head[1:])
                if not math.isfinite(at):
                    raise ValueError
            except ValueError:
                raise ReplayError("%s:%d: bad time %s" % (path, number, _shorten(head)))
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


def _shorten(text, limit=60):
    text = repr(text)
    return text if len(text) <= limit else text[:limit] + "..."


_VERSION = {"ipv4": 4, "ipv6": 6}


def load_schedulers(paths, error=ConfigError):
    """--scheduler-path FILE...: register each file's schedulers; `error(message)`
    is raised for the first that cannot be loaded. Returns the names registered."""
    names = []
    for path in paths or ():
        try:
            names += registry.load_scheduler_file(path)
        except ConfigError as e:
            raise error(e.message)
    return names


def run_capture(engine, capture_path, send, before=None, shift=0.0):
    """Feed a capture to `engine`, its timestamps (plus `shift`) as the clock.

    send(ts, transmits) gets what the director sends; before(ts) runs first
    for each record (the replay's timed rules). Non-IPv4 frames run the
    for each record (the replay's timed rules). IPv4 and IPv6 packets go to
    the engine; other frames run the timers and are counted under their kind,
    and an IP packet whose version nibble contradicts its link layer (an
    0x86DD frame holding no IPv6 header, say) is counted as not_ipv4 or
    not_ipv6, as ip_rcv and ipv6_rcv drop them. Returns the number of records.
    """
    count = 0
    for ts, kind, data in read_capture(capture_path):
        ts += shift
        count += 1
        if before is not None:
            before(ts)
        if kind == "ipv4" or kind == "ipv6":
            version = data[0] >> 4 if data else 0
            if version == _VERSION[kind]:
                send(ts, engine.receive(data, ts))
                continue
            kind = "not_" + kind
        send(ts, engine.expire(ts))
        engine.count_drop(kind)
    return count


def replay(rules_path, capture_path, out_path=None, sysctls=(), fwmarks=(), neigh=(),
           mac="02:00:00:00:00:01", seed=0, director=None, stdout=None, stderr=None,
           scheduler_paths=(), max_conns=None):
    """Run the replay; returns the exit status.

    `director` is None, an address (IPv4 or IPv6) or a list with at most one
    of each family; `neigh` items are IP=MAC with an IPv4 or IPv6 IP (IPv6
    bare or in brackets). Next hops without one get pcap.default_mac().
    `scheduler_paths`: Python files whose schedulers the rules may name
    (lvs.registry.load_scheduler_file); their first fault is told on stderr."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    load_schedulers(scheduler_paths, ReplayError)
    if max_conns is not None and max_conns < 1:
        raise ReplayError("--max-conns: at least 1")
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
            raise ReplayError("bad --neigh %r: want IP=MAC (IPv4 or IPv6 IP)" % item)
    try:
        src_mac = parse_mac(mac)
    except ValueError:
        raise ReplayError("bad --mac %r" % mac)
    director_addr, director_addr6 = parse_directors(director)

    engine = Engine(config, seed=seed, director_addr=director_addr, director_addr6=director_addr6,
                    fwmark=fwmark_function(marks), max_conns=max_conns)
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
                dst = neighbours.get(bytes(tx.nexthop)) or default_mac(tx.nexthop)
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

    previous = registry.set_fault_reporter(lambda name, reason, text: stderr.write(
        "lvs replay: scheduler %s: %s (%s; connections it fails are refused and counted)\n"
        % (name, text, reason))) if scheduler_paths else None
    try:
        run_capture(engine, capture_path, send, before)
    except CaptureError as e:
        stderr.write("lvs replay: %s\n" % e)
        status = 2
    finally:
        if writer is not None:
            writer.close()
        if scheduler_paths:
            registry.set_fault_reporter(previous)
    if first is not None and pending:
        # Timed lines past the last packet still apply, at their time.
        run_timed(first + pending[-1][0])

    stdout.write(listing.list_services(engine, numeric=True, fmt="stats"))
    stdout.write("\n")
    stdout.write(listing.list_connections(engine, numeric=True))
    stdout.write("\n")
    stdout.write("drops:" + "".join(" %s=%d" % (k, v) for k, v in sorted(engine.drops.items()) if v) + "\n")
    return status
