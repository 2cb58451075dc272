"""End to end over IPv6 only: real traffic through `lvs daemon --iface` in network namespaces.

One segment (a bridge in a switch namespace) with a client, the director and two real servers,
IPv6 only, every address in 2001:db8::/64 (plus the link-local ones), nothing routed to the
host's namespace:

    client   2001:db8::1   ──┐
    director 2001:db8::3   ──┤   (VIP 2001:db8::2: on no interface; the daemon answers NDP for it)
    rs1      2001:db8::10  ──┼── br0 in lvslab-TAG-switch
    rs2      2001:db8::11  ──┘

Both real servers serve a NAT service ([VIP]:80 -> :8080 TCP, [VIP]:53 -> :5353 UDP) and a DR
service ([VIP]:8000 TCP, [VIP]:5300 UDP). For NAT a real server routes its replies to the client
back via the director (a policy rule for its own address: replies from the VIP, DR's, go straight
to the client); for DR the test puts the VIP on the real server's lo as a /128 itself (Linux does
not answer a solicitation arriving on eth0 for an address of lo, so nothing like arp_ignore is
needed: checked through the client's neighbour entry for the VIP). DAD is off on every
interface, so that addresses are usable at once. Every traffic loop is bounded in count and time;
the namespaces are removed by the fixture's finalizer whatever happens.
"""

import ipaddress
import json
import os
import re
import subprocess
import sys
import time

import pytest

from lvs import lab as lab_mod

pytestmark = pytest.mark.skipif(not lab_mod.has_privileges(),
                                reason="needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN): network "
                                       "namespaces, AF_PACKET, nftables")

VIP = "2001:db8::2"
CLIENT = "2001:db8::1"
DIRECTOR = "2001:db8::3"
SERVERS = {"rs1": "2001:db8::10", "rs2": "2001:db8::11"}
HOSTS = dict({"client": CLIENT, "director": DIRECTOR}, **SERVERS)
OFFLOADS = ("tx", "rx", "tso", "gso", "gro")
NAT_HTTP, NAT_UDP, DR_HTTP, DR_UDP = 8080, 5353, 8000, 5300
LVSADM = "import sys; sys.argv[0] = 'lvsadm'; from lvs.lvsadm import main; sys.exit(main())"

# A UDP echo server answering from the address each datagram was sent to (IPV6_PKTINFO): the VIP
# for DR, the server's own address for NAT (so that its policy rule routes it via the director).
_UDP_ECHO6 = r"""
import socket, struct, sys
port, prefix = int(sys.argv[1]), sys.argv[2].encode()
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
s.bind(("::", port))
print("ready", flush=True)
while True:
    data, anc, flags, peer = s.recvmsg(65535, 256)
    info = [v for level, kind, v in anc if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO]
    reply_anc = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info[0][:16] + struct.pack("@I", 0))] if info else []
    s.sendmsg([prefix + b":" + data], reply_anc, 0, peer)
"""

# N datagrams, each from a fresh socket connected to the VIP: [answer or "timeout"/"refused"].
_UDP_CLIENT6 = r"""
import json, socket, sys
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for i in range(n):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((addr, port))
    s.send(b"q%d" % i)
    try:
        out.append(s.recv(100).decode())
    except ConnectionRefusedError:
        out.append("refused")
    except socket.timeout:
        out.append("timeout")
    s.close()
print(json.dumps(out))
"""

# N sequential HTTP GETs: the bodies (or the error).
_HTTP_CLIENT6 = r"""
import http.client, json, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for i in range(n):
    c = http.client.HTTPConnection(host, port, timeout=3)
    try:
        c.request("GET", "/")
        out.append(c.getresponse().read().decode().strip())
    except Exception as e:
        out.append("error: %s" % e)
    finally:
        c.close()
print(json.dumps(out))
"""

# Echo requests over a raw ICMPv6 socket (no ping binary needed): [(seq, source, data)] answered.
_PING6 = r"""
import json, os, select, socket, struct, sys, time
addr, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
ident = os.getpid() & 0xFFFF
got = []
for seq in range(n):
    data = b"pylvs-%d" % seq
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, seq) + data, (addr, 0))  # the kernel sums it
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if not select.select([s], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        pkt, peer = s.recvfrom(2048)
        if len(pkt) >= 8 and pkt[0] == 129 and struct.unpack("!HH", pkt[4:8]) == (ident, seq):
            got.append([seq, peer[0], pkt[8:].decode()])
            break
print(json.dumps(got))
"""

_TCP_PROBE6 = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"""


class Lab6:
    """The namespaces of one test run; every one is removed by teardown()."""

    def __init__(self):
        self.tag = "v6e%d" % os.getpid()
        self.prefix = "%s%s-" % (lab_mod.PREFIX, self.tag)
        self.workdir = os.path.join(lab_mod.RUN_ROOT, "lab-" + self.tag)
        self.procs = []

    def ns(self, role):
        return self.prefix + role

    def namespaces(self):
        return [self.ns(r) for r in HOSTS] + [self.ns("switch")]

    def run(self, role, argv, timeout=30, check=True, input=None):
        r = subprocess.run(["ip", "netns", "exec", self.ns(role)] + list(argv), capture_output=True,
                           text=True, timeout=timeout, env=lab_mod.namespace_env(), input=input)
        if check and r.returncode != 0:
            raise AssertionError("%s: %s: %s" % (role, " ".join(argv), (r.stderr or r.stdout).strip()))
        return r

    def ip(self, *args, check=True):
        r = subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError("ip %s: %s" % (" ".join(args), r.stderr.strip()))
        return r

    def popen(self, role, argv, name, lifetime=300):
        log_path = os.path.join(self.workdir, name + ".log")
        with open(log_path, "wb") as log:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns(role)] + list(argv), stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, env=lab_mod.namespace_env(), start_new_session=True,
                                 preexec_fn=lambda: __import__("signal").alarm(lifetime))
        p.log_path = log_path
        self.procs.append(p)
        return p

    @staticmethod
    def log(p):
        with open(p.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for(self, p, text, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(p):
                return
            if p.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("%s did not say %r:\n%s" % (p.args, text, self.log(p)))

    def python(self, role, code, *args, timeout=60):
        r = self.run(role, [sys.executable, "-c", code] + [str(a) for a in args], timeout=timeout)
        return json.loads(r.stdout)

    def lvsadm(self, *args):
        return self.run("director", [sys.executable, "-c", LVSADM] + list(args))

    def mac(self, role):
        return json.loads(self.run(role, ["ip", "-j", "link", "show", "eth0"]).stdout)[0]["address"]

    def snmp6(self, role):
        out = {}
        for line in self.run(role, ["cat", "/proc/net/snmp6"]).stdout.splitlines():
            name, _, value = line.partition(" ")
            out[name] = int(value.strip() or 0)
        return out

    # ------------------------------------------------------------ build and teardown

    def build(self):
        left = [n for n in self.namespaces() if n in lab_mod.list_namespaces()]
        assert not left, "namespaces of an earlier run are still there: %s" % left
        os.makedirs(self.workdir, mode=0o700, exist_ok=True)
        sw = self.ns("switch")
        for n in self.namespaces():
            self.ip("netns", "add", n)
        self.run("switch", ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"])
        for role in HOSTS:
            # Before any interface is made: DAD off (addresses usable at once), no autoconfiguration.
            self.run(role, ["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                            "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_ra=0",
                            "net.ipv6.conf.default.accept_ra=0"])
            self.ip("-n", self.ns(role), "link", "set", "lo", "up")
        self.ip("-n", sw, "link", "set", "lo", "up")
        self.ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        self.ip("-n", sw, "link", "set", "br0", "up")
        for role, addr in HOSTS.items():
            port = "sw-" + role
            self.ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.ns(role))
            self.ip("-n", sw, "link", "set", port, "master", "br0")
            for netns, ifname in ((sw, port), (self.ns(role), "eth0")):
                subprocess.run(["ip", "netns", "exec", netns, "ethtool", "-K", ifname]
                               + [x for f in OFFLOADS for x in (f, "off")], capture_output=True, timeout=30)
            self.ip("-n", sw, "link", "set", port, "up")
            self.ip("-n", self.ns(role), "addr", "add", addr + "/64", "dev", "eth0", "nodad")
            self.ip("-n", self.ns(role), "link", "set", "eth0", "up")
        # The director forwards, as a Linux director does (the Router flag of its advertisements).
        self.run("director", ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
        for role, addr in SERVERS.items():
            n = self.ns(role)
            # DR: the VIP on lo, a /128; NAT: replies from our own address go back via the director.
            self.ip("-n", n, "addr", "add", VIP + "/128", "dev", "lo", "nodad")
            self.ip("-n", n, "-6", "rule", "add", "from", addr, "table", "100", "priority", "100")
            self.ip("-n", n, "-6", "route", "add", CLIENT + "/128", "via", DIRECTOR, "dev", "eth0", "table", "100")
        # Count the director host's own advertisements for the VIP (pylvs's go out by AF_PACKET,
        # past netfilter): there must be none.
        self.run("director", ["nft", "-f", "-"], input=(
            "table ip6 v6e2e {\n chain out {\n  type filter hook output priority 0; policy accept;\n"
            "  icmpv6 type nd-neighbor-advert @th,64,128 0x%s counter comment \"vip\"\n"
            "  icmpv6 type nd-neighbor-advert @th,64,128 0x%s counter comment \"own\"\n }\n}\n"
            % (ipaddress.IPv6Address(VIP).packed.hex(), ipaddress.IPv6Address(DIRECTOR).packed.hex())))

    def teardown(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        left = lab_mod.remove_namespaces(self.namespaces())
        subprocess.run(["rm", "-rf", self.workdir])
        assert not left, "namespaces left behind: %s" % left


@pytest.fixture(scope="module")
def lab():
    topo = Lab6()
    try:
        topo.build()
        r = topo.run("director", [sys.executable, "-m", "lvs", "daemon", "--iface", "eth0", "--detach",
                                  "--log", os.path.join(topo.workdir, "daemon.log")], check=False)
        assert r.returncode == 0, r.stderr
        for role in SERVERS:
            for port, name in ((NAT_HTTP, "nat"), (DR_HTTP, "dr")):
                root = os.path.join(topo.workdir, "www-%s-%d" % (role, port))
                os.makedirs(root)
                with open(os.path.join(root, "index.html"), "w") as f:
                    f.write("%s-%s\n" % (role, name))
                p = topo.popen(role, [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "::",
                                      "--directory", root], name="http-%s-%d" % (role, port))
                topo.wait_for(p, "Serving HTTP")
            for port in (NAT_UDP, DR_UDP):
                p = topo.popen(role, [sys.executable, "-u", "-c", _UDP_ECHO6, str(port), role],
                               name="udp-%s-%d" % (role, port))
                topo.wait_for(p, "ready")
        topo.lvsadm("-A", "-t", "[%s]:80" % VIP, "-s", "rr")
        topo.lvsadm("-A", "-u", "[%s]:53" % VIP, "-s", "rr")
        topo.lvsadm("-A", "-t", "[%s]:%d" % (VIP, DR_HTTP), "-s", "rr")
        topo.lvsadm("-A", "-u", "[%s]:%d" % (VIP, DR_UDP), "-s", "rr")
        for role, addr in sorted(SERVERS.items()):
            topo.lvsadm("-a", "-t", "[%s]:80" % VIP, "-r", "[%s]:%d" % (addr, NAT_HTTP), "-m")
            topo.lvsadm("-a", "-u", "[%s]:53" % VIP, "-r", "[%s]:%d" % (addr, NAT_UDP), "-m")
            topo.lvsadm("-a", "-t", "[%s]:%d" % (VIP, DR_HTTP), "-r", "[%s]:%d" % (addr, DR_HTTP), "-g")
            topo.lvsadm("-a", "-u", "[%s]:%d" % (VIP, DR_UDP), "-r", "[%s]:%d" % (addr, DR_UDP), "-g")
        yield topo
    finally:
        topo.teardown()


def daemon_stats(lab):
    r = lab.run("director", [sys.executable, "-m", "lvs", "daemon", "--stats"])
    return json.loads(r.stdout)


def kernel_advertisements(lab):
    """The director host's own NAs so far, by target: {"vip": n, "own": n}."""
    rules = lab.run("director", ["nft", "list", "table", "ip6", "v6e2e"]).stdout
    return {name: int(n) for n, name in re.findall(r'counter packets (\d+) bytes \d+ comment "(\w+)"', rules)}


def alternates(answers, names):
    """Round robin: every answer from one of `names`, each in turn."""
    assert all(a in names for a in answers), answers
    assert all(answers[i] != answers[i + 1] for i in range(len(answers) - 1)), answers
    assert sorted(set(answers)) == sorted(names), answers


def test_ping6_of_the_vip_is_answered_by_the_director_and_only_it_answers_ndp(lab):
    got = lab.python("client", _PING6, VIP, 3)
    assert [g[0] for g in got] == [0, 1, 2], got
    assert all(g[1] == VIP and g[2] == "pylvs-%d" % g[0] for g in got), got
    # The client reached the VIP through our advertisement: its neighbour entry is the director's
    # MAC, not a real server's (which hold the VIP on lo and stay silent).
    entry = json.loads(lab.run("client", ["ip", "-j", "-6", "neigh", "show", VIP, "dev", "eth0"]).stdout)
    assert entry and entry[0].get("lladdr") == lab.mac("director"), entry
    assert "router" in entry[0], entry         # the Router flag of a forwarding director
    # ... and the director host's kernel itself advertised nothing for the VIP.
    assert kernel_advertisements(lab)["vip"] == 0
    assert VIP not in lab.run("director", ["ip", "-6", "addr"]).stdout


def test_http_through_the_nat_service_round_robin(lab):
    bodies = lab.python("client", _HTTP_CLIENT6, VIP, 80, 4)
    alternates(bodies, ["rs1-nat", "rs2-nat"])
    # Seen at the servers: two requests each, from the client's own address (NAT keeps it).
    for role in SERVERS:
        log = lab.log([p for p in lab.procs if p.log_path.endswith("http-%s-%d.log" % (role, NAT_HTTP))][0])
        assert log.count('"GET / HTTP/1.1" 200') == 2 and CLIENT in log, log


def test_udp_through_the_nat_service_round_robin(lab):
    answers = lab.python("client", _UDP_CLIENT6, VIP, 53, 4)
    assert [a.split(":", 1)[1] for a in answers] == ["q0", "q1", "q2", "q3"], answers
    alternates([a.split(":", 1)[0] for a in answers], ["rs1", "rs2"])


def test_http_and_udp_through_the_dr_service_round_robin(lab):
    bodies = lab.python("client", _HTTP_CLIENT6, VIP, DR_HTTP, 4)
    alternates(bodies, ["rs1-dr", "rs2-dr"])
    answers = lab.python("client", _UDP_CLIENT6, VIP, DR_UDP, 4)
    alternates([a.split(":", 1)[0] for a in answers], ["rs1", "rs2"])


def test_a_closed_vip_port_is_refused(lab):
    assert lab.run("client", [sys.executable, "-c", _TCP_PROBE6, VIP, "81"]).stdout.strip() == "refused"
    assert lab.python("client", _UDP_CLIENT6, VIP, 54, 1) == ["refused"]


def test_the_connections_are_listed(lab):
    out = lab.lvsadm("-Lnc").stdout
    rows = [line for line in out.splitlines() if "[%s]:" % CLIENT in line]
    assert any("[%s]:80 " % VIP in r and "[2001:db8::10]:8080" in r for r in rows), out
    assert any("[%s]:80 " % VIP in r and "[2001:db8::11]:8080" in r for r in rows), out
    assert any(r.startswith("UDP") and "[%s]:53 " % VIP in r for r in rows), out
    assert any("[%s]:%d " % (VIP, DR_HTTP) in r for r in rows), out


def test_the_host_forwarded_nothing_and_sent_no_redirect(lab):
    counters = lab.snmp6("director")
    assert counters["Icmp6OutRedirects"] == 0 and counters["Ip6OutForwDatagrams"] == 0, counters
    stats = daemon_stats(lab)["director"]
    assert stats["na_replies"] >= 1 and stats["echo_replies"] >= 3 and stats["refused"] >= 2, stats
    assert stats["ns_sent"] >= 2, stats      # the real servers, resolved by our solicitations
    # The host still answers for its own address (the real servers' gateway), never for the VIP:
    # the counting itself works.
    assert kernel_advertisements(lab) == {"vip": 0, "own": kernel_advertisements(lab)["own"]}
    assert kernel_advertisements(lab)["own"] >= 1


def test_stopping_the_daemon_removes_both_nft_tables(lab):
    assert "table ip6 pylvs" in lab.run("director", ["nft", "list", "tables"]).stdout
    r = lab.run("director", [sys.executable, "-m", "lvs", "daemon", "--stop"], check=False)
    assert r.returncode == 0, r.stderr
    tables = lab.run("director", ["nft", "list", "tables"]).stdout
    assert "pylvs" not in tables, tables
    log = open(os.path.join(lab.workdir, "daemon.log")).read()
    assert "undo: nft delete table ip6 pylvs" in log and "eth0 has no IPv4 address" in log, log
