"""`lvs daemon` and its control socket: start, detach, stop, stale and live sockets, feeding."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from lvs import ctl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "examples", "tutorial.rules")
CAPTURE = os.path.join(ROOT, "examples", "tutorial.pcap")


def lvs(*args, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "lvs"] + list(args), capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env, input=input)


@pytest.fixture
def sock(tmp_path):
    path = str(tmp_path / "run" / "lvs.sock")
    yield path
    try:
        pid = ctl.request(path, {"op": "ping"}, timeout=5)["pid"]
    except (ctl.NoDaemon, OSError, ValueError):
        return
    try:
        lvs("daemon", "--socket", path, "--stop")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)  # only ours, by its PID, if --stop failed
        except ProcessLookupError:
            pass


def test_detach_ping_and_stop(sock):
    r = lvs("daemon", "--socket", sock, "--detach")
    assert r.returncode == 0, r.stderr
    assert "started" in r.stdout
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
    answer = ctl.request(sock, {"op": "ping"})
    assert answer["pylvs"] == 1 and answer["pid"] > 0
    r = lvs("daemon", "--socket", sock, "--stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert not os.path.exists(sock)
    r = lvs("daemon", "--socket", sock, "--stop")
    assert r.returncode == 0 and "no daemon running" in r.stdout


def test_environment_names_the_socket(sock):
    env = dict(os.environ, LVS_SOCKET=sock)
    assert lvs("daemon", "--detach", env=env).returncode == 0
    assert ctl.alive(sock)
    assert lvs("daemon", "--stop", env=env).returncode == 0


def test_live_daemon_is_an_error_and_stale_socket_is_replaced(sock):
    assert lvs("daemon", "--socket", sock, "--detach").returncode == 0
    r = lvs("daemon", "--socket", sock, "--detach")
    assert r.returncode == 1 and "already running on %s" % sock in r.stderr
    lvs("daemon", "--socket", sock, "--stop")
    # A socket file with nobody behind it, as a killed daemon leaves it.
    os.makedirs(os.path.dirname(sock), exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock)
    stale.close()
    assert os.path.exists(sock) and not ctl.alive(sock)
    assert lvs("daemon", "--socket", sock, "--detach").returncode == 0
    assert ctl.alive(sock)


def test_bad_rules_fail_before_detaching(sock, tmp_path):
    rules = tmp_path / "bad.rules"
    rules.write_text("-A -t 198.51.100.2:80 -s rr\n-A -t 198.51.100.2:80 -s rr\n")
    r = lvs("daemon", "--socket", sock, "--rules", str(rules), "--detach")
    assert r.returncode == 1
    assert r.stderr.strip() == "lvs daemon: %s:2: Service already exists" % rules
    assert not os.path.exists(sock)


def test_sigterm_stops_a_foreground_daemon(sock):
    p = subprocess.Popen([sys.executable, "-m", "lvs", "daemon", "--socket", sock], cwd=ROOT)
    try:
        deadline = time.monotonic() + 10
        while not ctl.alive(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ctl.alive(sock)
        p.terminate()
        assert p.wait(timeout=10) == 0
        assert not os.path.exists(sock)
    finally:
        if p.poll() is None:
            p.kill()


def test_feed_runs_a_capture(sock):
    assert lvs("daemon", "--socket", sock, "--rules", RULES, "--clock", "capture", "--detach").returncode == 0
    answer = ctl.request(sock, {"op": "feed", "path": CAPTURE})
    assert answer["status"] == 0 and answer["packets"] == 43 and answer["sent"] == 40
    assert answer["drops"] == {"arp": 1, "no_service": 2}


def test_bad_requests_get_an_error(sock):
    assert lvs("daemon", "--socket", sock, "--detach").returncode == 0
    assert "error" in ctl.request(sock, {"op": "nonsense"})
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(b"not json\n")
    s.shutdown(socket.SHUT_WR)
    assert "bad request" in json.loads(ctl.read_line(s).decode())["error"]
    s.close()
    assert ctl.alive(sock)  # and it still serves


def test_lvsadm_without_daemon_fails_like_ipvsadm_without_the_module(tmp_path):
    path = str(tmp_path / "none.sock")
    env = dict(os.environ, LVS_SOCKET=path)
    r = subprocess.run([sys.executable, "-c", "import sys; from lvs.lvsadm import main; sys.exit(main())",
                        "-Ln"], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == ""
    first, second = r.stderr.splitlines()
    assert first == "Can't initialize ipvs: Protocol not available"
    assert path in second and "lvs daemon --detach" in second


def test_a_backup_sync_daemon_installs_what_it_hears(sock):
    # The kernel's sync message over real multicast UDP on the loopback, into a
    # daemon's backup; lvs daemon --stats shows what it counted.
    from lvs.syncmsg import SyncEntry, encode
    assert lvs("daemon", "--socket", sock, "--detach", "--sysctl", "sync_ports=2").returncode == 0
    env = dict(os.environ, LVS_SOCKET=sock)
    # The sysctls, as `sysctl net.ipv4.vs.*` shows them; a bad value changes nothing.
    r = lvs("sysctl", "--socket", sock, "sync_ports", "net.ipv4.vs.sync_threshold")
    assert r.stdout == "net.ipv4.vs.sync_ports = 2\nnet.ipv4.vs.sync_threshold = 3\t50\n", r.stderr
    r = lvs("sysctl", "--socket", sock, "sync_retries=1", "sync_ports=3")
    assert r.returncode == 1 and "sync_ports" in r.stderr
    assert lvs("sysctl", "--socket", sock, "sync_retries").stdout == "net.ipv4.vs.sync_retries = 0\n"

    def lvsadm(*args):
        return subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'lvsadm'; "
                               "from lvs.lvsadm import main; sys.exit(main())"] + list(args),
                              capture_output=True, text=True, timeout=30, env=env)
    for args in (["-A", "-t", "203.0.113.200:80"], ["-a", "-t", "203.0.113.200:80", "-r", "192.0.2.11:80", "-m"]):
        assert lvsadm(*args).returncode == 0
    r = lvsadm("--start-daemon", "backup", "--mcast-interface", "lo", "--syncid", "7", "--mcast-port", "18848")
    if r.returncode != 0:
        pytest.skip("no multicast on the loopback here: %s" % r.stderr.strip())
    entry = SyncEntry(6, 0, 1, bytes([198, 51, 100, 7]), 40000, bytes([203, 0, 113, 200]), 80,
                      bytes([192, 0, 2, 11]), 80, 0, 900)
    good = encode([entry], syncid=7)[0]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    try:
        for data in (good[:-3], encode([entry], syncid=8)[0]):   # truncated, foreign
            s.sendto(data, ("224.0.0.81", 18848))
        s.sendto(good, ("224.0.0.81", 18849))   # sync_ports 2: the second port is heard too
    finally:
        s.close()
    deadline = time.monotonic() + 5
    while "ESTABLISHED" not in lvsadm("-Lnc").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "198.51.100.7:40000" in lvsadm("-Lnc").stdout
    stats = json.loads(lvs("daemon", "--socket", sock, "--stats").stdout)["sync"]
    assert stats["sync_messages_received"] == 3 and stats["sync_installed"] == 1
    assert stats["sync_bad_size"] == 1 and stats["sync_foreign_syncid"] == 1
    assert lvsadm("-L", "--daemon").stdout.startswith("backup sync daemon (mcast=lo, syncid=7")


_MCAST6 = r"""
import select, sys
from lvs.ports import mcast
cfg = {"mcast_ifn": sys.argv[1], "mcast_group": "ff02::1:81", "mcast_port": 18848, "mcast_ttl": 1}
rx = mcast.receive_socket(dict(cfg, mcast_ifn=sys.argv[2]))
tx = mcast.send_socket(cfg)
tx.send(b"sync over ipv6")
ready, _, _ = select.select([rx], [], [], 5.0)
print(rx.recv(100).decode() if ready else "nothing")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a network namespace and a veth pair")
def test_sync_sockets_over_ipv6_multicast():
    # The kernel's sockets for an IPv6 --mcast-group: a master's datagram leaves one
    # end of a veth pair and a backup's socket, joined on the other end, hears it.
    ns = "pylvs-mc6-%d" % os.getpid()
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, timeout=30)  # noqa: E731
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "add", "mca", "type", "veth", "peer", "name", "mcb")
        for dev in ("mca", "mcb"):
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.%s.accept_dad=0" % dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _MCAST6, "mca", "mcb"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.stdout.strip() == "sync over ipv6", r.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
