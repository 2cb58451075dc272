"""IPv6 forwarding against frames captured from the real kernel.

tests/data/golden-v6/xmit-v6.json was recorded by the kernel oracle VM
(Debian's Linux 6.1.176, ipvsadm 1.31): for NAT, DR, ip6ip6, GUE, GRE and the
mixed families (an IPv4 service with an IPv6 tunnel server and the other way
round), crafted frames were injected at the client (or at a real server) and
every frame on the client's and the real server's wires was captured.

Each mode replays here on one engine, its cases in the oracle's order. The
director's inputs are the frames addressed to it on either wire; each wire's
capture is in time order, so an input is fed once every frame the director
sent before it on that wire has come out of the engine, and each frame the
engine sends must be the next one the kernel sent on that wire, byte for
byte, but for what the kernel drew from a boot-time random key: the flow label
of its own ICMPv6 errors, the GUE source port (and the checksum over it), the
identification of a Fragment header and the IP ID of an IPv4 tunnel header
without DF.
"""

import json
import os
import socket

import pytest

from lvs.checksum import checksum
from lvs.control import DestSpec, ServiceSpec
from lvs.engine import Engine
from lvs.flags import IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_MASQ, IP_VS_CONN_F_TUNNEL

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "data", "golden-v6", "xmit-v6.json")) as f:
    DATA = json.load(f)

TOPO = DATA["topology"]
DIRECTOR_MACS = {TOPO["macs"]["dir.cl0"], TOPO["macs"]["dir.br0"]}
CLIENTS = {socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)
           for a in TOPO["client_spoofed_src"]}
GUE_PORT = 6080


def addr(text):
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def hostport(text):
    if text.startswith("["):
        host, port = text[1:].split("]:")
    else:
        host, port = text.rsplit(":", 1)
    return addr(host), int(port)


def modes():
    """[(mode, setup argv list with rc, [cases])] in the recording's order."""
    out = []
    for c in DATA["cases"]:
        if "setup" in c:
            out.append((c["mode"], list(zip(c["setup"], c["setup_transcript"])), []))
        else:
            out[-1][2].append(c)
    return out


def build_engine(setup):
    """The mode's ipvsadm commands, by hand (those the kernel accepted)."""
    eng = Engine(seed=11, director_addr=addr(TOPO["director_rs_lan"][1]),
                 director_addr6=addr(TOPO["director_rs_lan"][0]))
    for argv, result in setup:
        if result["rc"] != 0:
            continue
        proto = {"-t": 6, "-u": 17}[argv[2]]
        vaddr, vport = hostport(argv[3])
        svc = ServiceSpec(protocol=proto, addr=vaddr, port=vport,
                          sched_name=argv[argv.index("-s") + 1] if "-s" in argv else "wlc")
        if argv[1] == "-A":
            eng.add_service(svc)
            continue
        raddr, rport = hostport(argv[argv.index("-r") + 1])
        fwd = (IP_VS_CONN_F_MASQ if "-m" in argv else IP_VS_CONN_F_TUNNEL if "-i" in argv
               else IP_VS_CONN_F_DROUTE)
        tun_type = {"ipip": 0, "gue": 1, "gre": 2}[argv[argv.index("--tun-type") + 1]] \
            if "--tun-type" in argv else 0
        tun_flags = (1 if "--tun-csum" in argv else 0) | (2 if "--tun-remcsum" in argv else 0)
        eng.add_dest(svc, DestSpec(addr=raddr, port=rport, conn_flags=fwd,
                                   weight=int(argv[argv.index("-w") + 1]), tun_type=tun_type,
                                   tun_port=GUE_PORT if tun_type == 1 else 0, tun_flags=tun_flags))
    return eng


def frames(case, wire):
    return [(f["layers"][0]["src"], f["layers"][0]["dst"], bytes.fromhex(f["hex"])[14:])
            for f in case[wire]]


def masked(packet):
    """The bytes that must match, with the key-drawn fields zeroed (see the module text)."""
    p = bytearray(packet)
    if p[0] >> 4 == 6:
        if p[6] == 58 and len(p) > 40 and p[40] < 128:
            p[1] &= 0xF0
            p[2] = p[3] = 0               # our own ICMPv6 error: the flow label
        if p[6] == 44:
            p[44:48] = b"\0\0\0\0"        # a Fragment header's identification
        if p[6] == 17 and len(p) >= 48 and (p[42] << 8 | p[43]) == GUE_PORT:
            p[40:42] = p[46:48] = b"\0\0"  # GUE source port and the UDP checksum over it
    elif p[0] >> 4 == 4:
        ihl = (p[0] & 0x0F) * 4
        if p[9] in (41, 4, 47, 17) and not p[6] & 0x40 or p[9] == 1:
            # a tunnel header without DF, or our own ICMP error: IP ID and checksum
            p[4:6] = p[10:12] = b"\0\0"
        if p[9] == 17 and len(p) >= ihl + 8 and (p[ihl + 2] << 8 | p[ihl + 3]) == GUE_PORT:
            p[ihl:ihl + 2] = p[ihl + 6:ihl + 8] = b"\0\0"
    return bytes(p)


def client_side(nexthop):
    return nexthop in CLIENTS


def replay_case(eng, case, t):
    """Feed the case's frames as the kernel saw them; return (mismatches, outputs)."""
    rs_wire = [k for k in case if k.startswith("captured_on_rs")][0]
    wires = {"client": frames(case, "captured_on_client_eth0"), "rs": frames(case, rs_wire)}
    pos = {"client": 0, "rs": 0}
    problems = []
    steps = 0
    while steps < 200:
        steps += 1
        fed = False
        for side in ("rs", "client"):
            wire = wires[side]
            i = pos[side]
            if i < len(wire) and wire[i][1] in DIRECTOR_MACS:
                pos[side] += 1
                t += 0.01
                for out in eng.receive(wire[i][2], t):
                    to = "client" if client_side(out.nexthop) else "rs"
                    j = pos[to]
                    # skip frames on that wire the director neither sent nor received
                    while j < len(wires[to]) and wires[to][j][0] not in DIRECTOR_MACS \
                            and wires[to][j][1] not in DIRECTOR_MACS:
                        j += 1
                    if j >= len(wires[to]) or wires[to][j][0] not in DIRECTOR_MACS:
                        problems.append(("unexpected", to, out.packet.hex()))
                        continue
                    if masked(out.packet) != masked(wires[to][j][2]):
                        problems.append(("differs", to, out.packet.hex(), wires[to][j][2].hex()))
                    pos[to] = j + 1
                fed = True
                break
        if not fed:
            break
    for side in ("client", "rs"):
        for src, dst, packet in wires[side][pos[side]:]:
            if src in DIRECTOR_MACS:
                problems.append(("missing", side, packet.hex()))
    return problems, t


MODES = modes()


@pytest.fixture(scope="module")
def replayed():
    res = {}
    for mode, setup, cases in MODES:
        eng = build_engine(setup)
        t = 1000.0
        for case in cases:
            problems, t = replay_case(eng, case, t)
            res[(mode, case["case"])] = (problems, eng)
            t += 1.0
        assert eng.drops["internal_error"] == 0, mode
    return res


# Frames the director's own stack sent, not IPVS: IPVS let the packet by.
HOST_STACK = {
    ("nat", "icmpv6-echo-to-vip"): "the VIP's echo reply (lvs/director.py answers it live)",
    ("nat", "icmpv6-ptb-from-rs-quoting-reply"):
        "an error about a reply names no connection: the kernel routes it on untouched",
}


@pytest.mark.parametrize("mode,name", [(m, c["case"]) for m, _, cases in MODES for c in cases])
def test_frames_as_the_kernel_sent_them(replayed, mode, name):
    problems, _ = replayed[(mode, name)]
    if (mode, name) in HOST_STACK:
        # The engine sends nothing of its own for it; the kernel's frame is the host's.
        assert [p[0] for p in problems] == ["missing"]
        return
    assert problems == []


def test_an_error_with_a_correct_checksum_from_a_nat_server_is_dropped(replayed):
    """ip_vs_checksum_complete sums without the pseudo-header (the recorded quirk)."""
    _, eng = replayed[("nat", "icmpv6-ptb-from-rs-quoting-client-packet")]
    assert eng.drops["bad_icmp_checksum"] == 1


def test_our_checksums_hold_where_fields_were_masked(replayed):
    """Where a field drawn from a key is ours, the checksums over it are still right."""
    _, eng = replayed[("mixed-v6svc-v4tun", "tcp-syn")]
    eng2 = build_engine(MODES[[m for m, _, _ in MODES].index("mixed-v6svc-v4tun")][1])
    case = [c for c in MODES[[m for m, _, _ in MODES].index("mixed-v6svc-v4tun")][2]
            if c["case"] == "tcp-syn"][0]
    sent = [p for s, d, p in frames(case, "captured_on_client_eth0") if d in DIRECTOR_MACS][0]
    out = eng2.receive(sent, 5.0)
    assert out and checksum(out[0].packet[:20]) == 0
