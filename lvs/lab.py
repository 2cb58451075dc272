"""`lvs lab`: the tutorial's topology in network namespaces, and the tutorial run on it.

The tutorial (../shared/seeds) has one Ethernet segment with a client, a
director and three real servers, one per forwarding method. `Topology`
builds that segment out of network namespaces, one per host, so that the
machine's own namespace is left alone: the segment's bridge sits in a
"switch" namespace of its own, and each host is joined to it by one veth
pair created there, with its other end put straight into the host's
namespace. Nothing (no interface, address or route) is added to the
namespace `lvs lab` is started from.

    client   198.51.100.1  ──┐
    director 198.51.100.3  ──┤   (VIP 198.51.100.2: on no interface; the daemon answers ARP for it)
    rs1      198.51.100.10 ──┼── br0 in lvslab-TAG-switch
    rs2      198.51.100.11 ──┤
    rs3      198.51.100.12 ──┘

Each veth end has its offloads turned off: with them on, veth hands
AF_PACKET readers TCP packets with partial checksums and 64 KB GSO
"packets" that no wire would carry, and a userspace director would forward
them as such. IPv6 is off in the namespaces by default, so that router
solicitations and MLD reports do not clutter the director's drops or the
traces.

Namespaces are named lvslab-TAG-ROLE. The CLI lab's tag is fixed ("lab"),
so that a second `lvs lab` after a crash finds the first one's namespaces
and removes them; tests pass a tag of their own. Every process is started
through `ip netns exec`, which execs the command itself, so the PID we hold
is the program's: teardown ends what it started by PID, stops the daemon
and the real-server helpers through their own --stop/--down (which undo
their host changes), ends whatever is still inside the namespaces (the
detached helpers' forks), and only then deletes the namespaces: a
namespace deleted with a process inside lives on, unnamed.

`lvs lab` then does what the tutorial does, on this topology, through
pylvs's own commands run with the same interpreter (sys.executable -m lvs).

`lvs lab --ipv6` (Topology(ipv6=True)) is the same segment over IPv6 only,
each host keeping its last number: client 2001:db8::1, VIP 2001:db8::2,
director 2001:db8::3, rs1 2001:db8::10..., all on 2001:db8::/64. IPv6 is
on in the hosts' namespaces with duplicate address detection and router
discovery off (accept_dad, dad_transmits, accept_ra, router_solicitations
0), so addresses are usable at once; each interface keeps its link-local
address, which Neighbour Discovery is sent from. The switch namespace has
IPv6 off and its bridge no multicast snooping (the solicited-node groups
are flooded, the director's included, which it joins on its packet socket
and never reports). A separate run, not dual stack in one: its output is
the IPv4 lab's line for line with IPv6 addresses, which compares better
than both families interleaved, and the IPv4 lab stays as it was. The
tunnel server gets IPv6 in IPv6 (next header 41), decapsulated by `lvs
realserver` in userspace where the kernel has no ip6_tunnel. --ha is IPv4
only (keepalived's VRRP and the NAT gateway).
"""

import collections
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .hostconf import process_alive

PREFIX = "lvslab-"
DEFAULT_TAG = "lab"
ALLOWED_NETS = tuple(ipaddress.ip_network(n) for n in
                     ("198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24"))
PREFIXLEN = 24
CLIENT_IP = "198.51.100.1"
VIP = "198.51.100.2"
DIRECTOR_IP = "198.51.100.3"
# `lvs lab --ipv6`: the same hosts with the same last digits, on 2001:db8::/64.
ALLOWED_NETS6 = (ipaddress.ip_network("2001:db8::/32"),)
PREFIX6 = "2001:db8::"
PREFIXLEN6 = 64
CLIENT_IP6 = PREFIX6 + "1"
VIP6 = PREFIX6 + "2"
DIRECTOR_IP6 = PREFIX6 + "3"
DIRECTOR2_IP = "198.51.100.4"   # the second director of a failover pair (directors=2)
DIRECTOR_ROLES = ("director", "director2")
GATEWAY_IP = "198.51.100.254"   # a pair's NAT gateway: keepalived moves it with the master
DOWNLOAD_PORTS = range(45000, 45010)   # --ha's download, told apart from the requests
SYNCID = 5                      # a pair's sync daemons
VRRP_ID = 51
FIRST_SERVER = 10         # rs1 is 198.51.100.10, rs2 .11, ...
MAX_SERVERS = 90
IFACE = "eth0"            # every host's interface, inside its own namespace
BRIDGE = "br0"
OFFLOADS = ("tx", "rx", "tso", "gso", "gro")
RUN_ROOT = "/run/pylvs"   # lvs.hostconf.run_dir(): one directory per named namespace

METHODS = {"dr": "dr", "g": "dr", "droute": "dr", "direct": "dr", "gatewaying": "dr",
           "tunnel": "tunnel", "tun": "tunnel", "i": "tunnel", "ipip": "tunnel",
           "nat": "nat", "m": "nat", "masq": "nat", "masquerading": "nat"}
METHOD_FLAG = {"dr": "-g", "tunnel": "-i", "nat": "-m"}
METHOD_NAME = {"dr": "DR", "tunnel": "tunnel", "nat": "NAT"}

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LVSADM = "import sys; sys.argv[0] = 'lvsadm'; from lvs.lvsadm import main; sys.exit(main())"
_LVSADM_SAVE = ("import sys; sys.argv[0] = 'lvsadm-save'; from lvs.lvsadm import save_main; "
                "sys.exit(save_main())")
_LVSADM_RESTORE = ("import sys; sys.argv[0] = 'lvsadm-restore'; from lvs.lvsadm import restore_main; "
                   "sys.exit(restore_main())")


class LabError(Exception):
    """A lab step failed; the message says which and why."""


Host = collections.namedtuple("Host", "role netns ip iface port")
Host.__doc__ = """One machine of the segment: role ('client', 'director', 'rs1'...), its namespace,
its address on the segment (None for the switch), its interface there, and the name of its veth
end in the switch namespace."""

HttpResult = collections.namedtuple("HttpResult", "ok status body local_port error")
HttpResult.__doc__ = """One HTTP request: ok (an answer came), HTTP status, body, the client's TCP
port, and curl's error text when it failed."""


# ---------------------------------------------------------------- host helpers


def has_privileges():
    """Can we create namespaces and interfaces? Root with CAP_SYS_ADMIN and CAP_NET_ADMIN."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps & (1 << 12)) and bool(caps & (1 << 21))
    except (OSError, ValueError, IndexError):
        pass
    return True


def namespace_env():
    """The environment for commands in the lab: our package first on the path, no control socket
    named (each namespace's default socket is its own), no proxy for curl."""
    env = {k: v for k, v in os.environ.items()
           if k != "LVS_SOCKET" and not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _cmd(argv, timeout=30, input=None, env=None):
    """Run one command with a deadline; stdout/stderr go through files, so a detached
    grandchild keeping them open cannot make us wait. TimeoutExpired after killing it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            p = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                 stdout=out, stderr=err, env=env)
        except OSError as e:
            return subprocess.CompletedProcess(argv, 127, "", "%s: %s\n" % (argv[0], e.strerror))
        try:
            p.communicate(input.encode() if input is not None else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise
        except BaseException:
            p.kill()
            p.wait()
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, p.returncode, out.read().decode("utf-8", "replace"),
                                           err.read().decode("utf-8", "replace"))


def _ip(*args, check=True):
    r = _cmd(["ip"] + list(args))
    if check and r.returncode != 0:
        raise LabError("ip %s: %s" % (" ".join(args), (r.stderr or r.stdout).strip()))
    return r


def list_namespaces():
    """Names of the named network namespaces (`ip netns list`)."""
    r = _cmd(["ip", "netns", "list"])
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def lab_namespaces(tag=None):
    """Namespaces of the lab with this tag (every lab's with tag None)."""
    prefix = PREFIX + (tag + "-" if tag is not None else "")
    return [n for n in list_namespaces() if n.startswith(prefix)]


def _role_of(netns):
    return netns.rsplit("-", 1)[-1]


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "?"


def _end_pids(pids, log, grace=3.0):
    """SIGTERM, then SIGKILL what is left after `grace` seconds."""
    pids = [p for p in pids if p != os.getpid() and process_alive(p)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if process_alive(pid):
            log("killing pid %d (%s): still running %.0f s after SIGTERM" % (pid, _cmdline(pid), grace))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _netns_pids(netns):
    r = _cmd(["ip", "netns", "pids", netns])
    return [int(x) for x in r.stdout.split() if x.isdigit()] if r.returncode == 0 else []


def _lvs_argv(*args):
    return [sys.executable, "-m", "lvs"] + list(args)


def _parallel(commands, timeout, log):
    """Run (netns, argv) pairs at once; wait for all, at most `timeout` seconds."""
    procs = []
    for netns, argv in commands:
        try:
            procs.append((netns, argv, subprocess.Popen(
                ["ip", "netns", "exec", netns] + argv, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=namespace_env())))
        except OSError as e:
            log("%s: %s: %s" % (netns, " ".join(argv), e))
    deadline = time.monotonic() + timeout
    for netns, argv, p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log("%s: %s did not finish in %.0f s; killing pid %d" % (netns, " ".join(argv[2:]), timeout, p.pid))
            p.kill()
            p.wait()


def remove_namespaces(names, log=None, helpers=True):
    """Take down lab namespaces: helpers' own --stop/--down first (so that their host changes are
    undone), then whatever still runs inside, then the namespaces and pylvs's state left for them."""
    log = log or (lambda text: None)
    names = [n for n in names if n.startswith(PREFIX)]
    present = set(list_namespaces())
    names = [n for n in names if n in present]
    if helpers:
        commands = []
        for n in names:
            role = _role_of(n)
            if role in DIRECTOR_ROLES:
                commands.append((n, _lvs_argv("daemon", "--stop")))
            elif re.match(r"rs\d+$", role):
                commands.append((n, _lvs_argv("realserver", "--down")))
        _parallel(commands, 20.0, log)
    for n in names:
        _end_pids(_netns_pids(n), log)
    if helpers:
        # A daemon that had to be killed left its journal: undo it (a no-op when none is left).
        _parallel([(n, _lvs_argv("daemon", "--cleanup")) for n in names
                   if _role_of(n) in DIRECTOR_ROLES], 20.0, log)
    # Hosts first, the switch last: a host's veth pair goes with its namespace.
    for n in sorted(names, key=lambda n: _role_of(n) == "switch"):
        r = _ip("netns", "delete", n, check=False)
        if r.returncode != 0 and n in list_namespaces():
            log("cannot delete namespace %s: %s" % (n, r.stderr.strip()))
        state = os.path.join(RUN_ROOT, "netns-" + n)
        if os.path.isdir(state) and not os.path.islink(state):
            shutil.rmtree(state, ignore_errors=True)
    return [n for n in names if n in set(list_namespaces())]


def _check_tag(tag):
    if not re.match(r"^[A-Za-z0-9]{1,20}$", tag or ""):
        raise ValueError("a lab tag is 1 to 20 letters and digits: %r" % (tag,))
    return tag


def workdir_for(tag):
    return os.path.join(RUN_ROOT, "lab-" + tag)


# ---------------------------------------------------------------- the topology


_UDP_ECHO = r"""
import socket, struct, sys
addr, port, prefix = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
IP_PKTINFO = 8
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
s.bind((addr, port))
print("ready", flush=True)
while True:
    data, anc, flags, peer = s.recvmsg(65535, 256)
    # Answer from the address the datagram was sent to (the VIP for DR and tunnel servers),
    # not from the one routing would pick.
    reply_anc = []
    for level, kind, value in anc:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            ifindex, spec_dst, dst = struct.unpack("=I4s4s", value[:12])
            reply_anc = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, dst, b"\0" * 4))]
    s.sendmsg([prefix + data], reply_anc, 0, peer)
"""

_UDP_CLIENT = r"""
import json, socket, sys, time
addr, port, timeout, fresh = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
answers = []
s = None
for payload in sys.argv[5:]:
    if s is None or fresh:
        if s is not None:
            s.close()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        s.settimeout(timeout)
    s.sendto(bytes.fromhex(payload), (addr, port))
    try:
        data, peer = s.recvfrom(65535)
        answers.append([data.hex(), peer[0], peer[1], s.getsockname()[1]])
    except socket.timeout:
        answers.append([None, None, None, s.getsockname()[1]])
print(json.dumps(answers))
"""

_TCP_PROBE = r"""
import json, socket, sys
timeout = float(sys.argv[1])
out = {}
for target in sys.argv[2:]:
    ip, port = target.rsplit(":", 1)
    try:
        socket.create_connection((ip, int(port)), timeout=timeout).close()
        out[target] = "open"
    except ConnectionRefusedError:
        out[target] = "refused"
    except socket.timeout:
        out[target] = "timeout"
    except OSError as e:
        out[target] = "error: %s" % e.strerror
print(json.dumps(out))
"""


class Topology:
    """The tutorial's segment in network namespaces: a client, a director and `servers` real
    servers on one bridge. Use as a context manager, or build() then teardown() in a finally.

        with Topology(tag="t%dx1" % os.getpid()) as topo:
            topo.run("client", ["ip", "addr"])
            topo.http_server("rs1", "10", port=80)
            topo.http_get("http://%s/" % topo.ip("rs1"))

    Roles are 'client', 'director', 'rs1'..'rsN' and 'switch'.
    """

    def __init__(self, tag=DEFAULT_TAG, servers=3, ipv6=False, log=None, directors=1):
        _check_tag(tag)
        if not 1 <= servers <= MAX_SERVERS:
            raise ValueError("servers: 1 to %d" % MAX_SERVERS)
        self.tag = tag
        self.ipv6 = ipv6
        self.log = log or (lambda text: None)
        self.prefix = "%s%s-" % (PREFIX, tag)
        self.servers = ["rs%d" % i for i in range(1, servers + 1)]
        if ipv6:
            if directors != 1:
                raise ValueError("the IPv6 lab has one director")
            self.vip, self.prefixlen = VIP6, PREFIXLEN6
            hosts = [("client", CLIENT_IP6), ("director", DIRECTOR_IP6)]
            hosts += [(rs, "%s%d" % (PREFIX6, FIRST_SERVER + i)) for i, rs in enumerate(self.servers)]
        else:
            self.vip, self.prefixlen = VIP, PREFIXLEN
            hosts = [("client", CLIENT_IP), ("director", DIRECTOR_IP)]
            if directors == 2:
                hosts.append(("director2", DIRECTOR2_IP))
            hosts += [(rs, "198.51.100.%d" % (FIRST_SERVER + i)) for i, rs in enumerate(self.servers)]
        self.hosts = collections.OrderedDict(
            (role, Host(role, self.prefix + role, ip, IFACE, "sw-" + role)) for role, ip in hosts)
        self.switch = Host("switch", self.prefix + "switch", None, BRIDGE, None)
        self.workdir = workdir_for(tag)
        self.built = False
        self._procs = []             # (Popen, what) of every process we started
        self._daemons = set()        # the directors where lvs daemon was started
        self._realservers = set()    # roles where `lvs realserver` ran
        self._touched = False        # build() began: there is something to tear down
        self._torn_down = False

    # ------------------------------------------------------------ names

    def netns(self, role):
        return self.switch.netns if role == "switch" else self.hosts[role].netns

    def ip(self, role):
        return self.hosts[role].ip

    def namespaces(self):
        return [h.netns for h in self.hosts.values()] + [self.switch.netns]

    def hostport(self, ip, port):
        """ip:port as lvsadm and URLs write it: [ip]:port for IPv6."""
        return ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port)

    def url(self, ip):
        """http://ip/, the IPv6 address in brackets."""
        return "http://%s/" % ("[%s]" % ip if ":" in ip else ip)

    def mac(self, role):
        r = self.run(role, ["ip", "-j", "link", "show", IFACE], check=True)
        return json.loads(r.stdout)[0]["address"]

    # ------------------------------------------------------------ build and teardown

    def __enter__(self):
        self.build()
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False

    def build(self):
        """Create the namespaces, the bridge and the veth pairs; all or nothing."""
        left = [n for n in self.namespaces() if n in set(list_namespaces())]
        if left:
            raise LabError("namespaces of an earlier lab are still there (%s): remove them with "
                           "`lvs lab down --tag %s`" % (", ".join(left), self.tag))
        self._torn_down = False
        self._touched = True
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        self.built = True
        return self

    def _build(self):
        if os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir)
        os.makedirs(self.workdir, mode=0o700)
        sw = self.switch.netns
        for netns in self.namespaces():
            self.log("ip netns add %s" % netns)
            _ip("netns", "add", netns)
            self._sysctls(netns)
            _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0",
            *(("mcast_snooping", "0") if self.ipv6 else ()))   # solicited-node groups: flooded
        _ip("-n", sw, "link", "set", BRIDGE, "up")
        for host in self.hosts.values():
            # Both ends are made in the switch namespace and the host's end moved at once: the
            # namespace we were started from never holds either.
            self.log("veth %s (switch) <-> %s (%s)" % (host.port, host.iface, host.netns))
            _ip("-n", sw, "link", "add", host.port, "type", "veth", "peer", "name", host.iface,
                "netns", host.netns)
            _ip("-n", sw, "link", "set", host.port, "master", BRIDGE)
            self._offloads_off(sw, host.port)
            self._offloads_off(host.netns, host.iface)
            _ip("-n", sw, "link", "set", host.port, "up")
            _ip("-n", host.netns, "addr", "add", "%s/%d" % (host.ip, self.prefixlen), "dev", host.iface)
            _ip("-n", host.netns, "link", "set", host.iface, "up")

    def _sysctls(self, netns):
        if not self.ipv6 or netns == self.switch.netns:   # the switch has no address of any family
            for name in ("all", "default"):
                self.run_netns(netns, ["sysctl", "-q", "-w", "net.ipv6.conf.%s.disable_ipv6=1" % name])
            return
        # IPv6: addresses usable at once (no duplicate address detection) and no router
        # discovery; the link-local addresses stay: Neighbour Discovery is sent from them.
        for name in ("all", "default"):
            for key, value in (("accept_dad", 0), ("dad_transmits", 0), ("accept_ra", 0),
                               ("router_solicitations", 0)):
                self.run_netns(netns, ["sysctl", "-q", "-w", "net.ipv6.conf.%s.%s=%d" % (name, key, value)])

    def _offloads_off(self, netns, ifname):
        """ethtool -K IF tx off rx off tso off gso off gro off, feature by feature where the
        whole line is refused (a feature this kernel's veth lacks)."""
        argv = ["ethtool", "-K", ifname] + [x for f in OFFLOADS for x in (f, "off")]
        if self.run_netns(netns, argv).returncode == 0:
            return
        for feature in OFFLOADS:
            r = self.run_netns(netns, ["ethtool", "-K", ifname, feature, "off"])
            if r.returncode != 0:
                self.log("%s: ethtool -K %s %s off: %s" % (netns, ifname, feature, r.stderr.strip()))

    def teardown(self):
        """End what we started, by PID; stop the daemon and the real-server helpers through their
        own commands; delete the namespaces. Safe to call twice, and after a failed build."""
        if self._torn_down or not self._touched:
            return
        for p, what in reversed(self._procs):
            self._end(p, what)
        self._procs = []
        commands = []
        for role in sorted(self._daemons):
            commands.append((self.netns(role), _lvs_argv("daemon", "--stop")))
        for role in sorted(self._realservers):
            commands.append((self.netns(role), _lvs_argv("realserver", "--down")))
        if commands:
            _parallel(commands, 20.0, self.log)
        mine = [n for n in self.namespaces() if n in set(list_namespaces())]
        for n in mine:
            _end_pids(_netns_pids(n), self.log)
        if self._daemons:
            _parallel([(self.netns(role), _lvs_argv("daemon", "--cleanup")) for role in self._daemons],
                      20.0, self.log)
        left = remove_namespaces(mine, self.log, helpers=False)
        if os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._daemons = set()
        self._realservers = set()
        self.built = False
        self._torn_down = True
        self._touched = False
        if left:
            raise LabError("namespaces left behind: %s" % ", ".join(left))

    def _end(self, p, what, grace=3.0):
        if p.poll() is not None:
            return
        try:
            p.terminate()
            p.wait(grace)
        except subprocess.TimeoutExpired:
            self.log("killing %s (pid %d): still running %.0f s after SIGTERM" % (what, p.pid, grace))
            p.kill()
            p.wait()

    # ------------------------------------------------------------ running things

    def run_netns(self, netns, argv, timeout=30, input=None, check=False):
        r = _cmd(["ip", "netns", "exec", netns] + list(argv), timeout=timeout, input=input,
                 env=namespace_env())
        if check and r.returncode != 0:
            raise LabError("%s: %s: %s" % (netns, " ".join(argv), (r.stderr or r.stdout).strip()))
        return r

    def run(self, role, argv, timeout=30, input=None, check=False):
        """Run `argv` in a host's namespace (role as in hosts, or 'switch'); CompletedProcess with
        text output. subprocess.TimeoutExpired (the command killed) past `timeout` seconds."""
        return self.run_netns(self.netns(role), argv, timeout=timeout, input=input, check=check)

    def popen(self, role, argv, name=None, lifetime=None):
        """Start a long-running `argv` in a host's namespace; stdout and stderr go to a log file
        (its path is the Popen's `log_path`). It is ended at teardown, by PID. `lifetime` (seconds)
        is a hard bound: an alarm set before exec that ends the program if we never get to."""
        name = name or "%s-%s-%d" % (role, os.path.basename(argv[0]), len(self._procs))
        log_path = os.path.join(self.workdir, name + ".log")

        def prepare():
            if lifetime:
                signal.alarm(int(lifetime))

        with open(log_path, "wb") as log:
            p = subprocess.Popen(["ip", "netns", "exec", self.netns(role)] + list(argv),
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=namespace_env(),
                                 start_new_session=True, preexec_fn=prepare)
        p.log_path = log_path
        self._procs.append((p, "%s in %s" % (os.path.basename(argv[0]), role)))
        return p

    def wait_for_output(self, p, text, timeout=10.0):
        """Wait until `text` shows in a popen'd process's log; LabError if it exits or time is up."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.read_log(p)
            if text in log:
                return log
            if p.poll() is not None:
                raise LabError("%s exited (status %s) before saying %r:\n%s"
                               % (" ".join(p.args[4:]), p.returncode, text, log.strip()))
            if time.monotonic() > deadline:
                raise LabError("%s did not say %r within %.0f s:\n%s"
                               % (" ".join(p.args[4:]), text, timeout, log.strip()))
            time.sleep(0.05)

    @staticmethod
    def read_log(p):
        try:
            with open(p.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, p, grace=3.0):
        """End a process popen() started (SIGTERM, then SIGKILL after `grace` seconds)."""
        self._end(p, " ".join(p.args[4:5]), grace)
        self._procs = [(q, w) for q, w in self._procs if q is not p]

    def python(self, role, code, *args, timeout=30):
        return self.run(role, [sys.executable, "-c", code] + [str(a) for a in args], timeout=timeout)

    # ------------------------------------------------------------ pylvs's own commands

    def lvs(self, role, *args, timeout=60):
        """`python -m lvs ARGS` in a host's namespace, with our interpreter."""
        return self.run(role, _lvs_argv(*args), timeout=timeout)

    def lvsadm(self, *args, timeout=30, input=None, role="director"):
        """lvsadm ARGS in a director (the daemon of its namespace answers)."""
        return self.run(role, [sys.executable, "-c", _LVSADM] + list(args), timeout=timeout,
                        input=input)

    def lvsadm_save(self, *args, timeout=30):
        return self.run("director", [sys.executable, "-c", _LVSADM_SAVE] + list(args), timeout=timeout)

    def start_daemon(self, *extra, log_path=None, timeout=30, role="director", python=None):
        """`lvs daemon --iface eth0 --detach` in a director (with `python`, another
        interpreter than ours: .venv-pypy/bin/python); LabError if it does not start."""
        args = ["daemon", "--iface", IFACE, "--detach"]
        if log_path:
            args += ["--log", log_path]
        self._daemons.add(role)
        if python:
            r = self.run(role, [python, "-m", "lvs"] + args + list(extra), timeout=timeout)
        else:
            r = self.lvs(role, *(args + list(extra)), timeout=timeout)
        if r.returncode != 0:
            raise LabError("lvs %s: %s" % (" ".join(args), (r.stderr or r.stdout).strip()))
        return r

    def stop_daemon(self, timeout=30, role="director"):
        r = self.lvs(role, "daemon", "--stop", timeout=timeout)
        if r.returncode == 0:
            self._daemons.discard(role)
        return r

    @property
    def pair(self):
        return "director2" in self.hosts

    def realserver_argv(self, role, method):
        args = ["realserver", "--method", method, "--vip", self.vip, "--iface", IFACE]
        if method == "nat":
            # A pair's NAT servers route through the address the VRRP master holds.
            args += ["--director", GATEWAY_IP if self.pair else self.ip("director")]
        if method == "tunnel":
            args.append("--detach")   # the decapsulator keeps running
        return args

    def setup_realserver(self, role, method, timeout=60):
        """`lvs realserver --method METHOD ...` in a real server's namespace."""
        self._realservers.add(role)
        args = self.realserver_argv(role, method)
        r = self.lvs(role, *args, timeout=timeout)
        if r.returncode != 0:
            raise LabError("%s: lvs %s: %s" % (role, " ".join(args), (r.stderr or r.stdout).strip()))
        return r

    def start_keepalived(self, role, priority, advert=0.2, timeout=15.0):
        """keepalived --vrrp in a director of a pair, its notify script `lvs vrrp-notify`
        (lvs/ha.py); the NAT gateway is its virtual address. Returns the Popen."""
        from .ha import keepalived_config
        log = os.path.join(self.workdir, "%s-notify.log" % role)
        notify = _lvs_argv("vrrp-notify", "--mcast-interface", IFACE, "--syncid", str(SYNCID),
                           "--log", log)
        conf = os.path.join(self.workdir, "%s-keepalived.conf" % role)
        with open(conf, "w") as f:
            f.write(keepalived_config(role, IFACE, priority, VRRP_ID, notify,
                                      addresses=(GATEWAY_IP + "/32",), advert=advert))
        pids = [os.path.join(self.workdir, "%s-keepalived%s.pid" % (role, what)) for what in ("", "-vrrp")]
        for path in pids:
            if os.path.exists(path):
                os.unlink(path)
        p = self.popen(role, ["keepalived", "--dont-fork", "--log-console", "--no-syslog", "--vrrp",
                              "--use-file", conf, "--pid", pids[0], "--vrrp_pid", pids[1]],
                       name="keepalived-" + role, lifetime=None)
        deadline = time.monotonic() + timeout
        while not os.path.exists(pids[1]) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not os.path.exists(pids[1]):
            raise LabError("keepalived in %s did not start: %s" % (role, self.read_log(p)[-500:]))
        return p

    def keepalived_pids(self, role):
        """The parent's and the VRRP child's PIDs of a director's keepalived."""
        found = []
        for what in ("", "-vrrp"):
            try:
                with open(os.path.join(self.workdir, "%s-keepalived%s.pid" % (role, what))) as f:
                    found.append(int(f.read().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return found

    def vrrp_events(self, role):
        """[(wall-clock time, state)] `lvs vrrp-notify` was told in a director, in order
        (its log lines: TIME lvs vrrp-notify STATE: ...)."""
        events = []
        try:
            with open(os.path.join(self.workdir, "%s-notify.log" % role)) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[1:3] == ["lvs", "vrrp-notify"]:
                        events.append((float(parts[0]), parts[3].rstrip(":")))
        except (OSError, ValueError):
            pass
        return events

    def vrrp_state(self, role):
        """The last state `lvs vrrp-notify` was told in a director, or None."""
        events = self.vrrp_events(role)
        return events[-1][1] if events else None

    def daemon_pid(self, role="director"):
        """A director's daemon, as its control socket names it."""
        r = self.python(role, "from lvs import ctl; print(ctl.request(ctl.socket_path(), "
                              "{'op': 'ping'})['pid'])")
        return int(r.stdout.strip())

    def realserver_down(self, role, timeout=30):
        r = self.lvs(role, "realserver", "--down", timeout=timeout)
        if r.returncode == 0:
            self._realservers.discard(role)
        return r

    # ------------------------------------------------------------ servers and clients

    def http_server(self, role, body, port=80, bind="0.0.0.0", lifetime=None, timeout=15.0):
        """python -m http.server PORT in a directory whose index.html holds `body` (and a
        newline, as `echo 10 > index.html` writes it). Returns the Popen once it listens."""
        root = os.path.join(self.workdir, "www-%s-%d" % (role, port))
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write(body + "\n")
        p = self.popen(role, [sys.executable, "-u", "-m", "http.server", str(port), "--bind", bind,
                              "--directory", root], name="http-%s-%d" % (role, port), lifetime=lifetime)
        self.wait_for_output(p, "Serving HTTP on", timeout)
        return p

    def http_get(self, url, role="client", timeout=5.0, source=None):
        """One bounded request with curl (--max-time) from a host, from its address `source`
        if given: HttpResult."""
        argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "%g" % timeout,
                "--connect-timeout", "%g" % min(timeout, 3.0), "-w", "\n@@lvslab %{http_code} %{local_port}",
                url] + (["--interface", source] if source else [])
        if "[" in url:
            argv.insert(1, "-g")     # --globoff: [2001:db8::2] is an address, not a glob
        try:
            r = self.run(role, argv, timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            return HttpResult(False, None, "", None, "no answer within %g s" % (timeout + 10))
        body, _, tail = r.stdout.rpartition("\n@@lvslab ")
        fields = tail.split()
        status = int(fields[0]) if fields and fields[0].isdigit() else None
        port = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
        ok = r.returncode == 0 and bool(status)
        return HttpResult(ok, status, body if ok else "", port, "" if ok else r.stderr.strip())

    def udp_echo_server(self, role, port, bind="0.0.0.0", prefix=b"", lifetime=None, timeout=15.0):
        """A UDP server answering each datagram with prefix + datagram, from the address it was
        sent to. Returns the Popen once it listens."""
        p = self.popen(role, [sys.executable, "-u", "-c", _UDP_ECHO, bind, str(port), prefix.hex()],
                       name="udp-%s-%d" % (role, port), lifetime=lifetime)
        self.wait_for_output(p, "ready", timeout)
        return p

    def udp_request(self, addr, port, payloads, role="client", timeout=2.0, fresh_socket=True):
        """Send each payload (bytes) to addr:port from a host and wait at most `timeout` s for one
        answer each; a new socket (new source port) per payload unless fresh_socket is False.
        Returns [(answer bytes or None, (from ip, from port) or None, our port), ...]."""
        payloads = list(payloads)
        code_args = [addr, str(port), "%g" % timeout, "1" if fresh_socket else "0"] + [p.hex() for p in payloads]
        r = self.run(role, [sys.executable, "-c", _UDP_CLIENT] + code_args,
                     timeout=timeout * len(payloads) + 15)
        if r.returncode != 0:
            raise LabError("UDP client in %s: %s" % (role, r.stderr.strip()))
        return [(bytes.fromhex(d) if d is not None else None, (ip, p) if ip else None, mine)
                for d, ip, p, mine in json.loads(r.stdout)]

    def tcp_probe(self, targets, role="client", timeout=2.0):
        """TCP connect to each (ip, port) from a host: {"ip:port": "open" | "refused" | "timeout" |
        "error: ..."}. "refused" means the host answered (a RST): it is reachable."""
        names = ["%s:%d" % (ip, port) for ip, port in targets]
        r = self.run(role, [sys.executable, "-c", _TCP_PROBE, "%g" % timeout] + names,
                     timeout=timeout * len(names) + 15)
        if r.returncode != 0:
            raise LabError("TCP probe in %s: %s" % (role, r.stderr.strip()))
        return json.loads(r.stdout)


def remove_leftovers(tag, log=None):
    """Remove the namespaces (and state) of an earlier lab with this tag; returns their names."""
    names = lab_namespaces(tag)
    if names:
        left = remove_namespaces(names, log)
        if left:
            raise LabError("cannot remove %s" % ", ".join(left))
    workdir = workdir_for(tag)
    if os.path.isdir(workdir) and not os.path.islink(workdir):
        shutil.rmtree(workdir, ignore_errors=True)
    return names


# ---------------------------------------------------------------- `lvs lab`


class _Terminated(Exception):
    """SIGTERM arrived: clean up as for Ctrl-C."""


def _indent(text, prefix="      "):
    return "".join(prefix + line + "\n" for line in text.rstrip("\n").splitlines())


def parse_methods(text, servers):
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError("--methods: name at least one of dr, tunnel, nat")
    try:
        methods = [METHODS[n] for n in names]
    except KeyError as e:
        raise ValueError("--methods: unknown method %s (dr, tunnel or nat)" % e)
    if servers is None:
        servers = max(3, len(methods)) if len(methods) > 1 else 3
    if len(methods) > servers:
        raise ValueError("--methods names %d methods for %d servers" % (len(methods), servers))
    return [methods[i % len(methods)] for i in range(servers)]


class Lab:
    """One run of the tutorial on a Topology; see lab_main()."""

    def __init__(self, topo, methods, scheduler="rr", requests=6, out=sys.stdout):
        self.topo = topo
        self.methods = dict(zip(topo.servers, methods))
        self.scheduler = scheduler
        self.requests = requests
        self.out = out
        self.stage = 0
        self.ha = topo.pair          # --ha: a second director, keepalived, sync, a failover
        self.stages = 10 if self.ha else 8
        self.keep = False
        self.daemon_log = None
        self.log_seen = 0

    def say(self, text=""):
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, text):
        self.stage += 1
        self.say("[%d/%d] %s" % (self.stage, self.stages, text))

    def typed_port(self, role):
        """The tutorial's port: the last number of the server's address (10 for .10 and ::10)."""
        return int(re.split(r"[.:]", self.topo.ip(role))[-1])

    def listen_port(self, role):
        """The tutorial's correction: DR and tunnel servers listen on the service's port."""
        return self.typed_port(role) if self.methods[role] == "nat" else 80

    def lvsadm(self, *args, show=True, check=True):
        r = self.topo.lvsadm(*args)
        if show:
            self.say("      # lvsadm %s" % " ".join(args))
            if r.stdout:
                self.say(_indent(r.stdout).rstrip("\n"))
        if r.returncode != 0:
            self.say(_indent(r.stderr).rstrip("\n"))
            if check:
                raise LabError("lvsadm %s: exit status %d" % (" ".join(args), r.returncode))
        return r

    def run(self):
        from .lab_failover import FailoverSteps
        topo = self.topo
        vip = topo.hostport(topo.vip, 80)
        failures = 0

        self.step("building the topology: a client, %s and %d real servers on one switch"
                  % ("two directors" if self.ha else "a director", len(topo.servers)))
        topo.build()
        self.say("      %-9s %-24s %s" % ("host", "network namespace", "address on %s" % IFACE))
        for host in topo.hosts.values():
            note = ""
            if host.role == "director":
                note = "  (the VIP %s is on no interface: %s answers %s for it)" % (
                    topo.vip, "the VRRP master's daemon" if self.ha else "the daemon",
                    "Neighbour Solicitations" if topo.ipv6 else "ARP")
            elif host.role == "director2":
                note = "  (its twin, for failover)"
            elif host.role in self.methods:
                note = "  %s" % METHOD_NAME[self.methods[host.role]]
            self.say("      %-9s %-24s %s/%d%s" % (host.role, host.netns, host.ip, topo.prefixlen, note))
        self.say("      %-9s %-24s bridge %s, one veth pair per host" % ("switch", topo.switch.netns, BRIDGE))

        self.step("starting the director: lvs daemon --iface %s%s --detach (in %s)"
                  % (IFACE, " --standby" if self.ha else "", topo.netns("director")))
        log_path = os.path.join(topo.workdir, "daemon.log")
        r = topo.start_daemon(*(("--standby",) if self.ha else ()), log_path=log_path)
        self.say(_indent(r.stdout + r.stderr).rstrip("\n"))
        if self.ha:
            r = topo.start_daemon("--standby", role="director2",
                                  log_path=os.path.join(topo.workdir, "daemon2.log"))
            self.say("      and its twin: lvs daemon --iface %s --standby --detach (in %s)"
                     % (IFACE, topo.netns("director2")))
            self.say(_indent((r.stdout + r.stderr).splitlines()[0]).rstrip("\n"))
            self.say("      --standby: neither answers ARP for the VIP until keepalived makes it VRRP master")
        self.daemon_log = log_path
        self.log_seen = self._log_size()

        self.step("typing the tutorial's rules, ports and all")
        self.lvsadm("-A", "-t", vip, "-s", self.scheduler)
        for role in topo.servers:
            method = self.methods[role]
            self.lvsadm("-a", "-t", vip, "-r", topo.hostport(topo.ip(role), self.typed_port(role)),
                        METHOD_FLAG[method], "-w", "1")
        self._new_log_lines("the daemon, following the rules")
        self.say("      # lvsadm-save -n")
        r = topo.lvsadm_save("-n")
        if r.returncode != 0:
            raise LabError("lvsadm-save -n: %s" % r.stderr.strip())
        self.say(_indent(r.stdout).rstrip("\n"))
        saved_text = r.stdout
        saved = self._saved_ports(r.stdout)
        rewritten = [role for role in topo.servers if saved.get(topo.ip(role)) not in (None, self.typed_port(role))]
        if rewritten:
            self.say("      Look at the ports: %s, typed as %s, are listed with :80."
                     % (" and ".join("%s (%s)" % (topo.ip(r_), METHOD_NAME[self.methods[r_]]) for r_ in rewritten),
                        " and ".join(":%d" % self.typed_port(r_) for r_ in rewritten)))
            self.say("      Direct routing changes only the frame's MAC and a tunnel wraps the packet whole, so the")
            self.say("      server gets it still addressed to %s: its port cannot change, and lvsadm (as" % vip)
            self.say("      ipvsadm) sets it to the service's. Only NAT rewrites the destination, port included.")
        else:
            self.say("      No port was rewritten: none of these servers uses DR or tunnelling.")

        if self.ha:
            self.pair = FailoverSteps(self)
            self.pair.start(saved_text)

        self.step("correcting the mistake as the tutorial does: on the servers' side")
        for role in topo.servers:
            self.say("      %s (%s) will listen on port %d%s"
                     % (role, METHOD_NAME[self.methods[role]], self.listen_port(role),
                        "" if self.methods[role] == "nat" else ", the service's port"))
        self.say("      The rules stay as lvsadm-save shows them: with DR and tunnels a real server must use")
        self.say("      the virtual service's port, so those servers' web servers move to 80.")

        self.step("preparing the real servers: lvs realserver")
        for role in topo.servers:
            method = self.methods[role]
            self.say("      # (in %s) lvs %s" % (topo.netns(role), " ".join(topo.realserver_argv(role, method))))
            r = topo.setup_realserver(role, method)
            self.say(_indent(r.stdout + r.stderr).rstrip("\n"))

        self.step("starting the web servers: python -m http.server, index.html = the last %s of the address"
                  % ("number" if topo.ipv6 else "byte"))
        for role in topo.servers:
            port = self.listen_port(role)
            topo.http_server(role, str(self.typed_port(role)), port=port,
                             bind="::" if topo.ipv6 else "0.0.0.0", lifetime=None if self.keep else 600)
            self.say("      %s: echo %d > index.html; python -m http.server %d" % (role, self.typed_port(role), port))

        self.step("sending %d requests from the client: curl --max-time 5 %s" % (self.requests, topo.url(topo.vip)))
        tunnel = next((role for role in topo.servers if self.methods[role] == "tunnel"), None)
        dump = self._start_trace(tunnel) if tunnel else None
        answered = collections.Counter()
        by_body = {str(self.typed_port(role)): role for role in topo.servers}
        try:
            for n in range(1, self.requests + 1):
                res = topo.http_get(topo.url(topo.vip))
                if res.ok:
                    body = res.body.strip()
                    role = by_body.get(body)
                    answered[role] += 1
                    who = ("%s %s (%s)" % (role, topo.ip(role), METHOD_NAME[self.methods[role]])
                           if role else "unknown server")
                    self.say("      request %d from %s -> %r from %s"
                             % (n, topo.hostport(topo.ip("client"), res.local_port or 0), body, who))
                else:
                    failures += 1
                    self.say("      request %d: no answer: %s" % (n, res.error or "HTTP status %s" % res.status))
        finally:
            trace = self._stop_trace(dump) if dump else None
        self.say("      answers: %s" % ", ".join("%s %d" % (role, answered[role]) for role in topo.servers))

        self.step("what the director saw")
        # -Ln --stats shows the counters as of the estimator's last 2-second tick, as the kernel does.
        time.sleep(2.1)
        self.lvsadm("-Ln", "--stats", check=False)
        self.lvsadm("-Lnc", check=False)
        if tunnel:
            self.say("      %s packets on %s's %s (tcpdump -n -i %s '%s'): outer director > server,"
                     % (self.tunnel_name(), tunnel, IFACE, IFACE, self.trace_filter()))
            self.say("      inner client > VIP; the server answers the client directly, not through the director")
            self.say(_indent(trace or "(none captured)").rstrip("\n"))
        if self.ha:
            failures += self.pair.failover()
        return 1 if failures else 0

    def _log_size(self):
        try:
            return os.path.getsize(self.daemon_log)
        except OSError:
            return 0

    def _new_log_lines(self, what):
        """What the daemon logged since we last looked (its host changes, as lvsadm drives them)."""
        try:
            with open(self.daemon_log, "rb") as f:
                f.seek(self.log_seen)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return
        self.log_seen += len(text.encode("utf-8"))
        if text.strip():
            self.say("      (%s:)" % what)
            self.say(_indent(text, "        ").rstrip("\n"))

    @staticmethod
    def _saved_ports(text):
        ports = {}
        for line in text.splitlines():
            m = re.search(r"-r (\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:]+\]):(\d+)", line)
            if m:
                ports[m.group(1).strip("[]")] = int(m.group(2))
        return ports

    def trace_filter(self):
        """tcpdump's filter for the tunnel's packets: IPIP, or IPv6 in IPv6 (next header 41)."""
        return "ip6 proto 41" if self.topo.ipv6 else "ip proto 4"

    def tunnel_name(self):
        return "IPv6-in-IPv6" if self.topo.ipv6 else "IPIP"

    def _start_trace(self, role):
        if shutil.which("tcpdump") is None:
            self.say("      (tcpdump is not installed: no %s trace)" % self.tunnel_name())
            return None
        p = self.topo.popen(role, ["tcpdump", "-n", "-l", "-i", IFACE, "-c", str(min(40 * self.requests, 2000)),
                                   self.trace_filter()], name="tcpdump-%s" % role, lifetime=120)
        try:
            self.topo.wait_for_output(p, "listening on", 10.0)
        except LabError as e:
            self.say("      (no %s trace: %s)" % (self.tunnel_name(), e))
            self.topo.stop(p)
            return None
        return p

    def _stop_trace(self, p, shown=8):
        time.sleep(0.3)  # the last packets
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGINT)
                p.wait(3.0)
            except subprocess.TimeoutExpired:
                pass
        self.topo.stop(p)
        word = " IP6 " if self.topo.ipv6 else " IP "
        lines = [l for l in Topology.read_log(p).splitlines() if word in l]
        if not lines:
            return ""
        text = "\n".join(lines[:shown])
        if len(lines) > shown:
            text += "\n... %d %s packets in all" % (len(lines), self.tunnel_name())
        return text


def _own_command(name, fallback):
    """How to type one of pylvs's commands: the script beside our interpreter, if installed."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else fallback


def _keep_notes(lab, out, failed=False):
    topo = lab.topo
    lvsadm = _own_command("lvsadm", "%s -c %r" % (sys.executable, _LVSADM))
    lvs = _own_command("lvs", "%s -m lvs" % sys.executable)
    w = out.write
    w("\nThe lab is left up (--keep)%s. Enter a host with `ip netns exec NAME COMMAND`:\n"
      % (", as far as it got" if failed else ""))
    for host in topo.hosts.values():
        w("  %-9s ip netns exec %s bash\n" % (host.role, host.netns))
    d, c = topo.netns("director"), topo.netns("client")
    w("Try:\n")
    w("  ip netns exec %s %s -Ln --stats\n" % (d, lvsadm))
    w("  ip netns exec %s %s -Lnc\n" % (d, lvsadm))
    w("  ip netns exec %s curl -s%s --max-time 5 %s\n" % (c, "g" if topo.ipv6 else "", topo.url(topo.vip)))
    for role in topo.servers:
        if lab.methods[role] == "tunnel":
            w("  ip netns exec %s tcpdump -n -i %s -c 20 '%s'\n" % (topo.netns(role), IFACE, lab.trace_filter()))
            break
    w("  ip netns exec %s tcpdump -n -i %s -c 20 host %s\n" % (d, IFACE, topo.vip))
    if topo.pair:
        d2 = topo.netns("director2")
        w("  ip netns exec %s %s -L --daemon; ip netns exec %s %s -Lnc   # the other director\n"
          % (d2, lvsadm, d2, lvsadm))
        w("  ip netns exec %s %s daemon --stats   # vip_owner, sync counters\n" % (d2, lvs))
        w("  cat %s/*-notify.log   # what keepalived told each daemon\n" % topo.workdir)
    w("Remove it with: %s lab down%s\n" % (lvs, "" if topo.tag == DEFAULT_TAG else " --tag " + topo.tag))


def lab_down(tag, every=False, out=sys.stdout):
    names = lab_namespaces(None if every else tag)
    log = lambda text: out.write("  %s\n" % text)
    if not names:
        out.write("lvs lab: no lab namespaces%s\n" % ("" if every else " (lvslab-%s-*)" % tag))
    else:
        out.write("lvs lab: removing %s\n" % ", ".join(names))
    left = remove_namespaces(names, log)
    tags = {n[len(PREFIX):].rsplit("-", 1)[0] for n in names} | ({tag} if not every else set())
    for t in tags:
        d = workdir_for(t)
        if os.path.isdir(d) and not os.path.islink(d):
            shutil.rmtree(d, ignore_errors=True)
    if left:
        out.write("lvs lab: could not remove %s\n" % ", ".join(left))
        return 1
    return 0


def lab_main(args, out=sys.stdout, err=sys.stderr):
    if not has_privileges():
        err.write("lvs lab: needs root: it creates network namespaces, a bridge and veth interfaces "
                  "(CAP_SYS_ADMIN and CAP_NET_ADMIN). Run it as root, e.g. `sudo lvs lab`.\n")
        return 1
    if shutil.which("ip") is None:
        err.write("lvs lab: needs the `ip` command (iproute2)\n")
        return 1
    if args.action == "down":
        return lab_down(args.tag, args.all, out)
    try:
        methods = parse_methods(args.methods or "dr,tunnel,nat", args.servers)
    except ValueError as e:
        err.write("lvs lab: %s\n" % e)
        return 2
    if not 1 <= len(methods) <= MAX_SERVERS:
        err.write("lvs lab: --servers: 1 to %d\n" % MAX_SERVERS)
        return 2
    if not 1 <= args.requests <= 1000:
        err.write("lvs lab: --requests: 1 to 1000\n")
        return 2

    def on_term(signum, frame):
        raise _Terminated()

    if args.ha and args.ipv6:
        err.write("lvs lab: --ha is IPv4 only for now (keepalived's VRRP and the NAT gateway); "
                  "run --ipv6 without it\n")
        return 2
    old_term = signal.signal(signal.SIGTERM, on_term)
    topo = Topology(tag=args.tag, servers=len(methods), log=lambda text: None,
                    directors=2 if args.ha else 1, ipv6=args.ipv6)
    if args.ha and shutil.which("keepalived") is None:
        err.write("lvs lab --ha: needs keepalived (tools/setup.sh installs it)\n")
        return 1
    lab = Lab(topo, methods, scheduler=args.scheduler, requests=args.requests, out=out)
    lab.keep = args.keep
    status, keep, failed = 1, False, False
    try:
        try:
            left = remove_leftovers(args.tag, log=lambda text: out.write("      %s\n" % text))
            if left:
                out.write("lvs lab: removed a leftover lab from an earlier run: %s\n" % ", ".join(left))
            status = lab.run()
            keep = args.keep
        except (LabError, OSError, subprocess.TimeoutExpired) as e:
            if isinstance(e, subprocess.TimeoutExpired):
                e = "%s: no end within %.0f s" % (" ".join(e.cmd[4:] if e.cmd[:3] == ["ip", "netns", "exec"]
                                                          else e.cmd), e.timeout)
            err.write("lvs lab: %s\n" % e)
            failed = True
            keep = args.keep and topo.built
        except (KeyboardInterrupt, _Terminated):
            err.write("\nlvs lab: interrupted\n")
            status = 130
    finally:
        # Ctrl-C and SIGTERM wait while we clean up: a half-removed lab is worse than a slow one.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if keep:
                topo._procs = [(p, w) for p, w in topo._procs if p.poll() is None]
                _keep_notes(lab, out, failed)
            else:
                try:
                    out.write("[done] cleaning up: stopping the daemon and the real-server helpers, "
                              "deleting the namespaces\n")
                    out.flush()
                except OSError:
                    pass  # stdout is gone (`lvs lab | head`): nobody reads, the cleanup goes on
                try:
                    topo.teardown()
                except LabError as e:
                    err.write("lvs lab: %s\n" % e)
                    status = status or 1
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    return status


def add_subparser(sub):
    p = sub.add_parser(
        "lab", help="run the tutorial in network namespaces (root)",
        description="Build the tutorial's segment in network namespaces (a client, a director running "
                    "lvs daemon, real servers for DR, tunnel and NAT), type the tutorial's lvsadm "
                    "commands, send requests and show what happened; then remove it all.")
    p.add_argument("action", nargs="?", choices=("down",),
                   help="down: remove a kept or leftover lab (its helpers stopped first)")
    p.add_argument("--scheduler", "-s", default="rr", help="the service's scheduler (default rr)")
    p.add_argument("--methods", metavar="M,M,...",
                   help="forwarding method per real server: dr, tunnel, nat (default dr,tunnel,nat; "
                        "repeated to fill --servers)")
    p.add_argument("--servers", type=int, metavar="N", help="number of real servers (default 3)")
    p.add_argument("--requests", type=int, default=6, metavar="N", help="HTTP requests to send (default 6)")
    p.add_argument("--keep", action="store_true",
                   help="leave the lab up and print how to use it (remove it with `lvs lab down`)")
    p.add_argument("--tag", default=DEFAULT_TAG, type=_check_tag,
                   help="namespaces are lvslab-TAG-ROLE (default %s)" % DEFAULT_TAG)
    p.add_argument("--all", action="store_true", help="with down: every lab's namespaces (lvslab-*)")
    p.add_argument("--ipv6", action="store_true",
                   help="the same tutorial over IPv6: 2001:db8::/64, VIP 2001:db8::2, the tunnel "
                        "server reached by IPv6 in IPv6")
    p.add_argument("--ha", action="store_true",
                   help="a second director, keepalived's VRRP and connection sync; the master is "
                        "killed during a download and the other carries on")
    p.set_defaults(func=lab_main)
