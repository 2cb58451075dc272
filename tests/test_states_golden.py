"""Replay the kernel's TCP/UDP state golden file through the engine.

tests/data/golden/states.json is a verbatim copy of
/work/shared/kernel-oracle/golden/states.json: it was recorded on real
Linux 6.1 IPVS (Debian 6.1.176, ipvsadm 1.31) by the kernel oracle VM
(qemu, network namespaces, packets injected with scapy), reading
`ipvsadm -Lnc` about 0.2 s after every packet.

Each sequence gets a fresh engine built from the file's "setup" ipvsadm
commands (translated by hand below), its packets are replayed 0.2 s apart,
and after each packet the connection list must match the kernel's: number
of entries, protocol, state, addresses, and the expire column (the kernel's
value is the state timeout minus 0-2 s of read delay).
"""

import json
import os

import pytest

pytest.importorskip("scapy.all")
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402

from lvs.control import DestSpec, ServiceSpec  # noqa: E402
from lvs.engine import Engine  # noqa: E402
from lvs.flags import IP_VS_CONN_F_TEMPLATE  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "golden", "states.json")

with open(GOLDEN) as f:
    DATA = json.load(f)

TOPO = DATA["topology"]
CLIENT_ADDR = TOPO["client"]
VIP = TOPO["vip"]
GHOST = TOPO["ghost_real_server"]

READ_DELAY = 0.2   # -Lnc is read ~0.2 s after each packet
STEP = 0.2         # the clock advances 0.2 s per packet

# tcp_state_active_table (ip_vs_proto_tcp.c): states counted in activeconns.
ACTIVE_STATES = {"ESTABLISHED", "SYN_SENT", "SYN_RECV", "SYNACK"}


def aton(text):
    return bytes(int(x) for x in text.split("."))


def ntoa(raw):
    return ".".join(str(b) for b in raw)


def split_hostport(text):
    host, _, port = text.partition(":")
    return aton(host), int(port) if port else 0


# ipvsadm's forwarding switches -> IP_VS_CONN_F_* (ipvsadm.c, ip_vs.h)
FWD = {"-m": 0, "-i": 2, "-g": 3}


def translate_setup(setup):
    """The golden "setup" ipvsadm argv lists as (ServiceSpec, DestSpec or None) steps."""
    steps = []
    services = {}
    for argv in setup:
        assert argv[0] == "ipvsadm"
        args = argv[1:]
        cmd = args[0]
        proto = {"-t": 6, "-u": 17}[args[1]]
        addr, port = split_hostport(args[2])
        rest = args[3:]
        if cmd == "-A":
            sched = rest[rest.index("-s") + 1] if "-s" in rest else "wlc"
            spec = ServiceSpec(protocol=proto, addr=addr, port=port, sched_name=sched)
            services[(proto, addr, port)] = spec
            steps.append((spec, None))
        elif cmd == "-a":
            raddr, rport = split_hostport(rest[rest.index("-r") + 1])
            fwd = 3  # -g is ipvsadm's default
            for flag, value in FWD.items():
                if flag in rest:
                    fwd = value
            weight = int(rest[rest.index("-w") + 1]) if "-w" in rest else 1
            dest = DestSpec(addr=raddr, port=rport, conn_flags=fwd, weight=weight)
            steps.append((services[(proto, addr, port)], dest))
        else:
            raise AssertionError("unexpected setup command %r" % (argv,))
    return steps


def build_engine():
    eng = Engine(seed=1)
    for svc, dest in translate_setup(DATA["setup"]):
        if dest is None:
            eng.add_service(svc)
        else:
            eng.add_dest(svc, dest)
    return eng


def make_packet(token, caddr, cport, vport):
    """c:FLAGS = client -> VIP:vport; s:FLAGS = the real server -> client (its NAT reply)."""
    side, _, what = token.partition(":")
    if side == "c":
        ip = IP(src=caddr, dst=VIP, ttl=64, id=0x100)
        sport, dport = cport, vport
    else:
        assert side == "s"
        # The golden setup maps VIP:vport to ghost:vport, so the real
        # server answers from its own address and the same port.
        ip = IP(src=GHOST, dst=caddr, ttl=64, id=0x200)
        sport, dport = vport, cport
    if what == "udp":
        return bytes(ip / UDP(sport=sport, dport=dport) / b"golden-state")
    seq = 1000 if side == "c" else 5000
    ack = 0 if what == "S" else (5001 if side == "c" else 1001)
    return bytes(ip / TCP(sport=sport, dport=dport, flags=what, seq=seq, ack=ack,
                          window=1024))


def mmss(text):
    mm, ss = text.split(":")
    return int(mm) * 60 + int(ss)


def entry_view(eng, cp):
    return {
        "pro": {6: "TCP", 17: "UDP"}[cp.protocol],
        "state": eng.state_name(cp),
        "source": "%s:%d" % (ntoa(cp.caddr), cp.cport),
        "virtual": "%s:%d" % (ntoa(cp.vaddr), cp.vport),
        "destination": "%s:%d" % (ntoa(cp.daddr), cp.dport),
    }


SEQUENCES = [(g["label"], s) for g in DATA["groups"] for s in g["sequences"]]


def test_golden_file_is_the_kernel_recording():
    assert DATA["kernel"]["release"].startswith("6.1.")
    assert DATA["groups"][0]["timeouts"]["stdout"] == "Timeout (tcp tcpfin udp): 900 120 300\n"
    assert len(SEQUENCES) >= 20


def test_setup_translation():
    eng = build_engine()
    keys = sorted(eng.services)
    assert keys == sorted([(6, aton(VIP), 80), (6, aton(VIP), 8080), (17, aton(VIP), 53)])
    dr = eng.services[(6, aton(VIP), 8080)].destinations[0]
    assert dr.port == 0 and dr.fwd == 3
    nat = eng.services[(6, aton(VIP), 80)].destinations[0]
    assert nat.port == 80 and nat.fwd == 0


@pytest.mark.parametrize("label,seq", SEQUENCES, ids=[s["name"] for _, s in SEQUENCES])
def test_state_sequence(label, seq):
    assert seq["packets"] == [a["packet"] for a in seq["after_each_packet"]]
    eng = build_engine()
    caddr, cport = seq["client"].split(":")
    cport = int(cport)
    vport = seq["vport"]
    now = 1000.0
    for i, step in enumerate(seq["after_each_packet"]):
        now += STEP
        pkt = make_packet(step["packet"], caddr, cport, vport)
        eng.receive(pkt, now)
        assert eng.drops["internal_error"] == 0
        read_at = now + READ_DELAY
        eng.expire(read_at)
        conns = [cp for cp in eng.conn_list() if not cp.flags & IP_VS_CONN_F_TEMPLATE]
        want = step["entries"]
        where = "%s after packet %d (%s)" % (seq["name"], i, step["packet"])
        assert len(conns) == len(want), where
        for cp, golden in zip(conns, want):
            view = entry_view(eng, cp)
            assert view == {k: golden[k] for k in view}, where
            ours = int(cp.expires - read_at)
            theirs = mmss(golden["expire"])
            # The kernel's value is timeout minus 0.2-2 s, floored.
            assert 0 <= ours - theirs <= 2, "%s: expire %d s vs kernel %s" % (
                where, ours, golden["expire"])
        # activeconns/inactconns are not in the golden file; derived from
        # ip_vs_bind_dest (new connections start INACTIVE) and
        # set_tcp_state/tcp_state_active_table (ip_vs_proto_tcp.c).
        for svc in eng.services.values():
            for dest in svc.destinations:
                mine = [cp for cp in conns if cp.dest is dest]
                active = sum(1 for cp in mine if cp.protocol == 6
                             and eng.state_name(cp) in ACTIVE_STATES)
                assert dest.activeconns == active, where
                assert dest.inactconns == len(mine) - active, where
    # The file's final listing is the last one taken.
    assert seq["final_entries"] == seq["after_each_packet"][-1]["entries"]
