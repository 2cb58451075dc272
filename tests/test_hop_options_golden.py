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


def _syn6(src, dst, hbh, plen=None):
    tcp = bytes.fromhex("4e2000500000000000000000500200000000000000")[:20]
    body = bytes([6, (len(hbh) + 2) // 8 - 1]) + hbh + tcp
    return ipv6.header(0, len(body) if plen is None else plen, 0, 64, socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + body


def _problems(out):
    return [(socket.inet_ntop(socket.AF_INET6, p[8:24]), p[40], p[41], int.from_bytes(p[44:48], "big"))
            for p in (tx.packet for tx in out) if p[6] == 58]


def test_a_parameter_problem_about_a_packet_not_to_us_comes_from_our_address():
    """icmp6_send takes the packet's destination as source only when it is a local
    address; a NAT server's reply routed through us gets our own address."""
    eng = engine()
    eng.director_addr6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    unknown = bytes([0x8E, 2, 0, 0, 1, 0])
    out = eng.receive(_syn6("2001:db8:2::11", CLIENT, unknown), 1.0)
    assert _problems(out) == [("2001:db8::1", 4, 2, 42)]
    out = eng.receive(_syn6(CLIENT, VIP, unknown), 2.0)
    assert _problems(out) == [(VIP, 4, 2, 42)]
    eng.director_addr6 = None               # no address of ours: nothing to send it from
    assert _problems(eng.receive(_syn6("2001:db8:2::12", CLIENT, unknown), 3.0)) == []


def test_with_payload_length_0_the_hop_by_hop_header_is_parsed_first():
    """ip6_rcv_core skips the length check for a zero payload length with hop-by-hop
    options (a jumbogram's): the options are parsed over the whole packet, and their
    parameter problems sent, before pylvs drops what is left (bad_payload_length)."""
    eng = engine()
    out = eng.receive(_syn6(CLIENT, VIP, bytes([0x8E, 2, 0, 0, 1, 0]), plen=0), 1.0)
    assert _problems(out) == [(VIP, 4, 2, 42)] and eng.drops["unknown_hop_option"] == 1
    out = eng.receive(_syn6(CLIENT, VIP, bytes([0xC2, 4]) + (1000).to_bytes(4, "big"), plen=0), 2.0)
    assert _problems(out) == [(VIP, 4, 0, 44)]
    out = eng.receive(_syn6(CLIENT, VIP, bytes([0xC2, 4]) + (70000).to_bytes(4, "big"), plen=0), 3.0)
    assert out == [] and eng.drops["truncated"] == 1        # longer than the frame
    out = eng.receive(_syn6(CLIENT, VIP, bytes([1, 4, 0, 0, 0, 0]), plen=0), 4.0)
    assert out == [] and eng.drops["bad_payload_length"] == 1
