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
