"""The frame fuzzer (tools/fuzz/frames.py): a short campaign finds nothing wrong and
reaches deep into the engine, and the harness does catch what it is there to catch
(a frame sent with a wrong checksum, an internal error)."""

import json
import struct

from lvs.checksum import checksum
from lvs.verdicts import Transmit
from tools.fuzz import frames as fuzz

CLIENT, VIP, RS = fuzz.A("198.51.100.20"), fuzz.A("203.0.113.200"), fuzz.A("192.0.2.11")
CLIENT6, VIP6 = fuzz.A("2001:db8:100::20"), fuzz.A("2001:db8::200")
DIRECTOR, TUNNEL_RS = fuzz.A("192.0.2.1"), fuzz.A("192.0.2.15")


def test_a_short_campaign_is_clean_and_reaches_deep():
    r = fuzz.Campaign(frames=24000, seed=3, epoch_frames=6000).run()
    assert r["frames"] == 24000 and sorted(r["epochs"]) == ["default", "defense", "sync", "sysctls"]
    assert r["internal_errors"] == 0, r["findings"]
    assert r["raised"] == 0 and r["malformed"] == 0 and r["divergences"] == 0, r["findings"]
    assert r["unaccounted"] == 0, r["unaccounted_examples"]
    # It got past the header checks into every part of the packet path ...
    drops = r["drops"]
    assert len(drops) >= 20, drops
    for reason in ("truncated", "bad_ip_checksum", "bad_header_length", "not_ipv4", "no_service",
                   "no_connection", "ttl_exceeded", "frag_needed", "icmp_not_related", "bad_ext_header",
                   "fragment_timeout", "fragment_overlap", "no_dest", "no_tunnel_source", "drop_packet"):
        assert drops.get(reason), (reason, drops)
    # ... and real traffic went through: every method, both families, the fast path.
    assert r["transmits"] > 8000 and r["fastpath_hits"] > 1000 and r["batches"] > 50
    for kind in ("IPv4 TCP", "IPv4 UDP", "IPv6 TCP", "IPv6 UDP", "IPv4 ICMP", "IPv6 ICMPv6", "IPv4 IPIP",
                 "IPv4 GRE", "IPv6 GRE", "IPv6 IPv6-in-IPv6", "IPv4 TCP fragment", "IPv6 UDP fragment"):
        assert r["outputs"].get(kind), (kind, r["outputs"])
    assert r["state_checks"] >= 12 and r["passthrough"] > 0


def _tcp4(src=CLIENT, dst=RS, payload=b"hello"):
    return fuzz.ip4(src, dst, 6, fuzz.tcp(src, dst, 40000, 8080, 1, 2, fuzz.TCP_ACK, payload))


def _corrupt(packet, offset):
    b = bytearray(packet)
    b[offset] ^= 0x5A
    return bytes(b)


def test_the_checker_catches_a_corrupted_checksum():
    checker = fuzz.Checker({DIRECTOR}, {TUNNEL_RS})
    good = _tcp4()
    assert checker.inspect(good) == (None, None)
    assert checker.inspect(_corrupt(good, 36)) == (None, "tcp_checksum")      # the TCP checksum field
    assert checker.inspect(_corrupt(good, 42))[1] == "tcp_checksum"           # the payload
    assert checker.inspect(_corrupt(good, 10))[0] == "ipv4_checksum"
    bad_len = bytearray(good)
    struct.pack_into("!H", bad_len, 2, len(good) - 1)
    struct.pack_into("!H", bad_len, 10, 0)
    struct.pack_into("!H", bad_len, 10, checksum(bytes(bad_len[:20])))
    assert checker.inspect(bytes(bad_len))[0] == "ipv4_length"
    udp4 = fuzz.ip4(CLIENT, RS, 17, fuzz.udp(CLIENT, RS, 40000, 53, b"q", zero=True))
    assert checker.inspect(udp4) == (None, None)                              # 0: no checksum, IPv4 only
    udp6 = fuzz.ip6(CLIENT6, VIP6, 17, fuzz.udp(CLIENT6, VIP6, 40000, 53, b"q"))
    assert checker.inspect(udp6) == (None, None)
    assert checker.inspect(_corrupt(udp6, 47))[1] == "udp_checksum"
    zero6 = fuzz.ip6(CLIENT6, VIP6, 17, fuzz.udp(CLIENT6, VIP6, 40000, 53, b"q", zero=True))
    assert checker.inspect(zero6)[1] == "udp6_zero_checksum"
    icmp = fuzz.ip4(VIP, CLIENT, 1, fuzz.icmp4(3, 3, 0, good[:28]))
    assert checker.inspect(icmp) == (None, None)
    assert checker.inspect(_corrupt(icmp, 23))[1] == "icmp_checksum"
    # A tunnel: the outer header, the GRE checksum, the inner packet.
    gre = bytearray(struct.pack("!HHHH", 0x8000, 0x0800, 0, 0)) + good
    struct.pack_into("!H", gre, 4, checksum(bytes(gre)))
    tunnelled = fuzz.ip4(DIRECTOR, TUNNEL_RS, 47, bytes(gre))
    assert checker.inspect(tunnelled) == (None, None)
    assert checker.inspect(_corrupt(tunnelled, 20 + 8 + 36))[0] == "gre_checksum"
    inner_bad = fuzz.ip4(DIRECTOR, TUNNEL_RS, 4, _corrupt(good, 36))
    assert checker.inspect(inner_bad) == (None, "tcp_checksum")
    assert checker.inspect(fuzz.ip4(DIRECTOR, TUNNEL_RS, 4, _corrupt(good, 10)))[0] == "inner_ipv4_checksum"
    # judge: a wrong transport checksum out is a bug unless it came in wrong.
    sent = Transmit(RS, _corrupt(good, 36))
    assert checker.judge(sent, good, None, 1500) == ("malformed", "tcp_checksum")
    assert checker.judge(sent, _corrupt(good, 36), None, 1500) == ("passthrough", "tcp_checksum")
    assert checker.judge(Transmit(RS, _corrupt(good, 10)), _corrupt(good, 10), None, 1500)[0] == "malformed"
    assert checker.judge(Transmit(RS, good), good, None, 1500) is None
    assert checker.judge(Transmit(RS, good), good, None, 40) == ("malformed", "larger_than_mtu")
    assert checker.judge(Transmit(CLIENT6, good), good, None, 1500) == ("malformed", "nexthop_family")


def test_a_nat_rewrite_that_breaks_checksums_is_caught(monkeypatch):
    from forwarders import nat
    monkeypatch.setattr(nat, "_l4_update", lambda *args: None)   # addresses rewritten, checksums stale
    r = fuzz.Campaign(frames=3000, seed=4, epoch_frames=3000, profiles=fuzz.PROFILES[:1], max_repros=1,
                      minimize_seconds=3.0).run()
    assert r["malformed"] > 0
    found = [f for f in r["findings"] if f["kind"] == "malformed"]
    assert found and found[0]["signature"] in ("tcp_checksum", "udp_checksum")
    assert bytes.fromhex(found[0]["frame"]) and found[0]["repro"]["events"]
    assert "malformed" in fuzz.format_report(r)


def test_an_internal_error_is_reported_with_its_traceback_and_a_short_repro(monkeypatch):
    from lvs import proto_icmp

    def broken(engine, buf, ihl):
        raise ValueError("planted")
    monkeypatch.setattr(proto_icmp, "handle", broken)
    r = fuzz.Campaign(frames=2000, seed=5, epoch_frames=2000, profiles=fuzz.PROFILES[:1], max_repros=1,
                      minimize_seconds=3.0).run()
    assert r["internal_errors"] > 0
    f = r["findings"][0]
    assert f["kind"] == "internal_error" and f["signature"].startswith("ValueError at ")
    assert "ValueError: planted" in f["traceback"] and "receive_packet" in f["traceback"]
    assert f["repro"]["minimized"] and len(f["repro"]["events"]) == 1   # any ICMP frame shows it
    assert f["repro"]["events"][0][2] == f["frame"] or f["repro"]["events"][0][1] == "b"


def test_the_command_line_prints_json(capsys):
    assert fuzz.main(["--frames", "1500", "--seed", "2", "--json", "--quiet", "--time-limit", "60"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 1500 and report["internal_errors"] == 0 and report["findings"] == []


# ---------------------------------------------------------------- what the fuzzer found

def _engine(*lines):
    from lvs import adm
    from lvs.engine import Engine
    eng = Engine(seed=1, director_addr=DIRECTOR, director_addr6=fuzz.A("2001:db8:2::1"))
    for line in lines:
        assert adm.run(eng, line.split())[2] == 0, line
    return eng


def test_an_ipv6_datagram_that_came_in_fragments_leaves_an_ipv4_tunnel_as_a_new_packet():
    """An IPv6 service with an IPv4 tunnel server: the datagram reassembled from an
    atomic fragment went to the IPv4 fragmenter with IPv6 reassembly facts (an
    internal error). The outer packet is new (IPCB's frag_max_size reads IP6CB's
    srhoff once ip_vs_tunnel_xmit cleared IPCB's opt), and leaves whole."""
    eng = _engine("-A -t [2001:db8::200]:8443 -s rr", "-a -t [2001:db8::200]:8443 -r 192.0.2.32:8443 -i")
    syn = fuzz.tcp(CLIENT6, VIP6, 40000, 8443, 1, 0, fuzz.TCP_SYN)
    nh, body = fuzz.chain6([44], 6, syn, __import__("random").Random(1))      # an atomic fragment
    out = eng.receive(fuzz.ip6(CLIENT6, VIP6, nh, body), 1.0)
    assert eng.drops["internal_error"] == 0
    assert len(out) == 1 and out[0].nexthop == fuzz.A("192.0.2.32")
    outer = out[0].packet
    assert outer[9] == 41 and outer[6:8] == b"\0\0" and len(outer) == 20 + 40 + len(syn)
    assert fuzz.Checker({DIRECTOR}, {fuzz.A("192.0.2.32")}).inspect(outer) == (None, None)


def test_a_datagram_near_64k_has_no_room_for_a_tunnel_header():
    """Reassembled near 65535 bytes, a datagram plus the tunnel's headers overflowed the
    16-bit lengths (an internal error); the kernel's wrap into a train of fragments
    nobody can reassemble. It is dropped and counted."""
    for method in ("-i", "-i --tun-type gue --tun-port 6080", "-i --tun-type gre"):
        eng = _engine("-A -u 203.0.113.200:9999 -s rr", "-a -u 203.0.113.200:9999 -r 192.0.2.15:9999 " + method)
        datagram = fuzz.ip4(CLIENT, VIP, 17, fuzz.udp(CLIENT, VIP, 40000, 9999, bytes(65507)), df=False)
        pieces = [(off, min(1480, 65515 - off), off + 1480 < 65515, off) for off in range(0, 65515, 1480)]
        out = []
        for frame in fuzz.frag4(datagram, pieces):
            out += eng.receive(frame, 1.0)
        assert eng.drops["internal_error"] == 0 and eng.drops["tunnel_oversize"] == 1, method
        assert out == []
        small = fuzz.ip4(CLIENT, VIP, 17, fuzz.udp(CLIENT, VIP, 40000, 9999, bytes(60000)), df=False)
        pieces = [(off, min(1480, 60008 - off), off + 1480 < 60008, off) for off in range(0, 60008, 1480)]
        for frame in fuzz.frag4(small, pieces):
            out += eng.receive(frame, 2.0)
        assert len(out) > 40 and eng.drops["tunnel_oversize"] == 1, method    # still sent, in fragments
