"""Oracle probe (run with ../shared/kernel-oracle/run-in-vm.sh; ORACLE_EXTRA this file): the defense modes of the real kernel under forced pressure (amemthresh above
the free pages), on the oracle topology. Writes $ORACLE_OUT/defense.json."""
import os, re, socket, subprocess, time
from oracle_lib import Topo, VIP, GHOST_RS, in_netns, write_json, kernel_info, sh
from scapy.layers.inet import IP, TCP

OUT = os.environ.get("ORACLE_OUT", "/tmp")
rec = {"kernel": kernel_info(), "steps": []}
t = Topo(n_rs=2)
t.build()
D = t.dir
def adm(*a):
    r = t.admin(["ipvsadm"] + list(a))
    return r
def sysctl(name, value=None):
    if value is not None:
        sh(["sysctl", "-qw", "net.ipv4.vs.%s=%s" % (name, value)], ns=D)
    p = subprocess.run(["ip", "netns", "exec", D, "sysctl", "-n", "net.ipv4.vs." + name],
                       capture_output=True, text=True)
    return int(p.stdout.split()[0])
def meminfo():
    m = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":")
        m[k] = int(v.split()[0])
    return {"free_pages": m["MemFree"] // 4, "buffer_pages": m["Buffers"] // 4}
def conns():
    out = adm("-Lnc")["stdout"]
    rows = [l.split() for l in out.splitlines()[2:] if l.strip()]
    return rows
def state_of(sport, port):
    for r in conns():
        if r[3].endswith(":%d" % sport) and r[4] == "%s:%d" % (VIP, port):
            return r[2]
    return None
with in_netns(t.cli):
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def send(src, sport, flags, port=81, seq=1000, ack=0):
    pkt = IP(src=src, dst=VIP) / TCP(sport=sport, dport=port, flags=flags, seq=seq, ack=ack)
    raw.sendto(bytes(pkt), (VIP, 0))
def step(name, **kw):
    kw["name"] = name
    kw["t"] = round(time.time() - T0, 2)
    kw["mem"] = meminfo()
    kw["modes"] = {n: sysctl(n) for n in ("drop_entry", "drop_packet", "secure_tcp", "amemthresh")}
    rec["steps"].append(kw)
try:
    t.start_servers()
    adm("-A", "-t", VIP + ":80", "-s", "rr")
    adm("-a", "-t", VIP + ":80", "-r", "192.0.2.11:80", "-m")
    adm("-A", "-t", VIP + ":81", "-s", "rr")
    adm("-a", "-t", VIP + ":81", "-r", GHOST_RS + ":81", "-m")
    T0 = time.time()
    HUGE = 2000000000
    step("start")
    # A. secure_tcp 1 -> 2: the DOS table keeps a client's ACK in SYN_RECV
    sysctl("secure_tcp", 1)
    send("198.51.100.10", 30001, "S"); time.sleep(0.1); send("198.51.100.10", 30001, "A", seq=1001, ack=1)
    time.sleep(0.3)
    step("secure_tcp=1, no pressure: SYN then ACK", state=state_of(30001, 81))
    sysctl("amemthresh", HUGE)
    time.sleep(1.6)
    send("198.51.100.10", 30002, "S"); time.sleep(0.1); send("198.51.100.10", 30002, "A", seq=1001, ack=1)
    time.sleep(0.3)
    step("secure_tcp=1, amemthresh huge, 1.6 s later: SYN then ACK", state=state_of(30002, 81))
    sysctl("amemthresh", 1024)
    time.sleep(1.6)
    send("198.51.100.10", 30003, "S"); time.sleep(0.1); send("198.51.100.10", 30003, "A", seq=1001, ack=1)
    time.sleep(0.3)
    step("amemthresh 1024 again, 1.6 s later: SYN then ACK", state=state_of(30003, 81))
    sysctl("secure_tcp", 0)
    adm("-C"); adm("-A", "-t", VIP + ":81", "-s", "rr"); adm("-a", "-t", VIP + ":81", "-r", GHOST_RS + ":81", "-m")
    # B. drop_entry: 400 half-open entries, then pressure
    srcs = ["198.51.100.%d" % i for i in range(10, 50)]
    for i in range(400):
        send(srcs[i % 40], 40000 + i, "S")
    time.sleep(0.5)
    n0 = len(conns())
    sysctl("drop_entry", 1)
    step("400 SYNs to a silent server, drop_entry=1", entries=n0)
    sysctl("amemthresh", HUGE)
    counts = []
    for s in range(12):
        time.sleep(1.0)
        counts.append([round(time.time() - T0, 2), len(conns()), sysctl("drop_entry")])
    step("amemthresh huge: entries each second", counts=counts)
    sysctl("amemthresh", 1024)
    time.sleep(1.6)
    after = []
    for s in range(4):
        time.sleep(1.0)
        after.append([round(time.time() - T0, 2), len(conns()), sysctl("drop_entry")])
    step("amemthresh 1024 again: entries each second", counts=after)
    sysctl("drop_entry", 0)
    adm("-C"); adm("-A", "-t", VIP + ":81", "-s", "rr"); adm("-a", "-t", VIP + ":81", "-r", GHOST_RS + ":81", "-m")
    # C. drop_packet: rate = amemthresh / (amemthresh - availmem)
    sysctl("drop_packet", 1)
    sysctl("amemthresh", HUGE)
    time.sleep(1.6)
    for i in range(10):
        send("203.0.113.10", 50000 + i, "S")
    time.sleep(0.3)
    step("drop_packet=1, amemthresh huge (rate 1): 10 SYNs", entries=len(conns()))
    m = meminfo(); avail = m["free_pages"] + m["buffer_pages"]
    thresh = int(avail * 1.6)
    adm("-C"); adm("-A", "-t", VIP + ":81", "-s", "rr"); adm("-a", "-t", VIP + ":81", "-r", GHOST_RS + ":81", "-m")
    sysctl("amemthresh", thresh)
    time.sleep(1.05)
    admitted = []
    for i in range(10):
        send("203.0.113.11", 51000 + i, "S")
        time.sleep(0.01)
    time.sleep(0.3)
    ports = sorted(int(r[3].rsplit(":", 1)[1]) for r in conns())
    step("amemthresh 1.6 x available (rate about 2): 10 SYNs", amemthresh=thresh, avail=avail,
         admitted_ports=ports)
    sysctl("amemthresh", 1024)
    time.sleep(1.6)
    adm("-C"); adm("-A", "-t", VIP + ":81", "-s", "rr"); adm("-a", "-t", VIP + ":81", "-r", GHOST_RS + ":81", "-m")
    for i in range(10):
        send("203.0.113.12", 52000 + i, "S")
    time.sleep(0.3)
    step("amemthresh 1024 again: 10 SYNs", entries=len(conns()))
    # D. drop_packet=3 with am_droprate 4, no pressure; and secure_tcp 3
    sysctl("drop_packet", 0)
    sysctl("am_droprate", 4)
    adm("-C"); adm("-A", "-t", VIP + ":81", "-s", "rr"); adm("-a", "-t", VIP + ":81", "-r", GHOST_RS + ":81", "-m")
    sysctl("drop_packet", 3)
    for i in range(10):
        send("203.0.113.13", 53000 + i, "S")
        time.sleep(0.01)
    time.sleep(0.3)
    ports = sorted(int(r[3].rsplit(":", 1)[1]) for r in conns())
    step("drop_packet=3, am_droprate 4, right after the write: 10 SYNs", admitted_ports=ports)
finally:
    write_json(os.path.join(OUT, "defense.json"), rec)
    t.teardown()
