"""lvsadm: one ipvsadm 1.31 command line against an Engine.

``run(engine, argv, stdin_text=None, prog="ipvsadm")`` answers what
ipvsadm 1.31 on Linux 6.1 answers for the same command line: the same
stdout, byte for byte, the same stderr and the same exit status.  It follows
ipvsadm's process_options: the grammar (lvs.rules.parse_cli), then the
command: the kernel's part (Engine.apply, the sync daemons kept here), the
listings (lvs.listing), -S, -R, -h and -v.

How ipvsadm ends, and how run() reproduces it:

  * fail() (its own checks, exit 2), tryhelp_exit() ("Try `prog -h' ...",
    exit 255), usage_exit()/version_exit() (-h, -v: exit 0) and a listing of
    a missing service (exit 1) end the process at once;
  * a popt error ("-t: missing argument") and a refusal by the kernel print
    one line and make process_options return -1: exit status 255.
  * ``ipvsadm`` without any argument lists the table (non-numeric).

The sync daemons: the kernel's part of --start-daemon/--stop-daemon is kept
in ``engine.sync_daemons``, ``{"master": {...}, "backup": {...}}`` with a key
only for a running daemon, each value holding mcast_ifn, syncid,
sync_maxlen, mcast_group, mcast_port, mcast_ttl as the kernel stores them
(start_sync_thread: defaults group 224.0.0.81, port 8848, ttl 1;
sync_maxlen clamped to [1, 65507] for a master, [1024, 65507] for a backup,
else 1500 - 28 for a master and the interface MTU (clamped to [1500, 65535])
- 28 for a backup); the engine's sync (lvs/sync.py) acts on them, the
daemon opens the sockets (lvs/daemon.py). The multicast interface must exist when
the engine has an ``interfaces`` attribute (a dict name -> MTU: what the
director's network namespace has; "No such device" otherwise, as the kernel
says for ENODEV); without one, any name is taken, with the MTU engine.mtu.
An IPv6 --mcast-group is kept as inet_ntop writes it, and its headers
(IPv6 + UDP, 48 bytes) are what the default and the clamp of sync_maxlen
leave out.  The sync protocol cannot carry a real server of another family
than its service: no daemon starts while one exists (EINVAL, before any other
check of start_sync_thread), and none can be added while a daemon runs
(lvs/tables.py).

-R, where pylvs deliberately differs from ipvsadm.  ipvsadm -R reads stdin
line by line (config_stream_read: blanks split, no quoting, the token
"ipvsadm" is dropped wherever it stands, '#' is an ordinary token, a last
line ending in two or more blanks without a newline is lost) and runs each
line as a command line: it goes on after a kernel refusal or a popt error,
stops at the first error of its own (exit 2 or 255), and exits with the
status of the last line it ran; the lines before a bad one stay applied.
lvsadm -R is atomic: the lines run first on a scratch copy of the engine;
if any line fails, NOTHING is applied, stdout stays empty and stderr holds
one line, ``line N: <ipvsadm's message>`` (N counts stdin's lines from 1),
with the exit status ipvsadm gives that error (2, 255, or 1 for a listing
of a missing service).  If every line succeeds, the lines run again on the
engine itself and their output (listings, -S, -h ...) is printed.  A -h or
-v line ends the restore there with status 0, as in ipvsadm.
``run(..., atomic_restore=False)`` gives ipvsadm's own behaviour.
"""

import copy
import socket

from . import listing, rules
from .errors import ConfigError
from .rules import (
    OPTC_CONNECTION, OPTC_DAEMON, OPTC_PERSISTENTCONN, OPTC_SERVICE, OPTC_TIMEOUT,
)
from .tables import EINVAL_TEXT

__all__ = ["run", "VERSION_TEXT", "usage_text", "config_stream_lines", "list_daemons",
           "start_daemon", "stop_daemon"]

PROG = "ipvsadm"

VERSION_TEXT = "ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)\n"

# usage_exit(): the version line, then this; each "%(prog)s" is argv[0].
_USAGE = """Usage:
  %(prog)s -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] [-b sched-flags]
  %(prog)s -D virtual-service
  %(prog)s -C
  %(prog)s -R
  %(prog)s -S [-n]
  %(prog)s -a|e virtual-service -r server-address [options]
  %(prog)s -d virtual-service -r server-address
  %(prog)s -L|l [virtual-service] [options]
  %(prog)s -Z [virtual-service]
  %(prog)s --set tcp tcpfin udp
  %(prog)s --start-daemon {master|backup} [daemon-options]
  %(prog)s --stop-daemon {master|backup}
  %(prog)s -h

Commands:
Either long or short options are allowed.
  --add-service     -A        add virtual service with options
  --edit-service    -E        edit virtual service with options
  --delete-service  -D        delete virtual service
  --clear           -C        clear the whole table
  --restore         -R        restore rules from stdin
  --save            -S        save rules to stdout
  --add-server      -a        add real server with options
  --edit-server     -e        edit real server with options
  --delete-server   -d        delete real server
  --list            -L|-l     list the table
  --zero            -Z        zero counters in a service or all services
  --set tcp tcpfin udp        set connection timeout values
  --start-daemon              start connection sync daemon
  --stop-daemon               stop connection sync daemon
  --help            -h        display this help message

virtual-service:
  --tcp-service|-t  service-address   service-address is host[:port]
  --udp-service|-u  service-address   service-address is host[:port]
  --sctp-service    service-address   service-address is host[:port]
  --fwmark-service|-f fwmark          fwmark is an integer greater than zero

Options:
  --ipv6         -6                   fwmark entry uses IPv6
  --scheduler    -s scheduler         one of rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh,
                                      the default scheduler is wlc.
  --pe            engine              alternate persistence engine may be sip,
                                      not set by default.
  --persistent   -p [timeout]         persistent service
  --netmask      -M netmask           persistent granularity mask
  --real-server  -r server-address    server-address is host (and port)
  --gatewaying   -g                   gatewaying (direct routing) (default)
  --ipip         -i                   ipip encapsulation (tunneling)
  --masquerading -m                   masquerading (NAT)
  --tun-type      type                one of ipip|gue|gre,
                                      the default tunnel type is ipip.
  --tun-port      port                tunnel destination port
  --tun-nocsum                        tunnel encapsulation without checksum
  --tun-csum                          tunnel encapsulation with checksum
  --tun-remcsum                       tunnel encapsulation with remote checksum
  --weight       -w weight            capacity of real server
  --u-threshold  -x uthreshold        upper threshold of connections
  --l-threshold  -y lthreshold        lower threshold of connections
  --connection   -c                   output of current IPVS connections
  --timeout                           output of timeout (tcp tcpfin udp)
  --daemon                            output of daemon information
  --stats                             output of statistics information
  --rate                              output of rate information
  --exact                             expand numbers (display exact values)
  --thresholds                        output of thresholds information
  --persistent-conn                   output of persistent connection info
  --tun-info                          output of tunnel information
  --nosort                            disable sorting output of service/server entries
  --sort                              does nothing, for backwards compatibility
  --ops          -o                   one-packet scheduling
  --numeric      -n                   numeric output of addresses and ports
  --sched-flags  -b flags             scheduler flags (comma-separated)
Daemon Options:
  --syncid sid                        syncid for connection sync (default=255)
  --sync-maxlen length                Max sync message length (default=1472)
  --mcast-interface interface         multicast interface for connection sync
  --mcast-group address               IPv4/IPv6 group (default=224.0.0.81)
  --mcast-port port                   UDP port (default=8848)
  --mcast-ttl ttl                     Multicast TTL (default=1)
"""

# The kernel's answers for the sync daemons (ipvs_strerror / strerror).
DAEMON_RUNNING_TEXT = "Daemon has already run"       # EEXIST from start_sync_thread
NO_DAEMON_TEXT = "No daemon is running"              # ESRCH from stop_sync_thread
NO_DEVICE_TEXT = "No such device"                    # ENODEV: no such mcast interface

IP_VS_SYNC_GROUP = "224.0.0.81"
IP_VS_SYNC_PORT = 8848
SYNC_HLEN = 20 + 8          # IPv4 + UDP header (start_sync_thread's hlen)
SYNC_HLEN6 = 40 + 8         # IPv6 + UDP header
DAEMON_STATES = ("master", "backup")


def usage_text(prog=PROG):
    """What ``ipvsadm -h`` prints (on stdout, exit 0)."""
    return VERSION_TEXT + _USAGE % {"prog": prog}


class _Exit(Exception):
    """ipvsadm called exit(status): the rest of the process does not run."""

    def __init__(self, status):
        Exception.__init__(self, status)
        self.status = status


class _Io:
    def __init__(self):
        self.out = []
        self.err = []


# ---------------------------------------------------------------- run

def run(engine, argv, stdin_text=None, prog=PROG, atomic_restore=True):
    """Carry out one ipvsadm command line (``argv`` without the program name).

    Returns (stdout, stderr, exit status).  ``stdin_text`` is what -R reads.
    ``atomic_restore=False`` makes -R behave exactly as ipvsadm's (see the
    module's notes); the default is pylvs' all-or-nothing -R.
    """
    io = _Io()
    args = list(argv)
    try:
        if not args:
            # main(): "list the table if there is no other argument"
            io.out.append(listing.list_services(engine, numeric=False))
            status = 0
        else:
            status = _process(engine, args, stdin_text, prog, io, False, atomic_restore)
    except _Exit as e:
        status = e.status
    return "".join(io.out), "".join(io.err), status & 0xFF


def _parse(args, prog, io):
    """parse_options + the checks of process_options; None where ipvsadm returns -1."""
    try:
        return rules.parse_cli(args, prog)
    except ConfigError as e:
        io.err.append(e.message + "\n")
        if e.status == 255 and not e.message.startswith("Try `"):
            # a popt error: process_options returns -1, the process goes on (in -R)
            return None
        raise _Exit(e.status)


def _process(engine, args, stdin_text, prog, io, reading_stdin, atomic_restore):
    """ipvsadm's process_options for one command line: 0 or 255 (-1), or _Exit."""
    pa = _parse(args, prog, io)
    if pa is None:
        return 255
    cmd = pa.cmd_name
    if cmd == rules.HELP:
        io.out.append(usage_text(prog))
        raise _Exit(0)
    if cmd == rules.VERSION:
        io.out.append(VERSION_TEXT)
        raise _Exit(0)
    if cmd == "list":
        _list(engine, pa, io)
        return 0
    if cmd == "restore":
        if reading_stdin:
            # "avoid infinite loop"
            io.err.append("Try `%s -h' or '%s --help' for more information.\n" % (prog, prog))
            raise _Exit(255)
        if atomic_restore:
            return _restore_atomic(engine, stdin_text or "", prog, io)
        return _restore_pass(engine, stdin_text or "", prog, io, atomic=False)[0]
    if cmd == "save":
        io.out.append("".join(line + "\n" for line in listing.rule_lines(engine, pa.numeric)))
        return 0
    try:
        if cmd == "start-daemon":
            start_daemon(engine, pa)
        elif cmd == "stop-daemon":
            stop_daemon(engine, pa.daemon_state)
        else:
            engine.apply(pa.command)
    except ConfigError as e:
        io.err.append(e.message + "\n")
        return e.status
    return 0


def command_kind(argv, prog=PROG):
    """What a command line does to the tables, for a daemon with workers
    (lvs/fanout.py): "change" (every process carries it out), "daemon" (the sync
    daemons: not with workers), "connections" or
    "services" (listings that add up every process), "local" (the rest: help,
    save, timeouts, refused lines; the daemon alone answers)."""
    if not argv:
        return "services"
    try:
        pa = rules.parse_cli(list(argv), prog)
    except ConfigError:
        return "local"
    cmd = pa.cmd_name
    if cmd == "list":
        if pa.has(OPTC_CONNECTION):
            return "connections"
        if pa.has(OPTC_TIMEOUT) or pa.has(OPTC_DAEMON):
            return "local"
        return "services"
    if cmd in (rules.HELP, rules.VERSION, "save"):
        return "local"
    if cmd in ("start-daemon", "stop-daemon"):
        return "daemon"
    return "change"


# ---------------------------------------------------------------- listings

def _list(engine, pa, io):
    try:
        if pa.has(OPTC_CONNECTION):
            text = listing.list_connections(engine, numeric=pa.numeric,
                                            persistent_conn=pa.has(OPTC_PERSISTENTCONN))
        elif pa.has(OPTC_SERVICE):
            text = listing.list_services(engine, numeric=pa.numeric, fmt=pa.fmt,
                                         exact=pa.exact, sort=pa.sort,
                                         service_key=pa.service_key())
        elif pa.has(OPTC_TIMEOUT):
            text = listing.list_timeouts(engine)
        elif pa.has(OPTC_DAEMON):
            text = list_daemons(engine)
        else:
            text = listing.list_services(engine, numeric=pa.numeric, fmt=pa.fmt,
                                         exact=pa.exact, sort=pa.sort)
    except ConfigError as e:
        # list_service: "No such service", exit(1)
        io.err.append(e.message + "\n")
        raise _Exit(e.status)
    io.out.append(text)


# ---------------------------------------------------------------- sync daemons

def _daemons(engine):
    return engine.sync_daemons


def _interface_mtu(engine, name):
    interfaces = getattr(engine, "interfaces", None)
    if interfaces is None:
        return getattr(engine, "mtu", 1500) or 1500
    if name not in interfaces:
        raise ConfigError(NO_DEVICE_TEXT)
    return interfaces[name]


def start_daemon(engine, pa):
    """--start-daemon: ip_vs_genl_new_daemon + start_sync_thread (6.1)."""
    state = pa.daemon_state
    group = pa.mcast_group
    family = socket.AF_INET6 if group is not None and ":" in group else socket.AF_INET
    if engine.mixed_family_dests():
        # ip_vs_genl_new_daemon: the sync protocol has no room for them
        raise ConfigError(EINVAL_TEXT)
    mtu = _interface_mtu(engine, pa.mcast_ifn)
    hlen = SYNC_HLEN6 if family == socket.AF_INET6 else SYNC_HLEN
    if state == "backup":
        dev_mtu, min_len = min(max(mtu, 1500), 65535), 1024
    else:
        dev_mtu, min_len = 1500, 1
    if pa.sync_maxlen:
        maxlen = min(max(pa.sync_maxlen, min_len), 65535 - hlen)
    else:
        maxlen = dev_mtu - hlen
    daemons = _daemons(engine)
    if state in daemons:
        raise ConfigError(DAEMON_RUNNING_TEXT)
    daemons[state] = {
        "mcast_ifn": pa.mcast_ifn,
        "syncid": pa.syncid,
        "sync_maxlen": maxlen,
        "mcast_group": (socket.inet_ntop(family, socket.inet_pton(family, group)) if group
                        else IP_VS_SYNC_GROUP),
        "mcast_port": pa.mcast_port or IP_VS_SYNC_PORT,
        "mcast_ttl": pa.mcast_ttl or 1,
    }
    engine.sync_started(state)


def stop_daemon(engine, state):
    """--stop-daemon: stop_sync_thread."""
    daemons = _daemons(engine)
    if state not in daemons:
        raise ConfigError(NO_DAEMON_TEXT)
    del daemons[state]
    engine.sync_stopped(state)


def list_daemons(engine):
    """``ipvsadm -L --daemon`` (list_daemon): the master first, then the backup."""
    daemons = engine.sync_daemons
    lines = []
    for state in DAEMON_STATES:
        d = daemons.get(state)
        if d is None:
            continue
        line = "%s sync daemon (mcast=%s, syncid=%d" % (state, d["mcast_ifn"], d["syncid"])
        if d["sync_maxlen"]:
            line += ", maxlen=%u" % d["sync_maxlen"]
        line += ", group=%s" % d["mcast_group"]
        if d["mcast_port"]:
            line += ", port=%u" % d["mcast_port"]
        if d["mcast_ttl"]:
            line += ", ttl=%u" % d["mcast_ttl"]
        lines.append(line + ")\n")
    return "".join(lines)


# ---------------------------------------------------------------- restore

_BLANKS = " \t\n\r"


def config_stream_lines(text, first=PROG):
    """What ipvsadm -R's config_stream_read makes of ``text``, call by call:
    a list of (line number, argv) with argv[0] == ``first``.

    The scanner reads a token and the one blank after it ("%[^ \\t\\n\\r]%1[
    \\t\\n\\r]"); a newline ends the call; a run of blanks that reaches the
    end of the input drops the whole call (the last line's tokens, if it ends
    in two or more blanks without a newline); a token "ipvsadm" is dropped;
    '#' is not special (ipvsadm's comment check looks at the blank, never at
    the token).  Blank lines give argv == [first], which -R skips.
    """
    records = []
    pos, n, line = 0, len(text), 1
    while True:
        argv = [first]
        start = line
        ntoken = 0
        result = None
        dropped = False
        while True:
            if pos >= n:                      # fscanf: EOF before a conversion
                if ntoken:
                    result = argv
                break
            if text[pos] in _BLANKS:          # fscanf returns 0: skip blanks by hand
                ended = False
                while True:
                    if pos >= n:
                        dropped = True
                        break
                    c = text[pos]
                    pos += 1
                    if c == "\n":
                        line += 1
                        ended = True
                        break
                    if c not in " \t\r":
                        pos -= 1
                        break
                if dropped or ended:
                    result = None if dropped else argv
                    break
                continue
            end = pos
            while end < n and text[end] not in _BLANKS:
                end += 1
            token = text[pos:end]
            pos = end
            newline = False
            if pos < n:
                newline = text[pos] == "\n"
                pos += 1
                if newline:
                    line += 1
            if token != "ipvsadm":
                argv.append(token)
                ntoken += 1
            if newline:
                result = argv
                break
        if result is None:
            return records
        records.append((start, result))


def _restore_pass(engine, text, prog, io, atomic):
    """restore_table: the lines of ``text`` against ``engine``.

    Returns (status, failed line number or None).  ipvsadm's way
    (atomic=False): on after a kernel refusal or a popt error, the status of
    the last line run.  atomic=True: stop at the first failing line, its
    message prefixed with "line N: ".
    """
    result = 0
    for lineno, argv in config_stream_lines(text, prog):
        if len(argv) <= 1:
            continue
        line_io = _Io()
        try:
            result = _process(engine, argv[1:], None, prog, line_io, True, atomic)
        except _Exit as e:
            _emit(io, line_io, lineno if atomic and e.status else None)
            if e.status == 0:
                return 0, None            # -h, -v: printed, the restore ends with 0
            if atomic:
                return e.status, lineno
            raise
        failed = atomic and result != 0
        _emit(io, line_io, lineno if failed else None)
        if failed:
            return result, lineno
    return result, None


def _emit(io, line_io, lineno):
    io.out.extend(line_io.out)
    if lineno is None:
        io.err.extend(line_io.err)
    else:
        io.err.extend("line %d: %s" % (lineno, msg) for msg in line_io.err)


def _scratch_copy(engine):
    """A copy of the engine's configuration to try a restore on.

    The sysctl table, the connection table, the fragment queues and the
    fast path are shared, not copied: the control commands never change them (and
    EngineConfig does not survive deepcopy).
    """
    memo = {}
    for name in ("config", "conntab", "defrag", "fwmark", "fast"):
        value = getattr(engine, name, None)
        if value is not None:
            memo[id(value)] = value
    return copy.deepcopy(engine, memo)


def _restore_atomic(engine, text, prog, io):
    trial = _Io()
    status, failed = _restore_pass(_scratch_copy(engine), text, prog, trial, atomic=True)
    if failed is not None:
        io.err.extend(trial.err)
        return status
    # Every line went through: the same lines, for real.
    return _restore_pass(engine, text, prog, io, atomic=True)[0]
