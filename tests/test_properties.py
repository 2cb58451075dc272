"""Property tests (hypothesis): checksums, NAT symmetry, robustness to any bytes.

Example counts come from the profiles in tests/conftest.py ("ci" when the
CI environment variable is set, "dev" otherwise).
"""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy.all")
from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402

from lvs.checksum import apply, checksum, delta, l4_checksum  # noqa: E402
from lvs.control import DestSpec, ServiceSpec  # noqa: E402
from lvs.engine import Engine  # noqa: E402
from lvs.flags import IP_VS_SVC_F_PERSISTENT  # noqa: E402

NETS = ("198.51.100", "203.0.113", "192.0.2")
VIP = "203.0.113.200"
RS1, RS2 = "192.0.2.11", "192.0.2.12"

addresses = st.builds(lambda net, host: "%s.%d" % (net, host),
                      st.sampled_from(NETS), st.integers(0, 255))
client_addresses = st.builds(lambda host: "198.51.100.%d" % host, st.integers(1, 254))
ports = st.integers(1, 65535)
payloads = st.binary(max_size=64)


def A(text):
    return bytes(int(x) for x in text.split("."))


def scapy_rebuilt(raw):
    """The same packet with every checksum recomputed by scapy."""
    pkt = IP(raw)
    del pkt.chksum
    for layer in (TCP, UDP, ICMP):
        if layer in pkt:
            if layer is UDP and pkt[UDP].chksum == 0:
                continue
            del pkt[layer].chksum
    return bytes(pkt)


# ------------------------------------------------ incremental checksums

@st.composite
def l4_packets(draw):
    proto = draw(st.sampled_from([6, 17]))
    ip = IP(src=draw(addresses), dst=draw(addresses), ttl=draw(st.integers(1, 255)),
            id=draw(st.integers(0, 65535)))
    sport, dport = draw(ports), draw(ports)
    if proto == 6:
        l4 = TCP(sport=sport, dport=dport, seq=draw(st.integers(0, 2 ** 32 - 1)),
                 flags=draw(st.integers(0, 255)), window=draw(st.integers(0, 65535)))
    else:
        l4 = UDP(sport=sport, dport=dport)
    return bytes(ip / l4 / draw(payloads))


@given(raw=l4_packets(), new_addr=addresses, new_port=ports, rewrite_dst=st.booleans())
def test_incremental_checksum_equals_full_and_scapy(raw, new_addr, new_port, rewrite_dst):
    """The RFC 1624 delta the NAT path applies (ip_vs_check_diff4/2 in the
    kernel) equals recomputation from scratch, and scapy's own result."""
    buf = bytearray(raw)
    proto = buf[9]
    addr_off = 16 if rewrite_dst else 12
    port_off = 20 + (2 if rewrite_dst else 0)
    csum_off = 20 + (16 if proto == 6 else 6)
    old = bytes(buf[addr_off:addr_off + 4]) + bytes(buf[port_off:port_off + 2])
    new = A(new_addr) + struct.pack("!H", new_port)
    ip_check = struct.unpack_from("!H", buf, 10)[0]
    l4_check = struct.unpack_from("!H", buf, csum_off)[0]
    buf[addr_off:addr_off + 4] = new[:4]
    buf[port_off:port_off + 2] = new[4:]
    ip_new = apply(ip_check, delta(old[:4], new[:4]))
    l4_new = apply(l4_check, delta(old, new))

    # Full recomputation with lvs.checksum.
    hdr = bytearray(buf[:20])
    hdr[10:12] = b"\0\0"
    assert ip_new == checksum(hdr)
    seg = bytearray(buf[20:])
    seg[csum_off - 20:csum_off - 18] = b"\0\0"
    full = l4_checksum(bytes(buf[12:16]), bytes(buf[16:20]), proto, seg)
    assert l4_new == full
    # And scapy's (UDP sends a computed 0 as 0xFFFF, as does the kernel).
    struct.pack_into("!H", buf, 10, ip_new)
    wire = l4_new if proto == 6 or l4_new else 0xFFFF
    struct.pack_into("!H", buf, csum_off, wire)
    assert scapy_rebuilt(bytes(buf)) == bytes(buf)


# ------------------------------------------------------- NAT symmetry

def nat_engine(rport):
    eng = Engine(seed=11)
    tsvc = ServiceSpec(protocol=6, addr=A(VIP), port=80, sched_name="rr")
    usvc = ServiceSpec(protocol=17, addr=A(VIP), port=53, sched_name="rr")
    eng.add_service(tsvc)
    eng.add_service(usvc)
    eng.add_dest(tsvc, DestSpec(addr=A(RS1), port=rport, conn_flags=0))
    eng.add_dest(usvc, DestSpec(addr=A(RS1), port=rport, conn_flags=0))
    return eng


@given(proto=st.sampled_from([6, 17]), client=client_addresses, # ip_vs_schedule never schedules a client port 20 (FTPDATA)
       cport=ports.filter(lambda p: p != 20),
       rport=ports, ttl=st.integers(2, 255), tos=st.integers(0, 255),
       ident=st.integers(0, 65535), df=st.booleans(), req=payloads, resp=payloads,
       syn_extra=st.sampled_from(["", "E", "C", "EC", "U"]),
       reply_flags=st.sampled_from(["SA", "A", "PA", "FA", "RA", "R"]))
def test_nat_in_then_out_restores_client_view(proto, client, cport, rport, ttl, tos, ident,
                                               df, req, resp, syn_extra, reply_flags):
    eng = nat_engine(rport)
    vport = 80 if proto == 6 else 53
    ip = IP(src=client, dst=VIP, ttl=ttl, tos=tos, id=ident, flags="DF" if df else 0)
    if proto == 6:
        l4 = TCP(sport=cport, dport=vport, flags="S" + syn_extra, seq=1)
    else:
        l4 = UDP(sport=cport, dport=vport)
    sent = bytes(ip / l4 / req)
    out = eng.receive(sent, 100.0)
    assert len(out) == 1 and out[0].nexthop == A(RS1)
    at_rs = out[0].packet
    assert scapy_rebuilt(at_rs) == at_rs
    p = IP(at_rs)
    assert (p.src, p.dst, p.ttl, p.tos, p.id) == (client, RS1, ttl - 1, tos, ident)
    assert (p.sport, p.dport) == (cport, rport)
    assert bytes(p[TCP if proto == 6 else UDP].payload) == req

    # The real server answers with the mirrored packet.
    rip = IP(src=RS1, dst=client, ttl=64, id=ident ^ 0xFFFF)
    if proto == 6:
        rl4 = TCP(sport=rport, dport=cport, flags=reply_flags, seq=9, ack=2)
    else:
        rl4 = UDP(sport=rport, dport=cport)
    out = eng.receive(bytes(rip / rl4 / resp), 100.5)
    assert len(out) == 1 and out[0].nexthop == A(client)
    at_client = out[0].packet
    assert scapy_rebuilt(at_client) == at_client
    q = IP(at_client)
    assert (q.src, q.dst, q.ttl, q.id) == (VIP, client, 63, ident ^ 0xFFFF)
    assert (q.sport, q.dport) == (vport, cport)
    assert bytes(q[TCP if proto == 6 else UDP].payload) == resp
    assert eng.drops["internal_error"] == 0


# ----------------------------------------------------- robustness

CLIENT = "198.51.100.20"


def fuzz_engine():
    eng = Engine(seed=5, director_addr=A("192.0.2.1"))
    specs = [
        (ServiceSpec(protocol=6, addr=A(VIP), port=80, sched_name="rr"),
         [DestSpec(addr=A(RS1), port=8080, conn_flags=0),
          DestSpec(addr=A(RS2), port=80, conn_flags=0)]),
        (ServiceSpec(protocol=6, addr=A(VIP), port=8080, sched_name="rr"),
         [DestSpec(addr=A(RS1), port=0, conn_flags=3)]),
        (ServiceSpec(protocol=6, addr=A(VIP), port=443, sched_name="rr"),
         [DestSpec(addr=A(RS2), port=0, conn_flags=2)]),
        (ServiceSpec(protocol=17, addr=A(VIP), port=53, sched_name="rr"),
         [DestSpec(addr=A(RS1), port=53, conn_flags=0)]),
        (ServiceSpec(protocol=6, addr=A(VIP), port=22, sched_name="rr",
                     flags=IP_VS_SVC_F_PERSISTENT, timeout=300, netmask=0xFFFFFF00),
         [DestSpec(addr=A(RS1), port=22, conn_flags=0)]),
        (ServiceSpec(protocol=6, addr=A(VIP), port=21, sched_name="rr"),
         [DestSpec(addr=A(RS2), port=21, conn_flags=0)]),
        (ServiceSpec(protocol=17, addr=A(VIP), port=0, sched_name="rr"), []),
    ]
    for svc, dests in specs:
        eng.add_service(svc)
        for d in dests:
            eng.add_dest(svc, d)
    return eng


def _seed_packets():
    syn = IP(src=CLIENT, dst=VIP, flags="DF") / TCP(sport=40000, dport=80, flags="S")
    to_rs = IP(src=CLIENT, dst=RS1, ttl=63, flags="DF") / TCP(sport=40000, dport=8080, flags="S")
    reply = IP(src=RS1, dst=CLIENT) / TCP(sport=8080, dport=40000, flags="SA")
    pkts = [
        syn,
        IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="A") / b"data",
        reply,
        IP(src=CLIENT, dst=VIP, tos=3) / TCP(sport=40001, dport=8080, flags="S"),
        IP(src=CLIENT, dst=VIP, flags="DF") / TCP(sport=40002, dport=443, flags="S") / (b"x" * 40),
        IP(src=CLIENT, dst=VIP) / UDP(sport=40003, dport=53) / b"q",
        IP(src=RS1, dst=CLIENT) / UDP(sport=53, dport=40003) / b"a",
        IP(src=CLIENT, dst=VIP) / TCP(sport=40004, dport=22, flags="S"),
        IP(src=CLIENT, dst=VIP) / TCP(sport=40005, dport=2121, flags="S"),
        IP(src=CLIENT, dst=VIP) / UDP(sport=40006, dport=9999) / b"",
        IP(src=CLIENT, dst=VIP, ttl=1) / TCP(sport=40007, dport=80, flags="S"),
        IP(src=RS1, dst=CLIENT) / ICMP(type=3, code=4, nexthopmtu=1000) / bytes(to_rs)[:28],
        IP(src=CLIENT, dst=VIP) / ICMP(type=11) / bytes(IP(src=VIP, dst=CLIENT) /
                                                   TCP(sport=80, dport=40000))[:28],
        IP(src=CLIENT, dst=VIP) / ICMP(type=8) / b"ping",
        IP(src=CLIENT, dst=VIP, options=b"\x01\x01\x01\x00") / TCP(sport=40008, dport=80,
                                                                     flags="S"),
        IP(src=CLIENT, dst=VIP, flags="MF") / UDP(sport=40009, dport=53) / b"frag",
    ]
    return [bytes(p) for p in pkts]


SEEDS = _seed_packets()


def fix_ip_checksum(buf):
    """Make the header checksum right again, so the mutation reaches deeper code."""
    if len(buf) >= 20 and buf[0] >> 4 == 4:
        ihl = (buf[0] & 15) * 4
        if 20 <= ihl <= len(buf):
            buf[10:12] = b"\0\0"
            struct.pack_into("!H", buf, 10, checksum(bytes(buf[:ihl])))
    return bytes(buf)


@st.composite
def mutated(draw):
    buf = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["set", "flip", "truncate", "extend", "totlen"]))
        if kind == "set" and buf:
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        elif kind == "flip" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del buf[draw(st.integers(0, len(buf))):]
        elif kind == "extend":
            buf += draw(st.binary(max_size=32))
        elif kind == "totlen" and len(buf) >= 4:
            struct.pack_into("!H", buf, 2, draw(st.integers(0, 65535)))
    if draw(st.booleans()):
        return fix_ip_checksum(buf)
    return bytes(buf)


any_packet = st.one_of(st.binary(max_size=120), mutated(), st.sampled_from(SEEDS))


def feed(eng, packets):
    now = 1000.0
    for pkt in packets:
        before = sum(eng.drops.values())
        held = eng.fragments_held
        out = eng.receive(pkt, now)
        assert eng.drops["internal_error"] == 0, pkt.hex()
        assert isinstance(out, list)
        # A fragment may also be held for reassembly, as the kernel holds it.
        assert out or sum(eng.drops.values()) > before or eng.fragments_held > held, (
            "neither a Transmit, a counted drop nor a held fragment for %s" % pkt.hex())
        for tx in out:
            assert len(tx.nexthop) == 4
            assert len(tx.packet) >= 20 and tx.packet[0] >> 4 == 4
            assert checksum(tx.packet[:(tx.packet[0] & 15) * 4]) == 0
        now += 0.7


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_any_bytes_never_raise(data):
    eng = fuzz_engine()
    feed(eng, [data])


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(packets=st.lists(any_packet, min_size=1, max_size=12))
def test_mutated_sequences_never_raise(packets):
    eng = fuzz_engine()
    feed(eng, packets)


def test_seed_packets_are_handled():
    eng = fuzz_engine()
    feed(eng, SEEDS)
    assert eng.drops["internal_error"] == 0
