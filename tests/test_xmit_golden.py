"""Byte-exact NAT forwarding against frames captured from the real kernel.

tests/data/golden/xmit.json is a verbatim copy of
/work/shared/kernel-oracle/golden/xmit.json, recorded on real Linux 6.1
IPVS (Debian 6.1.176, ipvsadm 1.31) by the kernel oracle VM: tcpdump on the
client's, the real server's and the director's bridge interfaces, with TX
checksum offload off so the checksums on the wire are complete.

The director's NAT output must equal, byte for byte, the IPv4 part of the
frames the kernel put on the wire: TTL, ID, TOS, flags and every checksum.
The cases run in order on one engine, as they ran on one director.
"""

import json
import os

import pytest

pytest.importorskip("scapy.all")
from scapy.layers.inet import ICMP, IP  # noqa: E402

from lvs.checksum import checksum  # noqa: E402
from lvs.control import DestSpec, ServiceSpec  # noqa: E402
from lvs.engine import Engine  # noqa: E402
from helpers import ip as aton, ipv4_of, ntoa  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "data", "golden", "xmit.json")) as f:
    DATA = json.load(f)

TOPO = DATA["topology"]
CASES = {c["case"]: c for c in DATA["cases"] if "case" in c}
SETUP = [c for c in DATA["cases"] if "setup" in c][0]["setup"]
VIP = TOPO["vip"]
RS1 = TOPO["rs1"]
CLIENT = TOPO["client_spoofed_src"]

# Times (s) at which the oracle's steps happened, reconstructed from the
# expire columns of its listings (see test_ttl1_listing_matches_kernel).
T_TCP, T_UDP, T_TTL1, T_LIST = 0.0, 2.0, 8.0, 11.5
T0 = 5000.0


def translate(setup):
    """The case's ipvsadm commands, by hand: -A -t/-u VIP:port -s rr; -a ... -r RS:port -m -w N."""
    svcs, steps = {}, []
    for argv in setup:
        cmd, kind, hostport = argv[1], argv[2], argv[3]
        host, port = hostport.split(":")
        proto = {"-t": 6, "-u": 17}[kind]
        if cmd == "-A":
            spec = ServiceSpec(protocol=proto, addr=aton(host), port=int(port),
                               sched_name=argv[argv.index("-s") + 1])
            svcs[(proto, host, port)] = spec
            steps.append((spec, None))
        else:
            rhost, rport = argv[argv.index("-r") + 1].split(":")
            assert "-m" in argv
            steps.append((svcs[(proto, host, port)],
                          DestSpec(addr=aton(rhost), port=int(rport), conn_flags=0,
                                   weight=int(argv[argv.index("-w") + 1]))))
    return steps


def build_engine():
    eng = Engine(seed=7)
    for svc, dest in translate(SETUP):
        if dest is None:
            eng.add_service(svc)
        else:
            eng.add_dest(svc, dest)
    return eng


def from_rs(frames):
    return [ipv4_of(f) for f in frames if ipv4_of(f)[12:16] == aton(RS1)]


def to_client(frames):
    return [ipv4_of(f) for f in frames if ipv4_of(f)[12:16] == aton(VIP)]


def run_nat_case(eng, case, t):
    """Client frame in, then the real server's replies; return (to_rs, to_client) Transmits."""
    out_rs = eng.receive(ipv4_of(case["sent_by_client"]), T0 + t)
    out_cl = []
    for k, pkt in enumerate(from_rs(case["captured_on_rs1_eth0"])):
        out_cl.append(eng.receive(pkt, T0 + t + 0.01 + k))
    return out_rs, out_cl


@pytest.fixture(scope="module")
def replay():
    """All three cases, in the oracle's order, on one director."""
    eng = build_engine()
    res = {}
    res["tcp-syn"] = run_nat_case(eng, CASES["tcp-syn"], T_TCP)
    res["udp-datagram"] = run_nat_case(eng, CASES["udp-datagram"], T_UDP)
    ttl1 = CASES["tcp-syn-ttl1-nodf"]
    drops_before = eng.drops["ttl_exceeded"]
    res["tcp-syn-ttl1-nodf"] = (eng.receive(ipv4_of(ttl1["sent_by_client"]), T0 + T_TTL1), [])
    res["ttl_drops"] = eng.drops["ttl_exceeded"] - drops_before
    res["engine"] = eng
    assert eng.drops["internal_error"] == 0
    return res


def test_setup_is_the_oracle_setup():
    assert [a["rc"] for a in [c for c in DATA["cases"] if "setup" in c][0]["setup_transcript"]] == [0] * 4
    eng = build_engine()
    assert len(eng.services) == 2


@pytest.mark.parametrize("name", ["tcp-syn", "udp-datagram"])
def test_nat_to_real_server_byte_exact(replay, name):
    case = CASES[name]
    out_rs, _ = replay[name]
    want = ipv4_of(case["captured_on_rs1_eth0"][0])
    assert want == ipv4_of(case["captured_on_director_br0"][0])
    assert len(out_rs) == 1
    assert out_rs[0].nexthop == aton(RS1)
    assert out_rs[0].packet == want


@pytest.mark.parametrize("name", ["tcp-syn", "udp-datagram"])
def test_nat_reply_to_client_byte_exact(replay, name):
    case = CASES[name]
    _, out_cl = replay[name]
    want = to_client(case["captured_on_client_eth0"])
    assert len(want) == len(out_cl) >= 1
    for sent, expected in zip(out_cl, want):
        assert len(sent) == 1
        assert sent[0].nexthop == aton(CLIENT)
        assert sent[0].packet == expected


def test_ttl1_time_exceeded_matches_kernel(replay):
    case = CASES["tcp-syn-ttl1-nodf"]
    out, _ = replay["tcp-syn-ttl1-nodf"]
    assert not case["captured_on_rs1_eth0"]  # the kernel sent nothing on
    assert replay["ttl_drops"] == 1
    icmps = [ipv4_of(f) for f in case["captured_on_client_eth0"] if ipv4_of(f)[9] == 1]
    assert len(icmps) == 1
    want = icmps[0]
    assert len(out) == 1
    got = out[0].packet
    assert out[0].nexthop == aton(CLIENT)
    assert len(got) == len(want)
    # The IP ID is the kernel's random draw (and the header checksum
    # covers it): compare everything else byte for byte.
    assert got[:4] == want[:4]
    assert got[6:10] == want[6:10]
    assert got[12:] == want[12:]
    assert checksum(got[:20]) == 0
    pkt = IP(got)
    assert pkt[ICMP].type == 11 and pkt[ICMP].code == 0


def test_ttl1_listing_matches_kernel(replay):
    """The TTL-1 SYN still created its connection (ip_vs_in_hook schedules
    and sets the state before packet_xmit's decrement_ttl drops it)."""
    eng = replay["engine"]
    read_at = T0 + T_LIST
    eng.expire(read_at)
    lines = CASES["tcp-syn-ttl1-nodf"]["ipvsadm -Lnc"]["stdout"].splitlines()[2:]
    golden = []
    for line in lines:
        pro, expire, state, source, virtual, dest = line.split()
        mm, ss = expire.split(":")
        golden.append(((pro, state, source, virtual, dest), int(mm) * 60 + int(ss)))
    ours = []
    for cp in eng.conn_list():
        ours.append(((
            {6: "TCP", 17: "UDP"}[cp.protocol], eng.state_name(cp),
            "%s:%d" % (ntoa(cp.caddr), cp.cport), "%s:%d" % (ntoa(cp.vaddr), cp.vport),
            "%s:%d" % (ntoa(cp.daddr), cp.dport)), int(cp.expires - read_at)))
    assert sorted(k for k, _ in ours) == sorted(k for k, _ in golden)
    theirs = dict(golden)
    for key, remaining in ours:
        # The reconstructed timeline is approximate (the real server also
        # retransmitted its SYN-ACK): a few seconds of slack.
        assert abs(remaining - theirs[key]) <= 3, (key, remaining, theirs[key])
