"""The hop-by-hop options header as the director's kernel checks it (ip6_parse_tlv),
against tests/data/golden-v6/hbh.json: SYNs to an IPv6 VIP with each kind of option,
recorded in the kernel-oracle VM (probe_hbh.sh there): whether the connection was made,
and the parameter problem the kernel sent back, from the VIP, type, code and pointer."""

import json
import socket
from pathlib import Path

import pytest

from lvs import adm, ipv6
from lvs.engine import Engine

CASES = json.loads((Path(__file__).parent / "data" / "golden-v6" / "hbh.json").read_text())
VIP, CLIENT = "2001:db8::200", "2001:db8:1::2"


def engine():
    eng = Engine(seed=1)
    assert adm.run(eng, ["-A", "-t", "[%s]:80" % VIP, "-s", "rr"])[2] == 0
    assert adm.run(eng, ["-a", "-t", "[%s]:80" % VIP, "-r", "[2001:db8:2::11]:80", "-m"])[2] == 0
    return eng


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_kernels_verdict_on_each_hop_by_hop_header(case):
    eng = engine()
    frame = bytes.fromhex(case["frame"])
    out = eng.receive(frame, 1.0)
    assert (len(eng.conn_list()) == 1) == case["connection"]
    errors = [tx.packet for tx in out if tx.packet[6] == 58]
    got = [{"from": socket.inet_ntop(socket.AF_INET6, p[8:24]), "type": p[40], "code": p[41],
            "pointer": int.from_bytes(p[44:48], "big"), "quoted": p[48:96].hex()} for p in errors]
    assert got == case["icmp"]
    if case["connection"]:
        assert [tx.packet[24:40] for tx in out] == [socket.inet_pton(socket.AF_INET6, "2001:db8:2::11")]
    else:
        assert len(out) == len(errors) and sum(eng.drops.values()) == 1, dict(eng.drops)


def test_an_unknown_option_to_a_multicast_address_is_answered_only_for_action_10():
    """icmp6_send's exception: a parameter problem about a multicast packet is sent only
    for an unrecognised option whose action bits are 10."""
    head = lambda opt: bytes([6, 0, opt, 2, 0, 0, 1, 0])
    for opt, answered in ((0x8E, True), (0xCE, False)):
        packet = ipv6.header(0, 8 + 20, 0, 64, socket.inet_pton(socket.AF_INET6, CLIENT),
                             socket.inet_pton(socket.AF_INET6, "ff02::1")) + head(opt) + bytes(20)
        assert ipv6.hop_options_verdict(packet) == ("unknown_hop_option", (2, 42) if answered else None)
