"""Persistence with a netmask, replayed against the real kernel's recording.

tests/data/golden/sched-persist-netmask24.json was recorded on Linux 6.1 IPVS
with ipvsadm 1.31 by the kernel oracle VM (../shared/kernel-oracle): rr with
-p 300 -M 255.255.255.0, clients from two /24s, FIN and RST closes, and a
weight set to 0 on a server that holds no template.
"""

import json
import os

from scapy.all import IP, TCP, raw

from lvs import rules
from lvs.engine import Engine

DATA = os.path.join(os.path.dirname(__file__), "data", "golden", "sched-persist-netmask24.json")


def split(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def test_connections_follow_their_network_template():
    record = json.load(open(DATA))
    e = Engine()
    for argv in record["definition"]["setup"]:
        e.apply(rules.parse_args(argv[1:]))
    now = 1000.0
    conns = {}
    for step in record["steps"]:
        now += 0.05
        if step["op"] == "connect":
            (chost, cport), (vhost, vport) = split(step["src"]), split(step["dst"])
            # The client's handshake: SYN, then ACK once the server has answered.
            syn = raw(IP(src=chost, dst=vhost) / TCP(sport=cport, dport=vport, flags="S"))
            out = e.receive(syn, now)
            assert len(out) == 1, step
            got = "%s:%d" % (IP(out[0].packet).dst, IP(out[0].packet)[TCP].dport)
            assert got == step["result"]["rs"], step["id"]
            rs_host, rs_port = split(got)
            e.receive(raw(IP(src=rs_host, dst=chost) / TCP(sport=rs_port, dport=cport, flags="SA")), now)
            e.receive(raw(IP(src=chost, dst=vhost) / TCP(sport=cport, dport=vport, flags="A")), now)
            conns[step["id"]] = (chost, cport, vhost, vport, rs_host, rs_port)
        elif step["op"] == "close":
            chost, cport, vhost, vport, rs_host, rs_port = conns[step["id"]]
            if step["how"] == "rst":
                e.receive(raw(IP(src=chost, dst=vhost) / TCP(sport=cport, dport=vport, flags="R")), now)
            else:
                e.receive(raw(IP(src=chost, dst=vhost) / TCP(sport=cport, dport=vport, flags="FA")), now)
                e.receive(raw(IP(src=rs_host, dst=chost) / TCP(sport=rs_port, dport=cport, flags="FA")), now)
                e.receive(raw(IP(src=chost, dst=vhost) / TCP(sport=cport, dport=vport, flags="A")), now)
        elif step["op"] == "sleep":
            now += step["seconds"]
        elif step["op"] == "admin":
            e.apply(rules.parse_args(step["argv"][1:]))
    # Compare the connection table with the kernel's, entry by entry (not the
    # expire column: the VM's clock ran at its own pace).
    want = sorted(tuple(line.split()[i] for i in (0, 2, 3, 4, 5))
                  for line in record["final"]["ipvsadm -Lnc"]["stdout"].splitlines()[2:])
    got = sorted((
        "TCP", e.state_name(cp),
        "%s:%d" % (".".join(map(str, cp.caddr)), cp.cport),
        "%s:%d" % (".".join(map(str, cp.vaddr)), cp.vport),
        "%s:%d" % (".".join(map(str, cp.daddr)), cp.dport)) for cp in e.conn_list())
    assert got == want
    # Active/inactive counters per real server, as `ipvsadm -Ln` showed them.
    listing = record["final"]["ipvsadm -Ln"]["stdout"].splitlines()[4:]
    svc = next(iter(e.services.values()))
    by_addr = {"%s:%d" % (".".join(map(str, d.addr)), d.port): d for d in svc.destinations}
    for line in listing:
        f = line.split()
        d = by_addr[f[1]]
        assert (d.weight, d.activeconns, d.inactconns) == (int(f[3]), int(f[4]), int(f[5])), line
