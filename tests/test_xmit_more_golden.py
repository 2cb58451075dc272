"""Tunnels (ipip, GUE, GRE), direct routing, fragments, frag-needed and ICMP
rate limiting, byte for byte against frames captured from the real kernel.

tests/data/golden/xmit-more.json was recorded on real Linux 6.1 IPVS
(Debian 6.1.176, ipvsadm 1.31) with the kernel oracle VM in one boot; its
`how_made` field says how. Every case has its own client address, so the
cases replay in order on one engine, as they ran on one director, each at
the time it ran.

For each case the engine is fed, in time order, the client's frames (at
the time they crossed the client link) and the frames the real server sent
(its RSTs and ICMP errors go back through the director, where IPVS sees
them). What it sends must equal what the kernel put on the wire:
director -> real server on the real server's link, director -> client on
the client's link, byte for byte. Only what the kernel draws at random is
left out, and its structure is still checked:

  * the IPv4 ID of a packet the director builds without DF (a tunnel's
    outer header, its fragments, an ICMP error): __ip_select_ident, a
    counter per (daddr, saddr, protocol) behind a boot-time secret hash
    that advances by 1 + prandom(jiffies since last use). Recognised as an
    ID that no packet fed in carried; the header checksum that covers it
    must still be right, and DF clear.
  * the UDP source port of a GUE tunnel: udp_flow_src_port, the inner
    flow's hash under a boot-time key, spread over 32768..60998 (and the
    UDP checksum that covers it, which must still verify).
"""

import json
import os
import struct

import pytest

from lvs.checksum import checksum
from lvs.control import DestSpec, ServiceSpec
from lvs.engine import Engine
from helpers import ip as aton, ipv4_of, ntoa  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "data", "golden", "xmit-more.json")) as f:
    DATA = json.load(f)

TOPO = DATA["topology"]
CASES = {c["case"]: c for c in DATA["cases"]}
VIP = TOPO["vip"]
DIRECTOR = TOPO["director_rs_side"]      # 192.0.2.1: the tunnels' outer source
RS_IPS = TOPO["rs"]
HZ = TOPO["config_hz"]
MACS = {k: bytes.fromhex(v.replace(":", "")) for k, v in TOPO["macs"].items()}
T0 = 5000.0
LOCAL_PORT_MIN, LOCAL_PORT_MAX = (int(x) for x in TOPO["sysctls_director"]["net.ipv4.ip_local_port_range"].split())


def src_mac(frame):
    return bytes.fromhex(frame["hex"][12:24])


def rs_keys(case):
    return [k for k in case if k.startswith("captured_on_rs")]


def rs_name(key):
    return key[len("captured_on_"):].split("_")[0]  # "rs2"


# --------------------------------------------------------------- the setup

def translate(setup):
    """The ipvsadm commands, by hand: -A -t/-u VIP:port -s rr;
    -a ... -r RS:port -m|-g|-i [--tun-type gue|gre] [--tun-port N] [--tun-csum] -w N."""
    svcs, steps = {}, []
    for argv in setup:
        cmd, kind, hostport = argv[1], argv[2], argv[3]
        host, port = hostport.split(":")
        proto = {"-t": 6, "-u": 17}[kind]
        if cmd == "-A":
            spec = ServiceSpec(protocol=proto, addr=aton(host), port=int(port),
                               sched_name=argv[argv.index("-s") + 1])
            svcs[(proto, hostport)] = spec
            steps.append((spec, None))
            continue
        assert cmd == "-a"
        rhost, rport = argv[argv.index("-r") + 1].split(":")
        fwd = 0 if "-m" in argv else 2 if "-i" in argv else 3
        tun_type = {"ipip": 0, "gue": 1, "gre": 2}[argv[argv.index("--tun-type") + 1]] if "--tun-type" in argv else 0
        tun_port = int(argv[argv.index("--tun-port") + 1]) if "--tun-port" in argv else 0
        tun_flags = 1 if "--tun-csum" in argv else 0
        steps.append((svcs[(proto, hostport)],
                      DestSpec(addr=aton(rhost), port=int(rport), conn_flags=fwd,
                               weight=int(argv[argv.index("-w") + 1]), tun_type=tun_type,
                               tun_port=tun_port, tun_flags=tun_flags)))
    return steps


def build_engine():
    # The link MTU everywhere was 1500 (topology.link_mtus); the tunnels'
    # source is the director's address on the route to the real servers.
    eng = Engine(seed=7, director_addr=aton(DIRECTOR), mtu=1500)
    for svc, dest in translate(DATA["setup"]):
        if dest is None:
            eng.add_service(svc)
        else:
            eng.add_dest(svc, dest)
    return eng


# --------------------------------------------------------------- the replay

def inputs(case):
    """(t, who, packet) the director received, in time order: the client's
    frames at the time they crossed the client link, and what the real
    server sent (its frames on its own link)."""
    seen = [f for f in case["captured_on_cli_eth0"] if src_mac(f) == MACS["cli.eth0"]]
    events = []
    for sent in case["sent_by_client"]:
        t = sent["t"]
        for i, f in enumerate(seen):
            if f is not None and f["hex"] == sent["hex"]:
                t, seen[i] = f["t"], None
                break
        events.append((t, "client", ipv4_of(sent)))
    for key in rs_keys(case):
        mac = MACS[rs_name(key) + ".eth0"]
        events += [(f["t"], rs_name(key), ipv4_of(f)) for f in case[key] if src_mac(f) == mac]
    events.sort(key=lambda e: e[0])
    return events


def kernel_to_rs(case):
    """What the director put on the real server's link, in order."""
    frames = [f for key in rs_keys(case) for f in case[key] if src_mac(f) == MACS["dir.br0"]]
    return [ipv4_of(f) for f in sorted(frames, key=lambda f: f["t"])]


def kernel_to_client(case):
    """What the director put on the client's link, in order."""
    return [ipv4_of(f) for f in case["captured_on_cli_eth0"] if src_mac(f) == MACS["dir.cl0"]]


def input_ids(case):
    return {pkt[4:6] for _, _, pkt in inputs(case)}


@pytest.fixture(scope="module")
def replay():
    """Every case, in the oracle's order and timing, on one director."""
    eng = build_engine()
    res = {}
    for case in DATA["cases"]:
        base = T0 + case["t_start_since_first_case"]
        client = aton(case["client"])
        rec = {"to_rs": [], "to_client": [], "other": [], "per_input": []}
        for t, who, pkt in inputs(case):
            out = eng.receive(pkt, base + t)
            rec["per_input"].append((t, who, pkt, out))
            for tx in out:
                if tx.nexthop == client:
                    rec["to_client"].append(tx.packet)
                elif ntoa(tx.nexthop) in RS_IPS:
                    rec["to_rs"].append(tx.packet)
                    rec.setdefault("rs_nexthops", set()).add(ntoa(tx.nexthop))
                else:
                    rec["other"].append(tx)
        listed_at = base + case["ipvsadm -Lnc"]["t_before"]
        eng.expire(listed_at)
        rec["listing"] = [(("TCP" if cp.protocol == 6 else "UDP", eng.state_name(cp),
                            "%s:%d" % (ntoa(cp.caddr), cp.cport), "%s:%d" % (ntoa(cp.vaddr), cp.vport),
                            "%s:%d" % (ntoa(cp.daddr), cp.dport)), cp.expires - listed_at)
                          for cp in eng.conn_list() if cp.caddr == client]
        res[case["case"]] = rec
    res["_engine"] = eng
    return res


# --------------------------------------------------------------- comparing

def gue_mask(pkt):
    """Byte offsets of the GUE UDP source port and the UDP checksum covering it."""
    assert pkt[9] == 17
    return {20, 21, 26, 27}


def masked(pkt, case_ids, extra=()):
    """The packet as hex with the kernel's random draws blanked (see the module doc)."""
    b = bytearray(pkt)
    mask = set(extra)
    if b[4:6] != b"\0\0" and bytes(b[4:6]) not in case_ids:
        mask |= {4, 5, 10, 11}
    for i in mask:
        if i < len(b):
            b[i] = 0xEE
    return b.hex()


def assert_same(got, want, case_ids, extra_of=None, what=""):
    assert len(got) == len(want), "%s: %d packets, the kernel sent %d" % (what, len(got), len(want))
    for i, (g, w) in enumerate(zip(got, want)):
        extra = extra_of(w) if extra_of else ()
        assert len(g) == len(w), "%s #%d: %d bytes, the kernel's %d" % (what, i, len(g), len(w))
        assert masked(g, case_ids, extra) == masked(w, case_ids, extra), "%s #%d" % (what, i)
        # Whatever was blanked, the IP header checksum must still be right,
        # and a drawn ID comes only without DF.
        ihl = (g[0] & 0x0F) * 4
        assert checksum(g[:ihl]) == 0, "%s #%d: bad IP header checksum" % (what, i)
        if w[4:6] != b"\0\0" and w[4:6] not in case_ids:
            assert not w[6] & 0x40 and not g[6] & 0x40


def l4_ok(pkt):
    """The UDP checksum of an (unfragmented) IPv4/UDP packet verifies (or is 0: none)."""
    ihl = (pkt[0] & 0x0F) * 4
    udp = pkt[ihl:]
    if udp[6:8] == b"\0\0":
        return True
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    return checksum(pseudo + udp) == 0


# --------------------------------------------------------------- which cases

TO_RS_CASES = [c["case"] for c in DATA["cases"] if kernel_to_rs(c)]
TO_CLIENT_CASES = [c["case"] for c in DATA["cases"] if kernel_to_client(c)]
GUE_CASES = {c["case"] for c in DATA["cases"] if c["group"] == "tunnel-gue"}


# --------------------------------------------------------------- tests

def test_setup_is_the_oracle_setup():
    assert [r["rc"] for r in DATA["setup_transcript"]] == [0] * len(DATA["setup"])
    eng = build_engine()
    assert len(eng.services) == sum(1 for a in DATA["setup"] if a[1] == "-A")


def test_no_internal_errors(replay):
    assert replay["_engine"].drops["internal_error"] == 0


def test_nothing_sent_elsewhere(replay):
    stray = {name: rec["other"] for name, rec in replay.items() if name != "_engine" and rec["other"]}
    assert not stray


@pytest.mark.parametrize("name", TO_RS_CASES)
def test_to_real_server_byte_exact(replay, name):
    case = CASES[name]
    (key,) = rs_keys(case)
    rs = rs_name(key)
    # On the wire the frames went to that real server's MAC (for DR too,
    # whose IP destination stays the VIP): our next hop must be its address.
    assert {f["hex"][:12] for f in case[key] if src_mac(f) == MACS["dir.br0"]} == {MACS[rs + ".eth0"].hex()}
    assert replay[name].get("rs_nexthops", set()) <= {RS_IPS[int(rs[2:]) - 1]}
    extra = gue_mask if name in GUE_CASES else None
    assert_same(replay[name]["to_rs"], kernel_to_rs(case), input_ids(case), extra, "to real server")


@pytest.mark.parametrize("name", TO_CLIENT_CASES)
def test_to_client_byte_exact(replay, name):
    case = CASES[name]
    assert_same(replay[name]["to_client"], kernel_to_client(case), input_ids(case), None, "to client")


def _built_icmp(packets, case_ids):
    """ICMP errors the director built itself (their IP ID is its own draw)."""
    return [p for p in packets if p[9] == 1 and p[4:6] not in case_ids]


BUILT_ICMP_CASES = [c["case"] for c in DATA["cases"] if _built_icmp(kernel_to_client(c), input_ids(c))]


@pytest.mark.parametrize("name", BUILT_ICMP_CASES)
def test_director_icmp_errors_byte_exact(replay, name):
    """The ICMP errors the director itself sends to the client (frag-needed,
    port unreachable from ip_vs_leave, errors relayed from a GUE/GRE real
    server by ip_vs_in_icmp), checked apart from the forwarded replies."""
    case = CASES[name]
    ids = input_ids(case)
    assert_same(_built_icmp(replay[name]["to_client"], ids), _built_icmp(kernel_to_client(case), ids), ids,
                None, "director's ICMP errors")


@pytest.mark.parametrize("name", list(CASES))
def test_listing_matches_kernel(replay, name):
    """The case's connections in `ipvsadm -Lnc` right after it: state, addresses, timer (+-2 s)."""
    case = CASES[name]
    golden = []
    for line in case["ipvsadm -Lnc"]["stdout"].splitlines()[2:]:
        pro, expire, state, source, virtual, dest = line.split()
        if source.rsplit(":", 1)[0] == case["client"]:
            mm, ss = expire.split(":")
            golden.append(((pro, state, source, virtual, dest), int(mm) * 60 + int(ss)))
    ours = replay[name]["listing"]
    assert sorted(k for k, _ in ours) == sorted(k for k, _ in golden)
    theirs = dict(golden)
    for key, remaining in ours:
        assert abs(remaining - theirs[key]) <= 2, (key, remaining, theirs[key])


# ---- case 1: ipip

def test_kernel_tunnel_source_and_outer_fields():
    """What the kernel did (a check on the data, and the rule the byte tests rely on)."""
    for name in ("ipip-tcp-syn-df", "ipip-tcp-syn-tos03-ce", "ipip-tcp-syn-tos02-ect0", "ipip-tcp-syn-tos-b9"):
        case = CASES[name]
        inner_sent = ipv4_of(case["sent_by_client"][0])
        (outer,) = kernel_to_rs(case)[:1]
        assert outer[12:16] == aton(DIRECTOR) and outer[16:20] == aton(RS_IPS[0])
        assert outer[9] == 4 and outer[8] == inner_sent[8] - 1 == outer[20 + 8]
        tos = inner_sent[1]
        assert outer[1] == ((tos & ~3) | (2 if tos & 3 == 3 else tos & 3))
        assert outer[6] & 0x40 and outer[4:6] == b"\0\0"


def _outer_ids(packets):
    return [struct.unpack_from("!H", p, 4)[0] for p in packets if p[9] == 4]


def test_ipip_outer_id_progression(replay):
    """Without DF the outer ID comes from __ip_select_ident: each packet to the
    same real server moves it on by 1 + prandom(jiffies since the last)."""
    case = CASES["ipip-tcp-syn-nodf-x3"]
    times = [t for t, who, _ in inputs(case) if who == "client"]
    theirs = _outer_ids(kernel_to_rs(case))
    ours = _outer_ids(replay["ipip-tcp-syn-nodf-x3"]["to_rs"])
    assert len(theirs) == len(ours) == 3
    for ids in (theirs, ours):
        for k in (1, 2):
            step = (ids[k] - ids[k - 1]) & 0xFFFF
            jiffies = int((times[k] - times[k - 1]) * HZ) + 1
            assert 1 <= step <= 1 + jiffies, (ids, k, step, jiffies)


# ---- case 2: GUE and GRE

def test_kernel_gue_and_gre_headers():
    gue = kernel_to_rs(CASES["gue-tcp-syn"])[0]
    assert gue[9] == 17 and gue[22:24] == struct.pack("!H", 6080) and gue[26:28] == b"\0\0"
    assert gue[28:32] == b"\x00\x04\x00\x00"
    gue_c = kernel_to_rs(CASES["gue-csum-tcp-syn"])[0]
    assert gue_c[26:28] != b"\0\0" and l4_ok(gue_c)
    gre = kernel_to_rs(CASES["gre-tcp-syn"])[0]
    assert gre[9] == 47 and gre[20:24] == b"\x00\x00\x08\x00"
    gre_c = kernel_to_rs(CASES["gre-csum-tcp-syn"])[0]
    assert gre_c[20:24] == b"\x80\x00\x08\x00" and gre_c[26:28] == b"\0\0" and checksum(gre_c[20:]) == 0


def _gue_sports(packets):
    return [struct.unpack_from("!H", p, 20)[0] for p in packets if p[9] == 17]


def test_gue_source_port_per_flow(replay):
    """udp_flow_src_port: one port per inner flow, in the local port range.
    The kernel's flows 41001, 41002, 41003 and 41001 again left from the
    ports in `theirs`; the values are a boot-time secret, the pattern is not."""
    theirs = _gue_sports(kernel_to_rs(CASES["gue-tcp-syn"]))
    ours = _gue_sports(replay["gue-tcp-syn"]["to_rs"])
    assert len(theirs) == len(ours) == 4
    for ports in (theirs, ours):
        assert all(LOCAL_PORT_MIN <= p < LOCAL_PORT_MAX for p in ports), ports
        assert ports[0] == ports[3] and len(set(ports[:3])) == 3, ports


def test_gue_udp_checksum(replay):
    """Without --tun-csum the outer UDP checksum is 0; with it, a full one."""
    plain = replay["gue-tcp-syn"]["to_rs"] + replay["gue-udp-nodf"]["to_rs"]
    csum = replay["gue-csum-tcp-syn"]["to_rs"]
    assert plain and csum
    assert all(p[26:28] == b"\0\0" for p in plain)
    assert all(p[26:28] != b"\0\0" and l4_ok(p) for p in csum)


# ---- case 4: fragments

FRAG_CASES = [c["case"] for c in DATA["cases"] if c["group"] == "fragments"]


def _frag_geometry(packets):
    return [(len(p), struct.unpack_from("!H", p, 6)[0]) for p in packets]


@pytest.mark.parametrize("name", FRAG_CASES)
def test_kernel_refragments_with_the_received_geometry(name):
    """ip_do_fragment reuses the reassembled frag_list: the real server gets
    the client's fragment sizes back, in offset order, with the client's ID
    (for -i only the outer packet is cut, by the MTU)."""
    case = CASES[name]
    sent = sorted((ipv4_of(f) for f in case["sent_by_client"]), key=lambda p: struct.unpack_from("!H", p, 6)[0] & 0x1FFF)
    got = [p for p in kernel_to_rs(case)]
    if "ipip" in name:
        assert [len(p) for p in got] == [1500, 1500, 60]
        assert len({p[4:6] for p in got}) == 1 and got[0][4:6] != sent[0][4:6]
    else:
        assert _frag_geometry(got) == _frag_geometry(sent)
        assert all(p[4:6] == sent[0][4:6] and p[8] == 63 for p in got)


def test_fragments_refragmented_like_the_kernel(replay):
    """The engine's fragments to the real server: same sizes, offsets, ID as the kernel's."""
    for name in FRAG_CASES:
        ours = replay[name]["to_rs"]
        theirs = kernel_to_rs(CASES[name])
        if "ipip" in name:
            assert [len(p) for p in ours] == [len(p) for p in theirs], name
        else:
            assert _frag_geometry(ours) == _frag_geometry(theirs), name


# ---- case 5: frag-needed through an ipip tunnel

@pytest.mark.parametrize("name", ["ipip-df-syn-1500", "ipip-df-syn-1481", "ipip-df-data-1500-after-syn"])
def test_frag_needed_mtu(replay, name):
    """ensure_mtu_is_adequate with the tunnel's MTU: dst_mtu 1500 - 20 = 1480."""
    theirs = [p for p in kernel_to_client(CASES[name]) if p[9] == 1]
    ours = [p for p in replay[name]["to_client"] if p[9] == 1]
    assert len(theirs) == 1
    assert theirs[0][20:22] == b"\x03\x04" and struct.unpack_from("!H", theirs[0], 26)[0] == 1480
    assert len(ours) == 1
    assert ours[0][20:22] == b"\x03\x04" and struct.unpack_from("!H", ours[0], 26)[0] == 1480


# ---- case 6: ICMP rate limiting

def _answered_ports(packets):
    """Client source ports quoted by the port-unreachable errors, in order."""
    out = []
    for p in packets:
        if p[9] == 1 and p[20:22] == b"\x03\x03":
            inner = p[28:]
            ihl = (inner[0] & 0x0F) * 4
            out.append(struct.unpack_from("!H", inner, ihl)[0])
    return out


def test_icmp_ratelimit_which_syns_are_answered(replay):
    """icmpv4_xrlim_allow -> inet_peer_xrlim_allow: per destination, a bucket of
    6 x icmp_ratelimit (6 s) that starts full, 1 s per error. The kernel
    answered the first 6 SYNs, then one about a second later, then 2 of the
    last 5 (sent ~1.5 s after the 30th)."""
    case = CASES["icmp-ratelimit-weight0"]
    theirs = _answered_ports(kernel_to_client(case))
    assert len(theirs) == 9 and theirs[:6] == list(range(46000, 46006)) and theirs[-2:] == [46100, 46101]
    assert _answered_ports(replay["icmp-ratelimit-weight0"]["to_client"]) == theirs
