"""The defense modes (lvs/defense.py) against sequences worked by hand from the kernel's
ip_vs_ctl.c update_defense_level, ip_vs_conn.c ip_vs_random_dropentry/todrop_entry and
ip_vs.h ip_vs_todrop. Pressure is the table's free room against amemthresh."""

import pytest

pytest.importorskip("scapy.all")
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402

from lvs import proto_tcp  # noqa: E402
from lvs.config import EngineConfig  # noqa: E402
from lvs.control import DestSpec, ServiceSpec  # noqa: E402
from lvs.engine import Engine  # noqa: E402
from lvs.replay import replay  # noqa: E402

VIP = "203.0.113.200"
T0 = 5000.0


def A(text):
    return bytes(int(x) for x in text.split("."))


def make(max_conns=100, proto=6, **sysctls):
    eng = Engine(EngineConfig(amemthresh=20, **sysctls), seed=7, max_conns=max_conns)
    svc = ServiceSpec(protocol=proto, addr=A(VIP), port=80, sched_name="rr")
    eng.add_service(svc)
    for last in (11, 12):
        eng.add_dest(svc, DestSpec(addr=A("192.0.2.%d" % last), port=80, conn_flags=0, weight=1))
    return eng


def syn(sport, src="198.51.100.7"):
    return bytes(IP(src=src, dst=VIP) / TCP(sport=sport, dport=80, flags="S"))


def ack(sport, src="198.51.100.7"):
    return bytes(IP(src=src, dst=VIP) / TCP(sport=sport, dport=80, flags="A", seq=1, ack=1))


def udp(sport, src="198.51.100.7"):
    return bytes(IP(src=src, dst=VIP) / UDP(sport=sport, dport=80) / b"x")


def fill(eng, count, now=T0, first=20000):
    for port in range(first, first + count):
        assert eng.receive(syn(port), now), "the SYN was not forwarded"


def test_no_bound_means_no_pressure():
    eng = make(max_conns=None, drop_entry=1, drop_packet=1, secure_tcp=1)
    fill(eng, 300)
    eng.expire(T0 + 5)
    assert (eng.config.drop_entry, eng.config.drop_packet, eng.config.secure_tcp) == (1, 1, 1)
    assert eng.defense_state()["availmem"] is None and not eng.defense_state()["nomem"]


def test_drop_packet_moves_to_2_and_drops_one_in_rate():
    eng = make(drop_packet=1)
    fill(eng, 85)                       # free room 15 < amemthresh 20
    assert eng.config.drop_packet == 1  # nothing until the once-a-second check
    eng.expire(T0 + 1.0)
    assert eng.config.drop_packet == 2
    # drop_rate = drop_counter = amemthresh / (amemthresh - availmem) = 20 / 5 = 4
    assert eng.drop_rate == 4
    forwarded = [bool(eng.receive(syn(30000 + i), T0 + 1.1)) for i in range(8)]
    # --counter: 3, 2, 1 pass, 0 drops and resets to 4
    assert forwarded == [True, True, True, False, True, True, True, False]
    assert eng.drops["drop_packet"] == 2


def test_drop_rate_follows_the_room_each_second():
    eng = make(drop_packet=1)
    fill(eng, 90)                       # room 10: rate 20 / 10 = 2
    eng.expire(T0 + 1.0)
    assert eng.drop_rate == 2
    for port in range(31000, 31005):          # 3 of 5 admitted: room 7 -> rate 20 / 13 = 1
        eng.receive(syn(port), T0 + 1.5)
    assert eng.drops["drop_packet"] == 2
    eng.expire(T0 + 2.0)
    assert eng.drop_rate == 1           # every new connection is dropped now


def test_pressure_ends_and_the_modes_return_to_1():
    eng = make(drop_entry=1, drop_packet=1, secure_tcp=1)
    fill(eng, 85)
    eng.expire(T0 + 1.0)
    assert (eng.config.drop_entry, eng.config.drop_packet, eng.config.secure_tcp) == (2, 2, 2)
    assert eng.dropentry and eng.config.secure_tcp_on
    # The half-open entries end (random drop, or SYN_RECV's 60 s timeout): no pressure.
    eng.expire(T0 + 61.5)
    assert len(eng.conntab) < 80
    assert (eng.config.drop_entry, eng.config.drop_packet, eng.config.secure_tcp) == (1, 1, 1)
    assert not eng.dropentry and not eng.config.secure_tcp_on and eng.drop_rate == 0


def test_secure_tcp_2_uses_the_dos_state_table():
    """tcp_states_dos: a client's ACK leaves a NAT entry in SYN_RECV (normally ESTABLISHED)."""
    calm = make(secure_tcp=1)
    calm.receive(syn(40000), T0)
    calm.receive(ack(40000), T0 + 0.1)
    assert [c.state for c in calm.conn_list()] == [proto_tcp.ESTABLISHED]

    eng = make(secure_tcp=1)
    fill(eng, 85)
    eng.expire(T0 + 1.0)
    assert eng.config.secure_tcp == 2
    eng.receive(syn(40000), T0 + 1.1)
    eng.receive(ack(40000), T0 + 1.2)
    states = {c.cport: c.state for c in eng.conn_list()}
    assert states[40000] == proto_tcp.SYN_RECV


def test_always_modes_act_at_the_write():
    """proc_do_defense_mode runs update_defense_level when a value changes."""
    eng = make(max_conns=None, am_droprate=3)
    eng.config.set("secure_tcp", "3")
    assert eng.config.secure_tcp_on
    eng.config.set("drop_packet", "3")
    assert eng.drop_rate == 3
    # ip_vs_todrop with drop_counter 0: the first new connection is dropped
    got = [bool(eng.receive(syn(41000 + i), T0)) for i in range(4)]
    assert got == [False, True, True, False]
    eng.config.set("secure_tcp", "0")
    assert not eng.config.secure_tcp_on
    # am_droprate is read at the next check, not at its write
    eng.config.set("am_droprate", "5")
    assert eng.drop_rate == 3
    eng.expire(T0 + 1.0)
    assert eng.drop_rate == 5


def test_secure_tcp_3_to_2_without_pressure_goes_back_to_1():
    eng = make(max_conns=None, secure_tcp=3)
    assert eng.config.secure_tcp_on
    eng.config.set("secure_tcp", "2")   # no pressure: case 2 -> 1, table back
    assert eng.config.secure_tcp == 1 and not eng.config.secure_tcp_on


def test_random_dropentry_ends_half_open_entries_only():
    eng = make(drop_entry=1)
    fill(eng, 70)                        # half-open: SYN_RECV
    for port in range(50000, 50010):     # established, and busy
        eng.receive(syn(port, src="198.51.100.9"), T0)
        eng.receive(ack(port, src="198.51.100.9"), T0)
    fill(eng, 6, first=60000)            # 86 entries: room 14 < 20
    held = len(eng.conntab)
    for t in range(1, 40):
        eng.expire(T0 + t)
        for port in range(50000, 50010):
            eng.receive(ack(port, src="198.51.100.9"), T0 + t + 0.5)
    dropped = eng.dropped_entries
    # Half-open entries go, 1/32 of the buckets a second, until the room is back at
    # amemthresh (80 entries); then drop_entry returns to 1 and the drops stop.
    assert 6 <= dropped <= 9 and len(eng.conntab) == held - dropped
    assert eng.config.drop_entry == 1 and not eng.dropentry
    established = [c for c in eng.conn_list() if c.state == proto_tcp.ESTABLISHED]
    assert len(established) == 10      # recent established entries are never dropped


def test_todrop_entry_rates_by_packet_count():
    """todrop_entry: idle 60 s, and in_pkts n in 1..8 drops one in n (0 and > 8 never)."""
    eng = make(max_conns=None, proto=17)
    eng.receive(udp(42000), T0)
    cp = eng.conn_list()[0]
    now = cp.expires - cp.timeout + 60.0   # exactly 60 s idle
    assert not eng._todrop_entry(cp, now - 0.5)
    cp.in_pkts = 3
    assert [eng._todrop_entry(cp, now) for _ in range(7)] == [
        True, False, False, True, False, False, True]
    cp.in_pkts = 1
    assert all(eng._todrop_entry(cp, now) for _ in range(3))
    for n in (0, 9):
        cp.in_pkts = n
        assert not any(eng._todrop_entry(cp, now) for _ in range(9))


def test_idle_udp_entries_dropped_under_pressure_busy_ones_kept():
    eng = make(proto=17, drop_entry=2)
    for port in range(20000, 20090):
        eng.receive(udp(port), T0)
    busy = range(20000, 20010)
    for t in range(1, 200):
        for port in busy:
            if t % 20 == 0:
                eng.receive(udp(port), T0 + t)
        eng.expire(T0 + t + 0.5)
    left = {c.cport for c in eng.conn_list()}
    assert set(busy) <= left           # never idle 60 s
    # in_pkts 1 and idle 60 s: each one whose bucket is looked at goes, until the
    # room is back at amemthresh (10 to drop)
    assert 10 <= eng.dropped_entries <= 13 and eng.config.drop_entry == 1
    assert len(left) == 90 - eng.dropped_entries


def test_same_seed_same_drops():
    def run():
        eng = make(drop_entry=1)
        fill(eng, 90)
        for t in range(1, 20):
            eng.expire(T0 + t)
        return sorted(c.cport for c in eng.conn_list())
    assert run() == run()


def test_full_table_refuses_new_and_keeps_established():
    eng = make(max_conns=10)
    for port in range(20000, 20010):
        eng.receive(syn(port), T0)
        eng.receive(ack(port), T0)
    assert eng.receive(syn(21000), T0 + 0.1) == []
    assert eng.drops["table_full"] == 1
    assert all(eng.receive(ack(port), T0 + 0.2) for port in range(20000, 20010))
    assert len(eng.conntab) == 10


def test_replay_takes_max_conns(tmp_path, capsys):
    from scapy.utils import wrpcap
    from scapy.layers.l2 import Ether
    rules = tmp_path / "rules"
    rules.write_text("-A -t %s:80 -s rr\n-a -t %s:80 -r 192.0.2.11:80 -m\n" % (VIP, VIP))
    frames = [Ether(src="02:00:00:00:00:09", dst="02:00:00:00:00:01") / IP(syn(p))
              for p in range(20000, 20005)]
    for i, f in enumerate(frames):
        f.time = 1.0 + i / 10
    cap = tmp_path / "in.pcap"
    wrpcap(str(cap), frames)
    assert replay(str(rules), str(cap), max_conns=3) == 0
    out = capsys.readouterr().out
    assert "table_full=2" in out.replace(": ", "=") or "table_full 2" in out
