"""End to end: Debian's prometheus-node-exporter reads `lvs daemon --procfs DIR` as it reads
a kernel director's /proc, and says what lvsadm and `lvs daemon --metrics` say.

No root needed: the daemon runs on a socket in a temporary folder and is fed the tutorial's
capture (--feed, --clock capture: the counters are real and do not move afterwards); its
rules add IPv6 and firewall-mark services (the recorded probe's, tests/data/golden/procfs.json)
so that node_exporter's parser meets every line form. node_exporter listens on 127.0.0.1 with
only its ipvs collector; every HTTP read has a timeout, and both processes are ours and are
ended by their PIDs.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from lvs import ctl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTURE = os.path.join(ROOT, "examples", "tutorial.pcap")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")

RULES = """\
-A -t 198.51.100.2:80 -s rr
-a -t 198.51.100.2:80 -r 198.51.100.10:10 -g -w 1
-a -t 198.51.100.2:80 -r 198.51.100.11:11 -i -w 1
-a -t 198.51.100.2:80 -r 198.51.100.12:12 -m -w 1
-A -u 203.0.113.200:53 -s wrr
-a -u 203.0.113.200:53 -r 192.0.2.11:53 -m -w 2 -x 100 -y 50
-A -f 1 -s sh
-a -f 1 -r 192.0.2.11:80 -m -w 5
-A -f 2 -s rr -p 60 -o
-a -f 2 -r 192.0.2.12:0 -g -w 1
-A -t [2001:db8::200]:80 -s wrr
-a -t [2001:db8::200]:80 -r [2001:db8:2::11]:80 -m -w 2
-a -t [2001:db8::200]:80 -r [2001:db8:2::12]:80 -m -w 1
-A -u [2001:db8::200]:53 -s lc -p 120 -M 64
-a -u [2001:db8::200]:53 -r [2001:db8:2::13]:53 -m -w 1
-A -f 3 -6 -s rr -p 90
-a -f 3 -6 -r [2001:db8:2::11]:80 -m -w 3
"""

pytestmark = pytest.mark.skipif(
    NODE_EXPORTER is None,
    reason="prometheus-node-exporter is not installed (tools/setup.sh installs it from Debian)")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_http(url, proc=None, seconds=15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("exited with %s" % proc.returncode)
        try:
            return get(url, timeout=2.0)
        except OSError:
            time.sleep(0.1)
    raise AssertionError("no answer from %s within %g s" % (url, seconds))


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def node_ipvs(text):
    """{(name, sorted labels): value} of the node_ipvs_* samples."""
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m or not m.group(1).startswith("node_ipvs_"):
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def lvsadm(sock, *argv):
    answer = ctl.request(sock, {"op": "adm", "argv": list(argv), "prog": "ipvsadm"}, timeout=10)
    assert answer["status"] == 0, answer
    return answer["stdout"]


def listed_backends(ln, ln_stats):
    """node_exporter's label values and numbers from lvsadm -Ln and -Ln --stats --exact."""
    def local(name):
        m = re.match(r"^(TCP|UDP)  \[?([^\]]*?)\]?:(\d+)$", name)
        if m:
            return m.group(2), m.group(3), m.group(1), ""
        m = re.match(r"^FWM  (\d+)( IPv6)?$", name)
        return "", "0", "FWM", "%08X" % int(m.group(1))

    def remote(name):
        m = re.match(r"^\[?([^\]]*?)\]?:(\d+)$", name)
        return m.group(1), m.group(2)
    backends, service = {}, None
    for line in ln.splitlines()[3:]:
        if line.startswith("  -> "):
            f = line[5:].split()
            raddr, rport = remote(f[0])
            key = (service[0], service[1], raddr, rport, service[2], service[3])
            backends[key] = (float(f[3]), float(f[4]), float(f[2]))
        else:
            service = local(re.split(r" (?:rr|wrr|sh|lc)\b", line)[0])
    totals = [0, 0, 0, 0, 0]
    for line in ln_stats.splitlines()[3:]:
        if not line.startswith("  -> "):
            for i, v in enumerate(line.split()[-5:]):
                totals[i] += int(v)
    return backends, totals


@pytest.fixture
def director(tmp_path):
    sock = str(tmp_path / "run" / "lvs.sock")
    rules = tmp_path / "rules"
    rules.write_text(RULES)
    procdir = tmp_path / "proc"
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "lvs", "daemon", "--socket", sock, "--rules", str(rules),
                        "--feed", CAPTURE, "--clock", "capture", "--procfs", str(procdir),
                        "--metrics", "127.0.0.1:%d" % port, "--detach"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    pid = ctl.request(sock, {"op": "ping"}, timeout=5)["pid"]
    try:
        yield sock, str(procdir), port
    finally:
        subprocess.run([sys.executable, "-m", "lvs", "daemon", "--socket", sock, "--stop"],
                       capture_output=True, timeout=30, cwd=ROOT)
        try:
            os.kill(pid, signal.SIGKILL)  # ours, by PID, if --stop did not end it
        except ProcessLookupError:
            pass


@pytest.fixture
def node_exporter(director):
    _, procdir, _ = director
    port = free_port()
    proc = subprocess.Popen([NODE_EXPORTER, "--path.procfs", procdir, "--collector.disable-defaults",
                             "--collector.ipvs", "--web.listen-address", "127.0.0.1:%d" % port],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http("http://127.0.0.1:%d/metrics" % port, proc)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # by its PID (Popen)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        proc.stderr.close()


def test_node_exporter_reads_our_procfs(director, node_exporter):
    sock, procdir, metrics_port = director
    assert sorted(os.listdir(os.path.join(procdir, "net"))) == [
        "ip_vs", "ip_vs_conn", "ip_vs_conn_sync", "ip_vs_stats", "ip_vs_stats_percpu"]
    text = get("http://127.0.0.1:%d/metrics" % node_exporter)
    assert 'node_scrape_collector_success{collector="ipvs"} 1' in text
    theirs = node_ipvs(text)
    ours = node_ipvs(get("http://127.0.0.1:%d/metrics" % metrics_port))

    # lvsadm's view of the same tables
    backends, totals = listed_backends(lvsadm(sock, "-Ln"), lvsadm(sock, "-Ln", "--stats", "--exact"))
    assert len(backends) == 10
    assert totals[0] == 6 and totals[1] > 0  # the tutorial's six connections were counted
    names = ("node_ipvs_connections_total", "node_ipvs_incoming_packets_total",
             "node_ipvs_outgoing_packets_total", "node_ipvs_incoming_bytes_total",
             "node_ipvs_outgoing_bytes_total")
    for name, value in zip(names, totals):
        assert theirs[(name, ())] == value, name
    labels = ("local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark")
    for key, (active, inactive, weight) in backends.items():
        lk = tuple(sorted(zip(labels, key)))
        assert theirs[("node_ipvs_backend_connections_active", lk)] == active, key
        assert theirs[("node_ipvs_backend_connections_inactive", lk)] == inactive, key
        assert theirs[("node_ipvs_backend_weight", lk)] == weight, key
    assert len(theirs) == 5 + 3 * len(backends)
    # IPv6 and firewall marks as node_exporter labels them
    v6 = (("local_address", "2001:db8::200"), ("local_mark", ""), ("local_port", "80"),
          ("proto", "TCP"), ("remote_address", "2001:db8:2::11"), ("remote_port", "80"))
    assert theirs[("node_ipvs_backend_weight", v6)] == 2
    fwm6 = (("local_address", ""), ("local_mark", "00000003"), ("local_port", "0"),
            ("proto", "FWM"), ("remote_address", "2001:db8:2::11"), ("remote_port", "80"))
    assert theirs[("node_ipvs_backend_weight", fwm6)] == 3

    # and our own endpoint says exactly what node_exporter says, with the same help and types
    assert ours == theirs
    ours_text = get("http://127.0.0.1:%d/metrics" % metrics_port)
    meta = re.compile(r"^# (?:HELP|TYPE) node_ipvs_.*$", re.M)
    assert sorted(meta.findall(ours_text)) == sorted(meta.findall(text))
    assert len(meta.findall(text)) == 16


def test_procfs_follows_lvsadm_and_goes_at_exit(director, node_exporter):
    sock, procdir, _ = director
    lvsadm(sock, "-A", "-t", "192.0.2.200:8080", "-s", "rr")
    lvsadm(sock, "-a", "-t", "192.0.2.200:8080", "-r", "192.0.2.21:8080", "-m", "-w", "7")
    with open(os.path.join(procdir, "net", "ip_vs")) as f:  # written before lvsadm's answer
        assert "TCP  C00002C8:1F90 rr  \n  -> C0000215:1F90      Masq    7      0          0" in f.read()
    theirs = node_ipvs(get("http://127.0.0.1:%d/metrics" % node_exporter))
    key = (("local_address", "192.0.2.200"), ("local_mark", ""), ("local_port", "8080"),
           ("proto", "TCP"), ("remote_address", "192.0.2.21"), ("remote_port", "8080"))
    assert theirs[("node_ipvs_backend_weight", key)] == 7
    subprocess.run([sys.executable, "-m", "lvs", "daemon", "--socket", sock, "--stop"],
                   capture_output=True, timeout=30, cwd=ROOT, check=True)
    assert not os.path.exists(os.path.join(procdir, "net"))
