"""Sysctls that change connection tracking, and the rate estimator's numbers."""

from scapy.all import IP, TCP, UDP, raw

from lvs.config import EngineConfig
from lvs.control import DestSpec, ServiceSpec
from lvs.engine import Engine

VIP, RS, CLIENT = "198.51.100.2", "192.0.2.11", "203.0.113.7"


def A(text):
    return bytes(int(x) for x in text.split("."))


def director(method=0, **sysctls):
    e = Engine(EngineConfig(**sysctls))
    svc = ServiceSpec(6, A(VIP), 80, sched_name="rr")
    e.add_service(svc)
    e.add_dest(svc, DestSpec(A(RS), 80, conn_flags=method))
    return e


def c(flags, sport=40000, payload=b""):
    return raw(IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags=flags) / payload)


def s(flags, sport=40000):
    return raw(IP(src=RS, dst=CLIENT) / TCP(sport=80, dport=sport, flags=flags))


def states(e, packets):
    seen = []
    for i, p in enumerate(packets):
        e.receive(p, 1.0 + i)
        cp = e.conn_list()[-1]
        seen.append(e.state_name(cp))
    return seen


def test_secure_tcp_waits_for_the_server_before_established():
    """tcp_states_dos: a NAT connection is SYNACK until the real server answers the handshake."""
    normal = states(director(), [c("S"), s("SA"), c("A")])
    assert normal == ["SYN_RECV", "SYN_RECV", "ESTABLISHED"]
    secure = states(director(secure_tcp=3), [c("S"), s("SA"), c("A"), s("A")])
    assert secure == ["SYN_RECV", "SYNACK", "SYNACK", "ESTABLISHED"]
    e = director(secure_tcp=3)
    states(e, [c("S"), s("SA")])
    cp = e.conn_list()[-1]
    assert cp.expires - e.now == 120  # the SYNACK timeout


def test_secure_tcp_for_direct_routing_starts_in_synack():
    assert states(director(method=3, secure_tcp=3), [c("S"), c("A")]) == ["SYNACK", "ESTABLISHED"]


def test_secure_tcp_automatic_modes_stay_off_without_memory_pressure():
    # 1 and 2 follow available memory (update_defense_level); only 3 is "always".
    for mode in (1, 2):
        assert states(director(secure_tcp=mode), [c("S"), s("SA")]) == ["SYN_RECV", "SYN_RECV"]


def test_sloppy_tcp_schedules_mid_stream():
    """tcp_conn_schedule: without a SYN only sloppy_tcp lets a packet start a connection."""
    e = director()
    assert e.receive(c("A"), 1.0) == [] and e.drops["no_connection"] == 1
    e = director(sloppy_tcp=1)
    out = e.receive(c("A"), 1.0)
    assert len(out) == 1 and IP(out[0].packet).dst == RS
    assert e.state_name(e.conn_list()[0]) == "ESTABLISHED"
    # RST never starts one, sloppy or not.
    assert e.receive(c("R", sport=40001), 2.0) == [] and e.drops["no_connection"] == 1


def test_rate_estimator_follows_the_kernel_ewma():
    """estimation_timer: every 2 s, avg += (delta << 9 - avg) >> 2 (bytes: << 4)."""
    e = Engine()
    svc = ServiceSpec(17, A(VIP), 53, sched_name="rr")
    e.add_service(svc)
    e.add_dest(svc, DestSpec(A(RS), 53, conn_flags=0))
    pkt = raw(IP(src=CLIENT, dst=VIP) / UDP(sport=5000, dport=53) / (b"x" * 72))  # 100 bytes
    seen = []
    for k in range(8 * 11):            # 8 packets a second, for 11 s
        now = 100.0 + k * 0.125
        e.receive(pkt, now)
        if k % 16 == 15:               # just before each 2 s tick
            seen.append(e.services[(17, A(VIP), 53)].stats.rates())
    # Worked by hand: 16 packets (1600 bytes) per period.
    assert [r[1] for r in seen[1:]] == [2, 3, 5, 5]
    assert [r[3] for r in seen[1:]] == [200, 350, 462, 547]
    assert seen[0] == (0, 0, 0, 0, 0)
    # One connection, in the first period: its scaled rate 1 << 9 enters at a quarter
    # (128) and decays by a quarter each period after; decoded it never reaches 1.
    assert [r[0] for r in seen[1:]] == [0, 0, 0, 0]
    assert e.services[(17, A(VIP), 53)].stats.cps == 128 - 32 - 24 - 18 - 14


def test_zero_restarts_counters_and_rates():
    e = director()
    e.receive(c("S"), 1.0)
    e.expire(10.0)
    st = e.services[(6, A(VIP), 80)].stats
    assert st.shown()[:2] == (1, 1) and st.cps > 0
    e.zero()
    assert st.shown() == (0, 0, 0, 0, 0) and st.rates() == (0, 0, 0, 0, 0)


def test_listed_counters_lag_until_the_estimator_tick():
    """6.1 listings read kstats, which only estimation_timer refreshes (every 2 s)."""
    e = director()                       # the clock starts at the first packet: ticks at 3, 5, ...
    e.receive(c("S"), 1.0)
    st = e.services[(6, A(VIP), 80)].stats
    assert st.shown() == (0, 0, 0, 0, 0) and st.counters()[:2] == (1, 1)
    e.expire(3.0)
    assert st.shown()[:2] == (1, 1)
    e.receive(c("A"), 3.5)
    e.zero()                              # the zero point is the last snapshot ...
    e.expire(5.0)
    assert st.shown()[:2] == (0, 1)       # ... so the ACK after it still shows


def test_without_run_estimation_listings_stand_still():
    e = director(run_estimation=0)
    e.receive(c("S"), 1.0)
    e.expire(30.0)
    st = e.services[(6, A(VIP), 80)].stats
    assert st.shown() == (0, 0, 0, 0, 0) and st.rates() == (0, 0, 0, 0, 0)


def test_a_long_quiet_gap_costs_little_and_rates_fall_to_zero(monkeypatch):
    e = director()
    for k in range(50):
        e.receive(c("S", sport=1000 + k), 1.0 + k * 0.1)
    e.expire(7.0)
    st = e.services[(6, A(VIP), 80)].stats
    assert st.rates()[0] > 0
    ticks = []
    real = e._estimate
    monkeypatch.setattr(e, "_estimate", lambda: (ticks.append(1), real()))
    e.expire(1.7e9)                      # decades of 2 s ticks ...
    assert len(ticks) <= 300             # ... but only the ones that can change a rate
    assert st.rates() == (0, 0, 0, 0, 0) and st.shown()[0] == 50
    assert e.next_deadline() > 1.7e9 - 2.0
