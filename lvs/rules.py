"""ipvsadm's command grammar: argv -> lvs.control.Command, and ipvsadm-save.

This is ipvsadm 1.31 (Debian's build, popt option parsing) as its binary
behaves; where its man page and its code disagree, the code wins (``-p``
without a value is 360 seconds, IPVS_SVC_PERSISTENT_TIMEOUT, not the 300
the man page states).  The pieces, in ipvsadm's order of work:

  * popt splits argv into options (``-Ln`` clusters, ``-w5``/``-w=5``,
    ``--weight 5``/``--weight=5``, the optional argument of ``-p`` taken only
    when it does not start with ``-``, non-options collected for ``--set``)
    and stops at the first problem with ``<option>: <popt error>``, exit 255;
  * every option is handled as it comes (parse_options), so the first bad
    value or repeated option is the one reported, exit 2;
  * then ``--set``'s three values, leftover arguments, ``-b`` (parsed once
    the scheduler is known), the command x option matrix
    (generic_opt_check), and the checks of process_options.

``parse_args`` returns a Command for the rule commands (-A -E -D -a -e -d
-C -Z --set); ``parse_cli`` returns every command's parsed form (listing
options included) for a command-line front end.  Kernel-side refusals are
the engine's business, not this module's.
"""

import re
import socket
import struct

from .control import (
    ADD_DEST, ADD_SERVICE, DEL_DEST, DEL_SERVICE, EDIT_DEST, EDIT_SERVICE,
    FLUSH, SET_TIMEOUT, ZERO, Command, DestSpec, ServiceSpec,
)
from .errors import ConfigError
from .flags import (
    AF_INET, AF_INET6, IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_TUNNEL, IP_VS_SVC_F_ONEPACKET, IP_VS_SVC_F_PERSISTENT,
    IP_VS_SVC_F_SCHED1, IP_VS_SVC_F_SCHED2, IP_VS_SVC_F_SCHED3,
    IP_VS_TUNNEL_ENCAP_FLAG_CSUM, IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM,
)

PROG = "ipvsadm"

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132

DEF_SCHED = "wlc"
DEF_MCAST_IFN = "eth0"
MAX_TIMEOUT = 86400 * 31
IPVS_SVC_PERSISTENT_TIMEOUT = 6 * 60  # libipvs/ip_vs.h; what a bare -p gives
INT_MAX = 0x7FFFFFFF
IP_VS_SCHEDNAME_MAXLEN = 16
IP_VS_PENAME_MAXLEN = 16  # what the 1.31 binary copies (strncpy ..., 16)
SCHED_FLAGS_MASK = IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2 | IP_VS_SVC_F_SCHED3

# ipvsadm's commands (CMD_*), by the names its messages use.
CMD_NAMES = (
    "add-service", "edit-service", "delete-service", "flush", "list",
    "add-server", "delete-server", "edit-server", "set", "start-daemon",
    "stop-daemon", "restore", "save", "zero",
)
# Extra results of parse_cli that are not CMD_* (usage_exit, version_exit).
HELP = "help"
VERSION = "version"

RULE_COMMANDS = {
    "add-service": ADD_SERVICE,
    "edit-service": EDIT_SERVICE,
    "delete-service": DEL_SERVICE,
    "flush": FLUSH,
    "add-server": ADD_DEST,
    "edit-server": EDIT_DEST,
    "delete-server": DEL_DEST,
    "zero": ZERO,
    "set": SET_TIMEOUT,
}

# The options' bit numbers (OPTC_*) and names (optnames[]).
OPT_NAMES = (
    "numeric", "connection", "service-address", "scheduler", "persistent",
    "netmask", "real-server", "forwarding-method", "weight", "u-threshold",
    "l-threshold", "mcast-interface", "timeout", "daemon", "stats", "rate",
    "thresholds", "persistent-conn", "nosort", "syncid", "exact", "ops",
    "pe", "sched-flags", "mcast-group", "mcast-port", "mcast-ttl",
    "sync-maxlen", "tun-info", "tun-type", "tun-port", "tun-nocsum",
    "tun-csum", "tun-remcsum",
)
(OPTC_NUMERIC, OPTC_CONNECTION, OPTC_SERVICE, OPTC_SCHEDULER, OPTC_PERSISTENT,
 OPTC_NETMASK, OPTC_SERVER, OPTC_FORWARD, OPTC_WEIGHT, OPTC_UTHRESHOLD,
 OPTC_LTHRESHOLD, OPTC_MCAST, OPTC_TIMEOUT, OPTC_DAEMON, OPTC_STATS, OPTC_RATE,
 OPTC_THRESHOLDS, OPTC_PERSISTENTCONN, OPTC_NOSORT, OPTC_SYNCID, OPTC_EXACT,
 OPTC_ONEPACKET, OPTC_PE, OPTC_SCHED_FLAGS, OPTC_MCAST_GROUP, OPTC_MCAST_PORT,
 OPTC_MCAST_TTL, OPTC_SYNC_MAXLEN, OPTC_TUN_INFO, OPTC_TUN_TYPE, OPTC_TUN_PORT,
 OPTC_TUN_NOCSUM, OPTC_TUN_CSUM, OPTC_TUN_REMCSUM) = range(34)

# commands_v_options, as compiled into the 1.31 binary: for each command, one
# character per option: '+' compulsory, 'x' illegal, '1' exclusive, ' ' optional.
COMMANDS_V_OPTIONS = {
    "add-service":    "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",
    "edit-service":   "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",
    "delete-service": "xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "flush":          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "list":           " 11xxxxxxxxx11       xxxxxxx xxxxx",
    "add-server":     "xx+xxx+    xxxxxxxxxxxxxxxxxx     ",
    "delete-server":  "xx+xxx+xxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "edit-server":    "xx+xxx+    xxxxxxxxxxxxxxxxxx     ",
    "set":            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "start-daemon":   "xxxxxxxxxxx xxxxxxx xxxx    xxxxxx",
    "stop-daemon":    "xxxxxxxxxxxxxxxxxxx xxxxxxxxxxxxxx",
    "restore":        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "save":           " xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "zero":           "xx xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
}

# Tunnel types, their options (tun-port, tun-nocsum, tun-csum, tun-remcsum)
# and the tunnel_types_v_options table.
TUN_NAMES = ("ipip", "gue", "gre")
TUN_FLAGS_SHORT = ("-c", "+c", "r+c")
TUN_FLAG_OPTS = ("--tun-nocsum", "--tun-csum", "--tun-remcsum")
TUN_OPTS = (OPTC_TUN_PORT, OPTC_TUN_NOCSUM, OPTC_TUN_CSUM, OPTC_TUN_REMCSUM)
TUNNEL_TYPES_V_OPTIONS = ("xxxx", "+111", "x11x")

# Listing format flags (FMT_*), shared with lvs.listing.
FMT_NUMERIC = 0x0001
FMT_RULE = 0x0002
FMT_STATS = 0x0004
FMT_RATE = 0x0008
FMT_THRESHOLDS = 0x0010
FMT_PERSISTENTCONN = 0x0020
FMT_NOSORT = 0x0040
FMT_EXACT = 0x0080
FMT_TUN_INFO = 0x0100

# popt's option table: long name -> (short char or None, argument kind, tag).
# Argument kind: 0 none, 1 required, 2 optional (POPT_ARGFLAG_OPTIONAL).
_OPTION_TABLE = (
    ("add-service", "A", 0, "A"), ("edit-service", "E", 0, "E"),
    ("delete-service", "D", 0, "D"), ("clear", "C", 0, "C"),
    ("list", "L", 0, "L"), ("list", "l", 0, "l"), ("zero", "Z", 0, "Z"),
    ("add-server", "a", 0, "a"), ("edit-server", "e", 0, "e"),
    ("delete-server", "d", 0, "d"), ("set", None, 0, "set"),
    ("help", "h", 0, "h"), ("version", "v", 0, "v"),
    ("restore", "R", 0, "R"), ("save", "S", 0, "S"),
    ("start-daemon", None, 1, "start-daemon"),
    ("stop-daemon", None, 1, "stop-daemon"),
    ("tcp-service", "t", 1, "t"), ("udp-service", "u", 1, "u"),
    ("sctp-service", None, 1, "sctp-service"),
    ("fwmark-service", "f", 1, "f"), ("scheduler", "s", 1, "s"),
    ("persistent", "p", 2, "p"), ("netmask", "M", 1, "M"),
    ("real-server", "r", 1, "r"), ("masquerading", "m", 0, "m"),
    ("ipip", "i", 0, "i"), ("gatewaying", "g", 0, "g"),
    ("weight", "w", 1, "w"), ("u-threshold", "x", 1, "x"),
    ("l-threshold", "y", 1, "y"), ("numeric", "n", 0, "n"),
    ("connection", "c", 0, "c"), ("mcast-interface", None, 1, "mcast-interface"),
    ("syncid", None, 1, "syncid"), ("timeout", None, 0, "timeout"),
    ("daemon", None, 0, "daemon"), ("stats", None, 0, "stats"),
    ("rate", None, 0, "rate"), ("thresholds", None, 0, "thresholds"),
    ("persistent-conn", None, 0, "persistent-conn"),
    ("nosort", None, 0, "nosort"), ("sort", None, 0, "sort"),
    ("exact", "X", 0, "X"), ("ipv6", "6", 0, "6"), ("ops", "o", 0, "o"),
    ("pe", None, 1, "pe"), ("sched-flags", "b", 1, "b"),
    ("mcast-group", None, 1, "mcast-group"), ("mcast-port", None, 1, "mcast-port"),
    ("mcast-ttl", None, 1, "mcast-ttl"), ("sync-maxlen", None, 1, "sync-maxlen"),
    ("tun-info", None, 0, "tun-info"), ("tun-type", None, 1, "tun-type"),
    ("tun-port", None, 1, "tun-port"), ("tun-nocsum", None, 0, "tun-nocsum"),
    ("tun-csum", None, 0, "tun-csum"), ("tun-remcsum", None, 0, "tun-remcsum"),
)
_LONG = {}
_SHORT = {}
for _name, _short, _kind, _tag in _OPTION_TABLE:
    _LONG.setdefault(_name, (_kind, _tag))
    if _short:
        _SHORT[_short] = (_kind, _tag)
del _name, _short, _kind, _tag

_FIRST_COMMANDS = {
    "A": "add-service", "E": "edit-service", "D": "delete-service",
    "a": "add-server", "e": "edit-server", "d": "delete-server",
    "C": "flush", "L": "list", "l": "list", "Z": "zero", "set": "set",
    "R": "restore", "S": "save", "start-daemon": "start-daemon",
    "stop-daemon": "stop-daemon",
}

# popt's error texts (poptStrerror).
POPT_ERROR_NOARG = "missing argument"
POPT_ERROR_BADOPT = "unknown option"
POPT_ERROR_UNWANTEDARG = "option does not take an argument"


def _fail(message, status=2):
    raise ConfigError(message, status)


class _PoptError(Exception):
    def __init__(self, badopt, text):
        Exception.__init__(self, text)
        self.badopt = badopt
        self.text = text


class _Popt:
    """The part of popt that ipvsadm relies on, one option at a time."""

    def __init__(self, args):
        self.args = list(args)
        self.i = 0
        self.cluster = None      # (element, index of the next short option)
        self.leftovers = []
        self.no_more_options = False
        self.last = None         # argv[next - 1], what poptBadOption reports

    def _take_arg(self, kind, element):
        """The separate argument of an option that needs or may take one."""
        if self.i >= len(self.args):
            if kind == 1:
                raise _PoptError(element, POPT_ERROR_NOARG)
            return None
        nxt = self.args[self.i]
        if kind == 2 and nxt.startswith("-"):
            return None  # an optional argument that starts with '-' is an option
        self.i += 1
        self.last = nxt
        return nxt

    def next(self):
        """(tag, argument) of the next option, None at the end; raises _PoptError."""
        while True:
            if self.cluster is not None:
                element, j = self.cluster
                c = element[j]
                spec = _SHORT.get(c)
                if spec is None:
                    self.cluster = None
                    raise _PoptError(element, POPT_ERROR_BADOPT)
                kind, tag = spec
                rest = element[j + 1:]
                if kind == 0:
                    self.cluster = (element, j + 1) if rest else None
                    return tag, None
                self.cluster = None
                if rest:
                    if rest.startswith("="):
                        rest = rest[1:]
                    return tag, rest
                return tag, self._take_arg(kind, element)
            if self.i >= len(self.args):
                return None
            element = self.args[self.i]
            self.i += 1
            if self.no_more_options or not element.startswith("-") or element == "-":
                self.leftovers.append(element)
                continue
            self.last = element
            if element == "--":
                self.no_more_options = True
                continue
            if element.startswith("--"):
                name, eq, value = element[2:].partition("=")
                spec = _LONG.get(name)
                if spec is None:
                    raise _PoptError(element, POPT_ERROR_BADOPT)
                kind, tag = spec
                if eq:
                    if kind == 0:
                        raise _PoptError(element, POPT_ERROR_UNWANTEDARG)
                    return tag, value
                if kind == 0:
                    return tag, None
                return tag, self._take_arg(kind, element)
            self.cluster = (element, 1)

    def get_arg(self):
        """poptGetArg: the next non-option argument, or None."""
        if self.leftovers:
            return self.leftovers.pop(0)
        return None


# ---------------------------------------------------------------- helpers

_NUMBER = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)\Z")
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


def _c_long(digits):
    """A strtol digit string ([+-]?[0-9]+) -> int, or None beyond a C long (ERANGE).
    The digits are counted first: a number of a million digits costs no time (and
    CPython refuses int() beyond 4300 digits)."""
    body = digits.lstrip("+-").lstrip("0")
    if len(body) > 19:
        return None
    value = int(digits)
    if value < _LONG_MIN or value > _LONG_MAX:
        return None
    return value


def _strtol(text):
    """strtol(text, &end, 10) with *end == '\\0' and no ERANGE, else None."""
    m = _NUMBER.match(text)
    if m is None:
        return None
    return _c_long(m.group(1))


def _atoi(text):
    """glibc atoi: (int) strtol(text, NULL, 10): clamped to a long, then cut to 32 bits."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    if m is None:
        return 0
    value = _c_long(m.group(1))
    if value is None:
        value = _LONG_MIN if m.group(1).startswith("-") else _LONG_MAX
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def string_to_number(text, low, high):
    """ipvsadm's string_to_number: -1 unless a whole decimal in [low, high]."""
    value = _strtol(text)
    if value is None or value < low or value > high:
        return -1
    return value


def _parse_timeout(text, low, high):
    if text is None:
        return IPVS_SVC_PERSISTENT_TIMEOUT
    value = string_to_number(text, low, high)
    if value == -1:
        _fail("invalid timeout value `%s' specified" % text)
    return value


def _parse_fwmark(text):
    value = _strtol(text)
    if value is None or value <= 0 or value > 0xFFFFFFFF:
        _fail("invalid fwmark value `%s' specified" % text)
    return value


def inet_aton(text):
    """glibc inet_aton: 4 bytes, or None ("203.0.113" is 203.0.0.113).
    A NUL is no address (PyPy's inet_aton would stop there, CPython's refuses)."""
    if "\0" in text:
        return None
    try:
        return socket.inet_aton(text)
    except (OSError, ValueError, UnicodeError):
        return None


def inet_pton6(text):
    """glibc inet_pton(AF_INET6): 16 bytes, or None (no scope id, no brackets; no NUL)."""
    if "\0" in text:
        return None
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError, UnicodeError):
        return None


def host_to_addr(name):
    """gethostbyname, IPv4 only: 4 bytes or None."""
    if not name or name == "<broadcast>" or re.search(r"[\x00-\x20\x7f]", name):
        # Python's special cases, and names no resolver takes (PyPy's
        # gethostbyname would pass " 203.0.113.1" on as an address)
        return None
    try:
        return socket.inet_aton(socket.gethostbyname(name))
    except (OSError, ValueError, UnicodeError):
        return None


def _proto_name(protocol):
    return {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_SCTP: "sctp"}.get(protocol)


def service_to_port(name, protocol):
    proto = _proto_name(protocol)
    if proto is None or "\0" in name:
        return -1
    try:
        return socket.getservbyname(name, proto)
    except (OSError, ValueError, UnicodeError, OverflowError):
        return -1


_ALL_DIGITS = re.compile(r"[0-9]*\Z")
SERVICE_NONE = 0
SERVICE_ADDR = 1
SERVICE_PORT = 2


def parse_service(text, protocol):
    """ipvsadm's parse_service: (result bits, af, addr bytes or None, port or None).

    "[addr]:port" is IPv6 (the brackets need the ":port"); an unbracketed
    text that inet_pton takes as IPv6 is the whole address, without a port
    ("2001:db8::1:80" is one address); anything else is IPv4 host[:port]."""
    if text is None or _ALL_DIGITS.match(text):
        # str_is_digit: all digits (the empty string too) is no address
        return SERVICE_NONE, None, None, None
    buf = text
    portp = None
    if buf.startswith("["):
        buf = buf[1:]
        close = buf.find("]")
        if close < 0:
            return SERVICE_NONE, None, None, None
        after = buf[close + 1:]
        buf = buf[:close]
        if not after.startswith(":"):
            return SERVICE_NONE, None, None, None
        portp = after[1:]
    addr = inet_pton6(buf)
    if addr is not None:
        af = AF_INET6
    else:
        # The IPv4 path looks for the port again (a bracketed IPv4 address
        # thereby loses its port, as in ipvsadm).
        colon = buf.rfind(":")
        if colon >= 0:
            portp = buf[colon + 1:]
            buf = buf[:colon]
        else:
            portp = None
        addr = inet_aton(buf)
        if addr is None:
            addr = host_to_addr(buf)
        if addr is None:
            return SERVICE_NONE, None, None, None
        af = AF_INET
    result = SERVICE_ADDR
    port = None
    if portp is not None:
        result |= SERVICE_PORT
        port = string_to_number(portp, 0, 65535)
        if port == -1:
            port = service_to_port(portp, protocol)
        if port == -1:
            return SERVICE_NONE, None, None, None
    return result, af, addr, port


def _parse_netmask(text):
    """Host-order netmask, or None."""
    addr = inet_aton(text)
    if addr is None:
        addr = host_to_addr(text)
    if addr is None:
        return None
    return struct.unpack("!I", addr)[0]


def parse_sched_flags(sched, text):
    scheduler = sched or DEF_SCHED
    flags = 0
    tokens = [t for t in text.split(",") if t]
    if not tokens:
        # ipvsadm 1.31 dereferences strtok's NULL here and crashes.
        _fail("invalid scheduler flag `%s'" % text)
    for flag in tokens:
        if flag == "flag-1":
            flags |= IP_VS_SVC_F_SCHED1
        elif flag == "flag-2":
            flags |= IP_VS_SVC_F_SCHED2
        elif flag == "flag-3":
            flags |= IP_VS_SVC_F_SCHED3
        elif flag in ("sh-fallback", "sh-port", "mh-fallback", "mh-port"):
            flags |= IP_VS_SVC_F_SCHED1 if flag.endswith("fallback") else IP_VS_SVC_F_SCHED2
            if scheduler != flag[:2]:
                _fail("incompatible scheduler flag `%s'" % flag)
        else:
            _fail("invalid scheduler flag `%s'" % flag)
    return flags


def _parse_tun_type(text):
    try:
        return TUN_NAMES.index(text)
    except ValueError:
        return -1


# ---------------------------------------------------------------- parsing

class ParsedArgs:
    """Everything one ipvsadm command line says (struct ipvs_command_entry + options)."""

    def __init__(self):
        self.cmd_name = None       # a CMD_NAMES entry, HELP or VERSION
        self.options = 0           # bit OPTC_x set for each option given
        self.format = 0            # FMT_* bits
        self.svc_given = False
        self.svc_af = 0
        self.protocol = 0          # as ipvsadm keeps it: TCP for a fwmark service
        self.addr = b"\0\0\0\0"
        self.port = 0
        self.fwmark = 0
        self.sched_name = ""
        self.flags = 0
        self.timeout = 0
        self.netmask = 0xFFFFFFFF
        self.pe_name = ""
        self.dest_af = 0
        self.dest_addr = b"\0\0\0\0"
        self.dest_port = 0
        self.conn_flags = IP_VS_CONN_F_DROUTE   # -g is the default
        self.weight = 1
        self.u_threshold = 0
        self.l_threshold = 0
        self.tun_type = 0
        self.tun_port = 0
        self.tun_flags = 0
        self.timeouts = None       # --set
        self.daemon_state = None   # "master"/"backup"
        self.mcast_ifn = ""
        self.syncid = 0
        self.mcast_group = None
        self.mcast_port = 0
        self.mcast_ttl = 0
        self.sync_maxlen = 0
        self.command = None        # the lvs.control.Command of a rule command

    def has(self, optc):
        return bool(self.options & (1 << optc))

    # Listing choices, in print_title's order of precedence.
    @property
    def fmt(self):
        f = self.format
        if f & FMT_STATS:
            return "stats"
        if f & FMT_RATE:
            return "rate"
        if f & FMT_THRESHOLDS:
            return "thresholds"
        if f & FMT_PERSISTENTCONN:
            return "persistent-conn"
        if f & FMT_TUN_INFO:
            return "tun-info"
        return "default"

    @property
    def numeric(self):
        return bool(self.format & FMT_NUMERIC)

    @property
    def exact(self):
        return bool(self.format & FMT_EXACT)

    @property
    def sort(self):
        return not self.format & FMT_NOSORT

    def service_spec(self):
        if self.fwmark:
            # no address; its family is the length of the zero one (-6: IPv6)
            zero = bytes(16 if self.svc_af == AF_INET6 else 4)
            return ServiceSpec(protocol=0, addr=zero, port=0, fwmark=self.fwmark,
                               sched_name=self.sched_name, flags=self.flags,
                               timeout=self.timeout, netmask=self.netmask,
                               pe_name=self.pe_name)
        return ServiceSpec(protocol=self.protocol, addr=self.addr, port=self.port,
                           fwmark=0, sched_name=self.sched_name, flags=self.flags,
                           timeout=self.timeout, netmask=self.netmask, pe_name=self.pe_name)

    def service_key(self):
        return self.service_spec().key if self.svc_given else None

    def dest_spec(self):
        return DestSpec(addr=self.dest_addr, port=self.dest_port,
                        conn_flags=self.conn_flags, weight=self.weight,
                        u_threshold=self.u_threshold, l_threshold=self.l_threshold,
                        tun_type=self.tun_type, tun_port=self.tun_port,
                        tun_flags=self.tun_flags)


def _set_option(pa, optc):
    if pa.options & (1 << optc):
        _fail("multiple '%s' options specified" % OPT_NAMES[optc])
    pa.options |= 1 << optc


def _tryhelp(prog):
    _fail("Try `%s -h' or '%s --help' for more information." % (prog, prog), 255)


def _popt_fail(err):
    _fail("%s: %s" % (err.badopt, err.text), 255)


def _generic_opt_check(cmd_name, options):
    row = COMMANDS_V_OPTIONS[cmd_name]
    count = 0
    last = 0
    for j, rule in enumerate(row):
        if not options & (1 << j):
            if rule == "+":
                _fail("You need to supply the '%s' option for the '%s' command"
                      % (OPT_NAMES[j], cmd_name))
        else:
            if rule == "x":
                _fail("Illegal '%s' option with the '%s' command" % (OPT_NAMES[j], cmd_name))
            if rule == "1":
                count += 1
                if count == 1:
                    last = j
                    continue
                _fail("The option '%s' conflicts with the '%s' option in the '%s' command"
                      % (OPT_NAMES[j], OPT_NAMES[last], cmd_name))


def _tunnel_opt_check(tun_type, options):
    row = TUNNEL_TYPES_V_OPTIONS[tun_type]
    count = 0
    last = 0
    tname = TUN_NAMES[tun_type]
    for j, k in enumerate(TUN_OPTS):
        rule = row[j]
        if not options & (1 << k):
            if rule == "+":
                _fail("You need to supply the '%s' option for the '%s' tunnel type"
                      % (OPT_NAMES[k], tname))
        else:
            if rule == "x":
                _fail("Illegal '%s' option with the '%s' tunnel type" % (OPT_NAMES[k], tname))
            if rule == "1":
                count += 1
                if count == 1:
                    last = k
                    continue
                _fail("The option '%s' conflicts with the '%s' option in the '%s' tunnel type"
                      % (OPT_NAMES[k], OPT_NAMES[last], tname))


# -- the options of ipvsadm.c's parse_options switch -----------------------
# Most are one of three shapes, kept as tables; the rest have a handler each.

# tag -> (option bit, attribute, lowest, highest, message when out of range)
_NUMBER_OPTIONS = {
    "w": (OPTC_WEIGHT, "weight", 0, INT_MAX, "illegal weight specified"),
    "x": (OPTC_UTHRESHOLD, "u_threshold", 0, INT_MAX, "illegal u_threshold specified"),
    "y": (OPTC_LTHRESHOLD, "l_threshold", 0, INT_MAX, "illegal l_threshold specified"),
    "syncid": (OPTC_SYNCID, "syncid", 0, 255, "illegal syncid specified"),
    "mcast-port": (OPTC_MCAST_PORT, "mcast_port", 1, 65535, "illegal mcast-port specified"),
    "mcast-ttl": (OPTC_MCAST_TTL, "mcast_ttl", 1, 255, "illegal mcast-ttl specified"),
    "sync-maxlen": (OPTC_SYNC_MAXLEN, "sync_maxlen", 1, 65535 - 28, "illegal sync-maxlen specified"),
    "tun-port": (OPTC_TUN_PORT, "tun_port", 1, 65535, "illegal tunnel port specified"),
}

# tag -> (option bit, listing format bit)
_FORMAT_OPTIONS = {
    "c": (OPTC_CONNECTION, 0), "n": (OPTC_NUMERIC, FMT_NUMERIC),
    "timeout": (OPTC_TIMEOUT, 0), "daemon": (OPTC_DAEMON, 0),
    "stats": (OPTC_STATS, FMT_STATS), "rate": (OPTC_RATE, FMT_RATE),
    "thresholds": (OPTC_THRESHOLDS, FMT_THRESHOLDS),
    "persistent-conn": (OPTC_PERSISTENTCONN, FMT_PERSISTENTCONN),
    "nosort": (OPTC_NOSORT, FMT_NOSORT), "X": (OPTC_EXACT, FMT_EXACT),
    "tun-info": (OPTC_TUN_INFO, FMT_TUN_INFO),
}

# tag -> (option bit, service flag, tunnel flag)
_FLAG_OPTIONS = {
    "o": (OPTC_ONEPACKET, IP_VS_SVC_F_ONEPACKET, 0),
    "tun-nocsum": (OPTC_TUN_NOCSUM, 0, 0),
    "tun-csum": (OPTC_TUN_CSUM, 0, IP_VS_TUNNEL_ENCAP_FLAG_CSUM),
    "tun-remcsum": (OPTC_TUN_REMCSUM, 0, IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM),
}


def _opt_service(pa, tag, arg):
    _set_option(pa, OPTC_SERVICE)
    pa.protocol = {"t": IPPROTO_TCP, "u": IPPROTO_UDP}.get(tag, IPPROTO_SCTP)
    result, af, addr, port = parse_service(arg, pa.protocol)
    if not result & SERVICE_ADDR:
        _fail("illegal virtual server address[:port] specified")
    pa.svc_given = True
    pa.svc_af = af
    pa.addr = addr if addr is not None else b"\0\0\0\0"
    if af == AF_INET6:
        pa.netmask = 128
    if port is not None:
        pa.port = port


def _opt_fwmark(pa, tag, arg):
    _set_option(pa, OPTC_SERVICE)
    pa.svc_af = AF_INET
    pa.protocol = IPPROTO_TCP  # "a sane value, even though it is not used"
    pa.fwmark = _parse_fwmark(arg)
    pa.svc_given = True


def _opt_scheduler(pa, tag, arg):
    _set_option(pa, OPTC_SCHEDULER)
    pa.sched_name = arg.split("\0")[0][:IP_VS_SCHEDNAME_MAXLEN - 1]


def _opt_persistent(pa, tag, arg):
    _set_option(pa, OPTC_PERSISTENT)
    pa.flags |= IP_VS_SVC_F_PERSISTENT
    pa.timeout = _parse_timeout(arg, 1, MAX_TIMEOUT)


def _opt_netmask(pa, tag, arg):
    _set_option(pa, OPTC_NETMASK)
    if pa.svc_af != AF_INET6:
        mask = _parse_netmask(arg)
        if mask is None:
            _fail("illegal virtual server persistent mask specified")
        pa.netmask = mask
    else:
        value = _atoi(arg)
        if value < 1 or value > 128:
            _fail("illegal ipv6 netmask specified")
        pa.netmask = value


def _opt_server(pa, tag, arg):
    _set_option(pa, OPTC_SERVER)
    # parse_service on a copy of the service: a missing port is the
    # service's port as known at this point of the command line.
    result, af, addr, port = parse_service(arg, pa.protocol)
    if result & SERVICE_ADDR:
        pa.dest_af = af
        pa.dest_addr = addr if addr is not None else b"\0\0\0\0"
    pa.dest_port = port if port is not None else pa.port
    if not result & SERVICE_ADDR:
        _fail("illegal real server address[:port] specified")


def _opt_forward(pa, tag, arg):
    _set_option(pa, OPTC_FORWARD)
    pa.conn_flags = {"i": IP_VS_CONN_F_TUNNEL, "g": IP_VS_CONN_F_DROUTE, "m": IP_VS_CONN_F_MASQ}[tag]


def _opt_mcast_interface(pa, tag, arg):
    _set_option(pa, OPTC_MCAST)
    pa.mcast_ifn = arg[:15]


def _opt_sort(pa, tag, arg):
    pass  # "does nothing, for backwards compatibility"


def _opt_ipv6(pa, tag, arg):
    if not pa.fwmark:
        _fail("-6 used before -f\n")
    pa.svc_af = AF_INET6
    pa.netmask = 128


def _opt_pe(pa, tag, arg):
    _set_option(pa, OPTC_PE)
    pa.pe_name = arg.split("\0")[0][:IP_VS_PENAME_MAXLEN]


def _opt_sched_flags(pa, tag, arg):
    _set_option(pa, OPTC_SCHED_FLAGS)
    pa.sched_flags_arg = arg[:127]


def _opt_mcast_group(pa, tag, arg):
    _set_option(pa, OPTC_MCAST_GROUP)
    family, what, first_ok = ((socket.AF_INET6, "IPv6", lambda b: b == 0xFF) if ":" in arg else
                              (socket.AF_INET, "IPv4", lambda b: b & 0xF0 == 0xE0))
    try:
        group = socket.inet_pton(family, arg) if "\0" not in arg else None
    except (OSError, ValueError, UnicodeError):
        group = None
    if group is None or not first_ok(group[0]):  # a multicast address
        _fail("invalid %s mcast-group `%s'" % (what, arg))
    pa.mcast_group = arg


def _opt_tun_type(pa, tag, arg):
    _set_option(pa, OPTC_TUN_TYPE)
    pa.tun_type = _parse_tun_type(arg)
    if pa.tun_type == -1:
        _fail("illegal tunnel type specified")


_OPTION_HANDLERS = {
    "t": _opt_service, "u": _opt_service, "sctp-service": _opt_service, "f": _opt_fwmark,
    "s": _opt_scheduler, "p": _opt_persistent, "M": _opt_netmask, "r": _opt_server,
    "i": _opt_forward, "g": _opt_forward, "m": _opt_forward,
    "mcast-interface": _opt_mcast_interface, "sort": _opt_sort, "6": _opt_ipv6, "pe": _opt_pe,
    "b": _opt_sched_flags, "mcast-group": _opt_mcast_group, "tun-type": _opt_tun_type,
}


def _option(pa, tag, arg, popt):
    """One option of parse_options' loop."""
    if tag in _NUMBER_OPTIONS:
        optc, attr, lo, hi, message = _NUMBER_OPTIONS[tag]
        _set_option(pa, optc)
        value = string_to_number(arg, lo, hi)
        if value == -1:
            _fail(message)
        setattr(pa, attr, value)
    elif tag in _FORMAT_OPTIONS:
        optc, fmt = _FORMAT_OPTIONS[tag]
        _set_option(pa, optc)
        pa.format |= fmt
    elif tag in _FLAG_OPTIONS:
        optc, svc_flag, tun_flag = _FLAG_OPTIONS[tag]
        _set_option(pa, optc)
        pa.flags |= svc_flag
        pa.tun_flags |= tun_flag
    elif tag in _OPTION_HANDLERS:
        _OPTION_HANDLERS[tag](pa, tag, arg)
    else:
        # A second command, -h or -v after the command.
        _fail("invalid option `%s'" % popt.last)


def parse_cli(args, prog=PROG):
    """Parse one ipvsadm command line (without the program name).

    Returns a ParsedArgs; raises ConfigError with ipvsadm's message and exit
    status for what ipvsadm itself rejects.  For help and version requests
    cmd_name is HELP or VERSION and nothing else is parsed.  IPv4 and IPv6
    alike: svc_af and dest_af say which (a fwmark service is IPv4 unless
    ``-6`` follows its ``-f``).
    """
    pa = ParsedArgs()
    pa.sched_flags_arg = ""
    popt = _Popt(args)
    try:
        first = popt.next()
    except _PoptError:
        first = None
    if first is None:
        _tryhelp(prog)
    tag, arg = first
    if tag == "h":
        pa.cmd_name = HELP
        return pa
    if tag == "v":
        pa.cmd_name = VERSION
        return pa
    if tag not in _FIRST_COMMANDS:
        _tryhelp(prog)
    pa.cmd_name = _FIRST_COMMANDS[tag]
    if tag in ("start-daemon", "stop-daemon"):
        if arg not in ("master", "backup"):
            _fail("illegal start-daemon parameter specified" if tag == "start-daemon"
                  else "illegal start_daemon specified")
        pa.daemon_state = arg

    while True:
        try:
            item = popt.next()
        except _PoptError as err:
            _popt_fail(err)
        if item is None:
            break
        _option(pa, item[0], item[1], popt)

    if pa.cmd_name == "set":
        a, b, c = popt.get_arg(), popt.get_arg(), popt.get_arg()
        if a is None or b is None or c is None:
            _fail("--set option requires 3 timeout values")
        pa.timeouts = (_parse_timeout(a, 0, MAX_TIMEOUT), _parse_timeout(b, 0, MAX_TIMEOUT),
                       _parse_timeout(c, 0, MAX_TIMEOUT))
    extra = popt.get_arg()
    if extra is not None:
        _fail("unexpected argument %s" % extra)
    if pa.sched_flags_arg:
        pa.flags &= ~SCHED_FLAGS_MASK
        pa.flags |= parse_sched_flags(pa.sched_name, pa.sched_flags_arg)

    _generic_opt_check(pa.cmd_name, pa.options)

    if pa.cmd_name in ("add-service", "edit-service"):
        if not pa.fwmark and not pa.port and not pa.flags & IP_VS_SVC_F_PERSISTENT:
            _fail("Zero port specified for non-persistent service")
        if pa.flags & IP_VS_SVC_F_ONEPACKET and not pa.fwmark and pa.protocol != IPPROTO_UDP:
            _fail("One-Packet Scheduling is only for UDP virtual services")
        if not pa.sched_name:
            pa.sched_name = DEF_SCHED
    if pa.cmd_name == "start-daemon" and not pa.mcast_ifn:
        pa.mcast_ifn = DEF_MCAST_IFN

    if pa.cmd_name in ("add-server", "edit-server"):
        fwd = pa.conn_flags & IP_VS_CONN_F_FWD_MASK
        # The destination port must be the service port for tunnel and
        # direct routing (but not for a fwmark service).
        if not pa.fwmark and fwd in (IP_VS_CONN_F_TUNNEL, IP_VS_CONN_F_DROUTE):
            pa.dest_port = pa.port
        if pa.dest_af != pa.svc_af and fwd != IP_VS_CONN_F_TUNNEL:
            _fail("Different address family is allowed only for tunneling servers")
        tun_opts = 0
        for optc in (OPTC_TUN_TYPE, OPTC_TUN_PORT, OPTC_TUN_NOCSUM, OPTC_TUN_CSUM,
                     OPTC_TUN_REMCSUM):
            tun_opts |= pa.options & (1 << optc)
        if tun_opts and fwd != IP_VS_CONN_F_TUNNEL:
            _fail("Tunnel options conflict with forward method")
        _tunnel_opt_check(pa.tun_type, pa.options)

    if pa.cmd_name == "list":
        o = pa.options
        if ((o & ((1 << OPTC_CONNECTION) | (1 << OPTC_TIMEOUT) | (1 << OPTC_DAEMON))
             and o & ((1 << OPTC_STATS) | (1 << OPTC_RATE) | (1 << OPTC_THRESHOLDS)))
                or (o & ((1 << OPTC_TIMEOUT) | (1 << OPTC_DAEMON))
                    and o & (1 << OPTC_PERSISTENTCONN))):
            _fail("options conflicts in the list command")

    name = RULE_COMMANDS.get(pa.cmd_name)
    if name is not None:
        if name == FLUSH:
            pa.command = Command(FLUSH)
        elif name == SET_TIMEOUT:
            pa.command = Command(SET_TIMEOUT, timeouts=pa.timeouts)
        elif name == ZERO:
            pa.command = Command(ZERO, svc=pa.service_spec() if pa.svc_given else None)
        elif name in (ADD_DEST, EDIT_DEST, DEL_DEST):
            pa.command = Command(name, svc=pa.service_spec(), dest=pa.dest_spec())
        else:
            pa.command = Command(name, svc=pa.service_spec())
    return pa


def parse_args(args, prog=PROG):
    """ipvsadm's argv (without the program name) -> lvs.control.Command.

    For the rule commands: -A -E -D -a -e -d -C -Z --set.  Raises ConfigError
    with ipvsadm's message and exit status for what ipvsadm rejects, and
    ConfigError(status 2) naming the command for other valid commands
    (listing, saving, ...), which are no rules.
    """
    args = list(args)
    if args and args[0] in (PROG, "lvsadm") and len(args) > 1:
        args = args[1:]
    pa = parse_cli(args, prog)
    if pa.command is None:
        _fail("not a rule command: %s" % pa.cmd_name)
    return pa.command


def split_line(text):
    """ipvsadm -R's tokenizer (config_stream_read): blanks split, no quoting,
    and a token "ipvsadm" is dropped wherever it stands."""
    return [t for t in re.split(r"[ \t\r\n]+", text) if t and t != PROG]


def parse_line(text, prog=PROG):
    """One line of an ipvsadm-save file -> Command, or None for a blank line.

    ipvsadm -R splits on blanks without any quoting, and so does this.  A
    line whose first non-blank character is '#' is taken as a comment and
    gives None (a pylvs extension: ipvsadm -R would stop with its "Try ...
    -h" message there); a '#' later in a line is an ordinary argument, as in
    ipvsadm ("unexpected argument #").
    """
    stripped = text.strip(" \t\r\n")
    if not stripped or stripped.startswith("#"):
        return None
    tokens = split_line(text)
    if not tokens:
        return None
    return parse_args(tokens, prog)


# ---------------------------------------------------------------- save

def save_lines(engine, numeric=True):
    """What `ipvsadm-save [-n]` (ipvsadm -S [-n]) prints, one string per line
    (without the newline)."""
    from .listing import rule_lines
    return rule_lines(engine, numeric=numeric)
