"""The kernel's IPv6 scheduling decisions, replayed through the engine.

tests/data/golden-v6/sched-v6.json was recorded by the kernel oracle VM
(Debian's Linux 6.1.176, ipvsadm 1.31): the IPv4 golden sched-*.json
scenarios with their addresses mapped to IPv6 (rr, wlc, sh, wrr over UDP,
persistence with -M 64) and persistence with other prefix lengths (-M 64 with
clients differing only in their host bits, -M 128, -M 47, no -M). Real TCP
connections (and UDP requests) went to the VIP, were closed with FIN or RST,
weights were edited, and `ipvsadm -Ln` was listed in between.

Here each scenario runs on one engine with real IPv6 packets: the client's
SYN, the real server's SYN-ACK back through the director (all services are
NAT), the client's ACK (ESTABLISHED, counted active); a FIN exchange or an RST
for a close; one datagram per UDP request. Each connection must go to the real
server the kernel chose (a refused connect: to none), and each listing's
ActiveConn/InActConn columns must be the engine's counters at that point;
after the last step, the connection table (`-Lnc`, without the expire column)
and the final `-Ln` listing too.
"""

import json
import os
import socket

import pytest

pytest.importorskip("scapy.all")
from scapy.layers.inet import TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402

from lvs.control import DestSpec, ServiceSpec  # noqa: E402
from lvs.engine import Engine  # noqa: E402
from lvs.flags import (IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_MASQ,  # noqa: E402
                       IP_VS_CONN_F_TUNNEL, IP_VS_SVC_F_PERSISTENT)

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "data", "golden-v6", "sched-v6.json")) as f:
    DATA = json.load(f)

SCENARIOS = DATA["scenarios"]
STEP = 0.05  # the engine's clock advances this much per step, and by each sleep
FWD = {"-m": IP_VS_CONN_F_MASQ, "-i": IP_VS_CONN_F_TUNNEL, "-g": IP_VS_CONN_F_DROUTE}


def hostport(text):
    host, port = text[1:].split("]:")
    return socket.inet_pton(socket.AF_INET6, host), int(port)


def bracket(addr, port):
    return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, addr), port)


def opt(argv, name, default=None, conv=int):
    return conv(argv[argv.index(name) + 1]) if name in argv else default


def service_spec(argv):
    """-A/-a/-e -t|-u [addr]:port [-s sched] [-p timeout] [-M prefix]."""
    addr, port = hostport(argv[3])
    spec = ServiceSpec(protocol={"-t": 6, "-u": 17}[argv[2]], addr=addr, port=port,
                       sched_name=opt(argv, "-s", "wlc", str))
    if "-p" in argv:
        spec.flags |= IP_VS_SVC_F_PERSISTENT
        spec.timeout = opt(argv, "-p")
        spec.netmask = opt(argv, "-M", 128)
    return spec


def dest_spec(argv):
    """-r [addr]:port -m|-g|-i -w weight [-x upper] [-y lower]."""
    addr, port = hostport(argv[argv.index("-r") + 1])
    fwd = [v for k, v in FWD.items() if k in argv]
    return DestSpec(addr=addr, port=port, conn_flags=fwd[0] if fwd else IP_VS_CONN_F_DROUTE,
                    weight=opt(argv, "-w", 1), u_threshold=opt(argv, "-x", 0),
                    l_threshold=opt(argv, "-y", 0))


def admin(eng, argv):
    """The setup's and the steps' ipvsadm commands, by hand."""
    if argv[1] == "-A":
        eng.add_service(service_spec(argv))
    elif argv[1] == "-a":
        eng.add_dest(service_spec(argv), dest_spec(argv))
    elif argv[1] == "-e":
        eng.edit_dest(service_spec(argv), dest_spec(argv))
    else:
        raise AssertionError("no translation for %r" % (argv,))


def tcp(src, dst, flags, seq, ack=0):
    (saddr, sport), (daddr, dport) = src, dst
    return bytes(IPv6(src=socket.inet_ntop(socket.AF_INET6, saddr),
                      dst=socket.inet_ntop(socket.AF_INET6, daddr), hlim=64) /
                 TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=1024))


def udp(src, dst, payload=b"golden-sched"):
    (saddr, sport), (daddr, dport) = src, dst
    return bytes(IPv6(src=socket.inet_ntop(socket.AF_INET6, saddr),
                      dst=socket.inet_ntop(socket.AF_INET6, daddr), hlim=64) /
                 UDP(sport=sport, dport=dport) / payload)


def forwarded_to(out, proto):
    """The real server a forwarded packet went to, or None (nothing, or not to a server)."""
    for t in out:
        ip = IPv6(t.packet)
        layer = ip.getlayer(TCP if proto == 6 else UDP)
        if ip.nh == proto and layer is not None:
            return socket.inet_pton(socket.AF_INET6, ip.dst), layer.dport
    return None


def listing_rows(stdout):
    """`-Ln` and `-Ln --thresholds`: {server: (ActiveConn, InActConn)}; the last two columns."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == "->" and parts[1].startswith("["):
            rows[parts[1]] = (int(parts[-2]), int(parts[-1]))
    return rows


def conn_rows(stdout):
    """`-Lnc`: (pro, state, source, virtual, destination) per entry, sorted."""
    rows = []
    for line in stdout.splitlines()[2:]:
        f = line.split()
        rows.append((f[0], f[2], f[3], f[4], f[5]))
    return sorted(rows)


def counters(eng):
    return {bracket(d.addr, d.port): (d.activeconns, d.inactconns)
            for svc in eng.services.values() for d in svc.destinations}


def replay(scn):
    """Run a scenario; return (decisions matched, mismatches, listings compared)."""
    eng = Engine(seed=1)
    for argv in scn["definition"]["setup"]:
        admin(eng, argv)
    labels = {"rs%d" % (i + 1): hostport(argv[argv.index("-r") + 1])
              for i, argv in enumerate(a for a in scn["definition"]["setup"] if a[1] == "-a")}
    now = 1000.0
    conns = {}
    matched, mismatches, listings = 0, [], 0
    for i, step in enumerate(scn["steps"]):
        now += STEP
        op, res = step["op"], step["result"]
        where = "%s step %d (%s %s)" % (scn["name"], i, op, step.get("id", step.get("src", "")))
        if op in ("connect", "udp"):
            client, vip = hostport(step["src"]), hostport(step["dst"])
            proto = 6 if op == "connect" else 17
            if proto == 6:
                got = forwarded_to(eng.receive(tcp(client, vip, "S", 1000), now), proto)
            else:
                got = forwarded_to(eng.receive(udp(client, vip), now), proto)
            if "error" in res:
                want = None
            elif "rs" in res:
                want = hostport(res["rs"])
            else:
                want = labels[res["rs_name"]]
            if got == want:
                matched += 1
            else:
                mismatches.append((where, got and bracket(*got), want and bracket(*want)))
            if got is not None and proto == 6:
                # The server's SYN-ACK through the director, the client's ACK.
                eng.receive(tcp(got, client, "SA", 5000, 1001), now)
                eng.receive(tcp(client, vip, "A", 1001, 5001), now)
                conns[step["id"]] = (client, vip, got)
            elif got is not None:
                eng.receive(udp(got, client, b"answer"), now)
        elif op == "close":
            if step["id"] not in conns:  # its connect was refused
                continue
            client, vip, rs = conns.pop(step["id"])
            if step["how"] == "rst":
                eng.receive(tcp(client, vip, "R", 1001), now)
            else:
                eng.receive(tcp(client, vip, "FA", 1001, 5001), now)
                eng.receive(tcp(rs, client, "FA", 5001, 1002), now)
                eng.receive(tcp(client, vip, "A", 1002, 5002), now)
        elif op == "sleep":
            now += step["seconds"]
        elif op == "admin":
            assert res["rc"] == 0, where
            admin(eng, step["argv"])
        elif op == "list":
            eng.expire(now)
            argv = step["argv"]
            if "-c" in argv:
                assert conn_rows(res["stdout"]) == sorted(conn_view(eng)), where
                listings += 1
            elif argv[-1] in ("-n", "--thresholds", "--persistent-conn"):
                rows = listing_rows(res["stdout"])
                assert rows == counters(eng), where
                listings += 1
        else:
            raise AssertionError("unknown step %r" % (op,))
        assert eng.drops.get("internal_error", 0) == 0, where
    eng.expire(now)
    final = scn["final"]
    assert listing_rows(final["ipvsadm -Ln"]["stdout"]) == counters(eng), scn["name"]
    assert conn_rows(final["ipvsadm -Lnc"]["stdout"]) == sorted(conn_view(eng)), scn["name"]
    return matched, mismatches, listings


def conn_view(eng):
    return [({6: "TCP", 17: "UDP"}[cp.protocol], eng.state_name(cp), bracket(cp.caddr, cp.cport),
             bracket(cp.vaddr, cp.vport), bracket(cp.daddr, cp.dport)) for cp in eng.conn_list()]


def test_the_recording():
    assert DATA["kernel"]["release"].startswith("6.1.")
    assert DATA["errors"] == []
    assert [s["name"] for s in SCENARIOS] == [
        "rr-v6", "wlc-v6", "sh-v6", "persist-M64-v6", "udp-wrr-v6", "persist-M64-hostbits",
        "persist-M128", "persist-M47", "persist-default-mask"]


@pytest.mark.parametrize("scn", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_scheduling_matches_the_kernel(scn):
    matched, mismatches, listings = replay(scn)
    assert mismatches == []
    decisions = [s for s in scn["steps"] if s["op"] in ("connect", "udp")]
    assert matched == len(decisions) == len(scn["decisions"])
    assert listings >= 1
