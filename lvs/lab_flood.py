"""`lvs lab --flood`: established flows through a spoofed SYN flood.

The lab's segment (lvs/lab.py's Topology) with NAT real servers, so that both
directions of every flow pass the director, and a daemon started with a bounded
table and the automatic defense modes:

    lvs daemon --iface eth0 --max-conns N --sysctl drop_entry=1 --sysctl drop_packet=1
               --sysctl secure_tcp=1 --sysctl amemthresh=M

From the client, for the whole run (`warm-up + before + during + after`):

  download   one HTTP/1.1 GET of a stream the real server paces at --download-rate
             (10 ms ticks, no catching up after a stall), its bytes timed as they
             arrive
  requests   one kept-alive HTTP/1.1 connection, a GET every 10 ms (3 s for an
             answer, a new connection after a failure), each answer timed
  probes     a new connection and one GET every 0.25 s (1 s timeout): what a new
             client sees, whom the defense modes and the table bound turn away

and, during the middle phase only, the flood: a sender on an AF_PACKET socket in
the client's namespace sends pre-built TCP SYNs to VIP:80, each from a distinct
(source address, source port) drawn at random from 203.0.113.0/24 and
198.51.100.128/25 (documentation addresses that no lab host uses), paced in 1 ms
bursts, and stops after --flood-rate x during frames or `during` seconds (plus
one), whichever comes first. Nothing leaves the namespaces: the real servers
answer the spoofed SYNs through the director (their routes for the whole
segment and the default go there), the director routes those answers to the
client (a route for each spoofed range via 198.51.100.1, added in the
director's namespace before the daemon reads its routes), and an nftables table
in the client's namespace drops and counts them before routing.

While it runs, the lab process asks the daemon's control socket every 0.25 s
for its counters ("stats": drops by reason, frames to the engine, ring drops,
fast-path hits, table entries, the defense state) and the three mode sysctls,
and reads the daemon's VmRSS and CPU time from /proc (the daemon runs under
--daemon-python, e.g. .venv-pypy/bin/python; everything else under this
interpreter). --order sets how the daemon works through each batch
(lvs/director.py: PYLVS_ESTABLISHED_FIRST), for comparing. After the flows end it
keeps watching (at most --watch seconds) until the modes are back at 1. The
report gives each phase's figures; --json FILE keeps them all, with the samples.

Everything is bounded: every program started has a lifetime alarm and its own
deadline, and the namespaces are removed at the end whatever happens.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from . import ctl
from .lab import IFACE, LabError, Topology, _Terminated, has_privileges, remove_leftovers

FLOOD_NETS = ("203.0.113.0/24", "198.51.100.128/25")
PORT = 80
SAMPLE_PERIOD = 0.25
WARMUP = 1.0
RR_INTERVAL = 0.01
PROBE_INTERVAL = 0.25
MODES = ("drop_entry", "drop_packet", "secure_tcp")
# --order: the daemon's PYLVS_ESTABLISHED_FIRST (lvs/director.py), and what it means.
ORDERS = {"first": ("1", "established first, SYNs shed while the ring backs up"),
          "no-shed": ("order", "established first, nothing shed"),
          "arrival": ("0", "arrival order")}
# About the live director's most new connections a second in this lab (2 shared
# cores, a CPython sender; each spoofed SYN costs the general path twice, the SYN
# and the server's SYN-ACK): CPython created 16 k/s with no ring drop at 16 k/s
# offered, PyPy 33-47 k/s. The report says what was admitted.
DEFAULT_FLOOD_RATE = {"cpython": 16000, "pypy": 40000}
MAX_FLOOD_RATE = 200000
MAX_PHASE = 60.0


def flood_sources():
    """The spoofed sources: 203.0.113.1-254 and 198.51.100.128-253, as dotted quads."""
    return (["203.0.113.%d" % i for i in range(1, 255)]
            + ["198.51.100.%d" % i for i in range(128, 254)])


# ---------------------------------------------------------------- the programs

_SERVER = r"""
import socket, sys, threading, time
port, name = int(sys.argv[1]), sys.argv[2].encode()
TICK = 0.01

def stream(c, total, rate):
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % total)
    per = max(1, int(rate * TICK))
    chunk = bytes(per)
    sent, t = 0, time.monotonic()
    while sent < total:
        n = min(per, total - sent)
        c.sendall(chunk[:n])
        sent += n
        t += TICK
        d = t - time.monotonic()
        if d > 0:
            time.sleep(d)
        elif d < -TICK:
            t = time.monotonic()     # a stall: no catching up afterwards

def handle(c):
    try:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = c.makefile("rb")
        while True:
            line = f.readline(4096)
            if not line:
                return
            while True:
                h = f.readline(4096)
                if not h:
                    return
                if h in (b"\r\n", b"\n"):
                    break
            parts = line.split()
            path = parts[1] if len(parts) > 1 else b"/"
            if path.startswith(b"/stream?"):
                q = dict(kv.split(b"=", 1) for kv in path.split(b"?", 1)[1].split(b"&"))
                stream(c, min(int(q[b"bytes"]), 1 << 30), min(float(q[b"rate"]), 1e9))
            else:
                body = name + b"\n"
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except (OSError, ValueError, KeyError):
        pass
    finally:
        c.close()

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(1024)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""

_CLIENT = r"""
import json, socket, sys, threading, time
vip, port = sys.argv[1], int(sys.argv[2])
start, end, rate = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
rr_interval, probe_interval = float(sys.argv[6]), float(sys.argv[7])
GRACE = 10.0
out = {"download": {"samples": [], "bytes": 0, "expected": 0, "status": None, "error": None},
       "rr": [], "probe": []}

def wait_until(t):
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)

def read_answer(f):
    # One HTTP/1.1 answer with a Content-Length; its status.
    status = f.readline(4096).split()
    length = 0
    while True:
        h = f.readline(4096)
        if not h:
            raise OSError("closed")
        if h in (b"\r\n", b"\n"):
            break
        k, _, v = h.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    body = f.read(length)
    if len(status) < 2 or len(body) != length:
        raise OSError("short answer")
    return int(status[1])

def download():
    d = out["download"]
    total = int(rate * (end - start + 1.0))   # started 0.5 s early, it ends 0.5 s late
    d["expected"] = total
    try:
        s = socket.create_connection((vip, port), timeout=5)
        s.sendall(b"GET /stream?bytes=%d&rate=%d HTTP/1.1\r\nHost: vip\r\n\r\n" % (total, rate))
        s.settimeout(1.0)
        head, body = b"", 0
        samples = d["samples"]
        deadline = end + GRACE
        while body < total and time.monotonic() < deadline:
            try:
                data = s.recv(1 << 18)
            except socket.timeout:
                continue
            if not data:
                break
            if head is not None:
                head += data
                if b"\r\n\r\n" not in head:
                    continue
                head, _, data = head.partition(b"\r\n\r\n")
                d["status"] = int(head.split()[1])
                head = None
            body += len(data)
            samples.append((time.monotonic(), body))
        d["bytes"] = body
        s.close()
    except (OSError, ValueError, IndexError) as e:
        d["error"] = str(e)

def requests():
    s = f = None
    t = start
    while t < end:
        wait_until(t)
        t0 = time.monotonic()
        try:
            if s is None:
                s = socket.create_connection((vip, port), timeout=1.0)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(3.0)     # an answer may take a retransmission or two
                f = s.makefile("rb")
            s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
            status = read_answer(f)
            out["rr"].append((t0, time.monotonic() - t0, status == 200))
        except (OSError, ValueError):
            out["rr"].append((t0, time.monotonic() - t0, False))
            if s is not None:
                s.close()
            s = f = None
        t = max(t + rr_interval, time.monotonic())
    if s is not None:
        s.close()

def probes():
    t = start
    while t < end:
        wait_until(t)
        t0 = time.monotonic()
        ok = False
        try:
            s = socket.create_connection((vip, port), timeout=1.0)
            try:
                s.settimeout(1.0)
                s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
                ok = read_answer(s.makefile("rb")) == 200
            finally:
                s.close()
        except (OSError, ValueError):
            pass
        out["probe"].append((t0, time.monotonic() - t0, ok))
        t = max(t + probe_interval, time.monotonic())

threads = [threading.Thread(target=f, daemon=True) for f in (download, requests, probes)]
wait_until(start - 0.5)
for th in threads:
    th.start()
for th in threads:
    th.join(max(0.0, end + GRACE + 5 - time.monotonic()))
print(json.dumps(out))
"""

_FLOOD = r"""
import json, socket, sys, time
from lvs.lab_flood import syn_frames
iface, dst_mac, src_mac, vip = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]), sys.argv[4]
dport, rate, count = int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
seconds, start_file, seed = float(sys.argv[8]), sys.argv[9], int(sys.argv[10])
frames = syn_frames(dst_mac, src_mac, vip, dport, count, seed)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
sock.bind((iface, 0))
sock.setblocking(False)
print("ready %d" % len(frames), flush=True)
# The start time (monotonic) comes in a file the lab writes once we are ready.
wait_end = time.monotonic() + 300
start_at = None
while start_at is None and time.monotonic() < wait_end:
    try:
        with open(start_file) as f:
            start_at = float(f.read().strip())
    except (OSError, ValueError):
        time.sleep(0.02)
if start_at is None:
    sys.exit("no start time within 300 s")
while time.monotonic() < start_at:
    time.sleep(min(0.05, max(0.0, start_at - time.monotonic())))
t0 = time.monotonic()
stop = t0 + seconds
sent = errors = i = 0
send = sock.send
while i < count:
    now = time.monotonic()
    if now >= stop:
        break
    due = min(count, int((now - t0) * rate) + 1)
    while i < due:
        try:
            send(frames[i])
            sent += 1
        except OSError:
            errors += 1
        i += 1
    d = t0 + i / rate - time.monotonic()
    if d > 0:
        time.sleep(min(d, 0.001))
t1 = time.monotonic()
print(json.dumps({"start": t0, "end": t1, "sent": sent, "errors": errors, "built": len(frames)}), flush=True)
"""


def syn_frames(dst_mac, src_mac, vip, dport, count, seed):
    """`count` Ethernet frames of TCP SYNs to vip:dport, each from a distinct (address,
    port) of flood_sources() and ports 1024-65535 drawn at random, checksums right."""
    import random
    import socket
    import struct
    sources = [socket.inet_aton(a) for a in flood_sources()]
    rnd = random.Random(seed)
    n = len(sources)
    picks = rnd.sample(range(n * (65536 - 1024)), count)
    vipb = socket.inet_aton(vip)
    eth = bytes(dst_mac) + bytes(src_mac) + b"\x08\x00"

    def words(a):
        return (a[0] << 8 | a[1]) + (a[2] << 8 | a[3])

    ip_base = 0x4500 + 40 + 0x4000 + (64 << 8 | 6) + words(vipb)
    tcp_base = words(vipb) + 6 + 20 + dport + 0x5002 + 64240
    iphead = struct.Struct("!BBHHHBBH").pack
    tcphead = struct.Struct("!4s4sHHIIHHHH").pack
    frames = []
    for idx in picks:
        src = sources[idx % n]
        sport = 1024 + idx // n
        ident = idx & 0xFFFF
        seq = rnd.getrandbits(32)
        s = ip_base + words(src) + ident
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        t = tcp_base + words(src) + sport + (seq >> 16) + (seq & 0xFFFF)
        t = (t & 0xFFFF) + (t >> 16)
        t = (t & 0xFFFF) + (t >> 16)
        frames.append(eth + iphead(0x45, 0, 40, ident, 0x4000, 64, 6, 0xFFFF - s)
                      + tcphead(src, vipb, sport, dport, seq, 0, 0x5002, 64240, 0xFFFF - t, 0))
    return frames


# ---------------------------------------------------------------- figures


def _at(samples, t):
    """Cumulative (time, value) samples read at time t (linear between samples)."""
    if not samples or t <= samples[0][0]:
        return samples[0][1] if samples and t >= samples[0][0] else 0
    lo, hi = 0, len(samples) - 1
    if t >= samples[hi][0]:
        return samples[hi][1]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if samples[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t0, v0), (t1, v1) = samples[lo], samples[hi]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1


def _pct(values, q):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[k]


def _flat(answer):
    """The numbers of one stats answer that the report follows, by name."""
    out = {}
    for k, v in (answer.get("drops") or {}).items():
        out["drop." + k] = v
    for k, v in (answer.get("director") or {}).items():
        if isinstance(v, (int, float)):
            out["director." + k] = v
    if isinstance(answer.get("conns"), int):
        out["conns"] = answer["conns"]
    for k, v in (answer.get("defense") or {}).items():
        if isinstance(v, (bool, int, float)):
            out["defense." + k] = int(v) if isinstance(v, bool) else v
    return out


def phase_figures(run, name, a, b):
    """One phase [a, b] (monotonic seconds) of a run's records."""
    fig = {"phase": name, "start": a, "end": b, "seconds": b - a}
    dl = run["client"]["download"]["samples"]
    fig["goodput"] = (_at(dl, b) - _at(dl, a)) / (b - a) if b > a else 0.0
    rr = [(t, lat, ok) for t, lat, ok in run["client"]["rr"] if a <= t < b]
    good = [lat for _, lat, ok in rr if ok]
    fig["requests"] = len(rr)
    fig["requests_ok"] = len(good)
    fig["latency_p50_ms"] = _pct(good, 0.50) * 1000 if good else None
    fig["latency_p99_ms"] = _pct(good, 0.99) * 1000 if good else None
    fig["latency_max_ms"] = max(good) * 1000 if good else None
    probes = [(t, lat, ok) for t, lat, ok in run["client"]["probe"] if a <= t < b]
    fig["probes"] = len(probes)
    fig["probes_ok"] = sum(1 for _, _, ok in probes if ok)
    samples = [s for s in run["samples"] if "values" in s]
    inside = [s for s in samples if a <= s["t"] <= b]
    if len(inside) >= 2:
        first, last = inside[0], inside[-1]
        span = last["t"] - first["t"]
        delta = {}
        for k, v in last["values"].items():
            if k.startswith("drop.") or k.startswith("director."):
                d = v - first["values"].get(k, 0)
                if d:
                    delta[k] = d
        fig["counters"] = delta
        fig["counter_seconds"] = span
        to_engine = delta.get("director.to_engine", 0)
        hits = delta.get("director.fastpath_hits")
        fig["to_engine_per_s"] = to_engine / span if span else None
        fig["fast_share"] = (hits / to_engine) if hits is not None and to_engine else None
        fig["cpu_share"] = ((last["cpu"] - first["cpu"]) / span
                            if span and last.get("cpu") is not None and first.get("cpu") is not None else None)
    conns = [s["values"]["conns"] for s in inside if "conns" in s["values"]]
    fig["table_max"] = max(conns) if conns else None
    fig["table_end"] = conns[-1] if conns else None
    rss = [s["rss_kb"] for s in inside if s.get("rss_kb")]
    fig["rss_max_kb"] = max(rss) if rss else None
    return fig


def mode_changes(samples, origin):
    """[(seconds after `origin`, sysctl, old, new)] as the samples saw the modes move."""
    changes, last = [], {}
    for s in samples:
        for name, value in (s.get("modes") or {}).items():
            if name in last and last[name] != value:
                changes.append((round(s["t"] - origin, 2), name, last[name], value))
            last[name] = value
    return changes


# ---------------------------------------------------------------- the run


class Sampler(threading.Thread):
    """The daemon's counters, modes, RSS and CPU time every SAMPLE_PERIOD seconds."""

    def __init__(self, path, pid, until):
        threading.Thread.__init__(self, daemon=True)
        self.path, self.pid, self.until = path, pid, until
        self.samples = []
        self.stopping = threading.Event()

    def run(self):
        nxt = time.monotonic()
        while not self.stopping.is_set() and time.monotonic() < self.until:
            s = {"t": time.monotonic(), "rss_kb": _rss_kb(self.pid), "cpu": _cpu_seconds(self.pid)}
            try:
                answer = ctl.request(self.path, {"op": "stats"}, timeout=3.0)
                s["t_answer"] = time.monotonic()
                s["values"] = _flat(answer)
                modes = ctl.request(self.path, {"op": "sysctl", "set": {}}, timeout=3.0).get("values", {})
                s["modes"] = {m: modes.get(m) for m in MODES}
            except (OSError, ValueError, ctl.NoDaemon) as e:
                s["error"] = str(e)
            self.samples.append(s)
            nxt += SAMPLE_PERIOD
            self.stopping.wait(max(0.0, nxt - time.monotonic()))

    def stop(self):
        self.stopping.set()
        self.join(10.0)


def _rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_seconds(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


_NFT_CLIENT = """table ip lvsflood {
    chain prerouting {
        type filter hook prerouting priority raw - 10; policy accept;
        ip daddr { %s } counter drop
    }
}
""" % ", ".join(FLOOD_NETS)


class FloodLab:
    """One `lvs lab --flood` run on a Topology (see the module's notes)."""

    def __init__(self, topo, out=sys.stdout, max_conns=20000, amemthresh=None, flood_rate=None,
                 before=4.0, during=8.0, after=4.0, download_rate=4 << 20, daemon_python=None,
                 watch=20.0, order="first", seed=1):
        self.topo = topo
        self.out = out
        self.max_conns = max_conns
        self.amemthresh = amemthresh if amemthresh is not None else max(1, max_conns // 10)
        self.flood_rate = flood_rate
        self.before, self.during, self.after = before, during, after
        self.download_rate = download_rate
        self.daemon_python = daemon_python or sys.executable
        self.watch = watch
        self.order = order           # ORDERS: the daemon's PYLVS_ESTABLISHED_FIRST
        self.seed = seed
        self.stage = 0
        self.result = None

    def say(self, text=""):
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, text):
        self.stage += 1
        self.say("[%d/6] %s" % (self.stage, text))

    def daemon_impl(self):
        r = subprocess.run([self.daemon_python, "-c", "import sys; print(sys.implementation.name)"],
                           capture_output=True, text=True, timeout=60)
        return r.stdout.strip() or "?"

    def run(self):
        topo = self.topo
        vip = topo.vip
        impl = self.daemon_impl()
        rate = self.flood_rate or DEFAULT_FLOOD_RATE.get(impl, DEFAULT_FLOOD_RATE["cpython"])
        count = int(rate * self.during)

        self.step("building the topology: a client, a director and %d NAT real servers" % len(topo.servers))
        topo.build()
        for net in FLOOD_NETS:
            # The servers' answers to spoofed sources: through the director to the client.
            topo.run("director", ["ip", "route", "add", net, "via", topo.ip("client"), "dev", IFACE], check=True)
        topo.run("client", ["nft", "-f", "-"], input=_NFT_CLIENT, check=True)
        self.say("      spoofed sources %s: routed by the director to the client, dropped there by nft"
                 % " and ".join(FLOOD_NETS))

        args = ["--max-conns", str(self.max_conns)]
        for item in ("drop_entry=1", "drop_packet=1", "secure_tcp=1", "amemthresh=%d" % self.amemthresh):
            args += ["--sysctl", item]
        self.step("starting the director (%s): lvs daemon --iface %s %s" % (impl, IFACE, " ".join(args)))
        log_path = os.path.join(topo.workdir, "daemon.log")
        saved = os.environ.get("PYLVS_ESTABLISHED_FIRST")
        os.environ["PYLVS_ESTABLISHED_FIRST"] = ORDERS[self.order][0]
        try:
            topo.start_daemon(*args, log_path=log_path, python=self.daemon_python)
        finally:
            if saved is None:
                os.environ.pop("PYLVS_ESTABLISHED_FIRST", None)
            else:
                os.environ["PYLVS_ESTABLISHED_FIRST"] = saved
        sock = os.path.join("/run/pylvs", "netns-" + topo.netns("director"), "lvs.sock")
        pid = ctl.request(sock, {"op": "ping"}, timeout=10.0)["pid"]
        self.say("      pid %d; each batch: %s (PYLVS_ESTABLISHED_FIRST=%s)"
                 % (pid, ORDERS[self.order][1], ORDERS[self.order][0]))
        svc = topo.hostport(vip, PORT)
        for argv in [["-A", "-t", svc, "-s", "rr"]] + [
                ["-a", "-t", svc, "-r", topo.hostport(topo.ip(rs), PORT), "-m"] for rs in topo.servers]:
            r = topo.lvsadm(*argv)
            if r.returncode != 0:
                raise LabError("lvsadm %s: %s" % (" ".join(argv), r.stderr.strip()))
        self.say("      lvsadm -A -t %s -s rr; -a ... -m for %s" % (svc, ", ".join(topo.servers)))

        self.step("real servers: lvs realserver --method nat, a paced HTTP/1.1 server on :%d" % PORT)
        for rs in topo.servers:
            topo.setup_realserver(rs, "nat")
            p = topo.popen(rs, [sys.executable, "-u", "-c", _SERVER, str(PORT), rs], name="server-" + rs,
                           lifetime=600)
            topo.wait_for_output(p, "ready", 15.0)
        probe = topo.http_get(topo.url(vip), timeout=5.0)
        if not probe.ok:
            raise LabError("no answer through the VIP before the flood: %s" % probe.error)

        total = WARMUP + self.before + self.during + self.after
        self.step("the flood: %d SYNs at %d/s for at most %.0f s from %s (built first)"
                  % (count, rate, self.during, " and ".join(FLOOD_NETS)))
        start_file = os.path.join(topo.workdir, "flood.start")
        flood = topo.popen("client", [sys.executable, "-u", "-c", _FLOOD, IFACE,
                                      topo.mac("director").replace(":", ""),
                                      topo.mac("client").replace(":", ""), vip, str(PORT), str(rate),
                                      str(count), str(self.during), start_file, str(self.seed),
                                      ",".join(flood_sources())],
                           name="flood", lifetime=total + 400)
        topo.wait_for_output(flood, "ready", 120.0)   # its frames are built
        start = time.monotonic() + 1.0
        flood_at = start + WARMUP + self.before
        with open(start_file + ".tmp", "w") as f:
            f.write("%f\n" % flood_at)
        os.rename(start_file + ".tmp", start_file)
        end = start + total
        self.step("the flows: a download at %.1f MB/s, a request every %d ms, a new connection every %d ms; "
                  "%.0f s before, %.0f s of flood, %.0f s after"
                  % (self.download_rate / 1e6, RR_INTERVAL * 1000, PROBE_INTERVAL * 1000,
                     self.before, self.during, self.after))
        client = topo.popen("client", [sys.executable, "-u", "-c", _CLIENT, vip, str(PORT), "%f" % start,
                                       "%f" % end, str(self.download_rate), str(RR_INTERVAL),
                                       str(PROBE_INTERVAL)], name="client", lifetime=total + 60)
        sampler = Sampler(sock, pid, end + self.watch + 30)
        sampler.start()
        try:
            deadline = end + 30
            while client.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if client.poll() is None:
                raise LabError("the client did not finish within 30 s of its end")
            while flood.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            # The defense modes: watch until they are back at 1 (at most `watch` s more).
            watch_end = time.monotonic() + self.watch
            while time.monotonic() < watch_end:
                s = sampler.samples[-1] if sampler.samples else {}
                if s.get("t", 0) > end and all(v == 1 for v in (s.get("modes") or {"x": 0}).values()):
                    break
                time.sleep(SAMPLE_PERIOD)
        finally:
            sampler.stop()
        try:
            got = json.loads(Topology.read_log(client).strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise LabError("the client said nothing readable:\n%s" % Topology.read_log(client)[-2000:])
        try:
            sent = json.loads(Topology.read_log(flood).strip().splitlines()[-1])
        except (ValueError, IndexError):
            sent = {"sent": 0, "errors": 0, "start": flood_at, "end": flood_at}
        answers = topo.run("client", ["nft", "list", "table", "ip", "lvsflood"]).stdout
        returned = None
        for word_list in (line.split() for line in answers.splitlines()):
            if "counter" in word_list and "packets" in word_list:
                returned = int(word_list[word_list.index("packets") + 1])
        run = {"impl": impl, "daemon_python": self.daemon_python, "order": self.order,
               "max_conns": self.max_conns, "amemthresh": self.amemthresh, "flood_rate": rate,
               "flood_count": count, "download_rate": self.download_rate,
               "phases": {"before": self.before, "during": self.during, "after": self.after},
               "client": got, "flood": sent, "answers_dropped_in_client": returned,
               "samples": sampler.samples, "start": start, "flood_at": flood_at, "end": end}
        self.result = self.figures(run)
        self.report(self.result)
        return 0 if self.result["ok"] else 1

    def figures(self, run):
        a = run["start"] + WARMUP
        f0 = run["flood_at"]
        f1 = f0 + self.during
        phases = [phase_figures(run, "before", a, f0), phase_figures(run, "during", f0, f1),
                  phase_figures(run, "after", f1, run["end"])]
        samples = [s for s in run["samples"] if "values" in s]
        fl = run["flood"]
        span = max(1e-9, fl.get("end", 0) - fl.get("start", 0))
        conns = [s["values"].get("conns") for s in samples if "conns" in s["values"]]
        rss = [s["rss_kb"] for s in samples if s.get("rss_kb")]
        before, during = phases[0], phases[1]
        kept = during["goodput"] / before["goodput"] if before["goodput"] else None
        dl = run["client"]["download"]
        # The longest time the daemon read no frame while the flows ran (they send
        # every 10 ms): a stalled data plane shows here.
        reading = [(s["t"], s["values"].get("director.eth0_rx")) for s in samples
                   if run["start"] <= s["t"] <= run["end"] and "director.eth0_rx" in s["values"]]
        pause, since = 0.0, None
        for (t0, v0), (t1, v1) in zip(reading, reading[1:]):
            if v1 == v0:
                since = t0 if since is None else since
                pause = max(pause, t1 - since)
            else:
                since = None
        run["figures"] = {
            "phases": phases,
            "longest_read_pause": pause,
            "goodput_kept": kept,
            "flood_sent": fl.get("sent", 0), "flood_errors": fl.get("errors", 0),
            "flood_offered_per_s": fl.get("sent", 0) / span,
            "table_max": max(conns) if conns else None,
            "rss_max_kb": max(rss) if rss else None,
            "rss_first_kb": rss[0] if rss else None,
            "mode_changes": mode_changes(run["samples"], f0),
            "download_complete": dl.get("bytes") == dl.get("expected") and dl.get("status") == 200,
        }
        run["ok"] = bool(kept is not None and during["requests_ok"] > 0
                         and (run["figures"]["table_max"] or 0) <= self.max_conns)
        return run

    def report(self, run):
        fig = run["figures"]
        phases = fig["phases"]
        self.step("what happened (%s daemon; each batch: %s)" % (run["impl"], ORDERS[run["order"]][1]))

        def row(label, values):
            self.say("      %-34s %14s %14s %14s" % ((label,) + tuple(values)))

        def num(v, f="%.0f"):
            return "-" if v is None else f % v

        row("", [p["phase"] + " (%.0f s)" % p["seconds"] for p in phases])
        row("download goodput (MB/s)", [num(p["goodput"] / 1e6, "%.2f") for p in phases])
        row("requests answered / sent", ["%d / %d" % (p["requests_ok"], p["requests"]) for p in phases])
        row("request latency p50 / p99 (ms)", ["%s / %s" % (num(p["latency_p50_ms"], "%.2f"),
                                                            num(p["latency_p99_ms"], "%.1f")) for p in phases])
        row("new connections answered", ["%d / %d" % (p["probes_ok"], p["probes"]) for p in phases])
        row("frames to the engine (/s)", [num(p.get("to_engine_per_s")) for p in phases])
        row("  of them by the fast path", [num(p.get("fast_share") and p["fast_share"] * 100, "%.1f %%")
                                           for p in phases])
        for key, label in (("director.eth0_rx_ring_drops", "ring drops (ring full)"),
                           ("director.eth0_rx_ring_resyncs", "ring resyncs (lvs/ports/raw.py)"),
                           ("drop.table_full", "dropped: table_full"),
                           ("drop.drop_packet", "dropped: drop_packet"),
                           ("director.shed_syn", "shed: SYNs while the ring backs up"),
                           ("director.deferred", "deferred behind the fast path")):
            row(label, [num(p.get("counters", {}).get(key, 0)) for p in phases])
        others = sorted({k for p in phases for k in p.get("counters", {})
                         if k.startswith("drop.") and k not in ("drop.table_full", "drop.drop_packet")})
        for key in others:
            row("dropped: " + key[5:], [num(p.get("counters", {}).get(key, 0)) for p in phases])
        row("table entries: end of phase (max)", ["%s (%s)" % (num(p["table_end"]), num(p["table_max"]))
                                                  for p in phases])
        row("daemon RSS, max (MB)", [num(p["rss_max_kb"] and p["rss_max_kb"] / 1024.0, "%.1f") for p in phases])
        row("daemon CPU share", [num(p.get("cpu_share") and p["cpu_share"] * 100, "%.0f %%") for p in phases])
        self.say("      the flood: %d SYNs sent (%.0f/s offered, %d send errors); %s of the servers' "
                 "answers dropped in the client"
                 % (fig["flood_sent"], fig["flood_offered_per_s"], fig["flood_errors"],
                    num(run["answers_dropped_in_client"])))
        if fig["longest_read_pause"] >= 1.0:
            self.say("      the daemon read no frame for %.1f s while the flows ran" % fig["longest_read_pause"])
        kept = fig["goodput_kept"]
        self.say("      goodput kept during the flood: %s (goal 90 %%); the table's largest: %s of %d; "
                 "RSS %s -> %s MB"
                 % (num(kept and kept * 100, "%.1f %%"), num(fig["table_max"]), run["max_conns"],
                    num(fig["rss_first_kb"] and fig["rss_first_kb"] / 1024.0, "%.1f"),
                    num(fig["rss_max_kb"] and fig["rss_max_kb"] / 1024.0, "%.1f")))
        if fig["mode_changes"]:
            self.say("      the defense modes (seconds from the flood's start):")
            for t, name, old, new in fig["mode_changes"]:
                self.say("        %+7.2f s  %s %s -> %s" % (t, name, old, new))
        else:
            self.say("      the defense modes did not move (amemthresh %d, --max-conns %d)"
                     % (run["amemthresh"], run["max_conns"]))
        self.say("      the download: %s" % ("complete" if fig["download_complete"] else
                                              "incomplete (%s of %s bytes)" % (
                                                  run["client"]["download"].get("bytes"),
                                                  run["client"]["download"].get("expected"))))


def flood_main(args, out=sys.stdout, err=sys.stderr):
    if not has_privileges():
        err.write("lvs lab --flood: needs root: it creates network namespaces, a bridge and veth "
                  "interfaces (CAP_SYS_ADMIN and CAP_NET_ADMIN)\n")
        return 1
    try:
        phases = [float(x) for x in args.phases.split(",")]
        if len(phases) != 3 or not all(0.5 <= x <= MAX_PHASE for x in phases):
            raise ValueError
    except ValueError:
        err.write("lvs lab --flood: --phases BEFORE,DURING,AFTER: three numbers of seconds, 0.5 to %g\n"
                  % MAX_PHASE)
        return 2
    if args.flood_rate is not None and not 1 <= args.flood_rate <= MAX_FLOOD_RATE:
        err.write("lvs lab --flood: --flood-rate: 1 to %d SYNs a second\n" % MAX_FLOOD_RATE)
        return 2
    if not 1 <= args.max_conns <= 10000000:
        err.write("lvs lab --flood: --max-conns: 1 to 10000000\n")
        return 2
    if not 1000 <= args.download_rate <= 1 << 30:
        err.write("lvs lab --flood: --download-rate: 1000 to %d bytes a second\n" % (1 << 30))
        return 2

    def on_term(signum, frame):
        raise _Terminated()

    old_term = signal.signal(signal.SIGTERM, on_term)
    topo = Topology(tag=args.tag, servers=args.servers or 3)
    lab = FloodLab(topo, out=out, max_conns=args.max_conns, amemthresh=args.amemthresh,
                   flood_rate=args.flood_rate, before=phases[0], during=phases[1], after=phases[2],
                   download_rate=args.download_rate, daemon_python=args.daemon_python,
                   watch=args.watch, order=args.order, seed=args.seed)
    status = 1
    try:
        try:
            left = remove_leftovers(args.tag, log=lambda text: out.write("      %s\n" % text))
            if left:
                out.write("lvs lab: removed a leftover lab from an earlier run: %s\n" % ", ".join(left))
            status = lab.run()
        except (LabError, OSError, subprocess.TimeoutExpired, ctl.NoDaemon) as e:
            err.write("lvs lab --flood: %s\n" % e)
        except (KeyboardInterrupt, _Terminated):
            err.write("\nlvs lab --flood: interrupted\n")
            status = 130
    finally:
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            try:
                out.write("[done] cleaning up: stopping the daemon and the real-server helpers, "
                          "deleting the namespaces\n")
                out.flush()
            except OSError:
                pass
            try:
                topo.teardown()
            except LabError as e:
                err.write("lvs lab: %s\n" % e)
                status = status or 1
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    if lab.result is not None and args.json:
        with open(args.json, "w") as f:
            json.dump(lab.result, f, indent=1)
        out.write("figures written to %s\n" % args.json)
    return status


def add_arguments(p):
    """`lvs lab --flood` and its options, on the lab's parser (lvs/cli.py)."""
    from .lab import lab_main
    g = p.add_argument_group("--flood", "established flows through a bounded spoofed SYN flood")
    g.add_argument("--flood", action="store_true",
                   help="NAT real servers, a download and requests through the VIP while a bounded "
                        "spoofed SYN flood runs; report goodput, latency, drops, table, memory and "
                        "the defense modes per phase")
    g.add_argument("--phases", default="4,8,4", metavar="B,D,A",
                   help="seconds before, during and after the flood (default 4,8,4)")
    g.add_argument("--flood-rate", type=int, metavar="N",
                   help="SYNs a second (default: about the director's new-connection rate here: "
                        "%s)" % ", ".join("%s %d" % kv for kv in sorted(DEFAULT_FLOOD_RATE.items())))
    g.add_argument("--max-conns", type=int, default=20000, metavar="N",
                   help="the daemon's table bound (default 20000)")
    g.add_argument("--amemthresh", type=int, metavar="N",
                   help="the defense modes' threshold, in free table entries (default max-conns/10)")
    g.add_argument("--download-rate", type=int, default=4 << 20, metavar="BYTES",
                   help="the download's pace, bytes a second (default 4 MiB)")
    g.add_argument("--daemon-python", metavar="PATH",
                   help="the interpreter for the daemon (default this one; e.g. .venv-pypy/bin/python)")
    g.add_argument("--order", choices=sorted(ORDERS), default="first",
                   help="how the daemon works through each batch: first (default: the fast path's "
                        "packets first, new connections' SYNs shed while the receive ring is more "
                        "than half full), no-shed (the same without shedding), arrival (in arrival "
                        "order)")
    g.add_argument("--watch", type=float, default=20.0, metavar="S",
                   help="after the flows, watch the defense modes until back at 1, at most S s (default 20)")
    g.add_argument("--seed", type=int, default=1, help="the flood's random sources and ports")
    g.add_argument("--json", metavar="FILE", help="write the figures and samples as JSON")

    def main(args, out=sys.stdout, err=sys.stderr):
        if args.flood and args.action != "down":
            return flood_main(args, out, err)
        return lab_main(args, out, err)

    p.set_defaults(func=main)
