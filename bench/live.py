"""Live benchmarks in namespaces: pylvs against no balancer, the kernel and HAProxy.

lvs lab's topology (lvs.lab.Topology) with three real servers: rs1 behind NAT
(its default route is the director), rs3 behind an IPIP tunnel (decapsulated
by `lvs realserver`, in userspace where the kernel has no ipip module), rs2
for direct routing (the VIP on its
loopback). Each workload runs, in the same run, through:

  direct      the DR server's own address: bridge and kernels only (baseline)
  pylvs-nat   pylvs on AF_PACKET, NAT to rs1
  pylvs-dr    pylvs on AF_PACKET, direct routing to rs2
  pylvs-tunnel pylvs on AF_PACKET, IPIP to rs3
  pylvs-nat-recvfrom, pylvs-nat-2workers (UDP only): the other port choices,
              recvfrom() instead of the ring, and --workers 2 loaded from two
              client addresses (against one process loaded the same way)
  minfwd-nat  bench/minfwd.py: a Python NAT forwarder on the same kind of port
              that only rewrites addresses (the ceiling for a Python data plane)
  kernel-nft  the director's own kernel: the VIP as a local address and an
              nftables DNAT to rs1 (what kube-proxy's nft mode does)
  haproxy     HAProxy in TCP mode on the VIP, to rs1 (TCP workloads only)

Workloads, each bounded in time, a median of rounds:
  udp    UDP echo, 64-byte payloads, 32 in flight: round trips/s
  rr     TCP request/response on one connection (64 bytes each way): round trips/s
  conn   new TCP connections/s (connect, one request, close)
  http   HTTP requests/s over 16 kept-alive connections (wrk against nginx),
         with wrk's p50 and p99 latency

The director's CPU share (its process's user+system time over the wall time)
is given where one process does the work, and the rate per core from it.
Output: one JSON line per figure (bench/__main__.py makes the table).
Run as root: python -m bench.live [--quick]
"""

import json
import os
import re
import shutil
import statistics
import sys
import time

from lvs.lab import IFACE, VIP, Topology

_ECHO = r"""
import socket, threading
def serve(c):
    with c:
        while True:
            d = c.recv(4096)
            if not d:
                return
            c.sendall(d)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000)); s.listen(512)
print("ready", flush=True)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

_LOAD = r"""
import json, socket, sys, time
kind, addr, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
source = (sys.argv[4], 0) if len(sys.argv) > 4 else None
payload = b"x" * 64
end = time.monotonic() + seconds
n = lost = 0
start = time.monotonic()
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
    if source:
        s.bind(source)
    s.connect((addr, 9000))
    inflight = 0
    while time.monotonic() < end:
        while inflight < 32:
            s.send(payload); inflight += 1
        try:
            s.recv(2048); n += 1; inflight -= 1
        except socket.timeout:
            lost += inflight; inflight = 0
elif kind == "rr":
    s = socket.create_connection((addr, 9000), timeout=2)
    while time.monotonic() < end:
        s.sendall(payload)
        got = 0
        while got < 64:
            got += len(s.recv(4096))
        n += 1
    s.close()
else:
    while time.monotonic() < end:
        s = socket.create_connection((addr, 9000), timeout=2)
        s.sendall(payload); s.recv(4096); s.close(); n += 1
print(json.dumps({"rate": n / (time.monotonic() - start), "lost": lost}))
"""

_NGINX = """worker_processes 1;
daemon off;
pid %(dir)s/nginx-%(role)s.pid;
error_log %(dir)s/nginx-%(role)s.err;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %(dir)s/nginx-%(role)s-tmp;
    server { listen 8000 reuseport backlog=1024; keepalive_requests 1000000;
             location / { return 200 "ok\\n"; } }
}
"""

_HAPROXY = """global
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
listen tcp9000
    bind %(vip)s:9000
    server rs1 %(rs1)s:9000
listen tcp8000
    bind %(vip)s:8000
    server rs1 %(rs1)s:8000
"""

_NFT = """table ip pylvsbench {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr %(vip)s meta l4proto { tcp, udp } th dport { 8000, 9000 } dnat to %(rs1)s
    }
}
"""


def emit(**row):
    row["impl"] = sys.implementation.name
    print(json.dumps(row), flush=True)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(topo, kind, addr, seconds, sources=None):
    if sources:
        # One load per client address, at once (fanout spreads clients by address).
        procs = [topo.popen("client", [sys.executable, "-c", _LOAD, kind, addr, str(seconds), src],
                            name="load-%s-%d" % (src, time.monotonic_ns()), lifetime=seconds + 30)
                 for src in sources]
        total = 0.0
        for p in procs:
            p.wait(timeout=seconds + 30)
            total += json.loads(topo.read_log(p).strip().splitlines()[-1])["rate"]
        return total, {}
    if kind == "http":
        r = topo.run("client", ["wrk", "-t1", "-c16", "-d%ds" % max(1, round(seconds)), "--latency",
                                "http://%s:8000/" % addr], timeout=seconds + 30)
        rate = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
        if r.returncode != 0 or not rate:
            raise RuntimeError("wrk: %s" % (r.stderr or r.stdout).strip())
        lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", r.stdout, re.M))
        return float(rate.group(1)), {k: _ms(v) for k, v in lat.items()}
    r = topo.python("client", _LOAD, kind, addr, seconds, timeout=seconds + 30)
    if r.returncode != 0:
        raise RuntimeError("load: %s" % r.stderr.strip())
    return json.loads(r.stdout)["rate"], {}


def _ms(text):
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(topo, mode, kind, addr, seconds, rounds, pid, baseline, sources=None):
    """`pid`: the forwarding process, or a list of them (their CPU shares add up)."""
    pids = pid if isinstance(pid, list) else [pid] if pid else []
    rates, lat, cpu = [], [], []
    for _ in range(rounds):
        c0, t0 = sum(map(cpu_seconds, pids)), time.monotonic()
        rate, latency = load(topo, kind, addr, seconds, sources)
        if pids:
            cpu.append((sum(map(cpu_seconds, pids)) - c0) / (time.monotonic() - t0))
        rates.append(rate)
        lat.append(latency)
    rate = statistics.median(rates)
    row = {"case": "live %s %s" % (kind, mode), "value": round(rate, 1),
           "unit": "req/s" if kind == "http" else "rt/s" if kind != "conn" else "conn/s",
           "mode": mode, "workload": kind}
    if baseline is not None:
        row["baseline"] = round(baseline, 1)
        row["ratio"] = round(rate / baseline, 3)
    if cpu:
        share = statistics.median(cpu)
        row["cpu"] = round(share, 3)
        if share > 0.05:
            row["per_core"] = round(rate / share, 1)
    if lat and lat[0]:
        row["p50_ms"] = statistics.median(x.get("50", 0) for x in lat)
        row["p99_ms"] = statistics.median(x.get("99", 0) for x in lat)
    emit(**row)
    return rate


_GUARD = """table ip pylvsbenchfwd {
    chain pre {
        type filter hook prerouting priority raw - 10; policy accept;
        ip daddr %(vip)s drop
        ip saddr %(rs1)s th sport { 8000, 9000 } drop
    }
}
"""


def minimal_forwarder(topo, workloads, seconds, rounds, direct):
    """bench/minfwd.py in the director, NAT to rs1; the client knows the VIP's MAC."""
    rs1 = topo.ip("rs1")
    topo.run("director", ["nft", "-f", "-"], input=_GUARD % {"vip": VIP, "rs1": rs1}, check=True)
    topo.run("client", ["ip", "neigh", "replace", VIP, "lladdr", topo.mac("director"), "dev", IFACE,
                        "nud", "permanent"], check=True)
    p = topo.popen("director", [sys.executable, "-u", "-m", "bench.minfwd", IFACE, VIP, rs1,
                                topo.mac("rs1"), "8000", "9000", "--seconds", "900"],
                   name="minfwd", lifetime=1000)
    try:
        topo.wait_for_output(p, "ready")
        for kind in workloads:
            measure(topo, "minfwd-nat", kind, VIP, seconds, rounds, p.pid, direct[kind])
    finally:
        topo.stop(p)
        topo.run("client", ["ip", "neigh", "del", VIP, "dev", IFACE])
        topo.run("director", ["nft", "delete", "table", "ip", "pylvsbenchfwd"])


def daemon_pid(topo, every=False):
    """The daemon's PID (with every=True: its own and its workers')."""
    r = topo.python("director", "from lvs import ctl; import json; "
                                "print(json.dumps(ctl.request(ctl.socket_path(), {'op': 'ping'})))")
    answer = json.loads(r.stdout)
    return answer.get("workers", [answer["pid"]]) if every else answer["pid"]


def nat_services(topo):
    topo.lvsadm("-C")
    for proto, port in (("-t", 9000), ("-u", 9000), ("-t", 8000)):
        topo.lvsadm("-A", proto, "%s:%d" % (VIP, port), "-s", "rr")
        topo.lvsadm("-a", proto, "%s:%d" % (VIP, port), "-r", "%s:%d" % (topo.ip("rs1"), port), "-m")


def port_choices(topo, seconds, rounds, direct):
    """UDP through pylvs NAT on the other port choices, each against the same baseline:
    recvfrom() instead of the PACKET_MMAP ring, and two processes sharing the port
    (--workers 2) loaded from two client addresses, as two clients load it."""
    sources = ["198.51.100.100", "198.51.100.101"]
    for src in sources:
        topo.run("client", ["ip", "addr", "add", src + "/24", "dev", IFACE], check=True)
    two = measure(topo, "pylvs-nat-two-clients", "udp", VIP, seconds, rounds, daemon_pid(topo),
                  direct["udp"], sources=sources)
    for mode, extra in (("pylvs-nat-recvfrom", ["--no-ring"]), ("pylvs-nat-2workers", ["--workers", "2"])):
        topo.stop_daemon()
        topo.start_daemon(*extra)
        nat_services(topo)
        if mode == "pylvs-nat-recvfrom":
            measure(topo, mode, "udp", VIP, seconds, rounds, daemon_pid(topo), direct["udp"])
        else:
            measure(topo, mode, "udp", VIP, seconds, rounds, daemon_pid(topo, every=True), two,
                    sources=sources)


def main(argv):
    quick = "--quick" in argv
    seconds, rounds = (1.0, 1) if quick else (3.0, 3)
    if os.geteuid() != 0:
        emit(part="live", skipped="needs root (network namespaces)")
        return
    have_wrk = shutil.which("wrk") and shutil.which("nginx")
    have_haproxy = shutil.which("haproxy")
    workloads = ["udp", "rr", "conn"] + (["http"] if have_wrk else [])
    if not have_wrk:
        emit(part="live http", skipped="wrk and nginx not installed (tools/setup.sh --bench)")
    if not have_haproxy:
        emit(part="live haproxy", skipped="haproxy not installed (tools/setup.sh --bench)")
    topo = Topology(tag="b%d" % os.getpid(), servers=3)
    topo.build()
    try:
        topo.start_daemon()
        topo.setup_realserver("rs1", "nat")
        topo.setup_realserver("rs2", "dr")
        topo.setup_realserver("rs3", "tunnel")
        rs1 = topo.ip("rs1")
        for role in ("rs1", "rs2", "rs3"):
            p = topo.popen(role, [sys.executable, "-u", "-c", _ECHO], name="echo-" + role, lifetime=1800)
            topo.wait_for_output(p, "ready")
            topo.udp_echo_server(role, 9000, lifetime=1800)  # answers from the VIP, for DR
            if have_wrk:
                conf = os.path.join(topo.workdir, "nginx-%s.conf" % role)
                with open(conf, "w") as f:
                    f.write(_NGINX % {"dir": topo.workdir, "role": role})
                os.makedirs(os.path.join(topo.workdir, "nginx-%s-tmp" % role), exist_ok=True)
                topo.popen(role, ["nginx", "-c", conf, "-p", topo.workdir], name="nginx-" + role, lifetime=1800)
        # Tens of thousands of short connections from one client: without reuse of
        # TIME_WAIT ports the client runs out of them and the conn workload
        # measures its own port search instead of the path.
        topo.run("client", ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1",
                            "net.ipv4.ip_local_port_range=1024 65000"], check=True)
        time.sleep(0.5)
        direct = {}
        for kind in workloads:
            direct[kind] = measure(topo, "direct", kind, topo.ip("rs2"), seconds, rounds, None, None)
        for mode, role, flag in (("pylvs-dr", "rs2", "-g"), ("pylvs-tunnel", "rs3", "-i"),
                                 ("pylvs-nat", "rs1", "-m")):
            # A fresh director per mode: the connections of the last one would still
            # hold client ports (the client reuses them) bound to a deleted server,
            # and the kernel's rule drops packets to one (so does pylvs).
            topo.stop_daemon()
            topo.start_daemon()
            pid = daemon_pid(topo)
            for proto, port in (("-t", 9000), ("-u", 9000), ("-t", 8000)):
                topo.lvsadm("-A", proto, "%s:%d" % (VIP, port), "-s", "rr")
                topo.lvsadm("-a", proto, "%s:%d" % (VIP, port), "-r", "%s:%d" % (topo.ip(role), port), flag)
            for kind in workloads:
                measure(topo, mode, kind, VIP, seconds, rounds, pid, direct[kind])
        r = topo.python("director", "from lvs import ctl; import json; print(json.dumps("
                        "ctl.request(ctl.socket_path(), {'op': 'stats'})))")
        stats = json.loads(r.stdout)
        emit(case="live pylvs drops", value=sum(stats["drops"].values()), unit="packets",
             drops=stats["drops"], ring_drops={k: v for k, v in stats["director"].items() if "ring_drops" in k})
        port_choices(topo, seconds, rounds, direct)
        topo.stop_daemon()
        minimal_forwarder(topo, workloads, seconds, rounds, direct)
        # The director's own kernel holds the VIP now.
        topo.run("director", ["ip", "addr", "add", VIP + "/32", "dev", IFACE], check=True)
        topo.run("director", ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        topo.run("director", ["nft", "-f", "-"], input=_NFT % {"vip": VIP, "rs1": rs1}, check=True)
        for kind in workloads:
            measure(topo, "kernel-nft", kind, VIP, seconds, rounds, None, direct[kind])
        topo.run("director", ["nft", "delete", "table", "ip", "pylvsbench"], check=True)
        if have_haproxy:
            conf = os.path.join(topo.workdir, "haproxy.cfg")
            with open(conf, "w") as f:
                f.write(_HAPROXY % {"vip": VIP, "rs1": rs1})
            p = topo.popen("director", ["haproxy", "-db", "-f", conf], name="haproxy", lifetime=1800)
            time.sleep(1.0)
            if p.poll() is not None:
                emit(part="live haproxy", skipped="haproxy exited: %s" % topo.read_log(p).strip()[-200:])
            else:
                for kind in workloads:  # `ip netns exec` execs: p.pid is haproxy's own
                    if kind != "udp":
                        measure(topo, "haproxy", kind, VIP, seconds, rounds, p.pid, direct[kind])
    finally:
        topo.teardown()


if __name__ == "__main__":
    main(sys.argv[1:])
