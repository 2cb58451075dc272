"""Connection sync (lvs/syncmsg.py, lvs/sync.py): the kernel's wire format,
byte for byte, the master's send rules and the backup's install.

The golden messages are assembled by hand from ip_vs_sync.c's structs
(struct ip_vs_sync_mesg, ip_vs_sync_v4/v6, ip_vs_sync_mesg_v0,
ip_vs_sync_conn_v0); every expected value names the kernel function it
comes from.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy.all")
from scapy.layers.inet import IP, TCP  # noqa: E402

from lvs import adm, syncmsg  # noqa: E402
from lvs.engine import Engine  # noqa: E402
from lvs.syncmsg import SyncEntry, decode, encode  # noqa: E402

VIP = "203.0.113.200"
RS1, RS2 = "192.0.2.11", "192.0.2.12"
CLIENT = "198.51.100.7"
T0 = 1000.0


def A(text):
    return bytes(int(x) for x in text.split("."))


def H(text):
    """Bytes from hex, with '#' comments."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()).replace(" ", ""))


# A TCP connection 198.51.100.7:40000 -> 203.0.113.200:80 -> 192.0.2.11:80, NAT, ESTABLISHED.
ENTRY = SyncEntry(6, 0x0000, 1, A(CLIENT), 40000, A(VIP), 80, A(RS1), 80, 0, 900)
ENTRY_V1 = H("""
    00 06 0024                   # type 0 (IPv4), protocol TCP, ver_size: version 0, 36 bytes
    00000000                     # flags: MASQ, active
    0001 9c40                    # state ESTABLISHED, cport 40000
    0050 0050                    # vport 80, dport 80
    00000000                     # fwmark
    00000384                     # timeout 900 s
    c6336407 cb0071c8 c000020b   # caddr vaddr daddr
""")


def test_v1_message_as_the_kernel_lays_it_out():
    # ip_vs_sync_buff_create: reserved 0, syncid, size, nr_conns, version 1, spare 0.
    message = H("00 07 002c 01 01 0000") + ENTRY_V1
    assert encode([ENTRY], syncid=7) == [message]
    d = decode(message, syncid=7)
    assert d.version == 1 and d.dropped is None and d.skipped == []
    # ip_vs_proc_sync_conn: flags masked by IP_VS_CONN_F_BACKUP_MASK, | IP_VS_CONN_F_SYNC.
    assert d.entries == [ENTRY._replace(flags=0x0020)]


def test_v1_entries_with_options_are_padded_to_four_bytes():
    # ip_vs_sync_conn: sequence data is option 1 (24 bytes, network order) after the
    # addresses; ver_size counts it (36 + 2 + 24 = 62); the next entry starts 2 bytes on.
    seq = ENTRY._replace(flags=0x0600, in_seq=(1, 2, 3), out_seq=(4, 5, 6))
    second = ENTRY._replace(cport=40001, state=4, timeout=120)
    body1 = (H("00 06 003e 00000600") + ENTRY_V1[8:]
             + H("01 18 00000001 00000002 00000003 00000004 00000005 00000006"))
    body2 = H("00 06 0024 00000000 0004 9c41 0050 0050 00000000 00000078") + ENTRY_V1[24:]
    message = H("00 00") + (8 + 62 + 2 + 36).to_bytes(2, "big") + H("02 01 0000") + body1 + H("0000") + body2
    assert encode([seq, second]) == [message]
    d = decode(message)
    assert [e.cport for e in d.entries] == [40000, 40001]
    assert d.entries[0].in_seq == (1, 2, 3) and d.entries[0].out_seq == (4, 5, 6)


def test_v1_ipv6_entry():
    # struct ip_vs_sync_v6: type bit 0 set, three 16-byte addresses, 72 bytes.
    c, v, r = (bytes.fromhex("20010db8" + "00" * 11 + n) for n in ("07", "c8", "0b"))
    e = SyncEntry(17, 0x0003, 0, c, 5000, v, 53, r, 53, 0, 300, ipv6=True)
    (message,) = encode([e], syncid=1)
    assert len(message) == 8 + 72
    assert message[8:12] == H("01 11 0048")
    assert message[32:48] == c and message[64:80] == r
    assert decode(message).entries == [e._replace(flags=0x0023)]


def test_v0_message_as_the_kernel_lays_it_out():
    # ip_vs_sync_mesg_v0 (nr_conns, syncid, size) and ip_vs_sync_conn_v0: no fwmark,
    # no timeout, flags and state in 16 bits each, after the addresses.
    message = H("01 07 001c"
                "00 06 9c40 0050 0050 c6336407 cb0071c8 c000020b 0000 0001")
    assert encode([ENTRY], syncid=7, version=0) == [message]
    d = decode(message, syncid=7)
    assert d.version == 0
    # v0 entries get no timeout and no fwmark (ip_vs_process_message_v0).
    assert d.entries == [ENTRY._replace(flags=0x0020, timeout=0)]


def test_v0_sequence_data_is_host_order():
    # The kernel memcpy()s cp->sync_conn_opt: little-endian on x86.
    e = ENTRY._replace(flags=0x0400, in_seq=(1, 2, 3), out_seq=(0, 0, 0))
    (message,) = encode([e], version=0)
    assert len(message) == 4 + 48
    assert message[28:40] == H("01000000 02000000 03000000")
    assert decode(message).entries[0].in_seq == (1, 2, 3)


def test_messages_are_cut_at_sync_maxlen():
    # ip_vs_sync_conn: an entry that does not fit sends the buffer; its room is sync_maxlen.
    entries = [ENTRY._replace(cport=40000 + i) for i in range(100)]
    messages = encode(entries, maxlen=1472)
    assert [len(m) for m in messages] == [8 + 40 * 36, 8 + 40 * 36, 8 + 20 * 36]
    assert [e.cport for m in messages for e in decode(m).entries] == [e.cport for e in entries]


def test_the_one_byte_count_wraps_as_the_kernel_s():
    # nr_conns is a __u8: 300 entries in one 65507-byte message say 44.
    entries = [ENTRY._replace(cport=i) for i in range(300)]
    (message,) = encode(entries, maxlen=65507)
    assert message[4] == 300 % 256
    assert len(decode(message).entries) == 44


@pytest.mark.parametrize("message, reason, kept", [
    (H("0007"), "sync_short", 0),                                   # below a v0 header
    (H("00 07 0030 01 01 0000") + ENTRY_V1, "sync_bad_size", 0),    # size says 48, datagram 44
    # Two said, one there: the first is applied before the kernel finds out.
    (H("00 07 002c 02 01 0000") + ENTRY_V1, "sync_truncated_entry", 1),
    (H("00 07 002c 01 01 0000") + ENTRY_V1[:2] + H("1024") + ENTRY_V1[4:], "sync_bad_entry_version", 0),
    (H("00 07 002c 01 01 0000") + H("02") + ENTRY_V1[1:], "sync_bad_entry_type", 0),
    (H("00 07 002c 01 01 0000") + ENTRY_V1[:2] + H("0020") + ENTRY_V1[4:], "sync_truncated_entry", 0),
    (H("00 07 0030 01 01 0000") + ENTRY_V1[:2] + H("0028") + ENTRY_V1[4:] + H("0105abcd"),
     "sync_bad_option", 0),                                         # option longer than the entry
    (H("00 07 0030 01 01 0000") + ENTRY_V1[:2] + H("0028") + ENTRY_V1[4:] + H("0102abcd"),
     "sync_bad_seq_option", 0),                                     # sequence data of 2 bytes
    (H("02 07 001c") + H("00 06 9c40 0050 0050 c6336407 cb0071c8 c000020b 0000 0001"),
     "sync_truncated_entry", 1),                                    # v0: two said, one there
])
def test_malformed_messages_are_dropped_by_name(message, reason, kept):
    d = decode(message, syncid=7)
    assert d.dropped == reason and len(d.entries) == kept


def test_a_foreign_syncid_is_ignored_and_syncid_zero_takes_all():
    message = encode([ENTRY], syncid=7)[0]
    assert decode(message, syncid=8).dropped == "sync_foreign_syncid"
    assert len(decode(message, syncid=0).entries) == 1


def test_unknown_options_mandatory_skip_the_entry_optional_ones_are_passed():
    # ip_vs_proc_sync_conn: an unknown option without IPVS_OPT_F_PARAM (0x40) skips
    # this entry (retc 20) and the message goes on; with it, the option is skipped.
    def with_option(ptype):
        body = H("00 06 0028") + ENTRY_V1[4:] + bytes((ptype, 2)) + H("abcd")
        return body
    for ptype, installed in ((0x05, 1), (0x45, 2)):
        bodies = with_option(ptype) + ENTRY_V1
        message = H("00 00") + (8 + len(bodies)).to_bytes(2, "big") + H("02 01 0000") + bodies
        d = decode(message)
        assert len(d.entries) == installed and d.dropped is None
        assert d.skipped == ([] if installed == 2 else ["sync_unknown_option"])


def test_bad_states_and_protocols_skip_one_entry():
    bad_state = ENTRY._replace(state=11)           # TCP has 11 states (0..10)
    sctp = ENTRY._replace(protocol=132)
    d = decode(encode([bad_state, sctp, ENTRY])[0])
    assert d.skipped == ["sync_bad_state", "sync_bad_protocol"] and len(d.entries) == 1
    template = ENTRY._replace(flags=0x1000, state=7, protocol=0)   # templates: not checked
    assert len(decode(encode([template])[0]).entries) == 1


def test_persistence_engine_data_needs_the_engine():
    # ip_vs_conn_fill_param_sync: pe data with an unknown (or no) engine name: skipped.
    e = ENTRY._replace(flags=0x1000, pe_data=b"call-id", pe_name=b"sip")
    d = decode(encode([e])[0])
    assert d.skipped == ["sync_no_pe"]
    assert decode(encode([e])[0], known_pe=("sip",)).entries[0].pe_data == b"call-id"


# ---------------------------------------------------------------- properties

addresses = st.binary(min_size=4, max_size=4)
entries = st.builds(
    SyncEntry, st.sampled_from([6, 17]), st.integers(0, 0xFFFF) | st.just(0x1000),
    st.integers(0, 0), addresses, st.integers(0, 0xFFFF), addresses, st.integers(0, 0xFFFF),
    addresses, st.integers(0, 0xFFFF), st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1),
    st.none(), st.none())


def normal(e, version):
    flags = (e.flags | 0x0020) & ~0x0040 if version == 0 else (e.flags & syncmsg.IP_VS_CONN_F_BACKUP_MASK) | 0x20
    e = e._replace(flags=flags)
    if e.flags & syncmsg.IP_VS_CONN_F_SEQ_MASK:
        e = e._replace(in_seq=e.in_seq or (0, 0, 0), out_seq=e.out_seq or (0, 0, 0))
    if version == 0:
        e = e._replace(flags=e.flags & 0xFFFF, fwmark=0, timeout=0)
    return e


@given(st.lists(entries, max_size=80), st.integers(0, 255), st.sampled_from([0, 1]),
       st.integers(60, 9000))
@settings(max_examples=150, deadline=None)
def test_round_trip(es, syncid, version, maxlen):
    messages = encode(es, syncid=syncid, version=version, maxlen=maxlen)
    got = []
    for m in messages:
        d = decode(m, syncid=syncid)
        assert d.dropped is None and d.skipped == [] and d.version == version
        got += d.entries
    assert got == [normal(e, version) for e in es]


@given(st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_random_bytes_never_raise(data):
    d = decode(data)
    for e in d.entries:
        assert len(e.caddr) == len(e.vaddr) == len(e.daddr) in (4, 16)


@given(st.lists(entries, min_size=1, max_size=5),
       st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.integers(0, 400))
@settings(max_examples=300, deadline=None)
def test_mutated_messages_never_raise(es, flips, cut):
    message = bytearray(encode(es)[0])
    for at, value in flips:
        if at < len(message):
            message[at] = value
    for data in (bytes(message), bytes(message[:cut])):
        decode(data)
        eng = backup_engine()
        eng.sync_receive(data, T0)        # nothing a datagram holds raises
        assert eng.drops["internal_error"] == 0


# ---------------------------------------------------------------- engines

def lvsadm(eng, *args):
    out, err, status = adm.run(eng, list(args))
    assert status == 0, (args, err)
    return out


def master_engine(*extra_rules, **config):
    eng = Engine(seed=1)
    for name, value in config.items():
        eng.config.set(name, value)
    lvsadm(eng, "-A", "-t", VIP + ":80", "-s", "rr", *extra_rules)
    lvsadm(eng, "-a", "-t", VIP + ":80", "-r", RS1 + ":80", "-m")
    lvsadm(eng, "-a", "-t", VIP + ":80", "-r", RS2 + ":80", "-m")
    lvsadm(eng, "--start-daemon", "master", "--mcast-interface", "eth0", "--syncid", "7")
    return eng


def backup_engine(method="-m", syncid="7", extra_rules=()):
    eng = Engine(seed=2)
    lvsadm(eng, "-A", "-t", VIP + ":80", "-s", "rr", *extra_rules)
    lvsadm(eng, "-a", "-t", VIP + ":80", "-r", RS2 + ":80", method)
    lvsadm(eng, "-a", "-t", VIP + ":80", "-r", RS1 + ":80", method)
    lvsadm(eng, "--start-daemon", "backup", "--mcast-interface", "eth0", "--syncid", syncid)
    return eng


def tcp(sport, flags, seq=1000, payload=b"", src=CLIENT, dst=VIP, dport=80):
    return bytes(IP(src=src, dst=dst, ttl=64) / TCP(sport=sport, dport=dport, flags=flags, seq=seq)
                 / payload)


def handshake(eng, cport=40000, t=T0):
    """SYN, ACK and a data segment from the client: the third packet is synced."""
    for i, flags in enumerate(["S", "A", "PA"]):
        eng.receive(tcp(cport, flags, 1000 + i, b"x" if flags == "PA" else b""), t)


def relay(master, backup, now):
    """What the master sends by `now`, heard by the backup."""
    for _, m in master.sync_take(now):
        backup.sync_receive(m, now)


def sent_entries(eng, now):
    out = []
    for _, m in eng.sync_take(now):
        d = decode(m, syncid=7)
        assert d.dropped is None
        out += d.entries
    return out


def test_master_syncs_at_the_third_packet_then_every_fiftieth():
    # ip_vs_sync_conn_needed with sync_threshold "3 50": SYN (SYN_RECV: not a sync
    # state), ACK (ESTABLISHED, a change, but pkts 2 is not 3), data (pkts 3).
    eng = master_engine()
    eng.receive(tcp(40000, "S"), T0)
    eng.receive(tcp(40000, "A", 1001), T0 + 0.01)
    assert eng.sync_master.bufs == [None]
    eng.receive(tcp(40000, "PA", 1001, b"x"), T0 + 0.02)
    assert eng.sync_deadline() == T0 + 0.02 + 2.0          # IPVS_SYNC_FLUSH_TIME
    assert eng.sync_take(T0 + 1.0) == []
    (e,) = sent_entries(eng, T0 + 2.02)
    assert (e.state, e.timeout, e.cport, e.daddr) == (1, 900, 40000, A(RS2))   # rr: newest first
    for i in range(49):
        eng.receive(tcp(40000, "PA", 1002 + i, b"x"), T0 + 3)
    assert eng.sync_master.bufs == [None]                      # pkts 4..52
    eng.receive(tcp(40000, "PA", 2000, b"x"), T0 + 3)       # pkts 53: 53 % 50 == 3
    assert len(sent_entries(eng, T0 + 6)) == 1
    # A FIN moves the state (CLOSE_WAIT): sent at once, whatever the count.
    eng.receive(tcp(40000, "FA", 2001), T0 + 7)
    (e,) = sent_entries(eng, T0 + 10)
    assert e.state == 7 and e.timeout == 60


def test_fast_path_and_general_path_sync_the_same():
    results = []
    for fast in (True, False):
        eng = master_engine()
        eng.set_fastpath(fast)
        for i, flags in enumerate(["S", "A"] + ["PA"] * 120):
            eng.receive(tcp(40000, flags, 1000 + i, b"x" if flags == "PA" else b""), T0 + i * 0.001)
        results.append(eng.sync_take(T0 + 10))
    assert results[0] == results[1] and len(decode(results[0][0][1]).entries) == 3


def test_templates_go_with_their_connections():
    # v1 ip_vs_sync_conn: whether or not the connection is sent, its template is
    # considered, and a template always passes ip_vs_sync_conn_needed without a
    # refresh period: it goes with every packet of every connection it controls.
    eng = master_engine("-p", "300")
    handshake(eng)
    sent = sent_entries(eng, T0 + 2)
    assert [bool(e.flags & 0x1000) for e in sent] == [True, True, False, True]
    template, conn = sent[0], sent[2]
    assert template.cport == 0 and template.timeout == 300 and conn.daddr == template.daddr
    # sync_persist_mode 1: the connections of a persistent service are not sent.
    eng = master_engine("-p", "300", sync_persist_mode=1)
    handshake(eng)
    assert [bool(e.flags & 0x1000) for e in sent_entries(eng, T0 + 2)] == [True, True, True]
    # With a refresh period, a template is sent again only when its timer moved enough.
    eng = master_engine("-p", "300", sync_refresh_period=60)
    for i, flags in enumerate(["S", "A"] + ["PA"] * 10):
        eng.receive(tcp(40000, flags, 1000 + i, b"x" if flags == "PA" else b""), T0 + i)
    assert [bool(e.flags & 0x1000) for e in sent_entries(eng, T0 + 20)] == [True, False]


def test_sync_version_0_sends_v0_and_refresh_period_rules():
    eng = master_engine(sync_version=0)
    handshake(eng)
    ((_, m),) = eng.sync_take(T0 + 2)
    assert m[:4] == H("01 07 001c") and decode(m).version == 0
    # sync_period 0 and a refresh period: sent when the timer moved by 10 s
    # (min of the refresh period and max(timeout/2, 10 s) would be 10 s here...)
    eng = master_engine(sync_threshold="3 0", sync_refresh_period=10)
    times = []
    for i, flags in enumerate(["S", "A"] + ["PA"] * 40):
        t = T0 + i
        eng.receive(tcp(40000, flags, 1000 + i, b"x" if flags == "PA" else b""), t)
        if eng.sync_master.bufs[0] is not None:
            times.append(i)
            eng.sync_take(t + 2.0)
    # ESTABLISHED at packet 1 (forced, refresh applies: the timer moved from the
    # creation's); then one sync every 10 s as the timer moves.
    assert times == [1, 11, 21, 31, 41]


def test_backup_installs_without_scheduling_and_forwards_to_the_same_server():
    master = master_engine()
    master.receive(tcp(40000, "S"), T0)          # rr: RS2 first (newest first)
    master.receive(tcp(40000, "A", 1001), T0)
    master.receive(tcp(40000, "PA", 1001, b"x"), T0)
    messages = [m for _, m in master.sync_take(T0 + 2)]
    (cp,) = [c for c in master.conn_list()]
    backup = backup_engine(method="-m")
    for m in messages:
        backup.sync_receive(m, T0 + 2.1)
    listing = lvsadm(backup, "-Lnc").splitlines()
    assert listing[2].split() == ["TCP", "15:00", "ESTABLISHED", CLIENT + ":40000", VIP + ":80",
                                  ".".join(map(str, cp.daddr)) + ":80"]
    assert "ActiveConn" in lvsadm(backup, "-Ln")
    (bc,) = backup.conn_list()
    assert bc.daddr == cp.daddr and bc.dest is not None and bc.flags & 0x0020
    assert bc.dest.activeconns == 1
    # Its next packet goes to that server, not to the backup's own rr choice.
    (out,) = backup.receive(tcp(40000, "PA", 1002, b"y"), T0 + 3)
    assert IP(out.packet).dst == ".".join(map(str, cp.daddr))
    # NAT: the reply direction works at once.
    reply = bytes(IP(src=".".join(map(str, cp.daddr)), dst=CLIENT) / TCP(sport=80, dport=40000, flags="PA"))
    (back,) = backup.receive(reply, T0 + 3)
    assert IP(back.packet).src == VIP
    assert backup.sync_stats["sync_installed"] == 1


def test_backup_takes_its_own_forwarding_method_and_keeps_activity():
    master = master_engine()
    handshake(master)
    backup = backup_engine(method="-g")
    relay(master, backup, T0 + 2)
    (bc,) = backup.conn_list()
    assert bc.flags & 0x7 == 3 and not bc.flags & 0x0100   # DROUTE, active (ip_vs_bind_dest)
    (out,) = backup.receive(tcp(40000, "PA", 1003, b"y"), T0 + 3)
    assert IP(out.packet).dst == VIP                          # DR: the packet is not rewritten


def test_backup_without_the_service_keeps_the_connection_unbound():
    master = master_engine()
    handshake(master)
    backup = Engine()
    lvsadm(backup, "-A", "-u", VIP + ":53")
    lvsadm(backup, "--start-daemon", "backup", "--mcast-interface", "eth0")
    relay(master, backup, T0 + 2)
    (bc,) = backup.conn_list()
    assert bc.dest is None and backup.sync_stats["sync_installed_unbound"] == 1
    # Adding the service later: the next update binds it (ip_vs_try_bind_dest).
    lvsadm(backup, "-A", "-t", VIP + ":80")
    lvsadm(backup, "-a", "-t", VIP + ":80", "-r", RS1 + ":80", "-m")
    lvsadm(backup, "-a", "-t", VIP + ":80", "-r", RS2 + ":80", "-m")
    master.receive(tcp(40000, "FA", 1003), T0 + 3)
    relay(master, backup, T0 + 6)
    # CLOSE_WAIT is not an active state: it comes INACTIVE, and is counted so.
    assert bc.dest is not None and bc.state == 7 and (bc.dest.activeconns, bc.dest.inactconns) == (0, 1)


def test_backup_ignores_another_syncid_and_counts_it():
    master = master_engine()
    handshake(master)
    backup = backup_engine(syncid="8")
    relay(master, backup, T0 + 2)
    assert backup.conn_list() == [] and backup.sync_stats["sync_foreign_syncid"] == 1


def test_backup_updates_state_and_replaces_a_moved_connection():
    backup = backup_engine()
    e = SyncEntry(6, 0, 1, A(CLIENT), 40000, A(VIP), 80, A(RS1), 80, 0, 900)
    backup.sync_receive(encode([e], syncid=7)[0], T0)
    (cp,) = backup.conn_list()
    rs1 = cp.dest
    # Inactive now (FIN_WAIT): moved from the active to the inactive count.
    backup.sync_receive(encode([e._replace(state=4, flags=0x0100, timeout=120)], syncid=7)[0], T0 + 1)
    assert (cp.state, cp.timeout, rs1.activeconns, rs1.inactconns) == (4, 120.0, 0, 1)
    assert lvsadm(backup, "-Lnc").count("FIN_WAIT") == 1
    # An expiry message for a connection already replaced is ignored...
    backup.sync_receive(encode([e._replace(daddr=A(RS2), flags=0x0100)], syncid=7)[0], T0 + 2)
    assert backup.conn_list() == [cp]
    # ... an active one on another server replaces it.
    backup.sync_receive(encode([e._replace(daddr=A(RS2))], syncid=7)[0], T0 + 3)
    backup.expire(T0 + 3)
    (new,) = backup.conn_list()
    assert new.daddr == A(RS2) and rs1.inactconns == 0


def test_backup_template_keeps_persistence_after_takeover():
    master = master_engine("-p", "300")
    handshake(master)
    (conn,) = [c for c in master.conn_list() if not c.flags & 0x1000]
    backup = backup_engine(extra_rules=("-p", "300"))
    relay(master, backup, T0 + 2)
    assert len(backup.conntab.templates) == 1
    # A new connection from the same client goes to the template's server.
    (out,) = backup.receive(tcp(40001, "S"), T0 + 5)
    assert IP(out.packet).dst == ".".join(map(str, conn.daddr))


def test_udp_and_v0_timeouts_on_the_backup():
    backup = backup_engine()
    lvsadm(backup, "-A", "-u", VIP + ":53")
    lvsadm(backup, "-a", "-u", VIP + ":53", "-r", RS1 + ":53", "-m")
    udp = SyncEntry(17, 0, 0, A(CLIENT), 5000, A(VIP), 53, A(RS1), 53, 0, 300)
    tcp_e = ENTRY._replace(state=5)      # TIME_WAIT
    template = ENTRY._replace(flags=0x1000, cport=0, state=1)
    backup.sync_receive(encode([udp, tcp_e, template], syncid=7, version=0)[0], T0)
    # ip_vs_proc_conn with timeout 0: the protocol's timeout for the state; 3 min for templates.
    got = sorted((c.protocol, bool(c.flags & 0x1000), c.timeout) for c in backup.conn_list())
    assert got == [(6, False, 120.0), (6, True, 180.0), (17, False, 300.0)]


def test_backup_only_lets_client_packets_by_but_translates_nat_replies():
    # sysctl_backup_only is checked in ip_vs_in_hook and ip_vs_forward_icmp only.
    backup = backup_engine()
    backup.sync_receive(encode([ENTRY], syncid=7)[0], T0)
    backup.config.set("backup_only", 1)
    assert backup.receive(tcp(40000, "PA", 1001, b"x"), T0) == []
    assert backup.receive(tcp(40001, "S"), T0) == []
    assert backup.drops["backup_only"] == 2
    reply = bytes(IP(src=RS1, dst=CLIENT) / TCP(sport=80, dport=40000, flags="PA"))
    (back,) = backup.receive(reply, T0)                     # ip_vs_out_hook: still ours
    assert IP(back.packet).src == VIP
    lvsadm(backup, "--stop-daemon", "backup")
    assert len(backup.receive(tcp(40001, "S"), T0)) == 1


def test_sequence_data_from_a_kernel_master_is_kept_and_sent_on():
    # ip_vs_proc_conn keeps opt->in_seq/out_seq; a master sends them (FTP NAT deltas).
    director = backup_engine()
    e = ENTRY._replace(flags=0x0600, in_seq=(111, 5, 3), out_seq=(222, 7, 1))
    director.sync_receive(encode([e], syncid=7)[0], T0)
    lvsadm(director, "--start-daemon", "master", "--mcast-interface", "eth0", "--syncid", "7")
    director.receive(tcp(40000, "FA", 1001), T0 + 1)      # a state change: sent at once
    (sent,) = sent_entries(director, T0 + 4)
    assert (sent.in_seq, sent.out_seq, sent.state) == ((111, 5, 3), (222, 7, 1), 7)


def test_a_director_can_be_master_and_backup_at_once():
    eng = master_engine()
    lvsadm(eng, "--start-daemon", "backup", "--mcast-interface", "eth0", "--syncid", "9")
    assert lvsadm(eng, "-L", "--daemon").splitlines() == [
        "master sync daemon (mcast=eth0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)",
        "backup sync daemon (mcast=eth0, syncid=9, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)"]
    peer = SyncEntry(6, 0, 1, A("198.51.100.9"), 41000, A(VIP), 80, A(RS2), 80, 0, 900)
    eng.sync_receive(encode([peer], syncid=9)[0], T0)
    assert len(eng.conn_list()) == 1


def test_sysctl_checks():
    eng = Engine()
    for bad in ("50 3", "-1 50", "3 3"):
        with pytest.raises(Exception):
            eng.config.set("sync_threshold", bad)
    eng.config.set("sync_threshold", "10 0")
    assert eng.config.sync_threshold == (10, 0)


# ---------------------------------------------------------------- the kernel's own

def _kernel_runs():
    import json
    import os
    with open(os.path.join(os.path.dirname(__file__), "data", "sync-kernel.json")) as f:
        return json.load(f)["runs"]


KERNEL_RUNS = _kernel_runs()


@pytest.mark.parametrize("run", KERNEL_RUNS, ids=[r["name"] for r in KERNEL_RUNS])
def test_kernel_datagrams_decode_and_encode_byte_for_byte(run):
    # Every datagram the real master sent: our reading agrees with an independent
    # one, and our encoder, given those entries, writes the very same bytes.
    version = run["sync_version"]
    for dg in run["datagrams"]:
        payload = bytes.fromhex(dg["payload_hex"])
        expected = [SyncEntry(e["protocol"], e["flags"], e["state"], A(e["caddr"]), e["cport"],
                              A(e["vaddr"]), e["vport"], A(e["daddr"]), e["dport"],
                              e.get("fwmark", 0), e.get("timeout", 0)) for e in dg["entries"]]
        assert encode(expected, syncid=7, version=version, maxlen=65507) == [payload]
        d = decode(payload, syncid=7)
        assert d.version == version and d.dropped is None and d.skipped == []
        assert d.entries == [normal(e, version) for e in expected]
        assert dg["ip_ttl"] >= 1 and dg["ip_dst"].startswith("224.0.0.")


def test_kernel_messages_are_cut_where_ours_are():
    # run3: --sync-maxlen 200 -> messages of at most 200 bytes, as full as they get.
    run = [r for r in KERNEL_RUNS if "opts" in r["name"]][0]
    assert "maxlen=200" in run["daemon"]["stdout"]
    entries = []
    for dg in run["datagrams"]:
        entries += decode(bytes.fromhex(dg["payload_hex"])).entries
        assert len(bytes.fromhex(dg["payload_hex"])) <= 200
    full = [len(bytes.fromhex(dg["payload_hex"])) for dg in run["datagrams"]]
    assert max(full) == 8 + 5 * 36                       # five 36-byte entries fill 200


def _kernel_file():
    import json
    import os
    with open(os.path.join(os.path.dirname(__file__), "data", "sync-kernel.json")) as f:
        return json.load(f)


def _listing_rows(text):
    """-Lnc's rows without the expiry, sorted; and the expiries (seconds) by row."""
    rows = {}
    for line in text.splitlines()[2:]:
        f = line.split()
        if f:
            minutes, seconds = f[1].split(":")
            rows.setdefault(tuple(f[:1] + f[2:]), []).append(int(minutes) * 60 + int(seconds))
    return {k: sorted(v) for k, v in rows.items()}


def test_a_backup_fed_the_kernel_s_datagrams_lists_what_the_kernel_s_backup_listed():
    # The oracle's backup (same services, syncid 7) heard these datagrams at these
    # times; at each snapshot ours must list the same connections, states and
    # expiry, and count the same active and inactive connections per server.
    data = _kernel_file()
    eng = Engine()
    for argv in data["services"]:
        lvsadm(eng, *argv)
    lvsadm(eng, "--start-daemon", "backup", "--mcast-interface", "eth0", "--syncid", "7")
    # The oracle's other backups: bak2 without any service (the connections are
    # kept unbound), bak3 with syncid 9 (it ignores everything).
    bare, other = Engine(), Engine()
    lvsadm(bare, "--start-daemon", "backup", "--mcast-interface", "eth0", "--syncid", "7")
    for argv in data["services"]:
        lvsadm(other, *argv)
    lvsadm(other, "--start-daemon", "backup", "--mcast-interface", "eth0", "--syncid", "9")
    events = []
    for run in data["runs"]:
        events += [(t, 0, bytes.fromhex(dg["payload_hex"]), dg["udp_dport"])
                   for t, dg in zip(run["received"], run["datagrams"])]
        events += [(s["t"], 1, None, s) for s in run["snapshots"]]
    compared = 0
    for t, kind, payload, extra in sorted(events, key=lambda e: (e[0], e[1])):
        eng.expire(t)
        if kind == 0:
            # bak1 followed the master to run3's group and port; bak2 stayed on 8848.
            for e in (eng, bare, other) if extra == 8848 else (eng,):
                e.expire(t)
                e.sync_receive(payload, t)
            continue
        snap = extra
        bare.expire(t)
        assert sorted(_listing_rows(adm.run(bare, ["-Lnc"])[0])) == sorted(_listing_rows(snap["bak2_Lnc"]))
        assert _listing_rows(adm.run(other, ["-Lnc"])[0]) == _listing_rows(snap["bak3_Lnc"]) == {}
        ours, theirs = _listing_rows(adm.run(eng, ["-Lnc"])[0]), _listing_rows(snap["Lnc"])
        assert sorted(ours) == sorted(theirs), snap["t"]
        # The kernel's listing ran a moment after the snapshot's time (a slow VM):
        # its expiries are up to 2 s below ours, never above.
        for row, expiries in ours.items():
            assert all(0 <= a - b <= 2 for a, b in zip(expiries, theirs[row])), (row, expiries, theirs[row])
        assert adm.run(eng, ["-Ln"])[0] == snap["Ln"], snap["t"]
        compared += 1
    assert compared == 8 and eng.sync_stats["sync_installed"] > 50


def test_daemon_commands_answer_as_ipvsadm_against_the_kernel():
    data = _kernel_file()["daemon_cli"]
    eng = Engine()
    eng.interfaces = {"lo": 65536, "dum0": 9000, "dum1": 1500}
    for c in data["commands"]:
        assert adm.run(eng, c["argv"]) == (c["stdout"], c["stderr"], c["rc"]), c["argv"]


def test_a_full_table_refuses_new_connections_and_synced_ones():
    # ip_vs_conn_new failing: the packet is dropped (*ignored = -1: no port
    # unreachable); the backup's "add new conn. failed". What is in goes on.
    eng = master_engine()
    eng.conntab.limit = 2
    assert len(eng.receive(tcp(40000, "S"), T0)) == 1
    assert len(eng.receive(tcp(40001, "S"), T0)) == 1
    assert eng.receive(tcp(40002, "S"), T0) == [] and eng.drops["table_full"] == 1
    assert len(eng.receive(tcp(40000, "A", 1001), T0)) == 1        # established ones go on
    backup = backup_engine()
    backup.conntab.limit = 1
    es = [ENTRY._replace(cport=40000 + i) for i in range(3)]
    backup.sync_receive(encode(es, syncid=7)[0], T0)
    assert len(backup.conn_list()) == 1 and backup.sync_stats["sync_table_full"] == 2


def test_the_kernel_s_backup_and_ours_read_the_same_datagrams_the_same_way():
    # A kernel backup was sent datagrams from a pylvs master (v1 and v0) and crafted
    # bad ones (tests/data/sync-interop.json); ours, fed the same, lists the same
    # connections, states and counts. Expiries: the kernel listed 1.5 s later.
    import json
    import os
    with open(os.path.join(os.path.dirname(__file__), "data", "sync-interop.json")) as f:
        data = json.load(f)
    for case in data["cases"]:
        eng = Engine()
        for argv in data["rules"]:
            lvsadm(eng, *argv)
        lvsadm(eng, "--start-daemon", "backup", "--mcast-interface", "eth0", "--syncid", "7")
        for hexed in case["datagrams"]:
            eng.sync_receive(bytes.fromhex(hexed), T0)
        eng.expire(T0 + 1.5)
        ours, theirs = _listing_rows(adm.run(eng, ["-Lnc"])[0]), _listing_rows(case["kernel_Lnc"])
        assert sorted(ours) == sorted(theirs), case["name"]
        for row, expiries in ours.items():
            assert all(0 <= a - b <= 2 for a, b in zip(expiries, theirs[row])), (case["name"], row)
        assert adm.run(eng, ["-Ln"])[0] == case["kernel_Ln"], case["name"]


def test_a_flood_of_messages_is_counted_and_bounded_by_the_table():
    # 3000 datagrams, valid, mutated and random, from many clients: every one counted
    # as received, every refusal by name, the table never past its limit.
    import random
    rnd = random.Random(5)
    backup = backup_engine()
    backup.conntab.limit = 200
    refusals = 0
    for i in range(3000):
        es = [ENTRY._replace(caddr=bytes([198, 51, 100, rnd.randrange(256)]), cport=rnd.randrange(65536))
              for _ in range(rnd.randrange(1, 6))]
        data = bytearray(encode(es, syncid=7)[0])
        kind = i % 3
        if kind == 1:
            for _ in range(rnd.randrange(1, 4)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        elif kind == 2:
            data = bytearray(rnd.getrandbits(8) for _ in range(rnd.randrange(60)))
        d = decode(bytes(data), syncid=7)
        refusals += len(d.skipped) + (d.dropped is not None)
        backup.sync_receive(bytes(data), T0 + i * 0.001)
    stats = backup.sync_stats
    assert stats["sync_messages_received"] == 3000
    assert sum(v for k, v in stats.items() if k in syncmsg.REASONS) == refusals > 1000
    assert len(backup.conn_list()) == 200 and stats["sync_table_full"] > 0
    assert backup.drops["internal_error"] == 0


def test_sync_ports_spread_connections_over_ports_one_each():
    # start_sync_thread reads sync_ports (a power of two) when no daemon runs yet; each
    # connection goes out on one port (select_master_thread_id), always the same.
    eng = Engine(seed=1)
    with pytest.raises(Exception):
        eng.config.set("sync_ports", 3)
    eng.config.set("sync_ports", 4)
    lvsadm(eng, "-A", "-t", VIP + ":80", "-s", "rr")
    lvsadm(eng, "-a", "-t", VIP + ":80", "-r", RS1 + ":80", "-m")
    lvsadm(eng, "--start-daemon", "master", "--mcast-interface", "eth0")
    eng.config.set("sync_ports", 1)                 # read once: no effect now
    assert eng.sync_ports == 4
    for cport in range(40000, 40008):
        handshake(eng, cport)
    sent = eng.sync_take(T0 + 2)
    by_port = {}
    for tid, m in sent:
        for e in decode(m).entries:
            by_port.setdefault(e.cport, set()).add(tid)
    assert sorted({tid for tid, _ in sent}) == [0, 1, 2, 3]
    assert all(len(t) == 1 for t in by_port.values()) and len(by_port) == 8


def test_ipv6_connections_sync_and_a_backup_forwards_them_to_the_same_server():
    """ip_vs_sync_conn for AF_INET6 (struct ip_vs_sync_v6), installed by the backup
    (ip_vs_proc_conn); version 0 carries no IPv6 (ip_vs_sync_conn_v0 returns)."""
    import socket
    from scapy.layers.inet6 import IPv6
    from lvs.control import DestSpec, ServiceSpec
    a6 = lambda t: socket.inet_pton(socket.AF_INET6, t)  # noqa: E731
    vip, rs1, rs2, client = "2001:db8::200", "2001:db8:2::11", "2001:db8:2::12", "2001:db8:100::7"

    def director(seed, state, order):
        eng = Engine(seed=seed)
        svc = ServiceSpec(protocol=6, addr=a6(vip), port=80, sched_name="rr")
        eng.add_service(svc)
        for rs in order:
            eng.add_dest(svc, DestSpec(addr=a6(rs), port=80, conn_flags=0))
        lvsadm(eng, "--start-daemon", state, "--mcast-interface", "eth0", "--syncid", "7")
        return eng

    def seg(flags, seq, payload=b""):
        return bytes(IPv6(src=client, dst=vip) / TCP(sport=41000, dport=80, flags=flags, seq=seq)
                     / payload)

    master = director(1, "master", (rs1, rs2))
    for i, flags in enumerate(["S", "A", "PA"]):
        master.receive(seg(flags, 1000 + i, b"x" if flags == "PA" else b""), T0)
    (cp,) = master.conn_list()
    entries = sent_entries(master, T0 + 2)
    assert [(e.ipv6, e.caddr, e.daddr) for e in entries] == [(True, a6(client), cp.daddr)]
    backup = director(2, "backup", (rs2, rs1))      # its own rr would pick the other
    for m in syncmsg.encode(entries, syncid=7):
        backup.sync_receive(m, T0 + 2.1)
    (bc,) = backup.conn_list()
    assert (bc.caddr, bc.daddr, backup.state_name(bc)) == (a6(client), cp.daddr, "ESTABLISHED")
    (out,) = backup.receive(seg("PA", 1003, b"y"), T0 + 3)
    assert IPv6(out.packet).dst == socket.inet_ntop(socket.AF_INET6, cp.daddr)
    v0 = director(3, "master", (rs1,))
    v0.config.set("sync_version", 0)
    for i, flags in enumerate(["S", "A", "PA"]):
        v0.receive(seg(flags, 1000 + i, b"x" if flags == "PA" else b""), T0)
    assert v0.sync_take(T0 + 2) == []
