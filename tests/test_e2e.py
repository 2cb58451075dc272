"""End to end: real traffic through `lvs daemon --iface` in network namespaces.

One topology for the module (lvs/lab.py's Topology: a client, the director
and three real servers on one bridge), prepared as the tutorial prepares it:
rs1 direct routing, rs2 tunnel, rs3 NAT. Clients and servers are ordinary
programs (curl, python -m http.server, plain sockets). Each test sets up its
own services through lvsadm on an empty table. Every traffic loop is bounded
in count and time; every namespace is removed at the end.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lvs.lab import Topology

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, AF_PACKET, nftables")

VIP = "198.51.100.2"
METHODS = (("rs1", "dr", "-g"), ("rs2", "tunnel", "-i"), ("rs3", "nat", "-m"))
NAME = {"rs1": "10", "rs2": "11", "rs3": "12"}
HTTP_PORT = {"rs1": 80, "rs2": 80, "rs3": 12}   # DR and tunnel cannot change the port
HOLD_PORTS = range(7000, 7006)
# One port per test that holds connections: a deleted real server waits in
# the trash with its connections' counts, and comes back with them when the
# same server is added to the same service again (as in the kernel).

# A TCP server that greets each connection with its name, echoes lines, and
# holds the connection until the client closes it.
_HOLD_SERVER = r"""
import socket, sys, threading
name = sys.argv[1].encode()
def serve(c):
    with c, c.makefile("rb") as f:  # both closed: PyPy frees neither by refcount
        c.sendall(name + b"\n")
        for line in f:
            c.sendall(line)
def listen(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    return s
listeners = [listen(int(p)) for p in sys.argv[2:]]
def accept(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
for s in listeners:
    threading.Thread(target=accept, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# Open N connections to the VIP, report who answered each; wait (bounded) for
# a release file, check every connection still echoes, close them (FIN or RST).
_HOLD_CLIENT = r"""
import json, os, socket, struct, sys, time
vip, port, n, release, hold, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), sys.argv[6]
conns, names = [], []
for i in range(n):
    c = socket.create_connection((vip, port), timeout=5)
    names.append(c.makefile("rb").readline().decode().strip())
    conns.append(c)
print(json.dumps(names), flush=True)
deadline = time.monotonic() + hold
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.05)
alive = []
for c in conns:
    try:
        c.sendall(b"ping\n")
        alive.append(c.recv(100) == b"ping\n")
    except OSError:
        alive.append(False)
    if how == "rst":
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
print(json.dumps(alive), flush=True)
"""

# Sequential HTTP requests for a bounded time: who answered, and failures.
_LOAD_CLIENT = r"""
import http.client, json, sys, time
host, source, seconds, limit = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
end = time.monotonic() + seconds
log = []
while time.monotonic() < end and len(log) < limit:
    t = time.monotonic()
    c = http.client.HTTPConnection(host, 80, timeout=2, source_address=(source, 0))
    try:
        c.request("GET", "/")
        body = c.getresponse().read().decode().strip()
    except Exception as e:
        body = "error: %s" % e
    finally:
        c.close()
    log.append([round(t, 3), body])
    print(json.dumps(log[-1]), flush=True)
    time.sleep(0.01)
"""

_UDP_CONNECTED = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"anyone?")
try:
    print("answer", s.recv(100))
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"""


@pytest.fixture(scope="module")
def lab():
    topo = Topology(tag="e%d" % os.getpid(), servers=3)
    topo.build()
    try:
        topo.start_daemon(log_path=os.path.join(topo.workdir, "daemon.log"))
        for role, method, _ in METHODS:
            topo.setup_realserver(role, method)
            topo.http_server(role, NAME[role], port=HTTP_PORT[role], lifetime=600)
            topo.udp_echo_server(role, 53 if method != "nat" else 5353, prefix=NAME[role].encode() + b":",
                                 lifetime=600)
            p = topo.popen(role, [sys.executable, "-u", "-c", _HOLD_SERVER, NAME[role]] + [str(x) for x in HOLD_PORTS],
                           name="hold-" + role, lifetime=600)
            topo.wait_for_output(p, "ready")
        yield topo
    finally:
        topo.teardown()


@pytest.fixture
def adm(lab):
    """lvsadm on an empty table; fails the test on a refused command."""
    def run(*args):
        r = lab.lvsadm(*args)
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout
    run("-C")
    yield run
    lab.lvsadm("-C")


def get(lab, n, url="http://%s/" % VIP, source=None):
    bodies = []
    for _ in range(n):
        r = lab.http_get(url, timeout=4, source=source)
        bodies.append(r.body.strip() if r.ok else "error: %s" % r.error)
    return bodies


def add_all(adm, proto="-t", port=80, ports=None, extra=()):
    for role, method, flag in METHODS:
        p = (ports or {}).get(role, port)
        adm("-a", proto, "%s:%d" % (VIP, port), "-r", "198.51.100.%s:%d" % (NAME[role], p), flag, *extra)


def hold(lab, port, n, release, how="fin", seconds=60):
    p = lab.popen("client", [sys.executable, "-u", "-c", _HOLD_CLIENT, VIP, str(port), str(n),
                             release, str(seconds), how], name="holdc-%d" % time.monotonic_ns(), lifetime=seconds + 30)
    lab.wait_for_output(p, "]", timeout=20)
    return p, json.loads(lab.read_log(p).splitlines()[0])


def finish_hold(lab, p, release):
    open(release, "w").close()
    deadline = time.monotonic() + 20
    while p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = lab.read_log(p).splitlines()
    assert p.returncode == 0, lab.read_log(p)
    return json.loads(lines[1])


def daemon_pid(topo):
    """The director's daemon, as its control socket names it."""
    return topo.daemon_pid("director")


def dest_counts(lab, addr_port):
    """(ActiveConn, InActConn) of one real server in `lvsadm -Ln`."""
    for line in lab.lvsadm("-Ln").stdout.splitlines():
        if line.strip().startswith("-> " + addr_port):
            f = line.split()
            return int(f[4]), int(f[5])
    raise AssertionError("%s not listed" % addr_port)


# ---------------------------------------------------------------- the three methods


def test_http_through_each_method_round_robin(lab, adm):
    adm("-A", "-t", VIP + ":80", "-s", "rr")
    add_all(adm, ports=HTTP_PORT)
    # rr starts at the last real server added (the kernel links new ones at the head).
    assert get(lab, 6) == ["12", "11", "10", "12", "11", "10"]
    stats = adm("-Ln", "--stats")
    for addr in ("198.51.100.10:80", "198.51.100.11:80", "198.51.100.12:12"):
        assert addr in stats
    # Ports of the VIP that no service claims are closed, as on a kernel director.
    assert lab.tcp_probe([(VIP, 81)], timeout=2) == {VIP + ":81": "refused"}
    assert lab.python("client", _UDP_CONNECTED, VIP, 54, timeout=20).stdout.strip() == "refused"


def test_udp_echo_through_each_method(lab, adm):
    adm("-A", "-u", VIP + ":53", "-s", "rr")
    add_all(adm, proto="-u", port=53, ports={"rs3": 5353})
    answers = lab.udp_request(VIP, 53, [b"q%d" % i for i in range(3)])
    # rr: three new flows, one per real server, the NAT one (added last) first.
    assert [a[0] for a in answers] == [b"12:q0", b"11:q1", b"10:q2"]
    # Every answer comes from the VIP:53, whatever the method (NAT rewrites it back).
    assert {a[1] for a in answers} == {(VIP, 53)}
    rows = [line.split() for line in adm("-Lnc").splitlines() if line.startswith("UDP")]
    assert sorted(r[5] for r in rows) == ["198.51.100.10:53", "198.51.100.11:53", "198.51.100.12:5353"]


def test_wrr_distribution_follows_the_weights(lab, adm):
    adm("-A", "-t", VIP + ":80", "-s", "wrr")
    weights = {"rs1": 3, "rs2": 2, "rs3": 1}
    for role, method, flag in METHODS:
        adm("-a", "-t", VIP + ":80", "-r", "198.51.100.%s:%d" % (NAME[role], HTTP_PORT[role]), flag,
            "-w", str(weights[role]))
    bodies = get(lab, 12)
    assert {b: bodies.count(b) for b in set(bodies)} == {"10": 6, "11": 4, "12": 2}


def test_persistence_keeps_a_client_on_one_server(lab, adm):
    # From an address of its own: the connections this test leaves behind are
    # controlled by its template, so a later SYN from a reused client port would
    # not be rescheduled (conn_reuse_mode spares controlled entries) but dropped
    # at the server that went to the trash with -C.
    client = "198.51.100.201"
    lab.run("client", ["ip", "addr", "add", client + "/24", "dev", "eth0"], check=True)
    adm("-A", "-t", VIP + ":80", "-s", "rr", "-p", "60")
    add_all(adm, ports=HTTP_PORT)
    bodies = get(lab, 5, source=client)
    assert len(set(bodies)) == 1 and not bodies[0].startswith("error"), bodies
    # The persistence template: the client's address with port 0, the service, the server.
    templates = [line.split() for line in adm("-Lnc").splitlines()
                 if line.startswith("TCP") and " %s:0 " % client in line]
    assert len(templates) == 1
    assert templates[0][2] == "ASSURED" and templates[0][4] == VIP + ":80"
    assert templates[0][5] == {"10": "198.51.100.10:80", "11": "198.51.100.11:80", "12": "198.51.100.12:12"}[bodies[0]]


def test_wlc_steers_new_connections_away_from_a_busy_server(lab, adm, tmp_path):
    HOLD_PORT = 7001
    adm("-A", "-t", "%s:%d" % (VIP, HOLD_PORT), "-s", "wlc")
    adm("-a", "-t", "%s:%d" % (VIP, HOLD_PORT), "-r", "198.51.100.12:%d" % HOLD_PORT, "-m")
    release = str(tmp_path / "release")
    p, names = hold(lab, HOLD_PORT, 3, release)
    assert names == ["12", "12", "12"]
    for role in ("rs1", "rs2"):
        flag = dict((r, f) for r, _, f in METHODS)[role]
        adm("-a", "-t", "%s:%d" % (VIP, HOLD_PORT), "-r", "198.51.100.%s:%d" % (NAME[role], HOLD_PORT), flag)
    p2, names2 = hold(lab, HOLD_PORT, 4, str(tmp_path / "release2"))
    assert "12" not in names2 and sorted(set(names2)) == ["10", "11"]
    assert finish_hold(lab, p, release) == [True] * 3
    assert finish_hold(lab, p2, str(tmp_path / "release2")) == [True] * 4


def test_weight_zero_takes_no_new_connections_and_lets_open_ones_finish(lab, adm, tmp_path):
    HOLD_PORT = 7002
    svc = "%s:%d" % (VIP, HOLD_PORT)
    adm("-A", "-t", svc, "-s", "rr")
    adm("-a", "-t", svc, "-r", "198.51.100.10:%d" % HOLD_PORT, "-g")
    adm("-a", "-t", svc, "-r", "198.51.100.12:%d" % HOLD_PORT, "-m")
    release = str(tmp_path / "release")
    p, names = hold(lab, HOLD_PORT, 2, release)
    assert sorted(names) == ["10", "12"]
    adm("-e", "-t", svc, "-r", "198.51.100.10:%d" % HOLD_PORT, "-g", "-w", "0")
    p2, names2 = hold(lab, HOLD_PORT, 3, str(tmp_path / "r2"))
    assert names2 == ["12", "12", "12"]
    # The connection already open on the weight-0 server still works, and closes.
    assert finish_hold(lab, p, release) == [True, True]
    finish_hold(lab, p2, str(tmp_path / "r2"))


def test_upper_threshold_refuses_until_the_server_drains_below_the_lower(lab, adm, tmp_path):
    HOLD_PORT = 7003
    svc = "%s:%d" % (VIP, HOLD_PORT)
    adm("-A", "-t", svc, "-s", "rr")
    adm("-a", "-t", svc, "-r", "198.51.100.12:%d" % HOLD_PORT, "-m", "-x", "2", "-y", "1")
    release = str(tmp_path / "release")
    p, names = hold(lab, HOLD_PORT, 2, release, how="rst")
    assert names == ["12", "12"]
    # Overloaded (2 connections >= -x 2): with no other server, a new one is refused.
    r = lab.tcp_probe([(VIP, HOLD_PORT)], timeout=1.5)
    assert r["%s:%d" % (VIP, HOLD_PORT)] != "open"
    adm("-a", "-t", svc, "-r", "198.51.100.10:%d" % HOLD_PORT, "-g")
    p2, names2 = hold(lab, HOLD_PORT, 2, str(tmp_path / "r2"))
    assert names2 == ["10", "10"]
    finish_hold(lab, p2, str(tmp_path / "r2"))
    # Reset both: their entries go to CLOSE (10 s) and expire; below -y 1 the server is back.
    finish_hold(lab, p, release)
    deadline = time.monotonic() + 30
    while dest_counts(lab, "198.51.100.12:%d" % HOLD_PORT) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert dest_counts(lab, "198.51.100.12:%d" % HOLD_PORT) == (0, 0)
    adm("-d", "-t", svc, "-r", "198.51.100.10:%d" % HOLD_PORT)
    p3, names3 = hold(lab, HOLD_PORT, 1, str(tmp_path / "r3"))
    assert names3 == ["12"]
    finish_hold(lab, p3, str(tmp_path / "r3"))


def test_servers_added_and_deleted_under_load(lab, adm):
    # From an address of its own: earlier tests' connections to VIP:80 outlive
    # their services (in FIN_WAIT, say, which conn_reuse_mode 1 does not
    # reschedule), and a SYN from a reused client port that finds one whose
    # server went to the trash is dropped, as the kernel drops it.
    client = "198.51.100.202"
    lab.run("client", ["ip", "addr", "add", client + "/24", "dev", "eth0"], check=True)
    adm("-A", "-t", VIP + ":80", "-s", "rr")
    adm("-a", "-t", VIP + ":80", "-r", "198.51.100.12:12", "-m")
    # Windows of 2.5 s: on a busy host a request can take a few hundred ms.
    p = lab.popen("client", [sys.executable, "-u", "-c", _LOAD_CLIENT, VIP, client, "9", "2000"],
                  name="load", lifetime=60)
    time.sleep(2.5)
    adm("-a", "-t", VIP + ":80", "-r", "198.51.100.10:80", "-g")
    t_added = time.monotonic()
    time.sleep(2.5)
    adm("-d", "-t", VIP + ":80", "-r", "198.51.100.12:12")
    t_deleted = time.monotonic()
    deadline = time.monotonic() + 30
    while p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    log = [json.loads(line) for line in lab.read_log(p).splitlines() if line.startswith("[")]
    assert len(log) > 10
    before = [b for t, b in log if t < t_added - 0.2]
    after_delete = [b for t, b in log if t > t_deleted + 0.5]
    assert before and set(before) == {"12"}, [x for x in log if x[1] != "12"][:5]
    assert "10" in [b for t, b in log if t_added + 0.2 < t < t_deleted], (t_added, t_deleted, log[:3], log[-3:], len(log))
    assert after_delete and set(after_delete) == {"10"}
    # Requests in flight to the deleted server may be lost (its connections
    # are dropped, as with expire_nodest_conn=0); everything else is answered.
    failures = [b for _, b in log if b.startswith("error")]
    assert len(failures) <= 1, failures


def test_connection_listing_shows_live_states(lab, adm, tmp_path):
    HOLD_PORT = 7004
    svc = "%s:%d" % (VIP, HOLD_PORT)
    adm("-A", "-t", svc, "-s", "rr")
    adm("-a", "-t", svc, "-r", "198.51.100.12:%d" % HOLD_PORT, "-m")
    adm("-a", "-t", svc, "-r", "198.51.100.10:%d" % HOLD_PORT, "-g")
    release = str(tmp_path / "release")
    p, names = hold(lab, HOLD_PORT, 2, release)
    rows = [line.split() for line in adm("-Lnc").splitlines()[2:]]
    live = [r for r in rows if r[4] == svc and r[2] == "ESTABLISHED"]
    assert sorted(r[5] for r in live) == ["198.51.100.10:%d" % HOLD_PORT, "198.51.100.12:%d" % HOLD_PORT]
    ours = {r[3] for r in live}
    finish_hold(lab, p, release)

    def states():
        rows = (line.split() for line in adm("-Lnc").splitlines()[2:])
        return {r[5]: r[2] for r in rows if r[3] in ours}

    deadline = time.monotonic() + 10  # the server closes its side once it reads our FIN
    while states().get("198.51.100.12:%d" % HOLD_PORT) != "TIME_WAIT" and time.monotonic() < deadline:
        time.sleep(0.1)
    states = states()
    assert states["198.51.100.12:%d" % HOLD_PORT] == "TIME_WAIT"
    assert states["198.51.100.10:%d" % HOLD_PORT] == "FIN_WAIT"


def test_port_unreachable_from_a_nat_server_reaches_the_client_translated(lab, adm):
    adm("-A", "-u", VIP + ":53", "-s", "rr")
    adm("-a", "-u", VIP + ":53", "-r", "198.51.100.12:5999", "-m")  # nothing listens there
    r = lab.python("client", _UDP_CONNECTED, VIP, 53, timeout=20)
    # A connected socket hears of the error only if it quotes client -> VIP:53.
    assert r.stdout.strip() == "refused", r.stdout + r.stderr


def test_an_idle_daemon_uses_no_cpu(lab, adm):
    adm("-A", "-t", VIP + ":80", "-s", "rr")
    pid = daemon_pid(lab)

    def ticks():
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    before = ticks()
    time.sleep(3)
    assert ticks() - before <= 10  # 100 ms of CPU in 3 s at the very most (estimator ticks)


# ---------------------------------------------------------------- SIGKILL and --cleanup


def host_state(topo, role):
    """What the daemon could change in a namespace: links and their features, addresses,
    routes, rules, nftables, IPv4 sysctls."""
    parts = []
    for argv in (["ip", "-d", "link"], ["ip", "addr"], ["ip", "route", "show", "table", "all"],
                 ["ip", "rule"], ["nft", "list", "ruleset"], ["ethtool", "-k", "eth0"],
                 ["sysctl", "-a", "--pattern", "^net.ipv4"]):
        parts.append(topo.run(role, argv, check=True).stdout)
    return parts


def test_sigkill_then_cleanup_leaves_the_host_as_found(lab):
    tag = "k%d" % os.getpid()
    topo = Topology(tag=tag, servers=1)
    topo.build()
    try:
        before = host_state(topo, "director")
        root_before = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
        topo.start_daemon()
        assert topo.lvsadm("-A", "-t", VIP + ":8080", "-s", "rr").returncode == 0
        assert topo.lvsadm("-a", "-t", VIP + ":8080", "-r", "198.51.100.10:80", "-m").returncode == 0
        # Two directors on one host, one per namespace: each lvsadm reaches its own.
        assert VIP + ":8080" in topo.lvsadm("-Ln").stdout
        assert ":8080" not in lab.lvsadm("-Ln").stdout
        assert host_state(topo, "director") != before  # the nft table is there
        pid = daemon_pid(topo)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        assert "pylvs" in topo.run("director", ["nft", "list", "tables"]).stdout
        r = topo.lvs("director", "daemon", "--cleanup")
        assert r.returncode == 0, r.stderr
        assert "undo: nft delete table ip pylvs" in r.stdout
        assert host_state(topo, "director") == before
        assert subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout == root_before
        r = topo.lvs("director", "daemon", "--cleanup")
        assert r.returncode == 0 and "nothing to clean up" in r.stdout
    finally:
        topo.teardown()


def test_the_daemon_stops_and_cleans_up_when_its_interface_goes_away():
    """Not a busy loop on a dead socket: the data plane stops and the host is restored."""
    topo = Topology(tag="v%d" % os.getpid(), servers=1)
    topo.build()
    try:
        before = host_state(topo, "director")
        topo.start_daemon(log_path=os.path.join(topo.workdir, "gone.log"))
        pid = daemon_pid(topo)
        topo._daemons.discard("director")  # it will be gone: teardown need not stop it
        # A link that goes down and up again is survived.
        topo.run("director", ["ip", "link", "set", "eth0", "down"], check=True)
        topo.run("director", ["ip", "link", "set", "eth0", "up"], check=True)
        time.sleep(0.5)
        assert os.path.exists("/proc/%d" % pid)
        topo.run("switch", ["ip", "link", "del", "sw-director"], check=True)  # takes eth0 with it
        deadline = time.monotonic() + 10
        while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists("/proc/%d" % pid)
        with open(os.path.join(topo.workdir, "gone.log")) as f:
            log = f.read()
        assert "eth0 is gone" in log and "undo: nft delete table ip pylvs" in log
        # eth0 itself is gone; what the daemon changed is back.
        assert topo.run("director", ["nft", "list", "ruleset"], check=True).stdout == before[4]
        assert not os.path.exists("/run/pylvs/netns-%s/daemon.state" % topo.netns("director"))
    finally:
        topo.teardown()
