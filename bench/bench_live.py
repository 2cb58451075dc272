"""The live data plane, measured end to end in namespaces, against the same traffic
sent straight to the real server in the same run.

lvs lab's topology (lvs.lab.Topology), one NAT real server and one DR real
server behind the daemon on AF_PACKET. Three workloads, each bounded in count
and time, each run through the VIP and, as the baseline, to the server's own
address (the DR server's: the bridge and the kernels only, no director in
the path; a NAT server routes all its traffic through the director):

  udp   UDP echo (answered from the address it was sent to), 64-byte payloads, a window of 32 datagrams in flight:
        round trips per second
  rr    TCP request/response on one connection (64 bytes each way):
        round trips per second
  conn  new TCP connections per second (connect, 1 request, close)

Run as root: python bench/bench_live.py [seconds per workload]  (.venv or .venv-pypy:
the daemon runs under the same interpreter). Numbers move with the machine's load;
the ratio to the baseline of the same run is the figure to compare.
"""

import json
import os
import statistics
import sys

from lvs.lab import Topology

VIP = "198.51.100.2"

_ECHO = r"""
import socket, sys, threading
def serve(c):
    with c:
        while True:
            d = c.recv(4096)
            if not d:
                return
            c.sendall(d)
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 9000)); s.listen(128)
    while True:
        c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

_LOAD = r"""
import json, socket, sys, time
kind, addr, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
payload = b"x" * 64
end = time.monotonic() + seconds
n = lost = 0
start = time.monotonic()
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5); s.connect((addr, 9000))
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


def run(topo, kind, addr, seconds):
    r = topo.python("client", _LOAD, kind, addr, seconds, timeout=seconds + 30)
    if r.returncode != 0:
        raise SystemExit("load failed: %s" % r.stderr)
    return json.loads(r.stdout)["rate"]


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    rounds = 3
    if os.geteuid() != 0:
        raise SystemExit("bench_live needs root (network namespaces)")
    topo = Topology(tag="b%d" % os.getpid(), servers=2)
    topo.build()
    try:
        topo.start_daemon()
        topo.setup_realserver("rs1", "nat")
        topo.setup_realserver("rs2", "dr")
        for role in ("rs1", "rs2"):
            p = topo.popen(role, [sys.executable, "-u", "-c", _ECHO], name="echo-" + role, lifetime=600)
            topo.wait_for_output(p, "ready")
            # UDP answers must leave from the address they came to (the VIP, for DR).
            topo.udp_echo_server(role, 9000, lifetime=600)
        impl = sys.implementation.name
        print("%s %s, %g s per measurement, median of %d" % (impl, sys.version.split()[0], seconds, rounds))
        print("%-5s %-4s %12s %12s %7s" % ("load", "mode", "via VIP /s", "direct /s", "ratio"))
        for method, role, flag in (("nat", "rs1", "-m"), ("dr", "rs2", "-g")):
            topo.lvsadm("-C")
            for proto in ("-t", "-u"):
                topo.lvsadm("-A", proto, VIP + ":9000", "-s", "rr")
                topo.lvsadm("-a", proto, VIP + ":9000", "-r", topo.ip(role) + ":9000", flag)
            for kind in ("udp", "rr", "conn"):
                via = statistics.median(run(topo, kind, VIP, seconds) for _ in range(rounds))
                # The baseline is the DR server's own address: a NAT server routes
                # everything through the director, so nothing reaches it directly.
                direct = statistics.median(run(topo, kind, topo.ip("rs2"), seconds) for _ in range(rounds))
                print("%-5s %-4s %12.0f %12.0f %7.2f" % (kind, method, via, direct, via / direct))
        drops = json.loads(topo.python("director", "from lvs import ctl; import json; print(json.dumps("
                                       "ctl.request(ctl.socket_path(), {'op': 'stats'})))").stdout)
        print("director:", {k: v for k, v in drops["director"].items() if v and "ring" in k or k == "sent"},
              "engine drops:", drops["drops"])
    finally:
        topo.teardown()


if __name__ == "__main__":
    main()
