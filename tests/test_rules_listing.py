"""The ipvsadm grammar (lvs.rules) and ipvsadm's listings (lvs.listing)
against ipvsadm 1.31 and Linux 6.1.

Three sources of truth:

* tests/data/golden/cli.json: 20 ipvsadm command sequences recorded on
  Linux 6.1 + ipvsadm 1.31 by the kernel oracle VM (shared/kernel-oracle,
  golden/cli.json, copied unchanged): every command's stdout, stderr and exit
  status.  Each sequence is replayed here through parse_cli/parse_line, an
  engine and the listings, and must answer the same, byte for byte.
* ORACLE_CASES and ORACLE_LISTINGS below: recorded from Debian's ipvsadm
  1.31 binary (/sbin/ipvsadm) run with a netlink stub (LD_PRELOAD) in place
  of the kernel.  For a command line, the decoded request it sends to the
  kernel (or its stderr and exit status when it refuses the line); for a
  listing, what it prints for the services, real servers and /proc lines
  the stub hands it (LISTING_SPEC, CONN_SPEC).
* Hand-computed values from ipvsadm's source (print_largenum) and the
  kernel's (ip_vs_svc_hashkey).
"""

import json
import shlex
import socket
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvs import listing, rules  # noqa: E402
from lvs.control import (  # noqa: E402
    ADD_DEST, ADD_SERVICE, DEL_DEST, DEL_SERVICE, EDIT_DEST, EDIT_SERVICE,
    FLUSH, SET_TIMEOUT, ZERO,
)
from lvs.errors import ConfigError  # noqa: E402
from lvs.service import Dest, Service  # noqa: E402
from lvs.stats import Stats  # noqa: E402

try:
    from lvs.engine import Engine  # noqa: E402
except ImportError:  # the engine is written elsewhere; the fake below stands in
    Engine = None

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden" / "cli.json").read_text())


# ------------------------------------------------------------------ engines

class FakeEngine:
    """Just enough of lvs.engine.Engine for the control plane and listings:
    the kernel's answers for the refusals in the golden data, dests linked
    at the head of the list, timeouts where 0 keeps a value."""

    conn_tab_size = 4096

    def __init__(self):
        self.services = {}
        self.tcp, self.tcpfin, self.udp = 900, 120, 300
        self.conns = []
        self.now = 0.0

    def timeouts(self):
        return (self.tcp, self.tcpfin, self.udp)

    def conn_list(self):
        return list(self.conns)

    @staticmethod
    def state_name(conn):
        return conn.state_name

    def _svc(self, spec, missing):
        svc = self.services.get(spec.key)
        if svc is None:
            raise ConfigError(missing)
        return svc

    @staticmethod
    def _set(svc, spec):
        if spec.sched_name not in ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh",
                                   "sed", "nq", "mh"):
            raise ConfigError("Scheduler or persistence engine not found")
        svc.sched_name = spec.sched_name
        svc.flags, svc.timeout, svc.netmask = spec.flags, spec.timeout, spec.netmask
        svc.pe_name = spec.pe_name

    def apply(self, cmd):
        svc_spec, dest_spec = cmd.svc, cmd.dest
        if cmd.cmd == ADD_SERVICE:
            if svc_spec.key in self.services:
                raise ConfigError("Service already exists")
            svc = Service(svc_spec.protocol, svc_spec.addr, svc_spec.port, svc_spec.fwmark)
            self._set(svc, svc_spec)
            self.services[svc.key] = svc
        elif cmd.cmd == EDIT_SERVICE:
            self._set(self._svc(svc_spec, "No such service"), svc_spec)
        elif cmd.cmd == DEL_SERVICE:
            self._svc(svc_spec, "No such service")
            del self.services[svc_spec.key]
        elif cmd.cmd == FLUSH:
            self.services.clear()
        elif cmd.cmd == ZERO:
            targets = (self.services.values() if svc_spec is None
                       else [self._svc(svc_spec, "No such service")])
            for svc in targets:
                svc.stats.zero_out()
                for dest in svc.destinations:
                    dest.stats.zero_out()
        elif cmd.cmd == SET_TIMEOUT:
            tcp, tcpfin, udp = cmd.timeouts
            self.tcp = tcp or self.tcp
            self.tcpfin = tcpfin or self.tcpfin
            self.udp = udp or self.udp
        elif cmd.cmd in (ADD_DEST, EDIT_DEST, DEL_DEST):
            svc = self._svc(svc_spec, "Service not defined")
            dest = svc.find_dest(dest_spec.addr, dest_spec.port)
            if cmd.cmd == DEL_DEST:
                if dest is None:
                    raise ConfigError("No such destination")
                svc.destinations.remove(dest)
                return
            if dest_spec.l_threshold > dest_spec.u_threshold:
                raise ConfigError("Numerical result out of range")
            if cmd.cmd == ADD_DEST:
                if dest is not None:
                    raise ConfigError("Destination already exists")
                dest = Dest(svc, dest_spec.addr, dest_spec.port)
                svc.destinations.insert(0, dest)
            elif dest is None:
                raise ConfigError("No such destination")
            dest.update(dest_spec.weight, dest_spec.conn_flags, dest_spec.u_threshold,
                        dest_spec.l_threshold, dest_spec.tun_type, dest_spec.tun_port,
                        dest_spec.tun_flags, add=cmd.cmd == ADD_DEST)
        else:
            raise AssertionError(cmd.cmd)


ENGINES = [FakeEngine] + ([Engine] if Engine is not None else [])
ENGINE_IDS = ["fake"] + (["engine"] if Engine is not None else [])


def _services_db_ok():
    """Non-numeric listings name ports from /etc/services (Debian's netbase)."""
    try:
        return (socket.getservbyport(80, "tcp"), socket.getservbyport(8080, "tcp"),
                socket.getservbyport(53, "udp"), socket.getservbyport(443, "tcp"),
                socket.getservbyport(79, "tcp"), socket.getservbyport(5353, "udp")) == (
                    "http", "http-alt", "domain", "https", "finger", "mdns")
    except OSError:
        return False


SERVICES_DB_OK = _services_db_ok()


# ------------------------------------------------------------------ golden

def run_ipvsadm(engine, argv, stdin=None):
    """One recorded command through lvs.rules/lvs.listing: (stdout, stderr, rc)."""
    prog, args = argv[0], argv[1:]
    if prog == "ipvsadm-save":
        numeric = "-n" in args
        return "".join(line + "\n" for line in rules.save_lines(engine, numeric=numeric)), "", 0
    try:
        pa = rules.parse_cli(args)
    except ConfigError as e:
        return "", e.message + "\n", e.status
    try:
        if pa.command is not None:
            engine.apply(pa.command)
            return "", "", 0
        if pa.cmd_name == "restore":
            for line in stdin.splitlines():
                cmd = rules.parse_line(line)
                if cmd is not None:
                    engine.apply(cmd)
            return "", "", 0
        if pa.cmd_name == "save":
            return "".join(line + "\n" for line in rules.save_lines(engine, pa.numeric)), "", 0
        assert pa.cmd_name == "list", pa.cmd_name
        if pa.has(rules.OPTC_CONNECTION):
            out = listing.list_connections(engine, numeric=pa.numeric,
                                           persistent_conn=pa.has(rules.OPTC_PERSISTENTCONN))
        elif pa.has(rules.OPTC_TIMEOUT):
            out = listing.list_timeouts(engine)
        elif pa.has(rules.OPTC_DAEMON):
            out = ""  # no sync daemon
        else:
            out = listing.list_services(engine, numeric=pa.numeric, fmt=pa.fmt,
                                        exact=pa.exact, sort=pa.sort,
                                        service_key=pa.service_key())
        return out, "", 0
    except ConfigError as e:
        return "", e.message + "\n", e.status


def _needs_names(argv):
    """A listing or save without -n: it names ports (and would name hosts)."""
    if argv[0] == "ipvsadm-save":
        return "-n" not in argv
    try:
        pa = rules.parse_cli(argv[1:])
    except ConfigError:
        return False
    return pa.cmd_name in ("list", "save") and not pa.numeric


def _missing_schedulers(seq):
    """Schedulers a sequence sets up successfully that lvs.registry lacks."""
    from lvs.registry import scheduler_class
    missing = set()
    for step in seq["transcript"]:
        argv = step["argv"]
        if step["rc"] == 0 and "-s" in argv and argv.index("-s") + 1 < len(argv):
            name = argv[argv.index("-s") + 1]
            try:
                if name:
                    scheduler_class(name)
            except ConfigError:
                missing.add(name)
    return missing


@pytest.mark.parametrize("make_engine", ENGINES, ids=ENGINE_IDS)
@pytest.mark.parametrize("seq", GOLDEN["sequences"], ids=[s["name"] for s in GOLDEN["sequences"]])
def test_golden_sequence(seq, make_engine):
    if make_engine is Engine:
        missing = _missing_schedulers(seq)
        if missing:
            pytest.skip("lvs.engine has no scheduler %s yet" % ", ".join(sorted(missing)))
    engine = make_engine()
    steps = list(seq["transcript"]) + list(seq["final"].values())
    for step in steps:
        argv = step["argv"]
        if _needs_names(argv) and not SERVICES_DB_OK:
            continue
        got = run_ipvsadm(engine, argv, step.get("stdin"))
        assert got == (step["stdout"], step["stderr"], step["rc"]), " ".join(argv)


def test_golden_has_what_we_claim():
    names = {s["name"] for s in GOLDEN["sequences"]}
    assert {"tutorial-rr-g-i-m", "save-roundtrip", "restore-R", "listing-variants",
            "bad-malformed-address", "long-options"} <= names
    assert GOLDEN["kernel"]["ipvsadm_version"].startswith("ipvsadm v1.31")


# ------------------------------------------------------------------ grammar

# (command line, exit status, stderr without its newline) for a refused line;
# (command line, 0, the request sent) for an accepted one, the request as
# {"cmd", "svc": (key, sched_name, flags, timeout, netmask, pe_name),
#  "dest": (addr, port, fwd, weight, u_thr, l_thr, tun_type, tun_port,
#  tun_flags), "timeouts"}; the netmask in host order.
ORACLE_CASES = [
    ('-A -t 203.0.113.200:80 -s rr', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'rr', 0, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -p', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 360, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -p 600', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 600, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -p600', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 600, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 --persistent=600', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 600, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 --persistent', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 360, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -p -M 255.255.255.0', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 360, 4294967040, '')}),
    ('-A -t 203.0.113.200:80 -p -5', 255, '-5: unknown option'),
    ('-A -t 203.0.113.200:80 -p foo', 2, "invalid timeout value `foo' specified"),
    ('-A -t 203.0.113.200:80 -p 0', 2, "invalid timeout value `0' specified"),
    ('-A -t 203.0.113.200:80 -p 2678400', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 2678400, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -p 2678401', 2, "invalid timeout value `2678401' specified"),
    ("-A -t 203.0.113.200:80 -p ' 10'", 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 10, 4294967295, '')}),
    ("-A -t 203.0.113.200:80 -p '10 '", 2, "invalid timeout value `10 ' specified"),
    ('-A -t 203.0.113.200:80 -p -', 2, 'unexpected argument -'),
    ('-A -t 203.0.113.200:80 -ps', 2, "invalid timeout value `s' specified"),
    ('-A -t 203.0.113.200:80 -p=5', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 5, 4294967295, '')}),
    ('-At 203.0.113.200:80', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-At203.0.113.200:80', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -t=203.0.113.200:80', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-Ap -t 203.0.113.200:80', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 360, 4294967295, '')}),
    ('-A -t', 255, '-t: missing argument'),
    ('-At', 255, '-At: missing argument'),
    ('-A -t 203.0.113.200:80 extra', 2, 'unexpected argument extra'),
    ('extra -A -t 203.0.113.200:80', 2, 'unexpected argument extra'),
    ('-A -t 203.0.113.200:80 -w 3', 2, "Illegal 'weight' option with the 'add-service' command"),
    ('-a -t 203.0.113.200:80', 2, "You need to supply the 'real-server' option for the 'add-server' command"),
    ('-A -t 203.0.113.200', 2, 'Zero port specified for non-persistent service'),
    ('-A -t 203.0.113.200 -o', 2, 'Zero port specified for non-persistent service'),
    ('-A -t 203.0.113.200:80 -s rr -s wlc', 2, "multiple 'scheduler' options specified"),
    ('-A -A -t 203.0.113.200:80', 2, "invalid option `-A'"),
    ('-A -t 203.0.113.200:80 -L', 2, "invalid option `-L'"),
    ('-A -t 203.0.113.200:80 -h', 2, "invalid option `-h'"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11:99 -g', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 1, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11:99 -i', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 2, 1, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11:99 -m', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 99, 0, 1, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 1, 0, 0, 0, 0, 0)}),
    ('-a -r 192.0.2.11 -t 203.0.113.200:80 -m', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 0, 0, 1, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -w 65536', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 65536, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -w 2147483647', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 2147483647, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -w 2147483648', 2, 'illegal weight specified'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -w -1', 2, 'illegal weight specified'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -w 00012', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 12, 0, 0, 0, 0, 0)}),
    ("-a -t 203.0.113.200:80 -r 192.0.2.11 -w ' +7'", 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 7, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -w=5', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 5, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r192.0.2.11 -mw3', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 0, 3, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -w', 255, '-w: missing argument'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -x 10 -y 20', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 1, 10, 20, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -x -3', 2, 'illegal u_threshold specified'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -y 2147483648', 2, 'illegal l_threshold specified'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -w 3 -w 4 -j', 2, "multiple 'weight' options specified"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -j -w 3 -w 4', 255, '-j: unknown option'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -w x -j', 2, 'illegal weight specified'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11:0 -m', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 0, 0, 1, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11: -m', 2, 'illegal real server address[:port] specified'),
    ('-a -t 203.0.113.200:80 -r 1234', 2, 'illegal real server address[:port] specified'),
    ('-a -t 203.0.113.200:http -r 192.0.2.11:domain -m', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 53, 0, 1, 0, 0, 0, 0, 0)}),
    ('-a -u 203.0.113.200:53 -r 192.0.2.11:domain -m', 0, {'cmd': 'add-dest', 'svc': ((17, '203.0.113.200', 53), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 53, 0, 1, 0, 0, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 --weight 5 --u-threshold 7 --l-threshold 2 --masquerading', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 0, 5, 7, 2, 0, 0, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -g -i', 2, "multiple 'forwarding-method' options specified"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 --gatewaying --masquerading', 2, "multiple 'forwarding-method' options specified"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -p', 2, "Illegal 'persistent' option with the 'add-server' command"),
    ('-A -f 0', 2, "invalid fwmark value `0' specified"),
    ('-A -f 5', 0, {'cmd': 'add-service', 'svc': (('f', 5, 2), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -f 007', 0, {'cmd': 'add-service', 'svc': (('f', 7, 2), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -f 4294967295', 0, {'cmd': 'add-service', 'svc': (('f', 4294967295, 2), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -f 4294967296', 2, "invalid fwmark value `4294967296' specified"),
    ('-A -f -7', 2, "invalid fwmark value `-7' specified"),
    ('-A -f 7x', 2, "invalid fwmark value `7x' specified"),
    ('-A -f 5 -M 255.255.255.0 -p 10', 0, {'cmd': 'add-service', 'svc': (('f', 5, 2), 'wlc', 1, 10, 4294967040, '')}),
    ('-A -f 3 -o', 0, {'cmd': 'add-service', 'svc': (('f', 3, 2), 'wlc', 4, 0, 4294967295, '')}),
    ('-A -f 5 -t 203.0.113.200:80', 2, "multiple 'service-address' options specified"),
    ('-A -t 203.0.113.200:80 -f 5', 2, "multiple 'service-address' options specified"),
    ('-A --tcp-service 203.0.113.200:80 --udp-service 203.0.113.200:80', 2, "multiple 'service-address' options specified"),
    ('-a -f 5 -r 192.0.2.11:http -g', 0, {'cmd': 'add-dest', 'svc': (('f', 5, 2), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 1, 0, 0, 0, 0, 0)}),
    ('-a -f 5 -r 192.0.2.11:http -m', 0, {'cmd': 'add-dest', 'svc': (('f', 5, 2), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 0, 1, 0, 0, 0, 0, 0)}),
    ('-a -f 5 -r 192.0.2.11 -m', 0, {'cmd': 'add-dest', 'svc': (('f', 5, 2), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 0, 0, 1, 0, 0, 0, 0, 0)}),
    ('-A -t 203.0.113.200:80 -b sh-port', 2, "incompatible scheduler flag `sh-port'"),
    ('-A -t 203.0.113.200:80 -s sh -b sh-port,flag-3', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'sh', 48, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -b flag-1 -s sh', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'sh', 8, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -b sh-port -s sh', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'sh', 16, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -s mh -b mh-fallback,mh-port', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'mh', 24, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -s mh -b sh-port', 2, "incompatible scheduler flag `sh-port'"),
    ('-A -t 203.0.113.200:80 -s mh -b bogus', 2, "invalid scheduler flag `bogus'"),
    ('-A -t 203.0.113.200:80 -s sh -b SH-PORT', 2, "invalid scheduler flag `SH-PORT'"),
    ('-A -t 203.0.113.200:80 -s sh -b sh-port,,sh-fallback', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'sh', 24, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -s rr -b flag-1,flag-2,flag-3', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'rr', 56, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -s sh -b sh-fallback -b sh-port', 2, "multiple 'sched-flags' options specified"),
    ('-A -t 203.0.113.200:80 --sched-flags=flag-2', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 16, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -b ""', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -b bogus extra', 2, 'unexpected argument extra'),
    ('-A -t 203.0.113.200 -b bogus', 2, "invalid scheduler flag `bogus'"),
    ('-D -t 203.0.113.200:80 -b flag-1', 2, "Illegal 'sched-flags' option with the 'delete-service' command"),
    ('--set 1 2 3 -b bogus', 2, "invalid scheduler flag `bogus'"),
    ('-E -t 203.0.113.200:80 -s sh -b sh-port', 0, {'cmd': 'edit-service', 'svc': ((6, '203.0.113.200', 80), 'sh', 16, 0, 4294967295, '')}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type gue', 2, "You need to supply the 'tun-port' option for the 'gue' tunnel type"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type gue --tun-port 6080 --tun-csum', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 2, 1, 0, 0, 1, 6080, 1)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type gue --tun-port 6080 --tun-csum --tun-remcsum', 2, "The option 'tun-remcsum' conflicts with the 'tun-csum' option in the 'gue' tunnel type"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 --ipip --tun-type gue --tun-port 65535 --tun-nocsum', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 2, 1, 0, 0, 1, 65535, 0)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 --ipip --tun-type gue --tun-port 65536', 2, 'illegal tunnel port specified'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type gue --tun-port http', 2, 'illegal tunnel port specified'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type gre --tun-csum', 0, {'cmd': 'add-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 2, 1, 0, 0, 2, 0, 1)}),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type gre --tun-port 5', 2, "Illegal 'tun-port' option with the 'gre' tunnel type"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type gre --tun-remcsum', 2, "Illegal 'tun-remcsum' option with the 'gre' tunnel type"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type gre --tun-nocsum --tun-csum', 2, "The option 'tun-csum' conflicts with the 'tun-nocsum' option in the 'gre' tunnel type"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type ipip --tun-csum', 2, "Illegal 'tun-csum' option with the 'ipip' tunnel type"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type foo', 2, 'illegal tunnel type specified'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-nocsum', 2, "Illegal 'tun-nocsum' option with the 'ipip' tunnel type"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-port 5', 2, "Illegal 'tun-port' option with the 'ipip' tunnel type"),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-port 0', 2, 'illegal tunnel port specified'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -m --tun-type ipip', 2, 'Tunnel options conflict with forward method'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 --tun-type ipip', 2, 'Tunnel options conflict with forward method'),
    ('-a -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type gue --tun-port 9 --tun-remcsum --tun-type gre', 2, "multiple 'tun-type' options specified"),
    ('-e -t 203.0.113.200:80 -r 192.0.2.11 -i --tun-type gre', 0, {'cmd': 'edit-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 2, 1, 0, 0, 2, 0, 0)}),
    ('-e -t 203.0.113.200:80 -r 192.0.2.11', 0, {'cmd': 'edit-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 1, 0, 0, 0, 0, 0)}),
    ('-d -t 203.0.113.200:80 -r 192.0.2.11:90 -m', 2, "Illegal 'forwarding-method' option with the 'delete-server' command"),
    ('-d -t 203.0.113.200:80 -r 192.0.2.11:90', 0, {'cmd': 'del-dest', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 90, 3, 1, 0, 0, 0, 0, 0)}),
    ('-d -f 7 -r 192.0.2.11', 0, {'cmd': 'del-dest', 'svc': (('f', 7, 2), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 0, 3, 1, 0, 0, 0, 0, 0)}),
    ('--set 1 2', 2, '--set option requires 3 timeout values'),
    ('--set 1 2 3 4', 2, 'unexpected argument 4'),
    ('--set 1 2 x', 2, "invalid timeout value `x' specified"),
    ('--set 1 2 3', 0, {'cmd': 'set-timeout', 'timeouts': (1, 2, 3)}),
    ('--set 0 0 0', 0, {'cmd': 'set-timeout', 'timeouts': (0, 0, 0)}),
    ('--set 2678401 1 1', 2, "invalid timeout value `2678401' specified"),
    ('--set -1 1 1', 255, '-1: unknown option'),
    ('--set', 2, '--set option requires 3 timeout values'),
    ('--set 1 2 3 -t 203.0.113.200:80', 2, "Illegal 'service-address' option with the 'set' command"),
    ('-D -t 203.0.113.200:80 -s rr', 2, "Illegal 'scheduler' option with the 'delete-service' command"),
    ('-D -f 7', 0, {'cmd': 'del-service', 'svc': (('f', 7, 2), '', 0, 0, 4294967295, '')}),
    ('-Z -t 203.0.113.200:80', 0, {'cmd': 'zero', 'svc': ((6, '203.0.113.200', 80), '', 0, 0, 4294967295, '')}),
    ('-Z -f 7', 0, {'cmd': 'zero', 'svc': (('f', 7, 2), '', 0, 0, 4294967295, '')}),
    ('-Z', 0, {'cmd': 'zero'}),
    ('-Z -t 203.0.113.200:80 -s rr', 2, "Illegal 'scheduler' option with the 'zero' command"),
    ('-C', 0, {'cmd': 'flush'}),
    ('-C -t 203.0.113.200:80', 2, "Illegal 'service-address' option with the 'flush' command"),
    ('-C extra', 2, 'unexpected argument extra'),
    ('-A -u 203.0.113.200:53 -o', 0, {'cmd': 'add-service', 'svc': ((17, '203.0.113.200', 53), 'wlc', 4, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:53 -o', 2, 'One-Packet Scheduling is only for UDP virtual services'),
    ('-A -t 203.0.113.200:80 -s rr --ops', 2, 'One-Packet Scheduling is only for UDP virtual services'),
    ('-A -t 203.0.113.200:80 --ops=1', 255, '--ops=1: option does not take an argument'),
    ('--add-service --tcp-service=203.0.113.200:80', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('--add-serv -t 203.0.113.200:80', 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information."),
    ('-A -tcp-service 203.0.113.200:80', 2, 'illegal virtual server address[:port] specified'),
    ('-A -t 203.0.113.200:80 --scheduler', 255, '--scheduler: missing argument'),
    ('-A -t 203.0.113.200:80 --scheduler=rr --persistent=10 --netmask=255.0.0.0', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'rr', 1, 10, 4278190080, '')}),
    ('-A -t 203.0.113.200:80 -M 255.255.0.0', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294901760, '')}),
    ('-A -t 203.0.113.200:80 -p -M 203.0.113', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 360, 3405774961, '')}),
    ('-A -t 203.0.113.200:80 -p -M bogus..', 2, 'illegal virtual server persistent mask specified'),
    ('-A -t 203.0.113.200:80 -M 0.0.0.0 -p 5', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 1, 5, 0, '')}),
    ('-A -t 203.0.113.200:80 --persistent 50 --netmask', 255, '--netmask: missing argument'),
    ('-A -t 203.0.113.200:80 --pe sip', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, 'sip')}),
    ('-A -t 203.0.113.200:80 --pe=', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:http', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -u 203.0.113.200:domain', 0, {'cmd': 'add-service', 'svc': ((17, '203.0.113.200', 53), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:0x50', 2, 'illegal virtual server address[:port] specified'),
    ('-A -t 203.0.113.200:+80', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:', 2, 'illegal virtual server address[:port] specified'),
    ('-A -t :80', 2, 'illegal virtual server address[:port] specified'),
    ('-A -t 203.0.113.200:65536', 2, 'illegal virtual server address[:port] specified'),
    ('-A -t 203.0.113.200:80:90', 2, 'illegal virtual server address[:port] specified'),
    ('-A -t 0313.0.113.200:80', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -t 0xcb.0.113.200:80', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ("-A -t '203.0.113.200 :80'", 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ("-A -t ' 203.0.113.200:80'", 2, 'illegal virtual server address[:port] specified'),
    ('-A -t [203.0.113.200]:80 -p', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 0), 'wlc', 1, 360, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -6', 2, '-6 used before -f\n'),
    ('-A -t 203.0.113.200:80 -s ""', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -s averyveryverylongschedulername', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'averyveryverylo', 0, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -sr', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'r', 0, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -sp rr', 2, 'unexpected argument rr'),
    ('-A -t 203.0.113.200:80 -n', 2, "Illegal 'numeric' option with the 'add-service' command"),
    ('-A -t 203.0.113.200:80 -x 5', 2, "Illegal 'u-threshold' option with the 'add-service' command"),
    ('-A -t 203.0.113.200:80 -r 192.0.2.11', 2, "Illegal 'real-server' option with the 'add-service' command"),
    ('-A -t 203.0.113.200:80 -c', 2, "Illegal 'connection' option with the 'add-service' command"),
    ('-A -t 203.0.113.200:80 -p 30 -p 40', 2, "multiple 'persistent' options specified"),
    ('-A -t 203.0.113.200:80 -s rr --sched-flags', 255, '--sched-flags: missing argument'),
    ('-A -t 203.0.113.200:80 ---', 255, '---: unknown option'),
    ('-A -t 203.0.113.200:80 --=x', 255, '--=x: unknown option'),
    ('-A -t 203.0.113.200:80 -', 2, 'unexpected argument -'),
    ('-A -t 203.0.113.200:80 --', 0, {'cmd': 'add-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-A -t 203.0.113.200:80 -- -s', 2, 'unexpected argument -s'),
    ('-- -A -t 203.0.113.200:80', 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information."),
    ('-jA', 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information."),
    ('-Aj -t 203.0.113.200:80', 255, '-Aj: unknown option'),
    ('-A -t 203.0.113.200:80 -oj', 255, '-oj: unknown option'),
    ('--foo', 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information."),
    ('-A', 2, "You need to supply the 'service-address' option for the 'add-service' command"),
    ('-E -t 203.0.113.200:80', 0, {'cmd': 'edit-service', 'svc': ((6, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-A --sctp-service 203.0.113.200:80', 0, {'cmd': 'add-service', 'svc': ((132, '203.0.113.200', 80), 'wlc', 0, 0, 4294967295, '')}),
    ('-a --sctp-service 203.0.113.200:80 -r 192.0.2.11 -g', 0, {'cmd': 'add-dest', 'svc': ((132, '203.0.113.200', 80), '', 0, 0, 4294967295, ''), 'dest': ('192.0.2.11', 80, 3, 1, 0, 0, 0, 0, 0)}),
]


def _command_view(cmd):
    got = {"cmd": cmd.cmd}
    if cmd.svc is not None:
        s = cmd.svc
        key = s.key if s.fwmark else (s.protocol, socket.inet_ntoa(s.addr), s.port)
        got["svc"] = (key, s.sched_name, s.flags, s.timeout, s.netmask, s.pe_name)
    if cmd.dest is not None:
        d = cmd.dest
        got["dest"] = (socket.inet_ntoa(d.addr), d.port, d.conn_flags, d.weight,
                       d.u_threshold, d.l_threshold, d.tun_type, d.tun_port, d.tun_flags)
    if cmd.timeouts is not None:
        got["timeouts"] = tuple(cmd.timeouts)
    return got


@pytest.mark.parametrize("line,status,expected", ORACLE_CASES,
                         ids=[c[0] for c in ORACLE_CASES])
def test_parse_like_ipvsadm(line, status, expected):
    argv = shlex.split(line)
    if status:
        with pytest.raises(ConfigError) as info:
            rules.parse_args(argv)
        assert (info.value.status, info.value.message) == (status, expected)
    else:
        assert _command_view(rules.parse_args(argv)) == expected


def test_defaults_and_rewrites():
    # Default scheduler wlc, weight 1, forwarding -g; -p alone is 360 s in
    # the 1.31 binary (IPVS_SVC_PERSISTENT_TIMEOUT), whatever the man page says.
    cmd = rules.parse_args(["-A", "-t", "203.0.113.200:80", "-p"])
    assert (cmd.svc.sched_name, cmd.svc.timeout, cmd.svc.netmask) == ("wlc", 360, 0xFFFFFFFF)
    cmd = rules.parse_args(["-a", "-t", "203.0.113.200:80", "-r", "192.0.2.11:10"])
    assert (cmd.dest.port, cmd.dest.conn_flags, cmd.dest.weight) == (80, 3, 1)
    cmd = rules.parse_args(["-a", "-t", "203.0.113.200:80", "-r", "192.0.2.11:10", "-m"])
    assert cmd.dest.port == 10
    # A real server without a port takes the service's port as known at
    # that point of the line, 0 for a fwmark service.
    assert rules.parse_args(["-a", "-t", "203.0.113.200:80", "-r", "192.0.2.11", "-m"]).dest.port == 80
    assert rules.parse_args(["-a", "-r", "192.0.2.11", "-t", "203.0.113.200:80", "-m"]).dest.port == 0
    assert rules.parse_args(["-a", "-f", "5", "-r", "192.0.2.11"]).dest.port == 0
    # Service names for ports, resolved per protocol.
    assert rules.parse_args(["-A", "-u", "203.0.113.200:domain"]).svc.port == 53
    # The command word "ipvsadm" may stand in front.
    assert rules.parse_args(["ipvsadm", "-C"]).cmd == FLUSH


def test_parse_line():
    assert rules.parse_line("") is None
    assert rules.parse_line("   \t\r\n") is None
    assert rules.parse_line("# a comment") is None
    assert rules.parse_line("  # indented comment") is None
    cmd = rules.parse_line("ipvsadm -A -t 203.0.113.200:80 -s rr\n")
    assert (cmd.cmd, cmd.svc.sched_name) == (ADD_SERVICE, "rr")
    cmd = rules.parse_line("-a\t-t 203.0.113.200:80  -r 192.0.2.11:8080 -m -w 3\r\n")
    assert (cmd.dest.port, cmd.dest.weight) == (8080, 3)
    # ipvsadm -R knows no quoting and no trailing comments.
    with pytest.raises(ConfigError) as info:
        rules.parse_line('-A -t "203.0.113.200:80"')
    assert info.value.message == "illegal virtual server address[:port] specified"
    with pytest.raises(ConfigError) as info:
        rules.parse_line("-A -t 203.0.113.200:80 # web")
    assert (info.value.message, info.value.status) == ("unexpected argument #", 2)


def test_parse_cli_listing_options():
    pa = rules.parse_cli(["-L", "-n", "--stats", "--rate", "--exact", "--nosort"])
    assert (pa.cmd_name, pa.fmt, pa.numeric, pa.exact, pa.sort) == ("list", "stats", True, True, False)
    pa = rules.parse_cli(["-Ln", "-t", "203.0.113.200:80", "--thresholds"])
    assert (pa.fmt, pa.service_key()) == ("thresholds", (6, bytes([203, 0, 113, 200]), 80))
    assert rules.parse_cli(["-L", "-f", "7"]).service_key() == ("f", 7, 2)
    assert rules.parse_cli(["-h"]).cmd_name == rules.HELP
    with pytest.raises(ConfigError) as info:
        rules.parse_cli(["-L", "-c", "--stats"])
    assert (info.value.message, info.value.status) == ("options conflicts in the list command", 2)
    with pytest.raises(ConfigError) as info:
        rules.parse_cli(["-L", "-c", "--timeout"])
    assert info.value.message == ("The option 'timeout' conflicts with the 'connection' "
                                  "option in the 'list' command")
    with pytest.raises(ConfigError):
        rules.parse_args(["-L", "-n"])  # a listing is no rule


def test_ipv6_parsed_as_ipvsadm():
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    cmd = rules.parse_args(["-A", "-t", "[2001:db8::1]:80", "-p", "-M", "64"])
    assert (cmd.svc.addr, cmd.svc.port, cmd.svc.netmask, cmd.svc.af) == (v6, 80, 64, 10)
    cmd = rules.parse_args(["-A", "-f", "5", "-6"])
    assert (cmd.svc.key, cmd.svc.addr, cmd.svc.netmask) == (("f", 5, 10), bytes(16), 128)
    # unbracketed, the whole text is the address (no port)
    cmd = rules.parse_args(["-a", "-t", "[2001:db8::1]:80", "-r", "2001:db8::12:80", "-m"])
    assert (cmd.dest.addr, cmd.dest.port) == (socket.inet_pton(socket.AF_INET6, "2001:db8::12:80"), 80)
    for argv, message in (
            (["-A", "-t", "[2001:db8::1]", "-s", "rr"],
             "illegal virtual server address[:port] specified"),
            (["-A", "-6", "-f", "1"], "-6 used before -f\n"),
            (["-A", "-t", "[2001:db8::1]:80", "-p", "-M", "129"], "illegal ipv6 netmask specified"),
            (["-a", "-t", "[2001:db8::1]:80", "-r", "192.0.2.11:80", "-m"],
             "Different address family is allowed only for tunneling servers")):
        with pytest.raises(ConfigError) as info:
            rules.parse_args(argv)
        assert (info.value.message, info.value.status) == (message, 2)


# ------------------------------------------------------------------ listings

G = 1 << 32
LISTING_SPEC = [
    dict(proto=6, addr="203.0.113.200", port=80, sched="wlc", flags=0x1, timeout=300,
         netmask=0xFFFFFF00,
         stats=(123456789, 1000000000, 99999999999, 100000000000000, 5,
                1, 100000000, 999999999, 1000000000, 99999999999999),
         dests=[  # kernel order: newest first
             dict(addr="192.0.2.12", port=8080, fwd=0, weight=3, u=100, l=50, active=5,
                  inact=7, persist=2,
                  stats=(G + 7, 99999999, 100000000, 999999999, 1000000000,
                         10, 20, 30, 40, 50)),
             dict(addr="192.0.2.11", port=80, fwd=0, weight=2, active=1),
             dict(addr="192.0.2.11", port=79, fwd=0, weight=1, inact=3,
                  stats=(1, 2, 3, 99999999999, 100000000000,
                         0, 0, 0, 123456789, 0)),
         ]),
    dict(proto=17, addr="203.0.113.200", port=53, sched="rr", flags=0x4,
         dests=[dict(addr="198.51.100.7", port=53, fwd=0, weight=2147483647)]),
    dict(fwmark=4294967295, sched="sh", flags=0x1 | 0x20, timeout=60, pe="sip",
         dests=[dict(addr="192.0.2.14", port=0, fwd=3, weight=1)]),
    dict(fwmark=7, sched="mh", flags=0x18,
         dests=[dict(addr="192.0.2.13", port=0, fwd=2, weight=0, tun_type=1,
                     tun_port=6080, tun_flags=1),
                dict(addr="192.0.2.12", port=0, fwd=2, weight=4, tun_type=2, tun_flags=0),
                dict(addr="192.0.2.15", port=0, fwd=2, weight=4, tun_type=2, tun_flags=1),
                dict(addr="192.0.2.11", port=0, fwd=2, weight=5, tun_type=0)]),
    dict(proto=6, addr="198.51.100.9", port=443, sched="rr", flags=0x18,
         dests=[dict(addr="192.0.2.20", port=443, fwd=3, weight=1, tun_type=1,
                     tun_port=5555, tun_flags=2)]),
    dict(proto=6, addr="203.0.113.7", port=0, sched="lc", flags=0x1, timeout=2678400,
         netmask=0, dests=[]),
    dict(proto=6, addr="203.0.113.201", port=80, sched="sh", flags=0x8 | 0x10 | 0x4, dests=[]),
]
LISTING_ARGVS = [
    "-Ln", "-L", "-Ln --stats", "-Ln --stats --exact", "-Ln --rate", "-Ln --rate --exact",
    "-Ln --thresholds", "-Ln --persistent-conn", "-Ln --tun-info", "-Ln --nosort",
    "-Ln --nosort --stats", "-Sn", "-S",
]
CONN_SPEC = [  # (proto, caddr, cport, vaddr, vport, daddr, dport, state, seconds left)
    (6, "198.51.100.2", 40000, "203.0.113.200", 80, "192.0.2.11", 80, "ESTABLISHED", 899.75),
    (6, "198.51.100.3", 40001, "203.0.113.200", 80, "192.0.2.12", 8080, "FIN_WAIT", 119.999),
    (6, "198.51.100.3", 0, "203.0.113.200", 80, "192.0.2.12", 8080, "NONE", 360.0),
    (17, "198.51.100.4", 5353, "203.0.113.200", 53, "198.51.100.7", 53, "UDP", 0.5),
    (0, "198.51.100.0", 0, "0.0.0.7", 7, "192.0.2.13", 0, "NONE", 6000.0),
    (6, "198.51.100.5", 65535, "203.0.113.200", 443, "192.0.2.20", 443, "SYN_RECV", -3.0),
]
CONN_ARGVS = ["-Lnc", "-Lc", "-Lnc --persistent-conn"]


# ipvsadm 1.31's output for LISTING_SPEC / CONN_SPEC (the services handed to
# it in creation order, or in ip_vs_svc_hashkey order for --nosort).
ORACLE_LISTINGS = {
    '-Ln': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port Scheduler Flags\n'
        '  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n'
        'FWM  -1 sh () persistent 60 pe sip\n'
        '  -> 192.0.2.14:0                 Route   1      0          0         \n'
        'TCP  198.51.100.9:443 rr (flag-1,flag-2)\n'
        '  -> 192.0.2.20:443               Route   1      0          0         \n'
        'TCP  203.0.113.7:0 lc persistent 2678400 mask 0.0.0.0\n'
        'TCP  203.0.113.200:80 wlc persistent 300 mask 255.255.255.0\n'
        '  -> 192.0.2.11:79                Masq    1      0          3         \n'
        '  -> 192.0.2.11:80                Masq    2      1          0         \n'
        '  -> 192.0.2.12:8080              Masq    3      5          7         \n'
        'TCP  203.0.113.201:80 sh (sh-fallback,sh-port) ops\n'
        'UDP  203.0.113.200:53 rr ops\n'
        '  -> 198.51.100.7:53              Masq    2147483647 0          0         \n'
        'FWM  7 mh (mh-fallback,mh-port)\n'
        '  -> 192.0.2.11:0                 Tunnel  5      0          0         \n'
        '  -> 192.0.2.12:0                 Tunnel  4      0          0         \n'
        '  -> 192.0.2.13:0                 Tunnel  0      0          0         \n'
        '  -> 192.0.2.15:0                 Tunnel  4      0          0         \n'
    ),
    '-L': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port Scheduler Flags\n'
        '  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n'
        'FWM  -1 sh () persistent 60 pe sip\n'
        '  -> 192.0.2.14:0                 Route   1      0          0         \n'
        'TCP  198.51.100.9:https rr (flag-1,flag-2)\n'
        '  -> 192.0.2.20:https             Route   1      0          0         \n'
        'TCP  203.0.113.7:0 lc persistent 2678400 mask 0.0.0.0\n'
        'TCP  203.0.113.200:http wlc persistent 300 mask 255.255.255.0\n'
        '  -> 192.0.2.11:finger            Masq    1      0          3         \n'
        '  -> 192.0.2.11:http              Masq    2      1          0         \n'
        '  -> 192.0.2.12:http-alt          Masq    3      5          7         \n'
        'TCP  203.0.113.201:http sh (sh-fallback,sh-port) ops\n'
        'UDP  203.0.113.200:domain rr ops\n'
        '  -> 198.51.100.7:domain          Masq    2147483647 0          0         \n'
        'FWM  7 mh (mh-fallback,mh-port)\n'
        '  -> 192.0.2.11:0                 Tunnel  5      0          0         \n'
        '  -> 192.0.2.12:0                 Tunnel  4      0          0         \n'
        '  -> 192.0.2.13:0                 Tunnel  0      0          0         \n'
        '  -> 192.0.2.15:0                 Tunnel  4      0          0         \n'
    ),
    '-Ln --stats': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n'
        '  -> RemoteAddress:Port\n'
        'FWM  -1                                  0        0        0        0        0\n'
        '  -> 192.0.2.14:0                        0        0        0        0        0\n'
        'TCP  198.51.100.9:443                    0        0        0        0        0\n'
        '  -> 192.0.2.20:443                      0        0        0        0        0\n'
        'TCP  203.0.113.7:0                       0        0        0        0        0\n'
        'TCP  203.0.113.200:80              123456K    1000M   99999M     100T        5\n'
        '  -> 192.0.2.11:79                       1        2        3   99999M     100G\n'
        '  -> 192.0.2.11:80                       0        0        0        0        0\n'
        '  -> 192.0.2.12:8080                     7 99999999  100000K  999999K    1000M\n'
        'TCP  203.0.113.201:80                    0        0        0        0        0\n'
        'UDP  203.0.113.200:53                    0        0        0        0        0\n'
        '  -> 198.51.100.7:53                     0        0        0        0        0\n'
        'FWM  7                                   0        0        0        0        0\n'
        '  -> 192.0.2.11:0                        0        0        0        0        0\n'
        '  -> 192.0.2.12:0                        0        0        0        0        0\n'
        '  -> 192.0.2.13:0                        0        0        0        0        0\n'
        '  -> 192.0.2.15:0                        0        0        0        0        0\n'
    ),
    '-Ln --stats --exact': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n'
        '  -> RemoteAddress:Port\n'
        'FWM  -1                                  0        0        0        0        0\n'
        '  -> 192.0.2.14:0                        0        0        0        0        0\n'
        'TCP  198.51.100.9:443                    0        0        0        0        0\n'
        '  -> 192.0.2.20:443                      0        0        0        0        0\n'
        'TCP  203.0.113.7:0                       0        0        0        0        0\n'
        'TCP  203.0.113.200:80             123456789 1000000000 99999999999 100000000000000        5\n'
        '  -> 192.0.2.11:79                       1        2        3 99999999999 100000000000\n'
        '  -> 192.0.2.11:80                       0        0        0        0        0\n'
        '  -> 192.0.2.12:8080                     7 99999999 100000000 999999999 1000000000\n'
        'TCP  203.0.113.201:80                    0        0        0        0        0\n'
        'UDP  203.0.113.200:53                    0        0        0        0        0\n'
        '  -> 198.51.100.7:53                     0        0        0        0        0\n'
        'FWM  7                                   0        0        0        0        0\n'
        '  -> 192.0.2.11:0                        0        0        0        0        0\n'
        '  -> 192.0.2.12:0                        0        0        0        0        0\n'
        '  -> 192.0.2.13:0                        0        0        0        0        0\n'
        '  -> 192.0.2.15:0                        0        0        0        0        0\n'
    ),
    '-Ln --rate': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n'
        '  -> RemoteAddress:Port\n'
        'FWM  -1                                  0        0        0        0        0\n'
        '  -> 192.0.2.14:0                        0        0        0        0        0\n'
        'TCP  198.51.100.9:443                    0        0        0        0        0\n'
        '  -> 192.0.2.20:443                      0        0        0        0        0\n'
        'TCP  203.0.113.7:0                       0        0        0        0        0\n'
        'TCP  203.0.113.200:80                    1  100000K  999999K    1000M   99999G\n'
        '  -> 192.0.2.11:79                       0        0        0  123456K        0\n'
        '  -> 192.0.2.11:80                       0        0        0        0        0\n'
        '  -> 192.0.2.12:8080                    10       20       30       40       50\n'
        'TCP  203.0.113.201:80                    0        0        0        0        0\n'
        'UDP  203.0.113.200:53                    0        0        0        0        0\n'
        '  -> 198.51.100.7:53                     0        0        0        0        0\n'
        'FWM  7                                   0        0        0        0        0\n'
        '  -> 192.0.2.11:0                        0        0        0        0        0\n'
        '  -> 192.0.2.12:0                        0        0        0        0        0\n'
        '  -> 192.0.2.13:0                        0        0        0        0        0\n'
        '  -> 192.0.2.15:0                        0        0        0        0        0\n'
    ),
    '-Ln --rate --exact': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n'
        '  -> RemoteAddress:Port\n'
        'FWM  -1                                  0        0        0        0        0\n'
        '  -> 192.0.2.14:0                        0        0        0        0        0\n'
        'TCP  198.51.100.9:443                    0        0        0        0        0\n'
        '  -> 192.0.2.20:443                      0        0        0        0        0\n'
        'TCP  203.0.113.7:0                       0        0        0        0        0\n'
        'TCP  203.0.113.200:80                    1 100000000 999999999 1000000000 99999999999999\n'
        '  -> 192.0.2.11:79                       0        0        0 123456789        0\n'
        '  -> 192.0.2.11:80                       0        0        0        0        0\n'
        '  -> 192.0.2.12:8080                    10       20       30       40       50\n'
        'TCP  203.0.113.201:80                    0        0        0        0        0\n'
        'UDP  203.0.113.200:53                    0        0        0        0        0\n'
        '  -> 198.51.100.7:53                     0        0        0        0        0\n'
        'FWM  7                                   0        0        0        0        0\n'
        '  -> 192.0.2.11:0                        0        0        0        0        0\n'
        '  -> 192.0.2.12:0                        0        0        0        0        0\n'
        '  -> 192.0.2.13:0                        0        0        0        0        0\n'
        '  -> 192.0.2.15:0                        0        0        0        0        0\n'
    ),
    '-Ln --thresholds': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn \n'
        '  -> RemoteAddress:Port\n'
        'FWM  -1 sh () persistent 60 pe sip\n'
        '  -> 192.0.2.14:0                 0          0          0          0         \n'
        'TCP  198.51.100.9:443 rr (flag-1,flag-2)\n'
        '  -> 192.0.2.20:443               0          0          0          0         \n'
        'TCP  203.0.113.7:0 lc persistent 2678400 mask 0.0.0.0\n'
        'TCP  203.0.113.200:80 wlc persistent 300 mask 255.255.255.0\n'
        '  -> 192.0.2.11:79                0          0          0          3         \n'
        '  -> 192.0.2.11:80                0          0          1          0         \n'
        '  -> 192.0.2.12:8080              100        50         5          7         \n'
        'TCP  203.0.113.201:80 sh (sh-fallback,sh-port) ops\n'
        'UDP  203.0.113.200:53 rr ops\n'
        '  -> 198.51.100.7:53              0          0          0          0         \n'
        'FWM  7 mh (mh-fallback,mh-port)\n'
        '  -> 192.0.2.11:0                 0          0          0          0         \n'
        '  -> 192.0.2.12:0                 0          0          0          0         \n'
        '  -> 192.0.2.13:0                 0          0          0          0         \n'
        '  -> 192.0.2.15:0                 0          0          0          0         \n'
    ),
    '-Ln --persistent-conn': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn \n'
        '  -> RemoteAddress:Port\n'
        'FWM  -1 sh () persistent 60 pe sip\n'
        '  -> 192.0.2.14:0                 1         0           0          0         \n'
        'TCP  198.51.100.9:443 rr (flag-1,flag-2)\n'
        '  -> 192.0.2.20:443               1         0           0          0         \n'
        'TCP  203.0.113.7:0 lc persistent 2678400 mask 0.0.0.0\n'
        'TCP  203.0.113.200:80 wlc persistent 300 mask 255.255.255.0\n'
        '  -> 192.0.2.11:79                1         0           0          3         \n'
        '  -> 192.0.2.11:80                2         0           1          0         \n'
        '  -> 192.0.2.12:8080              3         2           5          7         \n'
        'TCP  203.0.113.201:80 sh (sh-fallback,sh-port) ops\n'
        'UDP  203.0.113.200:53 rr ops\n'
        '  -> 198.51.100.7:53              2147483647 0           0          0         \n'
        'FWM  7 mh (mh-fallback,mh-port)\n'
        '  -> 192.0.2.11:0                 5         0           0          0         \n'
        '  -> 192.0.2.12:0                 4         0           0          0         \n'
        '  -> 192.0.2.13:0                 0         0           0          0         \n'
        '  -> 192.0.2.15:0                 4         0           0          0         \n'
    ),
    '-Ln --tun-info': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port Scheduler Flags\n'
        '  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n'
        'FWM  -1 sh () persistent 60 pe sip\n'
        '  -> 192.0.2.14:0                 Route   n/a           1      0          0         \n'
        'TCP  198.51.100.9:443 rr (flag-1,flag-2)\n'
        '  -> 192.0.2.20:443               Route   n/a           1      0          0         \n'
        'TCP  203.0.113.7:0 lc persistent 2678400 mask 0.0.0.0\n'
        'TCP  203.0.113.200:80 wlc persistent 300 mask 255.255.255.0\n'
        '  -> 192.0.2.11:79                Masq    n/a           1      0          3         \n'
        '  -> 192.0.2.11:80                Masq    n/a           2      1          0         \n'
        '  -> 192.0.2.12:8080              Masq    n/a           3      5          7         \n'
        'TCP  203.0.113.201:80 sh (sh-fallback,sh-port) ops\n'
        'UDP  203.0.113.200:53 rr ops\n'
        '  -> 198.51.100.7:53              Masq    n/a           2147483647 0          0         \n'
        'FWM  7 mh (mh-fallback,mh-port)\n'
        '  -> 192.0.2.11:0                 Tunnel  ipip          5      0          0         \n'
        '  -> 192.0.2.12:0                 Tunnel  gre:-c        4      0          0         \n'
        '  -> 192.0.2.13:0                 Tunnel  gue:6080:+c   0      0          0         \n'
        '  -> 192.0.2.15:0                 Tunnel  gre:+c        4      0          0         \n'
    ),
    '-Ln --nosort': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port Scheduler Flags\n'
        '  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n'
        'TCP  203.0.113.7:0 lc persistent 2678400 mask 0.0.0.0\n'
        'TCP  203.0.113.200:80 wlc persistent 300 mask 255.255.255.0\n'
        '  -> 192.0.2.12:8080              Masq    3      5          7         \n'
        '  -> 192.0.2.11:80                Masq    2      1          0         \n'
        '  -> 192.0.2.11:79                Masq    1      0          3         \n'
        'TCP  203.0.113.201:80 sh (sh-fallback,sh-port) ops\n'
        'TCP  198.51.100.9:443 rr (flag-1,flag-2)\n'
        '  -> 192.0.2.20:443               Route   1      0          0         \n'
        'UDP  203.0.113.200:53 rr ops\n'
        '  -> 198.51.100.7:53              Masq    2147483647 0          0         \n'
        'FWM  7 mh (mh-fallback,mh-port)\n'
        '  -> 192.0.2.13:0                 Tunnel  0      0          0         \n'
        '  -> 192.0.2.12:0                 Tunnel  4      0          0         \n'
        '  -> 192.0.2.15:0                 Tunnel  4      0          0         \n'
        '  -> 192.0.2.11:0                 Tunnel  5      0          0         \n'
        'FWM  -1 sh () persistent 60 pe sip\n'
        '  -> 192.0.2.14:0                 Route   1      0          0         \n'
    ),
    '-Ln --nosort --stats': (
        'IP Virtual Server version 1.2.1 (size=4096)\n'
        'Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n'
        '  -> RemoteAddress:Port\n'
        'TCP  203.0.113.7:0                       0        0        0        0        0\n'
        'TCP  203.0.113.200:80              123456K    1000M   99999M     100T        5\n'
        '  -> 192.0.2.12:8080                     7 99999999  100000K  999999K    1000M\n'
        '  -> 192.0.2.11:80                       0        0        0        0        0\n'
        '  -> 192.0.2.11:79                       1        2        3   99999M     100G\n'
        'TCP  203.0.113.201:80                    0        0        0        0        0\n'
        'TCP  198.51.100.9:443                    0        0        0        0        0\n'
        '  -> 192.0.2.20:443                      0        0        0        0        0\n'
        'UDP  203.0.113.200:53                    0        0        0        0        0\n'
        '  -> 198.51.100.7:53                     0        0        0        0        0\n'
        'FWM  7                                   0        0        0        0        0\n'
        '  -> 192.0.2.13:0                        0        0        0        0        0\n'
        '  -> 192.0.2.12:0                        0        0        0        0        0\n'
        '  -> 192.0.2.15:0                        0        0        0        0        0\n'
        '  -> 192.0.2.11:0                        0        0        0        0        0\n'
        'FWM  -1                                  0        0        0        0        0\n'
        '  -> 192.0.2.14:0                        0        0        0        0        0\n'
    ),
    '-Sn': (
        '-A -f -1 -s sh -p 60 --pe sip -b \n'
        '-a -f -1 -r 192.0.2.14:0 -g -w 1\n'
        '-A -t 198.51.100.9:443 -s rr -b flag-1,flag-2\n'
        '-a -t 198.51.100.9:443 -r 192.0.2.20:443 -g -w 1\n'
        '-A -t 203.0.113.7:0 -s lc -p 2678400 -M 0.0.0.0\n'
        '-A -t 203.0.113.200:80 -s wlc -p 300 -M 255.255.255.0\n'
        '-a -t 203.0.113.200:80 -r 192.0.2.11:79 -m -w 1\n'
        '-a -t 203.0.113.200:80 -r 192.0.2.11:80 -m -w 2\n'
        '-a -t 203.0.113.200:80 -r 192.0.2.12:8080 -m -w 3\n'
        '-A -t 203.0.113.201:80 -s sh -o -b sh-fallback,sh-port\n'
        '-A -u 203.0.113.200:53 -s rr -o\n'
        '-a -u 203.0.113.200:53 -r 198.51.100.7:53 -m -w 2147483647\n'
        '-A -f 7 -s mh -b mh-fallback,mh-port\n'
        '-a -f 7 -r 192.0.2.11:0 -i -w 5 --tun-type ipip\n'
        '-a -f 7 -r 192.0.2.12:0 -i -w 4 --tun-type gre --tun-nocsum\n'
        '-a -f 7 -r 192.0.2.13:0 -i -w 0 --tun-type gue --tun-port 6080 --tun-csum\n'
        '-a -f 7 -r 192.0.2.15:0 -i -w 4 --tun-type gre --tun-csum\n'
    ),
    '-S': (
        '-A -f -1 -s sh -p 60 --pe sip -b \n'
        '-a -f -1 -r 192.0.2.14:0 -g -w 1\n'
        '-A -t 198.51.100.9:https -s rr -b flag-1,flag-2\n'
        '-a -t 198.51.100.9:https -r 192.0.2.20:https -g -w 1\n'
        '-A -t 203.0.113.7:0 -s lc -p 2678400 -M 0.0.0.0\n'
        '-A -t 203.0.113.200:http -s wlc -p 300 -M 255.255.255.0\n'
        '-a -t 203.0.113.200:http -r 192.0.2.11:finger -m -w 1\n'
        '-a -t 203.0.113.200:http -r 192.0.2.11:http -m -w 2\n'
        '-a -t 203.0.113.200:http -r 192.0.2.12:http-alt -m -w 3\n'
        '-A -t 203.0.113.201:http -s sh -o -b sh-fallback,sh-port\n'
        '-A -u 203.0.113.200:domain -s rr -o\n'
        '-a -u 203.0.113.200:domain -r 198.51.100.7:domain -m -w 2147483647\n'
        '-A -f 7 -s mh -b mh-fallback,mh-port\n'
        '-a -f 7 -r 192.0.2.11:0 -i -w 5 --tun-type ipip\n'
        '-a -f 7 -r 192.0.2.12:0 -i -w 4 --tun-type gre --tun-nocsum\n'
        '-a -f 7 -r 192.0.2.13:0 -i -w 0 --tun-type gue --tun-port 6080 --tun-csum\n'
        '-a -f 7 -r 192.0.2.15:0 -i -w 4 --tun-type gre --tun-csum\n'
    ),
    '-Lnc': (
        'IPVS connection entries\n'
        'pro expire state       source             virtual            destination\n'
        'TCP 14:59  ESTABLISHED 198.51.100.2:40000 203.0.113.200:80   192.0.2.11:80\n'
        'TCP 01:59  FIN_WAIT    198.51.100.3:40001 203.0.113.200:80   192.0.2.12:8080\n'
        'TCP 06:00  NONE        198.51.100.3:0     203.0.113.200:80   192.0.2.12:8080\n'
        'UDP 00:00  UDP         198.51.100.4:5353  203.0.113.200:53   198.51.100.7:53\n'
        'IP  100:00 NONE        198.51.100.0:0     0.0.0.7:7          192.0.2.13:0\n'
        'TCP 00:00  SYN_RECV    198.51.100.5:65535 203.0.113.200:443  192.0.2.20:443\n'
    ),
    '-Lc': (
        'IPVS connection entries\n'
        'pro expire state       source             virtual            destination\n'
        'TCP 14:59  ESTABLISHED 198.51.100.2:40000 203.0.113.200:http 192.0.2.11:http\n'
        'TCP 01:59  FIN_WAIT    198.51.100.3:40001 203.0.113.200:http 192.0.2.12:http-alt\n'
        'TCP 06:00  NONE        198.51.100.3:0     203.0.113.200:http 192.0.2.12:http-alt\n'
        'UDP 00:00  UDP         198.51.100.4:mdns  203.0.113.200:domain 198.51.100.7:domain\n'
        'IP  100:00 NONE        198.51.100.0:0     0.0.0.7:7          192.0.2.13:0\n'
        'TCP 00:00  SYN_RECV    198.51.100.5:65535 203.0.113.200:https 192.0.2.20:https\n'
    ),
    '-Lnc --persistent-conn': (
        'IPVS connection entries\n'
        'pro expire state       source             virtual            destination        pe name          pe_data\n'
        'TCP 14:59  ESTABLISHED 198.51.100.2:40000 203.0.113.200:80   192.0.2.11:80\n'
        'TCP 01:59  FIN_WAIT    198.51.100.3:40001 203.0.113.200:80   192.0.2.12:8080\n'
        'TCP 06:00  NONE        198.51.100.3:0     203.0.113.200:80   192.0.2.12:8080\n'
        'UDP 00:00  UDP         198.51.100.4:5353  203.0.113.200:53   198.51.100.7:53\n'
        'IP  100:00 NONE        198.51.100.0:0     0.0.0.7:7          192.0.2.13:0\n'
        'TCP 00:00  SYN_RECV    198.51.100.5:65535 203.0.113.200:443  192.0.2.20:443\n'
    ),
}


class SpecEngine:
    def __init__(self, now=1000.0):
        self.services = {}
        self.conns = []
        self.now = now

    def timeouts(self):
        return (900, 120, 300)

    def conn_list(self):
        return list(self.conns)

    @staticmethod
    def state_name(conn):
        return conn.state_name


def _stats(values):
    s = Stats()
    # What the kernel reports: the estimator's last snapshot (kstats).
    s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes = values[:5]
    s.kstats = tuple(values[:5])
    cps, inpps, outpps, inbps, outbps = values[5:]
    # rates() decodes the kernel's scaled estimator values
    s.cps, s.inpps, s.outpps = cps << 10, inpps << 10, outpps << 10
    s.inbps, s.outbps = inbps << 5, outbps << 5
    return s


def spec_engine():
    engine = SpecEngine()
    for item in LISTING_SPEC:
        if item.get("fwmark"):
            svc = Service(0, b"\0\0\0\0", 0, item["fwmark"])
        else:
            svc = Service(item["proto"], socket.inet_aton(item["addr"]), item["port"])
        svc.sched_name = item["sched"]
        svc.flags = item.get("flags", 0)
        svc.timeout = item.get("timeout", 0)
        svc.netmask = item.get("netmask", 0xFFFFFFFF)
        svc.pe_name = item.get("pe", "")
        svc.stats = _stats(item.get("stats", (0,) * 10))
        for d in item.get("dests", []):
            dest = Dest(svc, socket.inet_aton(d["addr"]), d["port"])
            dest.update(d.get("weight", 1), d.get("fwd", 0), d.get("u", 0), d.get("l", 0),
                        d.get("tun_type", 0), d.get("tun_port", 0), d.get("tun_flags", 0),
                        add=True)
            dest.activeconns = d.get("active", 0)
            dest.inactconns = d.get("inact", 0)
            dest.persistconns = d.get("persist", 0)
            dest.stats = _stats(d.get("stats", (0,) * 10))
            svc.destinations.append(dest)
        engine.services[svc.key] = svc
    return engine


class _Conn:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def conn_engine():
    engine = SpecEngine(now=5000.25)
    for proto, ca, cp, va, vp, da, dp, state, left in CONN_SPEC:
        engine.conns.append(_Conn(
            protocol=proto, caddr=socket.inet_aton(ca), cport=cp, vaddr=socket.inet_aton(va),
            vport=vp, daddr=socket.inet_aton(da), dport=dp, fwmark=0, flags=0, state=0,
            state_name=state, expires=engine.now + left))
    return engine


def _listing_kwargs(line):
    pa = rules.parse_cli(shlex.split(line))
    return pa, dict(numeric=pa.numeric, fmt=pa.fmt, exact=pa.exact, sort=pa.sort)


@pytest.mark.parametrize("line", LISTING_ARGVS)
def test_listing_like_ipvsadm(line):
    pa, kwargs = _listing_kwargs(line)
    if not pa.numeric and not SERVICES_DB_OK:
        pytest.skip("needs Debian's /etc/services")
    engine = spec_engine()
    if pa.cmd_name == "save":
        got = "".join(line + "\n" for line in rules.save_lines(engine, numeric=pa.numeric))
    else:
        got = listing.list_services(engine, **kwargs)
    assert got == ORACLE_LISTINGS[line]


@pytest.mark.parametrize("line", CONN_ARGVS)
def test_connections_like_ipvsadm(line):
    pa = rules.parse_cli(shlex.split(line))
    if not pa.numeric and not SERVICES_DB_OK:
        pytest.skip("needs Debian's /etc/services")
    got = listing.list_connections(conn_engine(), numeric=pa.numeric,
                                   persistent_conn=pa.has(rules.OPTC_PERSISTENTCONN))
    assert got == ORACLE_LISTINGS[line]


def test_connection_expire_and_proto_text():
    engine = conn_engine()
    conn = engine.conns[0]
    for left, text in ((899.999999, "14:59"), (900.0, "15:00"), (59.0, "00:59"),
                       (0.0, "00:00"), (-10.0, "00:00"), (6000.0, "100:00")):
        conn.expires = engine.now + left
        assert listing.list_connections(engine).splitlines()[2].split()[1] == text
    assert [listing.proto_name(p) for p in (0, 1, 6, 17, 132, 50)] == [
        "IP", "ICMP", "TCP", "UDP", "SCTP", "IP_50"]
    # pe name and data only with --persistent-conn and only when present
    conn.pe_name, conn.pe_data = "sip", "call-1"
    lines = listing.list_connections(engine, persistent_conn=True).splitlines()
    # (the row pads the destination to 16 and the pe name to 18, unlike the title)
    assert lines[2].endswith("192.0.2.11:80    sip                call-1")
    assert "sip" not in listing.list_connections(engine).splitlines()[2]


def test_single_service_and_missing_service():
    engine = spec_engine()
    key = (17, socket.inet_aton("203.0.113.200"), 53)
    assert listing.list_services(engine, service_key=key) == (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "UDP  203.0.113.200:53 rr ops\n"
        "  -> 198.51.100.7:53              Masq    2147483647 0          0         \n")
    with pytest.raises(ConfigError) as info:
        listing.list_services(engine, service_key=(6, socket.inet_aton("203.0.113.200"), 81))
    assert (info.value.message, info.value.status) == ("No such service", 1)
    assert listing.list_services(engine, header=False).startswith("Prot LocalAddress")


def test_print_largenum():
    # print_largenum: "%9llu" below 100 million, then "%8llu" + K/M/G/T with
    # the value divided by 10^3/10^6/10^9/10^12 (truncated) from 10^8, 10^9,
    # 10^11, 10^14 on; --exact: "%*llu" at least 9 wide, else digits + 1.
    cases = [
        (0, "        0"), (99999999, " 99999999"), (100000000, "  100000K"),
        (999999999, "  999999K"), (1000000000, "    1000M"),
        (1999999999, "    1999M"), (99999999999, "   99999M"),
        (100000000000, "     100G"), (99999999999999, "   99999G"),
        (100000000000000, "     100T"), (18446744073709551615, "18446744T"),
    ]
    for value, text in cases:
        assert listing.print_largenum(value) == text, value
    assert listing.print_largenum(12345678, exact=True) == " 12345678"
    assert listing.print_largenum(123456789, exact=True) == " 123456789"
    assert listing.print_largenum(1234567890123, exact=True) == " 1234567890123"


def test_kernel_order_without_sort():
    # ip_vs_svc_hashkey with the netns salt taken as 0: TCP 203.0.113.200:80
    # -> (6 ^ 0xcb0071c8 ^ (80 >> 8) ^ 80) & 255 = 0x9e, UDP :53 -> 0xec;
    # fwmark services follow, from their own table.
    vip = socket.inet_aton("203.0.113.200")
    assert listing.svc_hashkey(6, vip, 80) == 0x9E
    assert listing.svc_hashkey(17, vip, 53) == 0xEC
    engine = SpecEngine()
    for key, svc in ((("f", 3, 2), Service(0, b"\0" * 4, 0, 3)), ((17, vip, 53), Service(17, vip, 53)),
                     ((6, vip, 80), Service(6, vip, 80))):
        svc.sched_name = "rr"
        engine.services[key] = svc
    assert [s.key for s in listing.kernel_service_order(engine)] == [
        (6, vip, 80), (17, vip, 53), ("f", 3, 2)]
    # Same bucket: the newest first (hlist_add_head).
    engine = SpecEngine()
    a = Service(6, vip, 80)
    b = Service(6, bytes([203, 0, 113, 200 ^ 1]), 81)  # 0x9e again
    assert listing.svc_hashkey(6, b.addr, 81) == 0x9E
    engine.services = {a.key: a, b.key: b}
    assert listing.kernel_service_order(engine) == [b, a]


# ------------------------------------------------------------------ round trip

VIPS = ["203.0.113.%d" % i for i in (1, 7, 200)] + ["198.51.100.%d" % i for i in (2, 9)]
RIPS = ["192.0.2.%d" % i for i in (11, 12, 13, 250)] + ["198.51.100.%d" % i for i in (20, 21)]
SCHEDS = ["rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq"]


@st.composite
def service_lines(draw):
    kind = draw(st.sampled_from(["-t", "-u", "-f"]))
    if kind == "-f":
        # (marks from 2^31 on are saved negative, "%d", and do not restore:
        # test_large_fwmark_is_saved_as_ipvsadm_does)
        svc = "-f %d" % draw(st.integers(1, 0x7FFFFFFF))
    else:
        svc = "%s %s:%d" % (kind, draw(st.sampled_from(VIPS)), draw(st.integers(0, 65535)))
    sched = draw(st.sampled_from(SCHEDS))
    line = "-A %s -s %s" % (svc, sched)
    persistent = draw(st.booleans()) or svc.endswith(":0")
    if persistent:
        line += " -p %d" % draw(st.integers(1, 86400 * 31))
        if draw(st.booleans()):
            line += " -M %s" % draw(st.sampled_from(["255.255.255.0", "255.255.0.0", "0.0.0.0"]))
    if kind != "-t" and draw(st.booleans()):
        line += " -o"
    flags = draw(st.sets(st.sampled_from(
        ["sh-fallback", "sh-port"] if sched == "sh" else ["flag-1", "flag-2", "flag-3"])))
    if flags:
        line += " -b " + ",".join(sorted(flags))
    dests = []
    for _ in range(draw(st.integers(0, 4))):
        dest = "-a %s -r %s:%d" % (svc, draw(st.sampled_from(RIPS)), draw(st.integers(0, 65535)))
        fwd = draw(st.sampled_from(["-g", "-m", "-i"]))
        dest += " " + fwd
        if fwd == "-i":
            dest += draw(st.sampled_from([
                "", " --tun-type ipip", " --tun-type gre", " --tun-type gre --tun-csum",
                " --tun-type gue --tun-port 6080", " --tun-type gue --tun-port 1 --tun-remcsum"]))
        dest += " -w %d" % draw(st.integers(0, 0x7FFFFFFF))
        upper = draw(st.integers(0, 1000))
        dest += " -x %d -y %d" % (upper, draw(st.integers(0, upper)))
        dests.append(dest)
    return [line] + dests


def _build(engine, lines):
    for line in lines:
        try:
            engine.apply(rules.parse_line(line))
        except ConfigError:
            pass  # e.g. a DR server rewritten onto one that exists


@pytest.mark.parametrize("make_engine", ENGINES, ids=ENGINE_IDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.lists(service_lines(), max_size=5))
def test_save_restore_is_identity(make_engine, groups):
    first = make_engine()
    for lines in groups:
        _build(first, lines)
    saved = rules.save_lines(first, numeric=True)
    second = make_engine()
    for line in saved:
        second.apply(rules.parse_line(line))
    assert rules.save_lines(second, numeric=True) == saved
    assert listing.list_services(second) == listing.list_services(first)
    # (not the --nosort order: restoring adds real servers in sorted order,
    # so the kernel lists them the other way round, as after ipvsadm -R)


def test_large_fwmark_is_saved_as_ipvsadm_does():
    engine = FakeEngine()
    engine.apply(rules.parse_args(["-A", "-f", "2147483648", "-s", "rr"]))
    assert rules.save_lines(engine) == ["-A -f -2147483648 -s rr"]
    assert "FWM  -2147483648 rr\n" in listing.list_services(engine)
    with pytest.raises(ConfigError) as info:
        rules.parse_line("-A -f -2147483648 -s rr")
    assert info.value.message == "invalid fwmark value `-2147483648' specified"


@pytest.mark.skipif(not SERVICES_DB_OK, reason="needs Debian's /etc/services")
def test_save_with_names_restores():
    first = FakeEngine()
    _build(first, ["-A -t 203.0.113.200:80 -s rr", "-a -t 203.0.113.200:80 -r 192.0.2.11:8080 -m",
                   "-A -u 203.0.113.200:53", "-a -u 203.0.113.200:53 -r 192.0.2.12 -m -w 2",
                   "-A -f 9 -s sh -b sh-port", "-a -f 9 -r 192.0.2.13:443 -g"])
    saved = rules.save_lines(first, numeric=False)
    assert saved[1] == "-a -t 203.0.113.200:http -r 192.0.2.11:http-alt -m -w 1"
    assert saved[-1] == "-a -f 9 -r 192.0.2.13:443 -g -w 1"
    second = FakeEngine()
    for line in saved:
        second.apply(rules.parse_line(line))
    assert rules.save_lines(second) == rules.save_lines(first)


def test_weights_up_to_int_max_as_the_oracles_ipvsadm_takes_and_lists_them():
    """tests/data/golden/weights.txt (probe_weights.sh in the oracle VM): Debian's
    ipvsadm 1.31 takes -w up to INT_MAX, and a ten-digit weight pushes the columns."""
    from lvs import adm
    from lvs.engine import Engine
    recorded = (Path(__file__).parent / "data" / "golden" / "weights.txt").read_text()
    engine, got = Engine(), []
    for w in ("65535", "65536", "2147483647", "2147483648"):
        adm.run(engine, ["-C"])
        adm.run(engine, ["-A", "-t", "203.0.113.200:80", "-s", "rr"])
        _, err, status = adm.run(engine, ["-a", "-t", "203.0.113.200:80", "-r", "192.0.2.11:80", "-m", "-w", w])
        got.append(err + "w=%s rc=%d\n" % (w, status))
        got.append(adm.run(engine, ["-Ln"])[0].splitlines(True)[-1])
    assert "".join(got) == recorded.split("ipvsadm v1.31")[0]
