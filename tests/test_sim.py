"""`lvs sim`: small workloads whose results can be counted by hand, from the engine."""

import io
import json
import os
import sys

import pytest

from lvs import adm, cli, sim
from lvs.engine import Engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIP = "192.0.2.1:80"


def workload(**over):
    """Three equal NAT servers, 20 clients, 10 s of Poisson arrivals at 100/s."""
    w = {
        "duration": 10.0, "seed": 7, "sample": 0.5, "drain": 5.0,
        "clients": {"count": 20, "networks": ["198.51.100.0/24"]},
        "arrivals": {"rate": 100.0},
        "connections": {"protocol": "tcp", "size": {"dist": "constant", "value": 3000},
                        "hold": 0.05},
        "service": {"address": "192.0.2.1", "port": 80, "method": "nat",
                    "flags": {"sh": "sh-fallback", "mh": "mh-fallback"}},
        "servers": [{"name": "rs%d" % i, "address": "192.0.2.1%d" % i, "capacity": 1000,
                     "speed": 1e6} for i in (1, 2, 3)],
    }
    for k, v in over.items():
        w[k] = v
    return w


def run_sim(tmp_path, wl, name="w", schedulers=None, plots=False, seed=None, outdir="out",
            scheduler_paths=()):
    path = tmp_path / ("%s.json" % name)
    path.write_text(json.dumps(wl))
    out, err = io.StringIO(), io.StringIO()
    status = sim.simulate(str(path), schedulers, scheduler_paths, str(tmp_path / outdir), seed,
                          stdout=out, stderr=err, plots=plots)
    with open(tmp_path / outdir / "summary.json") as f:
        summary = json.load(f)
    return status, out.getvalue(), err.getvalue(), {s["scheduler"]: s for s in summary["schedulers"]}


def test_rr_splits_connections_exactly(tmp_path):
    status, out, err, res = run_sim(tmp_path, workload(), schedulers=["rr"])
    assert status == 0 and err == ""
    s = res["rr"]
    n = s["offered"]
    assert n > 800 and s["scheduled"] == n and s["completed"] == n
    assert s["refused"] == s["lost"] == s["no_destination"] == s["unfinished"] == 0
    conns = {r["server"]: r["conns"] for r in s["servers"]}
    # rr starts at the last server added (the head of the kernel's list): rs3, rs2, rs1, ...
    extra = n % 3
    assert conns == {"rs3": n // 3 + (extra > 0), "rs2": n // 3 + (extra > 1), "rs1": n // 3}
    for r in s["servers"]:
        # what the model counted is what the engine counted; NAT: every byte passed it
        assert r["engine_conns"] == r["conns"]
        assert r["bytes"] == 3000 * r["conns"]
        assert r["engine_outbytes"] >= r["bytes"]
    assert s["engine_drops"] == {}
    assert "rr " in out and "packets/s" in out


def by_hand(sched, flags, event_args, clients):
    """Each client's server before and after the event, asked of a fresh engine
    directly: one SYN per client before, the event's lvsadm command, one after."""
    from lvs.sim import Packets
    e = Engine(mtu=65535)
    assert adm.run(e, ["-A", "-t", VIP, "-s", sched, "-b", flags])[2] == 0
    for i in (1, 2, 3):
        assert adm.run(e, ["-a", "-t", VIP, "-r", "192.0.2.1%d:80" % i, "-m", "-w", "1"])[2] == 0
    pk = Packets(False, "tcp")
    vaddr = bytes([192, 0, 2, 1])
    names = {bytes([192, 0, 2, 10 + i]): "rs%d" % i for i in (1, 2, 3)}

    def choices(port):
        got = []
        for c in clients:
            a = c.packed
            e.receive(pk.tcp4(a, vaddr, pk.base(a, vaddr), port, 80, 0x02), 1.0)
            cp = e.conntab.by_in[(6, a, port, vaddr, 80)]
            got.append(names[cp.dest.addr])
        return got

    before = choices(40000)
    assert adm.run(e, event_args)[2] == 0
    after = choices(40001)
    moved = sum(1 for b, a in zip(before, after) if b != a)
    collateral = sum(1 for b, a in zip(before, after) if b != a and "rs2" not in (a, b))
    return moved, collateral


@pytest.mark.parametrize("sched,flags", [("sh", "sh-fallback"), ("mh", "mh-fallback")])
@pytest.mark.parametrize("how", ["weight0", "delete"])
def test_failed_server_remapping_matches_the_engine(tmp_path, sched, flags, how):
    wl = workload(events=[{"at": 5.0, "action": "fail", "server": "rs2", "how": how}],
                  client_timeout=1.0)
    status, out, err, res = run_sim(tmp_path, wl, schedulers=[sched])
    assert status == 0, err
    rm, = res[sched]["remaps"]
    assert rm["clients_compared"] == 20 and rm["unscheduled"] == 0
    if how == "weight0":
        args = ["-e", "-t", VIP, "-r", "192.0.2.12:80", "-m", "-w", "0"]
    else:
        args = ["-d", "-t", VIP, "-r", "192.0.2.12:80"]
    loaded = sim.load_workload(str(tmp_path / "w.json"))
    moved, collateral = by_hand(sched, flags, args, loaded.clients)
    assert (rm["moved"], rm["collateral"]) == (moved, collateral)
    assert rm["moved_share"] == round(moved / 20, 6)
    assert moved > 0
    if how == "weight0":
        # both keep every other client where it was: only rs2's clients move
        assert collateral == 0
    # rs2 was down from 5 s: nothing reached it after (weight 0 or deleted)
    rs2 = [r for r in res[sched]["servers"] if r["server"] == "rs2"][0]
    assert rs2["lost"] == 0


@pytest.mark.parametrize("how", ["weight0", "delete"])
@pytest.mark.parametrize("hit", [True, False])
def test_dh_remaps_by_destination_only(tmp_path, how, hit):
    """dh hashes the VIP, never the client: all clients are on one server, and an event moves
    all of them or none, as a fresh engine asked directly says (a deletion rebuilds dh's
    table, so it can move them even when it names another server; weight 0 on their server
    leaves them with no server at all)."""
    from lvs.sim import Packets
    e = Engine(mtu=65535)
    assert adm.run(e, ["-A", "-t", VIP, "-s", "dh"])[2] == 0
    for i in (1, 2, 3):
        assert adm.run(e, ["-a", "-t", VIP, "-r", "192.0.2.1%d:80" % i, "-m", "-w", "1"])[2] == 0
    pk = Packets(False, "tcp")
    vaddr = bytes([192, 0, 2, 1])

    def server(client, port):
        e.receive(pk.tcp4(client, vaddr, pk.base(client, vaddr), port, 80, 0x02), 1.0)
        cp = e.conntab.by_in.get((6, client, port, vaddr, 80))
        return None if cp is None else "rs%d" % (cp.dest.addr[3] - 10)
    wl = workload(client_timeout=1.0)
    (tmp_path / "probe.json").write_text(json.dumps(wl))
    clients = [c.packed for c in sim.load_workload(str(tmp_path / "probe.json")).clients]
    before = {server(c, 40000) for c in clients}
    assert len(before) == 1                       # one server for every client
    chosen = before.pop()
    victim = chosen if hit else next(n for n in ("rs1", "rs2", "rs3") if n != chosen)
    ip = "192.0.2.1%s:80" % victim[2:]
    args = ["-e", "-t", VIP, "-r", ip, "-m", "-w", "0"] if how == "weight0" else ["-d", "-t", VIP, "-r", ip]
    assert adm.run(e, args)[2] == 0
    after = [server(c, 40001) for c in clients]

    wl["events"] = [{"at": 5.0, "action": "fail", "server": victim, "how": how}]
    status, out, err, res = run_sim(tmp_path, wl, schedulers=["dh"])
    assert status == 0, err
    rm, = res["dh"]["remaps"]
    assert rm["unscheduled"] == after.count(None)
    assert rm["moved"] == sum(1 for a in after if a is not None and a != chosen)
    assert rm["moved"] in (0, rm["clients_compared"] - rm["unscheduled"])   # all or none
    if how == "weight0":
        assert rm["moved"] == 0 and rm["unscheduled"] == (20 if hit else 0)


def test_same_seed_same_outputs(tmp_path):
    wl = workload(events=[{"at": 3.0, "action": "fail", "server": "rs1"},
                          {"at": 6.0, "action": "restore", "server": "rs1"}],
                  connections={"protocol": "tcp", "size": {"dist": "pareto", "alpha": 1.2, "min": 1000},
                               "hold": {"dist": "exponential", "mean": 0.1}})
    for server in wl["servers"]:
        server.update(capacity=2, queue=3, speed=2e5)       # overload emerges
    run_sim(tmp_path, wl, schedulers=["rr", "wlc", "sh", "mh", "twos"], outdir="a")
    status, _, _, res = run_sim(tmp_path, wl, schedulers=["rr", "wlc", "sh", "mh", "twos"], outdir="b")
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(os.listdir(tmp_path / "b")) and "timeseries.csv" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert any(s["queued"] for s in res.values()) and any(s["refused"] for s in res.values())
    run_sim(tmp_path, wl, schedulers=["rr", "wlc", "sh", "mh", "twos"], outdir="c", seed=8)
    assert (tmp_path / "a" / "summary.json").read_bytes() != (tmp_path / "c" / "summary.json").read_bytes()


def test_plots(tmp_path):
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed for %s (tools/setup.sh installs it into the CPython "
                    ".venv only): lvs sim writes no plots here" % sys.implementation.name)
    wl = workload(events=[{"at": 5.0, "action": "fail", "server": "rs2"}])
    status, out, _, _ = run_sim(tmp_path, wl, schedulers=["rr", "sh"], plots=True)
    assert status == 0
    for stem in ("active", "imbalance", "response_cdf"):
        png = (tmp_path / "out" / (stem + ".png")).read_bytes()
        svg = (tmp_path / "out" / (stem + ".svg")).read_text()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        assert "<svg" in svg and "<path" in svg
    index = (tmp_path / "out" / "index.md").read_text()
    assert "![Active connections per server](active.png)" in index and "(response_cdf.svg)" in index


def test_without_matplotlib_everything_but_the_plots(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib fails
    status, out, _, res = run_sim(tmp_path, workload(), schedulers=["rr"], plots=True)
    assert status == 0 and "no plots: matplotlib is not installed" in out
    files = set(os.listdir(tmp_path / "out"))
    assert {"index.md", "summary.csv", "timeseries.csv", "timeseries.json", "servers.csv"} <= files
    assert not any(f.endswith((".png", ".svg")) for f in files)
    index = (tmp_path / "out" / "index.md").read_text()
    assert "No plots: matplotlib is not installed" in index and "[timeseries.csv](timeseries.csv)" in index


@pytest.mark.parametrize("change,field", [
    (lambda w: w["servers"][1].update(capacity=-3), "servers[1].capacity"),
    (lambda w: w.pop("duration"), "duration: missing"),
    (lambda w: w["connections"].update(size={"dist": "pareto", "alpha": 1.5}), "connections.size.min: missing"),
    # a network reaching past a documentation range is refused, like any outside them
    (lambda w: w["clients"].update(networks=["198.51.100.0/23"]), "clients.networks[0]"),
    (lambda w: w["arrivals"].update(rtae=3), "arrivals.rtae: unknown"),
    (lambda w: w.update(events=[{"at": 1, "action": "fail", "server": "rs9"}]), "events[0].server"),
    (lambda w: w["service"].update(method="masq"), "service.method"),
])
def test_malformed_workload_names_the_field(tmp_path, capsys, change, field):
    wl = workload()
    change(wl)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(wl))
    assert cli.main(["sim", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lvs sim: %s: field " % path) and field in err, err
    assert not (tmp_path / "out").exists()


def test_malformed_toml_and_unknown_scheduler(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("duration = \n")
    assert cli.main(["sim", str(path)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    path = tmp_path / "w.json"
    path.write_text(json.dumps(workload()))
    assert cli.main(["sim", str(path), "--schedulers", "rr,nosuch", "-o", str(tmp_path / "o")]) == 2
    assert "scheduler nosuch: Scheduler or persistence engine not found" in capsys.readouterr().err


def test_example_workload(tmp_path):
    wl = sim.load_workload(os.path.join(ROOT, "examples", "sim-heavy-tail.toml"))
    assert wl.schedulers == ["rr", "wlc", "sh", "mh"] and wl.size.kind == "pareto"
    assert [(e.at / wl.duration, e.action) for e in wl.events] == [(1 / 3, "fail"), (2 / 3, "restore")]


def test_persistence_and_quiescent_templates(tmp_path):
    """rr with -p: a persistent client keeps its server; a failed server (weight 0)
    still gets its clients' new connections through their templates, which are
    lost, unless expire_quiescent_template drops the template."""
    events = [{"at": 5.0, "action": "fail", "server": "rs1"}]
    wl = workload(events=events, client_timeout=0.5)
    wl["service"]["persistent"] = 60
    _, _, _, res = run_sim(tmp_path, wl, schedulers=["rr"], outdir="p")
    rm, = res["rr"]["remaps"]
    assert rm["collateral"] == 0             # persistence: no client of rs2 or rs3 moves
    lost = sum(r["lost"] for r in res["rr"]["servers"])
    assert lost > 0 and rm["moved"] == 0     # rs1's clients still go to rs1, and get nothing
    wl["sysctls"] = {"expire_quiescent_template": 1}
    _, _, _, res = run_sim(tmp_path, wl, schedulers=["rr"], outdir="q")
    rm, = res["rr"]["remaps"]
    assert sum(r["lost"] for r in res["rr"]["servers"]) == 0 and rm["moved"] > 0 and rm["collateral"] == 0


@pytest.mark.parametrize("protocol,method,v6", [("udp", "nat", False), ("tcp", "dr", True),
                                                ("udp", "tunnel", True)])
def test_protocols_methods_families(tmp_path, protocol, method, v6):
    wl = workload(connections={"protocol": protocol, "size": {"dist": "lognormal", "median": 2000,
                                                              "sigma": 1.0}})
    wl["service"]["method"] = method
    if v6:
        wl["service"]["address"] = "2001:db8::1"
        wl["clients"]["networks"] = ["2001:db8:c::/64"]
        for i, s in enumerate(wl["servers"], 1):
            s["address"] = "2001:db8::1%d" % i
    wl["arrivals"] = {"curve": [[0, 20], [5, 100], [10, 20]], "bursts": [{"at": 2, "duration": 1, "rate": 200}]}
    status, out, err, res = run_sim(tmp_path, wl, schedulers=["wlc", "sh"])
    assert status == 0, err
    for s in res.values():
        assert s["scheduled"] == s["offered"] > 200 and s["completed"] == s["offered"]
        assert sum(r["engine_conns"] for r in s["servers"]) == s["offered"]
        assert s["engine_drops"] == {}


def test_timed_lvsadm_and_add(tmp_path):
    wl = workload(events=[{"at": 4.0, "action": "add", "server": "rs3"},
                          {"at": 7.0, "action": "lvsadm", "args": "-E -t {vip} -s wrr"}])
    wl["servers"][2]["initially"] = "absent"
    status, out, err, res = run_sim(tmp_path, wl, schedulers=["rr"])
    assert status == 0, err
    rs3 = [r for r in res["rr"]["servers"] if r["server"] == "rs3"][0]
    assert 0 < rs3["conns"] < res["rr"]["scheduled"] / 3
    events = (tmp_path / "out" / "events.csv").read_text()
    assert "rr,7.0,lvsadm -E -t 192.0.2.1:80 -s wrr,0," in events
    # a command the engine refuses is reported and the exit status is 1
    wl["events"] = [{"at": 4.0, "action": "lvsadm", "args": "-d -t {vip} -r 192.0.2.99:80"}]
    status, out, err, res = run_sim(tmp_path, wl, schedulers=["rr"], outdir="o2")
    assert status == 1 and "No such destination" in err


def test_scheduler_path(tmp_path):
    from lvs import registry
    if not hasattr(registry, "load_scheduler_file"):
        pytest.skip("lvs.registry.load_scheduler_file is not in this pylvs yet")
    path = os.path.join(ROOT, "examples", "scheduler_p2c.py")
    if not os.path.exists(path):
        pytest.skip("examples/scheduler_p2c.py is not in this checkout")
    status, out, err, res = run_sim(tmp_path, workload(), schedulers=["rr"], scheduler_paths=[path])
    assert status == 0, err
    assert list(res) == ["rr", "p2c"] and res["p2c"]["scheduled"] == res["rr"]["offered"]


# ---------------------------------------------------------------- trace-driven: a capture in

def eth():
    # MACs given: left out, scapy would look them up on the network (slowly, for IPv6)
    from scapy.all import Ether
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


CLIENTS = ("198.51.100.21", "198.51.100.22", "203.0.113.23")
RULES = "".join(["-A -t 192.0.2.1:80 -s rr\n"] +
                ["-a -t 192.0.2.1:80 -r 192.0.2.1%d:80 -m -w 1\n" % i for i in (1, 2, 3)])


def tcp_conn(t, client, port, request, response, hold, vip="192.0.2.1", reply_from=None, ip=None):
    """One HTTP-like connection as a director's capture shows it: (time, frame) pairs.
    The replies come from `reply_from` (a real server, before NAT) or the VIP."""
    from scapy.all import IP, IPv6, TCP, Raw
    ip = ip or (IPv6 if ":" in vip else IP)
    src = reply_from or vip
    c = lambda flags, n=0: eth() / ip(src=client, dst=vip) / TCP(sport=port, dport=80, flags=flags) / Raw(b"q" * n)
    s = lambda flags, n=0: eth() / ip(src=src, dst=client) / TCP(sport=80, dport=port, flags=flags) / Raw(b"r" * n)
    pkts = [(t, c("S")), (t + 0.001, s("SA")), (t + 0.002, c("A")), (t + 0.003, c("PA", request))]
    if response:
        pkts += [(t + 0.004, s("PA", response)), (t + 0.005, c("A"))]
    return pkts + [(t + 0.005 + hold, c("FA")), (t + 0.006 + hold, s("FA")), (t + 0.007 + hold, c("A"))]


def write_capture(path, pkts):
    from scapy.all import wrpcap
    frames = []
    for t, p in sorted(pkts, key=lambda x: x[0]):
        p.time = t
        frames.append(p)
    wrpcap(str(path), frames)


def small_capture(path):
    """9 TCP connections from 3 clients to 192.0.2.1:80, the replies in it, each
    with its own request and response bytes and hold time; around them what is not
    a connection to the service: two UDP flows, a SYN to port 22, an ARP request, a
    connection whose SYN is missing, and a retransmitted SYN."""
    from scapy.all import ARP, IP, TCP, UDP, Raw
    pkts = []
    for k in range(9):
        client = CLIENTS[k // 3]
        pkts += tcp_conn(1.0 + 0.5 * k, client, 40000 + k, 100 + k, 1000 * (k + 1), 0.1 * k)
    pkts.append((1.0005, eth() / IP(src=CLIENTS[0], dst="192.0.2.1") / TCP(sport=40000, dport=80, flags="S")))
    pkts.append((0.5, eth() / ARP(psrc=CLIENTS[0], pdst="192.0.2.1")))
    pkts.append((2.2, eth() / IP(src=CLIENTS[1], dst="192.0.2.1") / TCP(sport=41000, dport=22, flags="S")))
    pkts.append((2.3, eth() / IP(src=CLIENTS[1], dst="192.0.2.1") / TCP(sport=41001, dport=80, flags="PA")
                 / Raw(b"x" * 50)))
    for n, (client, port) in enumerate((("203.0.113.5", 5353), ("203.0.113.6", 5000))):
        for j in range(3):
            t = 1.2 + n + 0.1 * j
            pkts.append((t, eth() / IP(src=client, dst="192.0.2.1") / UDP(sport=port, dport=53) / Raw(b"d" * 30)))
            pkts.append((t + 0.01, eth() / IP(src="192.0.2.1", dst=client) / UDP(sport=53, dport=port)
                         / Raw(b"a" * 200)))
    write_capture(path, pkts)
    return path


def capture_sim(tmp_path, schedulers, rules=RULES, outdir="out", cap=None, **kw):
    cap = cap or small_capture(tmp_path / "cap.pcap")
    rpath = tmp_path / "rules"
    rpath.write_text(rules)
    out, err = io.StringIO(), io.StringIO()
    status = sim.simulate(str(cap), schedulers, kw.pop("scheduler_paths", ()), str(tmp_path / outdir), None,
                          stdout=out, stderr=err, plots=False, rules=str(rpath), **kw)
    with open(tmp_path / outdir / "summary.json") as f:
        summary = json.load(f)
    return status, out.getvalue(), err.getvalue(), summary


def clients_csv(path):
    import csv
    with open(path) as f:
        return list(csv.DictReader(f))


def test_capture_connections_are_the_capture_s(tmp_path):
    cap = small_capture(tmp_path / "cap.pcap")
    rules = tmp_path / "rules"
    rules.write_text(RULES)
    wl = sim.workload_from_rules(str(cap), str(rules))
    arrivals = sim.capture_arrivals(wl, 1)
    assert [str(a) for a in wl.clients] == list(CLIENTS)
    # times from the capture's first record (the ARP at 0.5 s); ports, bytes and holds as sent
    want = [(0.5 + 0.5 * k, k // 3, 40000 + k, 1000 * (k + 1), 0.1 * k + 0.001, 100 + k) for k in range(9)]
    assert [(round(t, 6), c, p, size, round(hold, 6), req) for t, c, p, size, hold, req in arrivals] == \
        [(round(t, 6), c, p, size, round(hold, 6), req) for t, c, p, size, hold, req in want]
    info = wl.capture_info
    assert (info["connections"], info["clients"], info["responses_seen"], info["midstream"]) == (9, 3, 9, 1)
    assert wl.duration == pytest.approx(5.807 - 0.5) and wl.sample == pytest.approx(wl.duration / 200)
    assert [s.endpoint for s in wl.servers] == ["192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80"]
    assert wl.schedulers == ["rr", "wlc", "sh", "mh"]


def test_capture_rr_splits_exactly_and_sh_keeps_each_client(tmp_path):
    status, out, err, summary = capture_sim(tmp_path, ["rr", "sh"])
    assert status == 0 and err == ""
    assert out.startswith("capture cap.pcap: 9 TCP connections to 192.0.2.1:80 from 3 clients")
    res = {s["scheduler"]: s for s in summary["schedulers"]}
    rr = res["rr"]
    assert rr["offered"] == rr["scheduled"] == rr["completed"] == 9
    assert [r["conns"] for r in rr["servers"]] == [3, 3, 3]
    assert [r["engine_conns"] for r in rr["servers"]] == [3, 3, 3]
    # the responses are the capture's bytes, every one through the director (NAT)
    assert rr["bytes"] == sum(1000 * (k + 1) for k in range(9))
    assert rr["engine_drops"] == {} and res["sh"]["engine_drops"] == {}
    rows = clients_csv(tmp_path / "out" / "clients.csv")
    assert sorted(r["client"] for r in rows if r["scheduler"] == "rr") == sorted(CLIENTS)
    sh = [r for r in rows if r["scheduler"] == "sh"]
    assert sorted(r["client"] for r in sh) == sorted(CLIENTS)
    assert all(r["conns"] == "3" and r["servers"] == "1" for r in sh), sh
    # rr sends each client's three (one after the other) to the three servers in turn
    assert all(r["servers"] == "3" for r in rows if r["scheduler"] == "rr")
    assert summary["meta"]["capture"]["file"] == "cap.pcap"
    index = (tmp_path / "out" / "index.md").read_text()
    assert "Trace-driven" in index and "[clients.csv](clients.csv)" in index


def test_capture_udp_flows_and_replies_from_a_real_server(tmp_path):
    rules = "-A -u 192.0.2.1:53 -s rr\n" + "".join("-a -u 192.0.2.1:53 -r 192.0.2.1%d:53 -m\n" % i for i in (1, 2))
    status, out, err, summary = capture_sim(tmp_path, ["rr"], rules=rules)
    assert status == 0, err
    s, = summary["schedulers"]
    assert s["offered"] == s["completed"] == 2 and [r["conns"] for r in s["servers"]] == [1, 1]
    assert s["bytes"] == 2 * 3 * 200      # each flow's three answers
    # NAT replies captured before the rewrite come from the real server, not the VIP
    pkts = tcp_conn(1.0, CLIENTS[0], 40000, 10, 4321, 0.0, reply_from="192.0.2.12")
    write_capture(tmp_path / "one.pcap", pkts)
    status, out, err, summary = capture_sim(tmp_path, ["rr"], outdir="o2", cap=tmp_path / "one.pcap")
    assert status == 0 and summary["schedulers"][0]["bytes"] == 4321


def test_capture_ipv6_pcapng_vlan(tmp_path):
    from scapy.all import Dot1Q, IPv6
    from scapy.utils import PcapNgWriter
    pkts = []
    for k in range(4):
        pkts += tcp_conn(1.0 + k, "2001:db8:c::%d" % (k % 2 + 1), 50000 + k, 50, 3000, 0.0, vip="2001:db8::1")
    w = PcapNgWriter(str(tmp_path / "v6.pcapng"))
    for t, p in pkts:
        q = eth() / Dot1Q(vlan=7) / p[IPv6]
        q.time = t
        w.write(q)
    w.close()
    rules = "-A -t [2001:db8::1]:80 -s rr\n" + "".join("-a -t [2001:db8::1]:80 -r [2001:db8::1%d]:80 -m\n" % i
                                                      for i in (1, 2))
    status, out, err, summary = capture_sim(tmp_path, ["rr", "sh"], rules=rules, cap=tmp_path / "v6.pcapng")
    assert status == 0, err
    for s in summary["schedulers"]:
        assert s["offered"] == s["completed"] == 4 and s["bytes"] == 12000 and s["engine_drops"] == {}
    rows = clients_csv(tmp_path / "out" / "clients.csv")
    assert {r["client"] for r in rows} == {"2001:db8:c::1", "2001:db8:c::2"}


def test_capture_workload_file_with_capacities_and_events(tmp_path):
    small_capture(tmp_path / "cap.pcap")
    wl = {"capture": "cap.pcap", "seed": 3, "drain": 20.0,
          "service": {"address": "192.0.2.1", "port": 80},
          "servers": [{"name": "rs%d" % i, "address": "192.0.2.1%d" % i, "capacity": 1, "queue": 0,
                       "speed": 1e3} for i in (1, 2, 3)],
          "events": [{"at": 2.0, "action": "fail", "server": "rs1"}]}
    sub = tmp_path / "w"
    sub.mkdir()
    (sub / "cap.pcap").write_bytes((tmp_path / "cap.pcap").read_bytes())   # relative to the workload file
    status, out, err, res = run_sim(sub, wl, schedulers=["rr", "sh"])
    assert status == 0, err
    for s in res.values():
        assert s["offered"] == 9
        rs1 = s["servers"][0]
        assert rs1["conns"] <= 3             # nothing after 2 s (the 4th connection's start is 2 s)
    # capacity 1, no queue, k + 1 seconds of service each: the ones that overlap are refused
    assert all(s["refused"] for s in res.values())
    events = (sub / "out" / "events.csv").read_text()
    assert "rr,2.0,lvsadm -e -t 192.0.2.1:80 -r 192.0.2.11:80 -m -w 0,0," in events
    # `duration` keeps the connections that start before it
    wl["duration"] = 2.0
    _, _, _, res = run_sim(sub, wl, schedulers=["rr"], outdir="o2")
    assert res["rr"]["offered"] == 3


def test_capture_timed_rules_become_events_and_same_seed_same_output(tmp_path):
    rules = RULES + "@2.0 -e -t 192.0.2.1:80 -r 192.0.2.11:80 -m -w 0\n"
    # responses missing from the capture: drawn from --size's constant, else the seed
    pkts = []
    for k in range(9):
        pkts += tcp_conn(1.0 + 0.5 * k, CLIENTS[k % 3], 40000 + k, 100, 0, 0.0)
    write_capture(tmp_path / "noreply.pcap", pkts)
    cap = tmp_path / "noreply.pcap"
    status, out, err, summary = capture_sim(tmp_path, ["rr"], rules=rules, cap=cap, size=5000)
    assert status == 0, err
    s, = summary["schedulers"]
    assert s["bytes"] == 9 * 5000 and "0 with the response in it, 9 sized from connections.size" in out
    rs1 = s["servers"][0]
    assert rs1["server"] == "192.0.2.11:80" and rs1["conns"] == 1      # only before 2 s (rr: rs3, rs2, rs1)
    capture_sim(tmp_path, ["rr", "wlc"], rules=rules, cap=cap, outdir="a")
    capture_sim(tmp_path, ["rr", "wlc"], rules=rules, cap=cap, outdir="b")
    for name in sorted(os.listdir(tmp_path / "a")):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    summary_a = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary_a["schedulers"][0]["bytes"] != 9 * 5000       # exponential draws, not --size


@pytest.mark.parametrize("case,message", [
    ("missing", "cannot read capture"),
    ("garbage", "not a pcap or pcapng file"),
    ("truncated", "file ends inside"),
    ("other-vip", "no TCP connection (a client's SYN) to 192.0.2.99:80 in it"),
    ("no-rules", "a capture: give --rules RULES"),
    ("two-services", "has 2 services (tcp:192.0.2.1:80, tcp:192.0.2.2:80)"),
    ("bad-rules", "rules:1:"),
])
def test_capture_errors(tmp_path, capsys, case, message):
    cap = small_capture(tmp_path / "cap.pcap")
    rules = tmp_path / "rules"
    rules.write_text(RULES)
    argv = ["sim", str(cap), "--rules", str(rules), "-o", str(tmp_path / "out")]
    if case == "missing":
        argv[1] = str(tmp_path / "nope.pcap")
    elif case == "garbage":
        cap.write_bytes(b"this is not a capture at all")
    elif case == "truncated":
        cap.write_bytes(cap.read_bytes()[:-10])
    elif case == "other-vip":
        rules.write_text(RULES.replace("192.0.2.1:", "192.0.2.99:"))
    elif case == "no-rules":
        argv[2:4] = []
    elif case == "two-services":
        rules.write_text(RULES + "-A -t 192.0.2.2:80 -s wlc\n")
    elif case == "bad-rules":
        rules.write_text("-A -t 192.0.2.1:80 -s\n")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lvs sim: %s: " % argv[1]) and message in err, err
    assert not (tmp_path / "out").exists()


def test_capture_service_picks_one(tmp_path):
    status, out, err, summary = capture_sim(tmp_path, ["rr"], rules=RULES + "-A -t 192.0.2.2:80 -s wlc\n",
                                            service="tcp:192.0.2.1:80")
    assert status == 0 and summary["schedulers"][0]["offered"] == 9


@pytest.mark.parametrize("change,message", [
    (lambda w: w.update(arrivals={"rate": 10.0}), "field arrivals: give either capture or [arrivals]"),
    (lambda w: w.update(clients={"count": 3}), "field clients: give either capture or [clients]"),
    (lambda w: w.update(connections={"hold": 1.0}), "field connections.hold: the capture gives"),
    (lambda w: w.update(capture="nope.pcap"), "cannot read capture"),
])
def test_capture_workload_errors(tmp_path, capsys, change, message):
    small_capture(tmp_path / "cap.pcap")
    wl = {"capture": "cap.pcap", "servers": [{"address": "192.0.2.11"}]}
    change(wl)
    path = tmp_path / "w.json"
    path.write_text(json.dumps(wl))
    assert cli.main(["sim", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lvs sim: %s: " % path) and message in err, err
    assert not (tmp_path / "out").exists()


def test_tutorial_capture(tmp_path, capsys):
    out = tmp_path / "tut"
    assert cli.main(["sim", os.path.join(ROOT, "examples", "tutorial.pcap"), "--rules",
                     os.path.join(ROOT, "examples", "tutorial.rules"), "--schedulers", "rr,wlc",
                     "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("capture tutorial.pcap: 6 TCP connections to 198.51.100.2:80 from 1 client over 4s; "
                           "2 with the response in it, 4 sized from connections.size\n")
    summary = json.loads((out / "summary.json").read_text())
    for s in summary["schedulers"]:
        # one DR, one tunnel, one NAT server; one connection at a time, so rr and wlc alike go round
        assert s["offered"] == s["scheduled"] == s["completed"] == 6 and s["engine_drops"] == {}
        assert [(r["server"], r["conns"]) for r in s["servers"]] == [
            ("198.51.100.10:80", 2), ("198.51.100.11:80", 2), ("198.51.100.12:12", 2)]
        nat = s["servers"][2]
        assert nat["engine_outpkts"] > 0 and s["servers"][0]["engine_outpkts"] == 0
    rows = clients_csv(out / "clients.csv")
    assert [(r["scheduler"], r["client"], r["conns"]) for r in rows] == [("rr", "198.51.100.1", "6"),
                                                                         ("wlc", "198.51.100.1", "6")]
