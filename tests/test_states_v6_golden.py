"""The kernel's TCP/UDP states over IPv6, replayed through the engine.

tests/data/golden-v6/states-v6.json was recorded by the kernel oracle VM
(Linux 6.1.176, ipvsadm 1.31) as the IPv4 states.json was: the same packet
sequences to an IPv6 VIP, `ipvsadm -Lnc` read about 0.2 s after each packet;
and a second group where packets carry a hop-by-hop and a destination
options header. There the kernel's state machine reads the TCP header at a
fixed 40 bytes (tcp_state_transition: sizeof(struct ipv6hdr)) and sees the
padding's flags, while the packets are scheduled and forwarded correctly: the
listings show it, and so must ours.
"""

import json
import os
import socket

import pytest

pytest.importorskip("scapy.all")
from scapy.layers.inet import TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, PadN  # noqa: E402

from lvs.control import DestSpec, ServiceSpec  # noqa: E402
from lvs.engine import Engine  # noqa: E402
from lvs.flags import IP_VS_CONN_F_TEMPLATE  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "data", "golden-v6", "states-v6.json")) as f:
    DATA = json.load(f)

TOPO = DATA["topology"]
VIP, GHOST = TOPO["vip"], TOPO["ghost_real_server"]
READ_DELAY = STEP = 0.2
FWD = {"-m": 0, "-i": 2, "-g": 3}


def hostport(text):
    if text.startswith("["):
        host, port = text[1:].split("]:")
        return socket.inet_pton(socket.AF_INET6, host), int(port)
    return socket.inet_pton(socket.AF_INET6, text), 0


def build_engine():
    """The file's setup, by hand: -A -t/-u [VIP]:port -s rr, -a ... -r RS -m/-g."""
    eng = Engine(seed=1)
    services = {}
    for argv in DATA["setup"]:
        proto = {"-t": 6, "-u": 17}[argv[2]]
        key = (proto, argv[3])
        addr, port = hostport(argv[3])
        if argv[1] == "-A":
            services[key] = ServiceSpec(protocol=proto, addr=addr, port=port,
                                        sched_name=argv[argv.index("-s") + 1])
            eng.add_service(services[key])
        else:
            raddr, rport = hostport(argv[argv.index("-r") + 1])
            fwd = [v for k, v in FWD.items() if k in argv][0]
            eng.add_dest(services[key], DestSpec(addr=raddr, port=rport, conn_flags=fwd))
    return eng


def make_packet(token, caddr, cport, vport):
    """c:FLAGS = client -> VIP:vport, s:FLAGS = the real server's NAT reply; +eh adds
    the two 8-byte option headers."""
    side, _, what = token.partition(":")
    what, _, eh = what.partition("+")
    if side == "c":
        ip, sport, dport = IPv6(src=caddr, dst=VIP, hlim=64), cport, vport
    else:
        ip, sport, dport = IPv6(src=GHOST, dst=caddr, hlim=64), vport, cport
    if eh:
        ip = ip / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\0" * 4)]) / \
            IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 4)])
    if what == "udp":
        return bytes(ip / UDP(sport=sport, dport=dport) / b"golden-state")
    seq = 1000 if side == "c" else 5000
    ack = 0 if what == "S" else (5001 if side == "c" else 1001)
    return bytes(ip / TCP(sport=sport, dport=dport, flags=what, seq=seq, ack=ack, window=1024))


def bracket(addr, port):
    return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, addr), port)


SEQUENCES = [s for g in DATA["groups"] for s in g["sequences"]]


def test_the_recording():
    assert DATA["kernel"]["release"].startswith("6.1.")
    assert len(SEQUENCES) == 33
    assert all(s["same_states_as_ipv4"] for s in DATA["groups"][0]["sequences"])


@pytest.mark.parametrize("seq", SEQUENCES, ids=[s["name"] for s in SEQUENCES])
def test_state_sequence(seq):
    eng = build_engine()
    caddr, cport = seq["client"][1:].split("]:")
    now = 1000.0
    for i, step in enumerate(seq["after_each_packet"]):
        now += STEP
        eng.receive(make_packet(step["packet"], caddr, int(cport), seq["vport"]), now)
        assert eng.drops["internal_error"] == 0
        read_at = now + READ_DELAY
        eng.expire(read_at)
        conns = [cp for cp in eng.conn_list() if not cp.flags & IP_VS_CONN_F_TEMPLATE]
        where = "%s after packet %d (%s)" % (seq["name"], i, step["packet"])
        assert len(conns) == len(step["entries"]), where
        for cp, golden in zip(conns, step["entries"]):
            view = {"pro": {6: "TCP", 17: "UDP"}[cp.protocol], "state": eng.state_name(cp),
                    "source": bracket(cp.caddr, cp.cport), "virtual": bracket(cp.vaddr, cp.vport),
                    "destination": bracket(cp.daddr, cp.dport)}
            assert view == {k: golden[k] for k in view}, where
            mm, ss = golden["expire"].split(":")
            assert 0 <= int(cp.expires - read_at) - (int(mm) * 60 + int(ss)) <= 2, where
