"""`lvs daemon --workers N` (lvs/fanout.py): processes sharing the interfaces.

The fanout program is checked offline (both directions of a NAT connection
and every packet of a client, persistence-masked, go to one process), then
live: a daemon with two workers in a namespace topology (IPv4, then IPv6), clients on many
addresses through NAT and DR, listings that add both processes up, and
commands that reach both.
"""

import json
import os
import struct
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvs import adm, fanout
from lvs.engine import Engine
from lvs.lab import Topology

VIP = "198.51.100.2"


def run_bpf(prog, packet):
    """Run a classic BPF program of lvs/fanout.py on a packet (from its network header)
    as the kernel does; what it returns. Every instruction it uses, and only those."""
    pc, a, x = 0, 0, 0
    assert len(prog) <= 4096
    while True:
        code, jt, jf, k = prog[pc]
        if code in (fanout._LD_W_ABS, fanout._LD_B_ABS):
            off = k - (fanout.SKF_NET_OFF & 0xFFFFFFFF)
            size = 4 if code == fanout._LD_W_ABS else 1
            if off + size > len(packet):
                return 0      # a load past the end: the kernel's program returns 0
            a = int.from_bytes(packet[off:off + size], "big")
        elif code in (fanout._JEQ_K, fanout._JGT_K, fanout._JGE_K):
            assert jt < 256 and jf < 256
            hit = a == k if code == fanout._JEQ_K else a > k if code == fanout._JGT_K else a >= k
            pc += jt if hit else jf
        elif code == fanout._JA:
            pc += k
        elif code == fanout._AND_K:
            a &= k
        elif code == fanout._XOR_X:
            a ^= x
        elif code == fanout._TAX:
            x = a
        elif code == fanout._MUL_K:
            a = (a * k) & 0xFFFFFFFF
        elif code == fanout._RSH_K:
            a >>= k
        elif code == fanout._RET_A:
            return a
        elif code == fanout._RET_K:
            return k
        else:
            raise AssertionError("opcode %#x" % code)
        pc += 1


def program_choice(prog, packet, members):
    """The member index the kernel picks: the program's value modulo the members."""
    return run_bpf(prog, packet) % members


def ipv4(src, dst, proto=6, sport=1000, dport=80):
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, proto, 0, bytes(src), bytes(dst))
    return head + struct.pack("!HH", sport, dport) + bytes(16)


addr = st.tuples(st.integers(1, 254), st.integers(0, 255)).map(lambda t: bytes([203, 0, 113, t[0]]))
nat = st.lists(st.integers(10, 60).map(lambda n: bytes([192, 0, 2, n])), min_size=0, max_size=20)


@settings(max_examples=200, deadline=None)
@given(addr, st.integers(1, 65535), nat, st.integers(2, 8))
def test_both_directions_of_a_nat_connection_meet_in_one_process(client, cport, servers, members):
    prog = fanout.client_hash_program(servers, 0xFFFFFFFF)
    inbound = program_choice(prog, ipv4(client, bytes([198, 51, 100, 2]), sport=cport), members)
    for rs in servers:
        reply = ipv4(rs, client, sport=80, dport=cport)
        assert program_choice(prog, reply, members) == inbound


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255))
def test_a_persistence_mask_keeps_a_network_in_one_process(a, b):
    prog = fanout.client_hash_program([], 0xFFFFFF00)
    one = program_choice(prog, ipv4(bytes([203, 0, 113, a]), bytes([198, 51, 100, 2])), 4)
    two = program_choice(prog, ipv4(bytes([203, 0, 113, b]), bytes([198, 51, 100, 2])), 4)
    assert one == two


def ipv6(src, dst, nxt=6, sport=1000, dport=80, l4=b""):
    return (struct.pack("!IHBB16s16s", 0x60000000, 20 + len(l4), nxt, 64, bytes(src), bytes(dst))
            + (struct.pack("!HH", sport, dport) + bytes(16) if not l4 else l4))


addr6 = st.binary(min_size=8, max_size=8).map(lambda tail: bytes.fromhex("20010db800020000") + tail)
nat6 = st.lists(st.binary(min_size=2, max_size=2).map(lambda t: bytes.fromhex("20010db8000100000000000000") +
                                                       b"\0" + t), min_size=0, max_size=30)
VIP6 = bytes.fromhex("20010db8000000000000000000000002")


@settings(max_examples=200, deadline=None)
@given(addr6, st.integers(1, 65535), nat6, st.integers(2, 8))
def test_ipv6_both_directions_of_a_nat_connection_meet_in_one_process(client, cport, servers, members):
    prog = fanout.client_hash_program6(servers, 128)
    inbound = program_choice(prog, ipv6(client, VIP6, sport=cport), members)
    for rs in servers:
        assert program_choice(prog, ipv6(rs, client, sport=80, dport=cport), members) == inbound
    # a packet from a server address not in the list (DR: replies never come back) is
    # hashed by its source like a client's
    other = bytes.fromhex("20010db8000300000000000000000001")
    assert program_choice(prog, ipv6(other, client), members) == program_choice(
        fanout.client_hash_program6([], 128), ipv6(other, client), members)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8), st.integers(0, 64))
def test_an_ipv6_persistence_prefix_keeps_a_network_in_one_process(a, b, prefix):
    net = bytes.fromhex("20010db800020000")
    prog = fanout.client_hash_program6([], prefix)
    one = program_choice(prog, ipv6(net + a, VIP6), 4)
    two = program_choice(prog, ipv6(net + b, VIP6), 4)
    assert one == two


def test_ipv6_clients_spread_over_the_processes():
    prog = fanout.client_hash_program6([VIP6], 128)
    counts = [0] * 4
    for i in range(1, 401):
        counts[program_choice(prog, ipv6(bytes.fromhex("20010db80002") + bytes(8) + i.to_bytes(2, "big"), VIP6), 4)] += 1
    assert all(60 < c < 140 for c in counts), counts


def test_the_nd_filter_takes_solicitations_and_advertisements_only():
    f = fanout.nd_filter()
    src, dst = bytes.fromhex("fe800000000000000000000000000001"), VIP6
    for icmp_type in range(256):
        got = run_bpf(f, ipv6(src, dst, nxt=58, l4=bytes([icmp_type, 0, 0, 0]) + bytes(20)))
        assert bool(got) == (icmp_type in (135, 136)), icmp_type
    assert run_bpf(f, ipv6(src, dst, nxt=6)) == 0
    assert run_bpf(f, ipv6(src, dst, nxt=0, l4=bytes([58, 0]) + bytes([135]) + bytes(21))) == 0  # behind hop-by-hop


def test_clients_spread_over_the_processes():
    prog = fanout.client_hash_program([], 0xFFFFFFFF)
    seen = {program_choice(prog, ipv4(bytes([203, 0, 113, n]), bytes([198, 51, 100, 2])), 4)
            for n in range(1, 65)}
    assert seen == {0, 1, 2, 3}


def test_listings_add_up_the_workers_tallies():
    engines = []
    for _ in range(2):
        e = Engine()
        adm.run(e, ["-A", "-t", VIP + ":80", "-s", "rr"])
        adm.run(e, ["-a", "-t", VIP + ":80", "-r", "192.0.2.10:80", "-m"])
        engines.append(e)
    for e, n in zip(engines, (3, 5)):
        d = next(iter(e.services.values())).destinations[0]
        d.activeconns, d.inactconns = n, 1
    view = adm._scratch_copy(engines[0])
    fanout.add_tally(view, json.loads(json.dumps(fanout.tally(engines[1]))))
    out = adm.run(view, ["-Ln"])[0]
    row = [line for line in out.splitlines() if "192.0.2.10:80" in line][0].split()
    assert row[-2:] == ["8", "2"]
    # the daemon's own tables are untouched by the listing
    assert next(iter(engines[0].services.values())).destinations[0].activeconns == 3


def test_procfs_and_metrics_add_up_the_workers():
    """--procfs and --metrics with --workers: a copy with each worker's tally, as the
    kernel's files add up its CPUs (a row per process in ip_vs_stats_percpu)."""
    from scapy.layers.inet import IP, TCP

    from lvs import metrics, procfs
    engines = []
    for n, src in enumerate(("198.51.100.7", "198.51.100.8")):
        e = Engine()
        adm.run(e, ["-A", "-t", VIP + ":80", "-s", "rr"])
        adm.run(e, ["-a", "-t", VIP + ":80", "-r", "192.0.2.10:80", "-m"])
        for port in range(1000, 1002 + n):
            e.receive(bytes(IP(src=src, dst=VIP) / TCP(sport=port, dport=80, flags="S")), 100.0)
        e.receive(bytes(IP(src=src, dst=VIP) / TCP(sport=7, dport=22, flags="S")), 100.0)
        e.expire(102.0)   # the estimator's tick: the totals as listings show them
        engines.append(e)
    view = adm._scratch_copy(engines[0])
    fanout.add_tally(view, json.loads(json.dumps(fanout.tally(engines[1], conns=True))))
    conn = procfs.ip_vs_conn(view).splitlines()
    assert len(conn) == 1 + 2 + 3
    assert procfs.ip_vs_conn(engines[0]).splitlines() == conn[:3]
    assert len(procfs.ip_vs_conn_sync(view).splitlines()) == 6
    percpu = procfs.ip_vs_stats_percpu(view).splitlines()
    assert [line.split()[:2] for line in percpu[2:4]] == [["0", "2"], ["1", "3"]]
    assert percpu[4].split()[:2] == ["~", "5"]
    assert procfs.ip_vs_stats(view).splitlines()[2].split()[0] == "5"
    assert procfs.ip_vs(view).splitlines()[-1].split()[-2:] == ["5", "0"]   # ActiveConn 2 + 3
    snap = metrics.snapshot(view)
    assert snap["totals"][0] == 5 and snap["drops"]["no_service"] == 2
    assert snap["entries"] == {"connection": 5, "template": 0}
    assert engines[0].worker_parts == [] and len(view.worker_parts) == 1


def test_connection_listings_keep_one_heading():
    a = "IPVS connection entries\npro expire state\nTCP 01:00 ESTABLISHED a\n"
    b = "IPVS connection entries\npro expire state\nTCP 02:00 SYN_RECV b\n"
    assert fanout.merge_connection_listings([a, b]) == a + "TCP 02:00 SYN_RECV b\n"


# ---------------------------------------------------------------- live

live = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, AF_PACKET, nftables")
CLIENTS = ["198.51.100.%d" % n for n in range(100, 116)]
# Fresh addresses for a second test: the first test's connections outlive its
# services (a re-added server comes back from the trash with them), and a client
# port reused against one of those goes to its old server, weight 0 or not.
OTHER_CLIENTS = ["198.51.100.%d" % n for n in range(116, 132)]

_REQUESTS = r"""
import json, socket, sys
vip, port, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
out = []
for src in sources:
    for _ in range(3):
        try:
            s = socket.create_connection((vip, port), timeout=3, source_address=(src, 0))
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
            out.append([src, data.split(b"\r\n\r\n", 1)[-1].decode().strip()])
        except OSError as e:
            out.append([src, "error: %s" % e])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def topo():
    t = Topology(tag="f%d" % os.getpid(), servers=2)
    t.build()
    try:
        for a in CLIENTS + OTHER_CLIENTS:
            t.run("client", ["ip", "addr", "add", a + "/24", "dev", "eth0"], check=True)
        t.start_daemon("--workers", "2", "--procfs", os.path.join(t.workdir, "proc"),
                       "--metrics", "127.0.0.1:9187", log_path=os.path.join(t.workdir, "daemon.log"))
        t.setup_realserver("rs1", "dr")
        t.setup_realserver("rs2", "nat")
        t.http_server("rs1", "10", port=80, lifetime=600)
        t.http_server("rs2", "11", port=8080, lifetime=600)
        yield t
    finally:
        t.teardown()


def lvsadm(t, *args):
    r = t.lvsadm(*args)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def ctl_request(t, op):
    r = t.python("director", "from lvs import ctl; import json, sys; "
                             "print(json.dumps(ctl.request(ctl.socket_path(), {'op': sys.argv[1]})))", op)
    return json.loads(r.stdout)


def dr_and_nat_service(t):
    """An empty table, then one service: rs1 by direct routing, rs2 by NAT."""
    lvsadm(t, "-C")
    lvsadm(t, "-A", "-t", VIP + ":80", "-s", "rr")
    lvsadm(t, "-a", "-t", VIP + ":80", "-r", "198.51.100.10:80", "-g")
    lvsadm(t, "-a", "-t", VIP + ":80", "-r", "198.51.100.11:8080", "-m")


@live
def test_two_workers_share_nat_and_dr_traffic_and_listings_add_up(topo):
    dr_and_nat_service(topo)
    assert len(ctl_request(topo, "ping")["workers"]) == 2
    r = topo.run("client", [sys.executable, "-c", _REQUESTS, VIP, "80"] + CLIENTS, timeout=120)
    answers = json.loads(r.stdout)
    assert len(answers) == 3 * len(CLIENTS)
    assert all(body in ("10", "11") for _, body in answers), answers   # NAT replies found their process
    assert {body for _, body in answers} == {"10", "11"}

    stats = ctl_request(topo, "stats")
    per = [p["director"]["to_engine"] for p in stats["per_process"]]
    assert all(n > 0 for n in per), per                     # both processes forwarded
    assert stats["director"]["to_engine"] == sum(per)

    out = lvsadm(topo, "-Ln", "--stats", "--exact")
    row = [line for line in out.splitlines() if line.startswith("TCP")][0].split()
    deadline = time.monotonic() + 5    # counters reach listings at the 2 s estimator tick
    while int(row[2]) != len(answers) and time.monotonic() < deadline:
        time.sleep(0.5)
        out = lvsadm(topo, "-Ln", "--stats", "--exact")
        row = [line for line in out.splitlines() if line.startswith("TCP")][0].split()
    assert int(row[2]) == len(answers), out                 # Conns of both processes

    conns = [line for line in lvsadm(topo, "-Lnc").splitlines()[2:] if line.strip()]
    assert len(conns) == len(answers)                       # every process's connections
    assert len({line.split()[3].split(":")[0] for line in conns}) == len(CLIENTS)

    # --procfs and --metrics show both processes, each a CPU in ip_vs_stats_percpu
    net = os.path.join(topo.workdir, "proc", "net")
    deadline = time.monotonic() + 5    # the files are rewritten once a second
    while time.monotonic() < deadline:
        with open(os.path.join(net, "ip_vs_conn")) as f:
            rows = f.read().splitlines()[1:]
        with open(os.path.join(net, "ip_vs_stats")) as f:
            total = int(f.read().splitlines()[2].split()[0], 16)
        if len(rows) == len(answers) and total == len(answers):
            break
        time.sleep(0.5)
    assert len(rows) == len(answers) and total == len(answers)
    with open(os.path.join(net, "ip_vs_stats_percpu")) as f:
        percpu = f.read().splitlines()
    cpus = [line.split() for line in percpu[2:4]]
    assert [c[0] for c in cpus] == ["0", "1"] and percpu[4].startswith("  ~")
    assert sum(int(c[1], 16) for c in cpus) == len(answers) and all(int(c[1], 16) for c in cpus)
    r = topo.python("director", "import urllib.request; print(urllib.request.urlopen("
                                "'http://127.0.0.1:9187/metrics', timeout=10).read().decode())")
    metric = [line for line in r.stdout.splitlines() if line.startswith("node_ipvs_connections_total")]
    assert metric and float(metric[0].split()[-1]) == len(answers), r.stdout[-2000:]


@live
def test_a_command_reaches_every_worker(topo):
    dr_and_nat_service(topo)
    lvsadm(topo, "-e", "-t", VIP + ":80", "-r", "198.51.100.10:80", "-g", "-w", "0")
    r = topo.run("client", [sys.executable, "-c", _REQUESTS, VIP, "80"] + OTHER_CLIENTS, timeout=120)
    answers = json.loads(r.stdout)
    assert {body for _, body in answers} == {"11"}, answers    # no process still sends to rs1
    bad = topo.lvsadm("-a", "-t", VIP + ":80", "-r", "198.51.100.11:8080", "-m")
    assert bad.returncode != 0 and "Destination already exists" in bad.stderr


# ---------------------------------------------------------------- IPv6 through the workers

CLIENTS6 = ["2001:db8::1%02x" % n for n in range(16)]
VIP6_TEXT = "2001:db8::2"

_REQUESTS6 = _REQUESTS.replace("socket.create_connection((vip, port), timeout=3, source_address=(src, 0))",
                               "socket.create_connection((vip, port), timeout=3, source_address=(src, 0, 0, 0))")


@pytest.fixture(scope="module")
def topo6():
    t = Topology(tag="f6%d" % (os.getpid() % 100000), servers=2, ipv6=True)
    t.build()
    try:
        for a in CLIENTS6:
            t.run("client", ["ip", "addr", "add", a + "/64", "dev", "eth0", "nodad"], check=True)
        t.start_daemon("--workers", "2", log_path=os.path.join(t.workdir, "daemon.log"))
        t.setup_realserver("rs1", "dr")
        t.setup_realserver("rs2", "nat")
        t.http_server("rs1", "10", port=80, bind="::", lifetime=600)
        t.http_server("rs2", "11", port=8080, bind="::", lifetime=600)
        yield t
    finally:
        t.teardown()


@live
def test_two_workers_share_ipv6_nat_and_dr_traffic(topo6):
    """IPv6 through --workers: the IPv6 groups' program keeps a NAT server's replies with
    the client's process, every process learns its neighbours from the ND socket, and
    the listings add both up."""
    t = topo6
    lvsadm(t, "-A", "-t", "[%s]:80" % VIP6_TEXT, "-s", "rr")
    lvsadm(t, "-a", "-t", "[%s]:80" % VIP6_TEXT, "-r", "[2001:db8::10]:80", "-g")
    lvsadm(t, "-a", "-t", "[%s]:80" % VIP6_TEXT, "-r", "[2001:db8::11]:8080", "-m")
    r = t.run("client", [sys.executable, "-c", _REQUESTS6, VIP6_TEXT, "80"] + CLIENTS6, timeout=120)
    answers = json.loads(r.stdout)
    assert len(answers) == 3 * len(CLIENTS6)
    assert all(body in ("10", "11") for _, body in answers), answers
    assert {body for _, body in answers} == {"10", "11"}
    stats = ctl_request(t, "stats")
    per = [p["director"]["to_engine"] for p in stats["per_process"]]
    assert len(per) == 2 and all(n > 0 for n in per), per       # both processes forwarded IPv6
    conns = [line for line in lvsadm(t, "-Lnc").splitlines()[2:] if line.strip()]
    assert len(conns) == len(answers)
    # The ND socket: the worker resolved the servers and clients it sends to itself.
    assert all(p["director"].get("eth0_nd_rx", 0) > 0 for p in stats["per_process"]), stats["per_process"]
