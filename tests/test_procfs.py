"""/proc/net/ip_vs* as the real kernel writes them (lvs/procfs.py), and the metrics read from
the same state (lvs/metrics.py).

The expected text is tests/data/golden/procfs.json, recorded from Linux 6.1 with the kernel
oracle VM (its `how` says how; tests/data/golden/probe_procfs.py is the probe). The state is
built here as the recording's director had it:
- services and real servers by the probe's own ipvsadm commands, through lvs.adm.run;
- connections and templates BY HAND, one per row of the recorded /proc/net/ip_vs_conn (the
  packets' exact bytes, which the counters depend on, are not in the recording): each made by
  the connection table's own ip_vs_conn_new (ConnTable.new, which binds it to its real server),
  then given the recorded state (an active TCP state moves it from the server's inactive count
  to its active one, as ip_vs_set_state does) and the recorded expiry;
- the global counters and rates by hand, to the recorded values.
So what is checked byte for byte is the formatting of every file, the service order (the
kernel's hash order: its key depends on the namespace's address, so the test finds the one
salt of 256 that gives the recorded order and requires that one exists) and the active and
inactive counts that follow from the connections' states; after `-Z` (run through adm.run),
what each stats file keeps and what it restarts.
"""

import json
import os
import re

import pytest

from lvs import adm, listing, metrics, procfs, proto_tcp
from lvs.conntab import IP_VS_CTPL_S_ASSURED
from lvs.engine import Engine
from lvs.flags import IP_VS_CONN_F_INACTIVE, IP_VS_CONN_F_TEMPLATE

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "procfs.json")
NOW = 1000.0


@pytest.fixture(scope="module")
def golden():
    with open(GOLDEN) as f:
        return json.load(f)


def snap(golden, label):
    for s in golden["snapshots"]:
        if s["label"] == label:
            return s
    raise KeyError(label)


def configured(golden):
    engine = Engine(fastpath=False)
    for rec in golden["commands"]:
        if rec["argv"][1:] == ["-Z"]:
            continue
        out, err, status = adm.run(engine, rec["argv"][1:])
        assert (out, err, status) == (rec["stdout"], rec["stderr"], rec["rc"]), rec["argv"]
    engine.now = NOW
    return engine


def find_salt(engine, text):
    """The salt ((size_t) ipvs >> 8, its low byte) that gives the recorded service order."""
    found = []
    for salt in range(256):
        engine.svc_hash_salt = salt
        if procfs.ip_vs(engine) == text:
            found.append(salt)
    engine.svc_hash_salt = found[0] if found else 0
    return found


def _addr(text):
    if ":" in text:
        return bytes.fromhex(text.replace(":", ""))
    return bytes.fromhex(text)


CONN_ROW = re.compile(r"^(\S+) +(\S+) ([0-9A-F]{4}) (\S+) ([0-9A-F]{4}) (\S+) ([0-9A-F]{4}) (\S+) +(\d+)")
PROTOS = {"TCP": 6, "UDP": 17, "IP": 0}


def parse_conns(text):
    rows = []
    for line in text.splitlines()[1:]:
        m = CONN_ROW.match(line)
        assert m, line
        p, ca, cp, va, vp, da, dp, state, exp = m.groups()
        rows.append((PROTOS[p], _addr(ca), int(cp, 16), _addr(va), int(vp, 16), _addr(da),
                     int(dp, 16), state, int(exp)))
    return rows


def _service_of(engine, protocol, vaddr, vport, daddr):
    template_of_mark = protocol == 0
    for svc in engine.services.values():
        if not svc.fwmark and not template_of_mark and (svc.protocol, svc.addr, svc.port) == (
                protocol, vaddr, vport):
            return svc
    for svc in engine.services.values():  # a firewall-mark service: the one with that server
        if svc.fwmark and len(svc.addr) == len(daddr) and any(
                d.addr == daddr for d in svc.destinations):
            return svc
    raise AssertionError("no service for %r" % ((protocol, vaddr, vport),))


def add_connections(engine, rows):
    """One entry per recorded row, by the table's own ip_vs_conn_new."""
    for protocol, caddr, cport, vaddr, vport, daddr, dport, state, exp in rows:
        template = state in ("NONE", "ASSURED") and (protocol == 0 or cport == 0)
        svc = _service_of(engine, protocol, vaddr, vport, daddr)
        dest = [d for d in svc.destinations if d.addr == daddr][0]
        cp = engine.conntab.new(protocol, caddr, cport, vaddr, vport, daddr, dport,
                                IP_VS_CONN_F_TEMPLATE if template else 0, dest, svc.fwmark, NOW)
        if template:
            cp.state = IP_VS_CTPL_S_ASSURED if state == "ASSURED" else 0
        elif protocol == 6:
            cp.state = proto_tcp.STATE_NAMES.index(state)
            if proto_tcp.ACTIVE[cp.state] and cp.flags & IP_VS_CONN_F_INACTIVE:
                cp.flags &= ~IP_VS_CONN_F_INACTIVE
                dest.inactconns -= 1
                dest.activeconns += 1
        cp.expires = NOW + exp + 0.5
        assert engine.state_name(cp) == state


def _hexrow(line):
    return tuple(int(v, 16) for v in line.split())


def set_totals(engine, stats_text):
    """The global counters and rates, as /proc/net/ip_vs_stats shows them."""
    lines = stats_text.splitlines()
    counters, rates = _hexrow(lines[2]), _hexrow(lines[5])
    st = engine.tot_stats
    st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes = counters
    st.kstats = st.last = counters
    st.cps, st.inpps, st.outpps = (v << 10 for v in rates[:3])
    st.inbps, st.outbps = (v << 5 for v in rates[3:])
    assert st.rates() == rates


def set_backend_stats(engine, stats_listing):
    """Each service's and real server's counters from the recorded -Ln --stats (small numbers,
    printed in full), for the metrics."""
    current = None
    order = listing.listed_services(engine, sort=True)
    it = iter(order)
    for line in stats_listing.splitlines()[3:]:
        fields = line.split()
        if line.startswith("  ->"):
            dest = [d for d in current.destinations
                    if listing.addrport_to_anyname(d.addr, d.port, 0, True) == fields[1]][0]
            target = dest.stats
            values = tuple(int(v) for v in fields[2:])
        else:
            current = next(it)
            target = current.stats
            values = tuple(int(v) for v in fields[-5:])
        target.conns, target.inpkts, target.outpkts, target.inbytes, target.outbytes = values
        target.kstats = target.last = values


def build_live(golden):
    """The director as it was at the 'after traffic' snapshot."""
    s = snap(golden, "after traffic")
    engine = configured(golden)
    add_connections(engine, parse_conns(s["files"]["ip_vs_conn"]))
    salts = find_salt(engine, s["files"]["ip_vs"])
    assert salts, "no salt gives the kernel's service order and text:\n" + procfs.ip_vs(engine)
    set_totals(engine, s["files"]["ip_vs_stats"])
    set_backend_stats(engine, s["ipvsadm"]["-Ln --stats"])
    return engine


@pytest.fixture(scope="module")
def live(golden):
    return build_live(golden)


# ---------------------------------------------------------------- the files


def test_empty_director(golden):
    s = snap(golden, "empty")
    engine = Engine(fastpath=False)
    engine.now = NOW
    assert procfs.render(engine) == s["files"]


def test_rules_without_traffic(golden):
    s = snap(golden, "rules, no traffic")
    engine = configured(golden)
    assert find_salt(engine, s["files"]["ip_vs"])
    for name in ("ip_vs_stats", "ip_vs_stats_percpu", "ip_vs_conn", "ip_vs_conn_sync"):
        assert procfs.RENDER[name](engine) == s["files"][name], name


def test_service_order_of_another_boot(golden):
    """Another boot, another namespace address: another order, still one of the 256."""
    engine = configured(golden)
    assert find_salt(engine, golden["other_boot_ip_vs"])


def test_after_traffic_every_file(golden, live):
    s = snap(golden, "after traffic")
    for name in procfs.FILES:
        assert procfs.RENDER[name](live) == s["files"][name], name


def test_listings_agree(golden, live):
    """The same state through ipvsadm's listings: sorted, and the kernel's order (--nosort)."""
    s = snap(golden, "after traffic")
    assert adm.run(live, ["-Ln"])[0] == s["ipvsadm"]["-Ln"]
    assert adm.run(live, ["-Ln", "--nosort"])[0] == s["ipvsadm"]["-Ln --nosort"]
    assert adm.run(live, ["-Ln", "--stats"])[0] == s["ipvsadm"]["-Ln --stats"]


def test_zero_keeps_per_cpu_counters(golden):
    """-Z: ip_vs_stats and the "~" row restart (kstats0 = kstats), the CPU rows go on."""
    s = snap(golden, "after -Z")
    engine = build_live(golden)
    assert adm.run(engine, ["-Z"])[2] == 0
    assert procfs.ip_vs_stats(engine) == s["files"]["ip_vs_stats"]
    assert procfs.ip_vs_stats_percpu(engine) == s["files"]["ip_vs_stats_percpu"]
    assert procfs.ip_vs(engine) == s["files"]["ip_vs"]


def test_formats_in_detail(live):
    text = procfs.ip_vs(live)
    assert "UDP  CB0071C8:0202 rr ops  \n" in text            # IPv4: "ops " and a space
    assert "TCP  CB0071C8:01BB wlc  persistent 75000 FFFFFF00\n" in text   # 300 s in jiffies
    assert "UDP  [2001:0db8:0000:0000:0000:0000:0000:0200]:0035 lc persistent 30000 40000000\n" in text
    assert "FWM  00000003 rr persistent 22500 80000000\n" in text  # IPv6 /128, byte-swapped
    assert "FWM  00000001 sh \n" in text
    conn = procfs.ip_vs_conn(live)
    assert "IP  C633640F 0000 00000002 0000 C000020C 0000 NONE             55\n" in conn
    assert " 0000:0003:0000:0000:0000:0000:0000:0000 0000 " in conn  # an IPv6 fwmark template


# ---------------------------------------------------------------- ProcWriter


def test_writer_atomic_and_removed(tmp_path, live):
    w = procfs.ProcWriter(str(tmp_path))
    w.open()
    w.write(live)
    net = tmp_path / "net"
    assert sorted(os.listdir(net)) == sorted(procfs.FILES)
    assert (net / "ip_vs").read_text() == procfs.ip_vs(live)
    before = os.stat(net / "ip_vs").st_ino
    w.write(live)  # unchanged: not rewritten
    assert os.stat(net / "ip_vs").st_ino == before
    w.close()
    assert not net.exists()


# ---------------------------------------------------------------- metrics


def parse_backends(ip_vs_text):
    """prometheus/procfs' parseIPVSBackendStatus and node_exporter's labels, in Python: what
    node_exporter would report from a /proc/net/ip_vs."""
    out = {}
    proto = mark = ""
    laddr, lport = None, 0

    def ip_port(s):
        if len(s) == 13:
            return metrics.go_ip(bytes.fromhex(s[:8])), int(s[-4:], 16)
        assert len(s) == 46, s
        return metrics.go_ip(bytes.fromhex(s[1:40].replace(":", ""))), int(s[-4:], 16)
    for line in ip_vs_text.splitlines():
        f = line.split()
        if not f or f[0] in ("IP", "Prot") or f[1] == "RemoteAddress:Port":
            continue
        if f[0] in ("TCP", "UDP"):
            proto, mark = f[0], ""
            laddr, lport = ip_port(f[1])
        elif f[0] == "FWM":
            proto, mark, laddr, lport = "FWM", f[1], "", 0
        elif f[0] == "->":
            raddr, rport = ip_port(f[1])
            key = (laddr, str(lport), raddr, str(rport), proto, mark)
            row = out.setdefault(key, [0, 0, 0])
            row[0] += int(f[4])
            row[1] += int(f[5])
            row[2] += int(f[3])
    return out


def samples(text):
    got = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = re.match(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$', line)
        assert m, line
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
        got[(m.group(1), labels)] = float(m.group(3))
    return got


def test_metrics_match_what_node_exporter_reads(live):
    text = metrics.exposition(live)
    got = samples(text)
    totals = _hexrow(procfs.ip_vs_stats(live).splitlines()[2])
    for (name, _), value in zip(metrics.NODE_TOTALS, totals):
        assert got[(name, ())] == value
    expected = parse_backends(procfs.ip_vs(live))
    assert len(expected) == 15
    for key, (active, inactive, weight) in expected.items():
        labels = tuple(sorted(zip(metrics.BACKEND_LABELS, key)))
        assert got[("node_ipvs_backend_connections_active", labels)] == active
        assert got[("node_ipvs_backend_connections_inactive", labels)] == inactive
        assert got[("node_ipvs_backend_weight", labels)] == weight
    n = sum(1 for name, _ in got if name == "node_ipvs_backend_weight")
    assert n == len(expected)
    # labels come out sorted by name, as Go's client writes them too
    assert ('node_ipvs_backend_weight{local_address="2001:db8::200",local_mark="",local_port="8080",'
            'proto="TCP",remote_address="2001:db8:2::13",remote_port="8080"} 4.0' in text)
    assert ('node_ipvs_backend_connections_active{local_address="",local_mark="00000001",'
            'local_port="0",proto="FWM",remote_address="192.0.2.11",remote_port="80"} 1.0' in text)
    # pylvs's own: per real server counters, table entries
    key = (("local_address", "203.0.113.200"), ("local_mark", ""), ("local_port", "443"),
           ("proto", "TCP"), ("remote_address", "192.0.2.13"), ("remote_port", "443"))
    assert got[("pylvs_backend_outgoing_bytes_total", key)] == 148
    assert got[("pylvs_connection_entries", (("kind", "template"),))] == 4
    assert got[("pylvs_connection_entries", (("kind", "connection"),))] == 12


def test_go_ip():
    assert metrics.go_ip(bytes.fromhex("20010db8000000000000000000000200")) == "2001:db8::200"
    assert metrics.go_ip(bytes.fromhex("00000000000000000000ffffc0000201")) == "192.0.2.1"
    assert metrics.go_ip(bytes.fromhex("20010db8000000010001000100010001")) == "2001:db8:0:1:1:1:1:1"
    assert metrics.go_ip(bytes.fromhex("c000020b")) == "192.0.2.11"


def test_parse_listen():
    assert metrics.parse_listen("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert metrics.parse_listen("[::1]:9100") == ("::1", 9100)
    assert metrics.parse_listen(":9100") == ("0.0.0.0", 9100)
    for bad in ("9100", "a:b", "1.2.3.4:0", "1.2.3.4:70000"):
        with pytest.raises(ValueError):
            metrics.parse_listen(bad)


# ---------------------------------------------------------------- lvs daemon --procfs --metrics

from test_daemon import CAPTURE, RULES, lvs as _lvs, sock as daemon_sock  # noqa: E402,F401  (helpers, fixture)


def _free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_daemon_refuses_a_busy_port_and_bad_flags(daemon_sock, tmp_path):
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r = _lvs("daemon", "--socket", daemon_sock, "--metrics", "127.0.0.1:%d" % port, "--detach")
        assert r.returncode == 1
        assert r.stderr == "lvs daemon: --metrics 127.0.0.1:%d: Address already in use\n" % port
        assert not os.path.exists(daemon_sock)
    finally:
        busy.close()
    r = _lvs("daemon", "--socket", daemon_sock, "--metrics", "9100", "--detach")
    assert r.returncode == 1 and "ADDR:PORT expected" in r.stderr
    (tmp_path / "file").write_text("")
    r = _lvs("daemon", "--socket", daemon_sock, "--procfs", str(tmp_path / "file"), "--detach")
    assert r.returncode == 1 and r.stderr.startswith("lvs daemon: --procfs ")


def test_daemon_keeps_the_files_current_and_serves_metrics(daemon_sock, tmp_path):
    import time
    import urllib.request
    from lvs import ctl
    port = _free_port()
    proc = tmp_path / "proc"
    r = _lvs("daemon", "--socket", daemon_sock, "--rules", RULES, "--procfs", str(proc),
             "--metrics", "127.0.0.1:%d" % port, "--detach")
    assert r.returncode == 0, r.stderr
    answer = ctl.request(daemon_sock, {"op": "feed", "path": CAPTURE}, timeout=30)
    assert answer["status"] == 0
    conn = proc / "net" / "ip_vs_conn"

    def expiries():
        return [int(line.split()[-1]) for line in conn.read_text().splitlines()[1:]]
    first = expiries()
    assert len(first) == 6
    deadline = time.monotonic() + 10
    while expiries() == first and time.monotonic() < deadline:  # rewritten each second
        time.sleep(0.2)
    assert all(b <= a for a, b in zip(first, expiries())) and expiries() != first
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    got = samples(text)
    assert got[("node_ipvs_connections_total", ())] >= 0
    assert got[("pylvs_connection_entries", (("kind", "connection"),))] == 6
    assert got[("pylvs_drops_total", (("reason", "arp"),))] == 1
    assert ("pylvs_fastpath_hits_total", ()) in got or os.environ.get("PYLVS_FASTPATH") == "0"
    assert ("pylvs_info", (("version", "0.1.0"),)) in got
    r = _lvs("daemon", "--socket", daemon_sock, "--stop")
    assert r.returncode == 0
    assert not (proc / "net").exists()


def test_own_metrics_sync_and_director():
    engine = Engine()
    engine.interfaces = {"eth0": 1500}
    assert adm.run(engine, ["--start-daemon", "master", "--mcast-interface", "eth0",
                            "--syncid", "5"]) == ("", "", 0)
    engine.sync_stats["sync_entries_sent"] += 3

    class Director:
        def stats(self):
            return {"vip_owner": 1, "gratuitous_arp": 2}
    got = samples(metrics.exposition(engine, Director()))
    assert got[("pylvs_sync_daemon_running",
                (("mcast_interface", "eth0"), ("state", "master"), ("syncid", "5")))] == 1
    assert got[("pylvs_sync_events_total", (("event", "sync_entries_sent"),))] == 3
    assert got[("pylvs_director_vip_owner", ())] == 1
    assert got[("pylvs_director_events_total", (("event", "gratuitous_arp"),))] == 2
    assert got[("node_ipvs_connections_total", ())] == 0
    if engine.fast is not None:
        assert got[("pylvs_fastpath_hit_ratio", ())] == 0
