"""Live: pylvs's port choices under one minimal forwarder, in the same run.

bench/portfwd.py, one Python forwarder that only rewrites addresses, over
each port choice in turn:

  tun       a TUN device (lvs/ports/tun.py)
  recvfrom  AF_PACKET, recvfrom() and send() (RawPort ring=False)
  ring      AF_PACKET with the PACKET_MMAP ring (RawPort ring=True: the
            baseline, pylvs's default)

Topology: lvs lab's (lvs.lab.Topology) with one real server, in namespaces
of this run's own (lvslab-pNNN-*, removed at the end whatever happens):
client 198.51.100.1, director 198.51.100.3, rs1 198.51.100.10 on one
bridge; the VIP 198.51.100.2 is on no interface, and the client has a
static neighbour entry for it with the director's MAC. No default routes.

How packets get to and from the forwarder:
  AF_PACKET  the forwarder reads the client's frames on the director's eth0
             and sends the rewritten frames (rs1's MAC) out of it. The
             director's kernel does not forward (net.ipv4.ip_forward=0: its
             copy of each frame is dropped at the route lookup, silently).
  TUN        the forwarder creates the device (pbtun0); the director routes
             the VIP into it (ip route add 198.51.100.2/32 dev pbtun0,
             net.ipv4.ip_forward=1), so the kernel forwards the client's
             packets to the device and the forwarder reads them; what the
             forwarder writes back (destination rs1) the kernel takes as
             arriving on pbtun0 and routes out of eth0 to rs1 (rp_filter off
             on pbtun0: the client's source is behind eth0).

Load: UDP datagrams with a 64-byte payload from the client to VIP:9000, as
fast as one process sends them (sendmmsg() through ctypes, 256 a call; a
send() loop where that fails), bounded by a count and a time. rs1 counts and
drops them in an nftables counter at prerouting (raw priority): no socket,
no ICMP, no Python on the receiving side.

Per round: packets/s forwarded (what reached rs1 over the sender's time),
the forwarder's CPU share (its user+system time over the sender's time) and
per core (packets forwarded per CPU-second of the forwarder). Each round
starts the forwarder afresh and warms it up (PyPy's JIT) before it is
measured; a cycle measures each choice once, in rotating order; figures are
medians over the cycles, their ratios against the ring's medians of the same
run. What the kernel does before the packet reaches the port (bridge, the
director's IP receive and, for TUN, its forwarding into the device) runs in
the sender's context and is not in the forwarder's CPU; what happens after
the forwarder's send or write (for TUN: the kernel's routing of the written
packet, then the bridge and rs1's receive) is, in every case.

Output: one JSON line per figure (bench/__main__.py makes the table).
Run as root: python -m bench.ports [--quick]
"""

import json
import os
import re
import shutil
import statistics
import sys
import time

from lvs.lab import IFACE, VIP, Topology

from .live import cpu_seconds, emit
from .portfwd import KINDS

BASELINE = "ring"
TUN = "pbtun0"
PORT = 9000

_SEND = r"""
import ctypes, json, socket, sys, time
addr, port, seconds, count = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
payload = b"x" * 64
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((addr, port))
BATCH = 256
try:
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    class msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                    ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                    ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]
    class mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
    data = ctypes.create_string_buffer(payload, len(payload))
    iov = iovec(ctypes.cast(data, ctypes.c_void_p), len(payload))
    msgs = (mmsghdr * BATCH)()
    for i in range(BATCH):
        msgs[i].hdr.iov = ctypes.pointer(iov)
        msgs[i].hdr.iovlen = 1
    sendmmsg = ctypes.CDLL(None, use_errno=True).sendmmsg
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    fd = s.fileno()
    if sendmmsg(fd, msgs, 1, 0) != 1:
        raise OSError(ctypes.get_errno(), "sendmmsg")
    method, first = "sendmmsg", 1
except (OSError, AttributeError, TypeError):
    method, first = "send", 0
sent, errors = first, 0
start = time.monotonic()
end = start + seconds
if method == "sendmmsg":
    while sent < count and time.monotonic() < end:
        n = sendmmsg(fd, msgs, min(BATCH, count - sent), 0)
        if n > 0:
            sent += n
        else:
            errors += 1
else:
    send = s.send
    while sent < count and time.monotonic() < end:
        for _ in range(64):
            try:
                send(payload)
            except OSError:
                errors += 1
        sent += 64
print(json.dumps({"sent": sent, "seconds": time.monotonic() - start, "method": method, "errors": errors}))
"""

_SINK = """table ip pylvsbenchsink {
    counter arrived {}
    chain pre {
        type filter hook prerouting priority raw - 10; policy accept;
        ip saddr %(client)s udp dport %(port)d counter name "arrived" drop
    }
}
"""


def arrived(topo):
    """Datagrams from the client that reached rs1 so far (the sink's counter)."""
    r = topo.run("rs1", ["nft", "list", "counter", "ip", "pylvsbenchsink", "arrived"], check=True)
    return int(re.search(r"packets (\d+)", r.stdout).group(1))


def pinned(cpu):
    """`taskset -c CPU` where there are two CPUs or more: the sender and the forwarder each on
    its own (left to itself the scheduler puts the woken forwarder on the sender's CPU, and
    each gets half of one)."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def send_load(topo, seconds):
    """One bounded burst from the client to VIP:PORT; (datagrams sent, seconds spent, method)."""
    count = int(seconds * 5e6)
    r = topo.run("client", pinned(0) + [sys.executable, "-c", _SEND, VIP, str(PORT), str(seconds), str(count)],
                 timeout=seconds + 30)
    if r.returncode != 0:
        raise RuntimeError("sender: %s" % r.stderr.strip())
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["sent"], out["seconds"], out["method"]


def start_forwarder(topo, kind, lifetime):
    iface = TUN if kind == "tun" else IFACE
    # The director's kernel forwards only for TUN (into the device and out of it again).
    topo.run("director", ["sysctl", "-qw", "net.ipv4.ip_forward=%d" % (kind == "tun")], check=True)
    p = topo.popen("director", pinned(1) + [sys.executable, "-u", "-m", "bench.portfwd", kind, iface, VIP,
                                topo.ip("rs1"), topo.mac("rs1"), str(PORT), "--seconds", str(lifetime)],
                   name="portfwd-%s-%d" % (kind, time.monotonic_ns()), lifetime=lifetime + 30)
    topo.wait_for_output(p, "ready", timeout=30)
    if kind == "tun":
        for argv in (["ip", "link", "set", TUN, "up"],
                     ["sysctl", "-qw", "net.ipv4.conf.%s.rp_filter=0" % TUN],
                     ["ip", "route", "add", VIP + "/32", "dev", TUN]):
            topo.run("director", argv, check=True)
    return p


def one_round(topo, kind, seconds, warmup):
    """Start the forwarder, warm it up, measure one burst, stop it: the round's figures."""
    p = start_forwarder(topo, kind, lifetime=warmup + seconds + 60)
    try:
        send_load(topo, warmup)
        time.sleep(0.1)
        n0, c0 = arrived(topo), cpu_seconds(p.pid)
        sent, spent, method = send_load(topo, seconds)
        time.sleep(0.2)      # what is still queued reaches rs1
        n1, c1 = arrived(topo), cpu_seconds(p.pid)
        if p.poll() is not None:
            raise RuntimeError("forwarder (%s) exited: %s" % (kind, topo.read_log(p).strip()[-300:]))
    finally:
        topo.stop(p)
    forwarded, cpu = n1 - n0, c1 - c0
    return {"rate": forwarded / spent, "cpu": cpu / spent, "per_core": forwarded / cpu if cpu > 0 else None,
            "sent_rate": sent / spent, "delivered": forwarded / sent if sent else 0.0, "method": method}


def main(argv):
    quick = "--quick" in argv
    seconds, warmup, cycles = (1.0, 0.5, 3) if quick else (3.0, 1.0, 5)
    if os.geteuid() != 0:
        emit(part="live ports", skipped="needs root (network namespaces)")
        return
    if not os.path.exists("/dev/net/tun"):
        emit(part="live ports", skipped="no /dev/net/tun")
        return
    topo = Topology(tag="p%d" % os.getpid(), servers=1)
    topo.build()
    try:
        topo.run("rs1", ["nft", "-f", "-"], input=_SINK % {"client": topo.ip("client"), "port": PORT},
                 check=True)
        topo.run("client", ["ip", "neigh", "replace", VIP, "lladdr", topo.mac("director"), "dev", IFACE,
                            "nud", "permanent"], check=True)
        for name in ("all", "default"):
            topo.run("director", ["sysctl", "-qw", "net.ipv4.conf.%s.rp_filter=0" % name], check=True)
        got = {kind: [] for kind in KINDS}
        for cycle in range(cycles):
            order = KINDS[cycle % len(KINDS):] + KINDS[:cycle % len(KINDS)]
            for kind in order:
                got[kind].append(one_round(topo, kind, seconds, warmup))
        med = {kind: {key: statistics.median(r[key] for r in rounds if r[key] is not None)
                      for key in ("rate", "cpu", "per_core", "sent_rate", "delivered")}
               for kind, rounds in got.items()}
        base = med[BASELINE]
        for kind in KINDS:
            m = med[kind]
            common = {"port": kind, "rounds": len(got[kind]), "seconds": seconds,
                      "sender": got[kind][0]["method"]}
            emit(case="live ports udp minfwd %s" % kind, value=round(m["rate"], 1), unit="pkt/s",
                 baseline=round(base["rate"], 1), ratio=round(m["rate"] / base["rate"], 3),
                 cpu=round(m["cpu"], 3), per_core=round(m["per_core"], 1),
                 sent=round(m["sent_rate"], 1), delivered=round(m["delivered"], 3),
                 rates=[round(r["rate"], 1) for r in got[kind]], **common)
            emit(case="live ports udp minfwd %s per core" % kind, value=round(m["per_core"], 1),
                 unit="pkt/s", baseline=round(base["per_core"], 1),
                 ratio=round(m["per_core"] / base["per_core"], 3), cpu=round(m["cpu"], 3),
                 per_cores=[round(r["per_core"], 1) for r in got[kind] if r["per_core"]], **common)
    finally:
        topo.teardown()


if __name__ == "__main__":
    main(sys.argv[1:])
