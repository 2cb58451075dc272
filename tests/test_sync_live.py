"""Two directors in namespaces, keepalived's VRRP between them and pylvs's
sync over real multicast: the master is killed (SIGKILL of its pylvs daemon
and of its keepalived), the backup's keepalived takes over, `lvs vrrp-notify`
makes its daemon own the VIP (gratuitous ARP) and the sync master, and it
carries on the established connections -- direct routing and NAT -- to the
same real servers with no byte lost; new connections resume; the killed
director, restarted, comes back as a backup and catches up.

Every traffic loop is bounded; the namespaces are removed at the end.
"""

import json
import os
import signal
import sys
import time

import shutil

import pytest

from lvs.lab import GATEWAY_IP, Topology

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, AF_PACKET, nftables"),
    pytest.mark.skipif(shutil.which("keepalived") is None, reason="needs keepalived (tools/setup.sh installs it)"),
]

VIP = "198.51.100.2"
PORT = 7100
STREAMS = 6
RS = {"198.51.100.10:%d" % 7100: "10", "198.51.100.11:%d" % 7100: "11"}   # rs1 DR, rs2 NAT

_ECHO_SERVER = r"""
import socket, sys, threading
name = sys.argv[1].encode()
def serve(c):
    with c, c.makefile("rb") as f:
        c.sendall(name + b"\n")
        for line in f:
            c.sendall(line)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# STREAMS long-lived connections, each sending a numbered line every 50 ms
# and checking its echo; a new short connection every 100 ms. Bounded by time.
_CLIENT = r"""
import json, socket, sys, threading, time
vip, port, streams, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
end = time.monotonic() + seconds
result = {"streams": [], "new": []}
def stream(i):
    r = {"server": None, "sent": 0, "echoed": 0, "error": None}
    result["streams"].append(r)
    try:
        s = socket.create_connection((vip, port), timeout=5)
        r["port"] = s.getsockname()[1]
        s.settimeout(20)
        f = s.makefile("rb")
        r["server"] = f.readline().decode().strip()
        n = 0
        while time.monotonic() < end:
            line = ("%d %d\n" % (i, n)).encode()
            s.sendall(line)
            r["sent"] += 1
            if f.readline() != line:
                r["error"] = "echo %d differs" % n
                break
            r["echoed"] += 1
            n += 1
            time.sleep(0.05)
        s.close()
    except Exception as e:
        r["error"] = repr(e)
threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
for t in threads:
    t.start()
while time.monotonic() < end:
    t0 = time.monotonic()
    try:
        s = socket.create_connection((vip, port), timeout=1)
        s.settimeout(1)
        ok = s.recv(16).strip().decode()
        s.close()
    except Exception as e:
        ok = None
    result["new"].append([round(t0, 3), ok])
    time.sleep(0.1)
for t in threads:
    t.join(30)
print(json.dumps(result), flush=True)
"""


def lvsadm(topo, role, *args):
    r = topo.lvsadm(*args, role=role)
    assert r.returncode == 0, (role, args, r.stderr)
    return r.stdout


def ctl(topo, role, op):
    r = topo.python(role, "from lvs import ctl; import json; "
                          "print(json.dumps(ctl.request(ctl.socket_path(), {'op': %r})))" % op)
    return json.loads(r.stdout)


def services(topo, role):
    lvsadm(topo, role, "-A", "-t", "%s:%d" % (VIP, PORT), "-s", "rr")
    lvsadm(topo, role, "-a", "-t", "%s:%d" % (VIP, PORT), "-r", "198.51.100.10:%d" % PORT, "-g")
    lvsadm(topo, role, "-a", "-t", "%s:%d" % (VIP, PORT), "-r", "198.51.100.11:%d" % PORT, "-m")


def synced(topo, role):
    """{client address:port: real server} of the ESTABLISHED connections a director lists."""
    out = {}
    for line in lvsadm(topo, role, "-Lnc").splitlines():
        f = line.split()
        if len(f) == 6 and f[0] == "TCP" and f[2] == "ESTABLISHED" and f[4] == "%s:%d" % (VIP, PORT):
            out[f[3]] = f[5]
    return out


def wait(what, seconds):
    deadline = time.monotonic() + seconds
    while not what() and time.monotonic() < deadline:
        time.sleep(0.1)
    return what()


def start_director(topo, role, priority, log):
    topo.start_daemon("--standby", role=role, log_path=log)
    services(topo, role)
    return topo.start_keepalived(role, priority)


@pytest.fixture
def pair():
    t = Topology(tag="s%d" % os.getpid(), servers=2, directors=2)
    t.build()
    try:
        t.setup_realserver("rs1", "dr")
        t.setup_realserver("rs2", "nat")       # its default route: the pair's gateway address
        for rs, name in (("rs1", "10"), ("rs2", "11")):
            p = t.popen(rs, [sys.executable, "-u", "-c", _ECHO_SERVER, name, str(PORT)],
                        name="echo-" + rs, lifetime=300)
            t.wait_for_output(p, "ready")
        yield t
    finally:
        t.teardown()


def test_keepalived_moves_the_vip_and_the_backup_carries_the_connections_on(pair):
    topo = pair
    logs = {role: os.path.join(topo.workdir, role + ".log") for role in ("director", "director2")}
    start_director(topo, "director", 150, logs["director"])
    start_director(topo, "director2", 100, logs["director2"])
    # Both start as VRRP backups; the higher priority becomes master.
    assert wait(lambda: topo.vrrp_state("director") == "MASTER" and topo.vrrp_state("director2") == "BACKUP", 20), \
        (topo.vrrp_state("director"), topo.vrrp_state("director2"))
    assert lvsadm(topo, "director", "-L", "--daemon") == (
        "master sync daemon (mcast=eth0, syncid=5, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n")
    assert lvsadm(topo, "director2", "-L", "--daemon") == (
        "backup sync daemon (mcast=eth0, syncid=5, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n")
    assert GATEWAY_IP in topo.run("director", ["ip", "-4", "addr", "show", "eth0"]).stdout

    client = topo.popen("client", [sys.executable, "-u", "-c", _CLIENT, VIP, str(PORT), str(STREAMS), "20"],
                        name="client", lifetime=120)
    # The master sends at the 3rd packet, and a message at most 2 s after its first entry.
    assert wait(lambda: len(synced(topo, "director2")) >= STREAMS, 10)
    master_view, backup_view = synced(topo, "director"), synced(topo, "director2")

    # The master dies: its pylvs daemon and its keepalived killed outright.
    victims = [topo.daemon_pid("director")] + topo.keepalived_pids("director")
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    assert wait(lambda: topo.vrrp_state("director2") == "MASTER", 10)
    t_master = time.monotonic()
    assert "master sync daemon" in lvsadm(topo, "director2", "-L", "--daemon")

    # The killed director comes back (as after a reboot: its address gone, its host
    # changes undone) and stays backup (nopreempt), hearing of the open connections again.
    topo.run("director", ["ip", "addr", "del", GATEWAY_IP + "/32", "dev", "eth0"])
    topo.lvs("director", "daemon", "--cleanup")
    start_director(topo, "director", 150, logs["director"])
    assert wait(lambda: topo.vrrp_state("director") == "BACKUP", 15)
    assert wait(lambda: len(synced(topo, "director")) >= STREAMS, 15)
    caught_up = synced(topo, "director")
    assert topo.vrrp_state("director2") == "MASTER"

    assert wait(lambda: client.poll() is not None, 60)
    result = json.loads(topo.read_log(client).strip().splitlines()[-1])
    streams = result["streams"]
    assert len(streams) == STREAMS
    assert {s["server"] for s in streams} == {"10", "11"}         # DR and NAT both carried on
    for s in streams:
        # Every line echoed, in order, by the server the master had chosen.
        assert s["error"] is None and s["sent"] == s["echoed"] > 100, s
        key = "198.51.100.1:%d" % s["port"]
        assert RS[master_view[key]] == s["server"] == RS[backup_view[key]]
        assert key in caught_up

    # New connections: lost for a while around the takeover, answered again soon after.
    new = result["new"]
    failed = [t for t, ok in new if ok is None]
    assert new[0][1] in ("10", "11") and new[-1][1] in ("10", "11")
    gap = 0.0
    if failed:
        before = max(t for t, ok in new if ok and t < min(failed))
        after = min(t for t, ok in new if ok and t > max(failed))
        gap = after - before
    assert gap < 5.0, (gap, failed)
    sys.stderr.write("takeover: VRRP master after %.2f s; new connections unanswered for %.2f s "
                     "(%d attempts failed)\n" % (t_master - t_kill, gap, len(failed)))
    stats = ctl(topo, "director2", "stats")
    assert stats["sync"].get("sync_installed", 0) >= STREAMS
    assert stats["director"]["vip_owner"] == 1 and stats["director"]["gratuitous_arp"] >= 1
