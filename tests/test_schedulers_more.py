"""The schedulers mh, fo, ovf and twos against the Linux 6.1 sources
(net/netfilter/ipvs/ip_vs_{mh,fo,ovf,twos}.c, lib/siphash.c,
drivers/char/random.c), plus SipHash known answers from lib/test_siphash.c.

As in test_schedulers.py, dests added A, B, C are walked by the kernel in
the order C, B, A (list_add_rcu links a new dest at the head).
"""

import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvs.config import EngineConfig  # noqa: E402
from lvs.control import DestSpec, ServiceSpec  # noqa: E402
from lvs.errors import ConfigError  # noqa: E402
from lvs.flags import (  # noqa: E402
    IP_VS_DEST_F_OVERLOAD, IP_VS_SVC_F_SCHED1, IP_VS_SVC_F_SCHED2,
)
from lvs.registry import scheduler_class  # noqa: E402
from lvs.service import Dest, Service  # noqa: E402
from schedulers import mh as mh_mod  # noqa: E402
from schedulers._hashing import (  # noqa: E402
    hsiphash, hsiphash_1u32, siphash, siphash_1u64, siphash_2u64,
)
from schedulers.mh import HASH1, HASH2, IP_VS_MH_TAB_SIZE, build_table, mh_hashkey  # noqa: E402
from schedulers.twos import Draws, get_random_u32_below  # noqa: E402
from helpers import VIP, Pkt, Rig, ip, seq  # noqa: E402

MH_FALLBACK = IP_VS_SVC_F_SCHED1
MH_PORT = IP_VS_SVC_F_SCHED2
M = IP_VS_MH_TAB_SIZE


def src(a, port=1000, proto=6):
    return Pkt(saddr=ip(a), sport=port, protocol=proto)


class Scripted:
    """Stands in for get_random_u32(): the listed words, in order."""

    def __init__(self, words):
        self.words = list(words)

    def u32(self):
        return self.words.pop(0)


# ================================================================ SipHash

KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)

SIPHASH_VECTORS = [
    0x726fdb47dd0e0e31, 0x74f839c593dc67fd, 0x0d6c8009d9a94f5a,
    0x85676696d7fb7e2d, 0xcf2794e0277187b7, 0x18765564cd99a68d,
    0xcbc9466e58fee3ce, 0xab0200f58b01d137, 0x93f5f5799a932462,
    0x9e0082df0ba9e4b0, 0x7a5dbbc594ddb9f3, 0xf4b32f46226bada7,
    0x751e8fbc860ee5fb, 0x14ea5627c0843d90, 0xf723ca908e7af2ee,
    0xa129ca6149be45e5, 0x3f2acc7f57c29bdb, 0x699ae9f52cbe4794,
    0x4bc1b3f0968dd39c, 0xbb6dc91da77961bd, 0xbed65cf21aa2ee98,
    0xd0f2cbb02e3b67c7, 0x93536795e3a33e88, 0xa80c038ccd5ccec8,
    0xb8ad50c6f649af94, 0xbce192de8a85b8ea, 0x17d835b85bbb15f3,
    0x2f2e6163076bcfad, 0xde4daaaca71dc9a5, 0xa6a2506687956571,
    0xad87a3535c49ef28, 0x32d892fad841c342, 0x7127512f72f27cce,
    0xa7f32346f95978e3, 0x12e0b01abb051238, 0x15e034d40fa197ae,
    0x314dffbe0815a3b4, 0x027990f029623981, 0xcadcd4e59ef40c4d,
    0x9abfd8766a33735c, 0x0e3ea96b5304a7d0, 0xad0c42d6fc585992,
    0x187306c89bc215a9, 0xd4a60abcf3792b95, 0xf935451de4f21df2,
    0xa9538f0419755787, 0xdb9acddff56ca510, 0xd06c98cd5c0975eb,
    0xe612a3cb9ecba951, 0xc766e62cfcadaf96, 0xee64435a9752fe72,
    0xa192d576b245165a, 0x0a8787bf8ecb74b2, 0x81b3e73d20b49b6f,
    0x7fa8220ba3b2ecea, 0x245731c13ca42499, 0xb78dbfaf3a8d83bd,
    0xea1ad565322a1a0b, 0x60e61c23a3795013, 0x6606d7e446282b93,
    0x6ca4ecb15c5f91e1, 0x9f626da15c9625f3, 0xe51b38608ef25f57,
    0x958a324ceb064572,
]

# BITS_PER_LONG == 64: hsiphash is SipHash-1-3 with a 64-bit key.
HSIPHASH_VECTORS = [
    0x050fc4dc, 0x7d57ca93, 0x4dc7d44d, 0xe7ddf7fb, 0x88d38328, 0x49533b67,
    0xc59f22a7, 0x9bb11140, 0x8d299a8e, 0x6c063de4, 0x92ff097f, 0xf94dc352,
    0x57b4d9a2, 0x1229ffa7, 0xc0f95d34, 0x2a519956, 0x7d908b66, 0x63dbd80c,
    0xb473e63e, 0x8d297d1c, 0xa6cce040, 0x2b45f844, 0xa320872e, 0xdae6c123,
    0x67349c8c, 0x705b0979, 0xca9913a5, 0x4ade3b35, 0xef6cd00d, 0x4ab1e1f4,
    0x43c5e663, 0x8c21d1bc, 0x16a7b60d, 0x7a8ff9bf, 0x1f2a753e, 0xbf186b91,
    0xada26206, 0xa3c33057, 0xae3a36a1, 0x7b108392, 0x99e41531, 0x3f1ad944,
    0xc8138825, 0xc28949a6, 0xfaf8876b, 0x9f042196, 0x68b1d623, 0x8b5114fd,
    0xdf074c46, 0x12cc86b3, 0x0a52098f, 0x9d292f9a, 0xa2f41f12, 0x43a71ed0,
    0x73f0bce6, 0x70a7e980, 0x243c6d75, 0xfdb71513, 0xa67d8a08, 0xb7e8f148,
    0xf7a644ee, 0x0f1837f2, 0x4b6694e0, 0xb7bbb3a8,
]


@pytest.mark.parametrize("n", range(64))
def test_siphash_vectors(n):
    data = bytes(range(n))
    assert siphash(data, KEY) == SIPHASH_VECTORS[n]
    assert hsiphash(data, KEY) == HSIPHASH_VECTORS[n]


def test_siphash_word_entry_points():
    # siphash_test_init's fixed-width checks.
    assert siphash_1u64(0x0706050403020100, KEY) == SIPHASH_VECTORS[8]
    assert siphash_2u64(0x0706050403020100, 0x0F0E0D0C0B0A0908, KEY) == SIPHASH_VECTORS[16]
    assert hsiphash_1u32(0x03020100, KEY) == HSIPHASH_VECTORS[4]


@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
@settings(max_examples=50, deadline=None)
def test_hsiphash_1u32_is_hsiphash_of_4_bytes(v, k0, k1):
    # hsiphash(&v, sizeof(v), key) on little-endian x86_64.
    assert hsiphash_1u32(v, (k0, k1)) == hsiphash(v.to_bytes(4, "little"), (k0, k1))


# ================================================================ mh

def test_mh_constants():
    # Kconfig IP_VS_MH_TAB_INDEX default 12 -> primes[12 - 8] = 4093, bits 6;
    # generate_hash_secret is fixed (not get_random_bytes).
    assert M == 4093
    assert mh_mod.IP_VS_MH_TAB_BITS == 6
    assert HASH1 == (2654435761, 2654435761)
    assert HASH2 == (2654446892, 2654446892)


def test_mh_hashkey_is_hsiphash_of_the_u32_sum():
    # v = offset + ntohs(port) + ntohl(addr), hashed as 4 little-endian bytes.
    v = (7 + 80 + 0xC000020B) & 0xFFFFFFFF
    assert mh_hashkey(ip("192.0.2.11"), 80, HASH1, 7) == hsiphash(v.to_bytes(4, "little"), HASH1)
    v = (5 + 0xFFFF + 0xFFFFFFFF) & 0xFFFFFFFF  # wraps in unsigned int
    assert mh_hashkey(ip("255.255.255.255"), 0xFFFF, HASH2, 5) == hsiphash(
        v.to_bytes(4, "little"), HASH2)


class _FakeDest:
    def __init__(self, addr, port, last_weight):
        self.addr, self.port, self.last_weight = addr, port, last_weight


def test_mh_populate_by_hand(monkeypatch):
    # Size 7; list order X, Y. X: offset 3 skip 2 -> prefs 3 5 0 2 4 6 1;
    # Y: offset 3 skip 3 -> prefs 3 6 2 5 1 4 0. Weights 2, 1: gcd 1,
    # rshift 0, turns 2 and 1, claimed in a row per round:
    #   round 1: X 3, X 5, Y 6 (3 taken)
    #   round 2: X 0, X 2, Y 1 (6 2 5 taken)
    #   round 3: X 4 -> full.
    hashes = {("x", HASH1): 3, ("x", HASH2): 1, ("y", HASH1): 3, ("y", HASH2): 2}
    monkeypatch.setattr(mh_mod, "mh_hashkey", lambda a, p, k, o=0: hashes[(a, k)])
    x, y = _FakeDest("x", 0, 2), _FakeDest("y", 0, 1)
    table = build_table([x, y], size=7)
    assert ["X" if d is x else "Y" for d in table] == seq("X Y X X X X Y")
    # A dest added with weight 0 (last_weight 0) has turns 0: no slot at all.
    z = _FakeDest("z", 0, 0)
    hashes[("z", HASH1)] = hashes[("z", HASH2)] = 0
    assert z not in build_table([x, z, y], size=7)
    # No positive last_weight: gcd 0, the table is emptied (ip_vs_mh_reset).
    assert build_table([z], size=7) is None


def _maglev_reference(dests):
    """The Maglev paper's loop, written independently: per round each dest
    takes `turns` entries, each the next unfilled entry of its permutation
    (offset + j * skip) mod M."""
    from math import gcd
    ws = [d.last_weight for d in dests]
    g = 0
    for w in ws:
        if w > 0:
            g = gcd(g, w)
    mw = max(ws) // g
    rshift = max(0, mw.bit_length() - 6)
    turns = [((w // g) >> rshift) or (1 if w else 0) for w in ws]
    perms = []
    for d in dests:
        v = (d.port + int.from_bytes(d.addr, "big")) & 0xFFFFFFFF
        off = hsiphash(v.to_bytes(4, "little"), HASH1) % M
        skip = hsiphash(v.to_bytes(4, "little"), HASH2) % (M - 1) + 1
        perms.append((off, skip))
    nxt = [0] * len(dests)
    table = [None] * M
    filled = 0
    while filled < M:
        for i, d in enumerate(dests):
            for _ in range(turns[i]):
                off, skip = perms[i]
                while True:
                    c = (off + nxt[i] * skip) % M
                    nxt[i] += 1
                    if table[c] is None:
                        break
                nxt[i] -= 1  # the claimed entry stays the cursor (ds->perm = c)
                table[c] = d
                filled += 1
                if filled == M:
                    return table
    return table


def test_mh_table_matches_reference_maglev():
    r = Rig("mh")
    for i, (n, w) in enumerate(zip("ABCDE", (5, 1, 3, 0, 2))):
        r.add(n, w, addr=ip("192.0.2.%d" % (10 + i)), port=8000 + i)
    assert r.sched.table == _maglev_reference(list(r.svc.destinations))


def test_mh_shares_exact_per_round():
    # Turns 1, 2, 3 in order C B A: 6 slots per round, 682 rounds fill 4092,
    # the last slot goes to C, first in the list.
    r = Rig("mh")
    r.add("A", 1)
    r.add("B", 2)
    r.add("C", 3)
    assert r.shares() == {"A": 682, "B": 1364, "C": 2047}
    # gcd: weights 4, 6, 2 are turns 2, 3, 1 -> the same table as 2, 3, 1.
    r2 = Rig("mh")
    r2.add("A", 2)
    r2.add("B", 6)
    r2.add("C", 4)
    r3 = Rig("mh")
    r3.add("A", 1)
    r3.add("B", 3)
    r3.add("C", 2)
    assert r2.table_names() == r3.table_names()
    assert r2.shares() == {"A": 682, "B": 2046, "C": 1365}  # 4092 = 682*6, +1 for C


def test_mh_rshift_and_minimum_one_turn():
    # Weights 1 and 100: gcd 1, fls(100) = 7 > 6 bits -> rshift 1; B's turns
    # 100 >> 1 = 50, A's 1 >> 1 = 0 -> (lw != 0) = 1. Order B A: 51 per
    # round, 80 rounds = 4080, the last 13 slots all go to B.
    r = Rig("mh")
    r.add("A", 1)
    r.add("B", 100)
    assert r.shares() == {"A": 80, "B": 4013}


def test_mh_same_source_same_dest():
    r = Rig("mh")
    for n, w in zip("ABC", (1, 1, 1)):
        r.add(n, w)
    # Lookup = table[hsiphash(ntohl(saddr)) % 4093] (port 0 without mh-port).
    for a in ("198.51.100.7", "198.51.100.8", "198.51.100.9"):
        want = r.names[id(r.sched.table[mh_hashkey(ip(a), 0, HASH1) % M])]
        assert r.picks(5, src(a)) == [want] * 5
        assert r.pick(src(a, port=4242)) == want          # port ignored
    r.overload("A")
    r.overload("A", False)                                # no hook: table unchanged
    assert r.pick(src("198.51.100.7")) == r.names[id(r.sched.table[924])]


def test_mh_removal_disruption():
    # Every slot of the removed dest moves to a survivor; Maglev is only
    # nearly minimal: a few survivor slots change owner too (the rounds
    # restart without the removed dest, shifting later claims).
    for n in (3, 5, 10, 20):
        r = Rig("mh")
        names = [chr(65 + i) for i in range(n)]
        for x in names:
            r.add(x)
        before = r.table_names()
        victim = names[n // 2]
        r.delete(victim)
        after = r.table_names()
        assert victim not in after and None not in after
        moved = sum(1 for b, a in zip(before, after) if b != victim and b != a)
        assert moved <= M * 2 // 100, (n, moved)
        # Survivors keep exact per-round shares: 4093 = q*(n-1) + rem.
        q, rem = divmod(M, n - 1)
        assert sorted(Counter(after).values()) == sorted([q + 1] * rem + [q] * (n - 1 - rem))


def test_mh_table_is_a_function_of_list_and_last_weights():
    r = Rig("mh")
    for x in "ABC":
        r.add(x, 2)
    before = r.table_names()
    r.add("D", 5)
    assert r.table_names() != before
    r.delete("D")                              # D was the head: order restored
    assert r.table_names() == before


def test_mh_weight_zero_edit_keeps_slots_but_unavailable():
    r = Rig("mh")
    r.add("A", 1)
    r.add("B", 1)
    before = r.table_names()
    pkt_b = next(src("198.51.100.%d" % i) for i in range(1, 255)
                 if r.pick(src("198.51.100.%d" % i)) == "B")
    r.edit("B", 0)                             # last_weight stays 1
    assert r.table_names() == before
    assert r.pick(pkt_b) is None               # no fallback: NULL
    r.edit("B", 3)                             # last_weight 3: rebuilt, shares 1:3
    assert r.shares() == {"A": 1023, "B": 3070}  # 1023 rounds of B B B A, +1 B


def test_mh_all_weights_zero_and_empty():
    assert Rig("mh").pick() is None
    r = Rig("mh")
    r.add("A", 0)                              # added with 0: last_weight 0, gcd 0
    assert r.sched.table is None and r.pick() is None
    r.edit("A", 2)
    assert r.shares() == {"A": M}
    r.delete("A")
    assert r.pick() is None


def test_mh_fallback_probes_rehash_with_offset():
    # ip_vs_mh_get_fallback: probe k hashes v + roffset, roffset =
    # (k + ihash) % 4093 -- so the first probe is NOT slot ihash again.
    r = Rig("mh", flags=MH_FALLBACK)
    for x in "ABCD":
        r.add(x)
    a = ip("198.51.100.7")
    ihash = mh_hashkey(a, 0, HASH1) % M
    owner = r.names[id(r.sched.table[ihash])]
    assert r.pick(src("198.51.100.7")) == owner
    r.overload(owner)

    def expected():
        for k in range(M):
            d = r.sched.table[mh_hashkey(a, 0, HASH1, (k + ihash) % M) % M]
            if d.weight > 0 and not d.flags & IP_VS_DEST_F_OVERLOAD:
                return r.names[id(d)]
        return None

    want = expected()
    assert want not in (None, owner)
    assert r.pick(src("198.51.100.7")) == want
    r.edit(want, 0)                            # quiesced: skipped too
    want2 = expected()
    assert want2 not in (None, owner, want)
    assert r.pick(src("198.51.100.7")) == want2
    for x in "ABCD":
        r.overload(x)
    assert r.pick(src("198.51.100.7")) is None
    r2 = Rig("mh")                             # same table without the flag
    for x in "ABCD":
        r2.add(x)
    r2.overload(owner)
    assert r2.pick(src("198.51.100.7")) is None


def test_mh_port_flag():
    r = Rig("mh", flags=MH_PORT)
    for x in "ABC":
        r.add(x)
    a = "198.51.100.7"

    def slot_owner(port):
        return r.names[id(r.sched.table[mh_hashkey(ip(a), port, HASH1) % M])]

    for port in (1000, 1001, 40000):
        assert r.pick(src(a, port)) == slot_owner(port)            # ports[0]: source port
        assert r.pick(src(a, port, proto=17)) == slot_owner(port)  # UDP too
        assert r.pick(src(a, port, proto=1)) == slot_owner(0)      # not TCP/UDP/SCTP: 0
    owners = {r.pick(src(a, p)) for p in range(1000, 1040)}
    assert len(owners) > 1                     # the port spreads one client


def test_mh_engine_integration():
    from lvs.engine import Engine
    eng = Engine()
    spec = ServiceSpec(protocol=6, addr=VIP, port=80, sched_name="mh",
                       flags=MH_FALLBACK | MH_PORT)
    svc = eng.add_service(spec)
    for i, w in enumerate((1, 2, 3)):
        eng.add_dest(spec, DestSpec(addr=bytes([192, 0, 2, 11 + i]), port=80, weight=w))
    got = Counter(d.addr[3] for d in svc.scheduler.table)
    assert got == {13: 2047, 12: 1364, 11: 682}    # newest (weight 3) first
    eng.edit_dest(spec, DestSpec(addr=bytes([192, 0, 2, 13]), port=80, weight=0))
    assert Counter(d.addr[3] for d in svc.scheduler.table) == got  # last_weight kept


def test_mh_too_many_dests_at_init():
    svc = Service(6, VIP, 80)
    svc.destinations = [Dest(svc, bytes([198, 51, (i >> 8) & 255, i & 255]), 80)
                        for i in range(M + 1)]
    with pytest.raises(ConfigError):
        scheduler_class("mh")(svc, None)


# ================================================================ fo

def test_fo_highest_weight_first_in_order_wins_ties():
    r = Rig("fo")
    r.add("A", 5)
    r.add("B", 7)
    r.add("C", 7)                              # order C B A: C seen first at 7
    assert r.picks(3) == seq("C C C")          # no rotation, connections ignored
    r["C"].activeconns = 1000
    assert r.pick() == "C"
    r.overload("C")
    assert r.pick() == "B"
    r["B"].weight = 0
    assert r.pick() == "A"
    r.overload("A")
    assert r.pick() is None                    # weight 0 never (w > hw, hw = 0)


def test_fo_empty_and_zero():
    assert Rig("fo").pick() is None
    r = Rig("fo")
    r.add("A", 0)
    assert r.pick() is None


# ================================================================ ovf

def test_ovf_overflows_when_active_exceeds_weight():
    r = Rig("ovf")
    r.add("A", 1)
    r.add("B", 3)                              # order B A
    assert r.pick() == "B"
    r["B"].activeconns = 3                     # == weight: still accepted
    assert r.pick() == "B"
    r["B"].activeconns = 4                     # > weight: skipped
    assert r.pick() == "A"
    r["A"].inactconns = 99                     # inactive connections don't count
    assert r.pick() == "A"
    r["A"].activeconns = 2
    assert r.pick() is None
    r["B"].activeconns = 0
    r.overload("B")
    assert r.pick() is None


def test_ovf_ties_and_zero_weight():
    r = Rig("ovf")
    r.add("A", 2)
    r.add("B", 2)
    r.add("C", 0)                              # order C B A; C skipped (w == 0)
    assert r.pick() == "B"                     # first at the top weight
    r["B"].activeconns = 3
    assert r.pick() == "A"
    assert Rig("ovf").pick() is None


# ================================================================ twos
#
# get_random_u32_below(ceil) of a word r: (ceil * r) >> 32, redrawn while
# the low 32 bits of the product are below 2**32 % ceil. For ceil 7:
#   0x20000000 -> 0   0x40000000 -> 1   0x60000000 -> 2   0x80000000 -> 3
#   0xA0000000 -> 4   0xC0000000 -> 5   0xFFFFFFFF -> 6
#   0x00000000 and 0x24924925 (7r = 2**32 + 3) are rejected (2**32 % 7 = 4).

W0, W1, W2, W3, W4, W5, W6 = (0x20000000, 0x40000000, 0x60000000, 0x80000000,
                              0xA0000000, 0xC0000000, 0xFFFFFFFF)


def test_get_random_u32_below_by_hand():
    assert [get_random_u32_below(7, Scripted([w])) for w in (W0, W1, W2, W3, W4, W5, W6)] == \
        [0, 1, 2, 3, 4, 5, 6]
    s = Scripted([0x00000000, 0x24924925, 0x00000001, 0xDEAD])
    assert get_random_u32_below(7, s) == 0     # two rejections, then 7*1 -> 0
    assert s.words == [0xDEAD]
    s = Scripted([0x00000000])                 # ceil a power of two: bound 0
    assert get_random_u32_below(4, s) == 0 and not s.words
    assert get_random_u32_below(0, Scripted([0x1234])) == 0x1234   # ceil 0: the raw word


def _twos_rig(**loads):
    # A(1) B(2) C(3): order C B A, total 6, ceil 7. rweight r picks
    # C for r <= 3 (0..3: four values for weight 3 -- r = 0 is the extra),
    # B for 4..5, A for 6.
    r = Rig("twos")
    for n, w in zip("ABC", (1, 2, 3)):
        r.add(n, w, act=loads.get(n, 0))
    return r


def test_twos_idle_picks_choice1_and_draws_two_words():
    r = _twos_rig()
    r.sched.draws = Scripted([W3, W6, W4, W0, W6, W6, W0, W5])
    assert r.picks(4) == seq("C B A C")        # overheads 0: 0 > 0 never
    assert r.sched.draws.words == []


def test_twos_compares_overhead_per_weight():
    r = _twos_rig(C=3, B=1)                    # C 768/3, B 256/2, A 0/1
    r.sched.draws = Scripted([
        W3, W4,        # C vs B: 2*768 > 3*256 -> B
        W4, W3,        # B vs C: 3*256 > 2*768 false -> B
        W6, W0,        # A vs C: 3*0 > 1*768 false -> A
        W0, W6,        # C vs A: 1*768 > 3*0 -> A
        W1, W2,        # C vs C -> C
    ])
    assert r.picks(5) == seq("B B A A C")
    r["B"].activeconns = 2                     # B 512/2: 2*768 == 3*512, tie keeps choice1
    r.sched.draws = Scripted([W3, W5, W5, W3])
    assert r.picks(2) == seq("C B")


def test_twos_rejection_consumes_words():
    r = _twos_rig()
    r.sched.draws = Scripted([0x00000000, W6, W0])  # rweight1: 0 rejected, then 6 -> A
    assert r.pick() == "A"
    assert r.sched.draws.words == []


def test_twos_skips_overloaded_and_zero_weight():
    r = _twos_rig()
    r.overload("C")
    r["A"].weight = 0
    # Only B(2): total 2, ceil 3; any word maps into B.
    r.sched.draws = Scripted([0xFFFFFFFF, 1])   # 3*r >> 32: 2 and 0
    assert r.pick() == "B"
    r.overload("B")
    r.sched.draws = Scripted([])
    assert r.pick() is None                    # no draw at all
    assert Rig("twos").pick() is None


def test_twos_int_overflow_of_the_products():
    # X(65535) idle and Y(1) with 200 active, order X Y; total 65536,
    # ceil 65537. rweight1 32768 -> X, rweight2 65536 -> Y. Then
    # weight2*overhead1 = 0 and weight1*overhead2 = 65535*51200 =
    # 3355392000, which wraps to -939575296 in an int: 0 > -939575296, so
    # the loaded Y wins, as the kernel does.
    r = Rig("twos")
    r.add("Y", 1, act=200)
    r.add("X", 65535)
    r.sched.draws = Scripted([0x80000000, 0xFFFFFFFF])
    assert r.pick() == "Y"
    r["Y"].activeconns = 100                   # 65535*25600 fits: X
    r.sched.draws = Scripted([0x80000000, 0xFFFFFFFF])
    assert r.pick() == "X"


def test_twos_generator_is_deterministic_per_service():
    svc = Service(6, VIP, 80)
    d = Draws.for_service(svc)
    # SipHash-2-4 of the counter under a key from (protocol, VIP, port, fwmark).
    assert [d.u32() for _ in range(4)] == [0x5B75D33F, 0x2B194289, 0xD970C6DF, 0x59CCFA99]
    r1, r2 = _twos_rig(B=1), _twos_rig(B=1)
    assert r1.picks(50) == r2.picks(50)
    other = Draws.for_service(Service(6, VIP, 81))
    assert [other.u32() for _ in range(4)] != [0x5B75D33F, 0x2B194289, 0xD970C6DF, 0x59CCFA99]
    # With an EngineConfig (no seed sysctl) the default seed is 0.
    r3 = Rig("twos", config=EngineConfig())
    assert r3.sched.draws.key == Draws.for_service(r3.svc).key


def test_twos_weighted_distribution():
    # Idle dests: the pick is choice1, P(dest) = its share of [0, sum]; the
    # first dest in order gets weight + 1 of sum + 1 values.
    r = _twos_rig()
    got = Counter(r.picks(7000))
    assert abs(got["C"] - 4000) < 250 and abs(got["B"] - 2000) < 200 and abs(got["A"] - 1000) < 150


# ================================================================ properties

dest_st = st.tuples(st.integers(0, 5), st.booleans(), st.integers(0, 8), st.integers(0, 8))


@pytest.mark.parametrize("name,flags", [("fo", 0), ("ovf", 0), ("twos", 0), ("mh", 0),
                                        ("mh", MH_FALLBACK | MH_PORT)])
@given(dests=st.lists(dest_st, min_size=0, max_size=5),
       clients=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 65535)), min_size=1,
                        max_size=4))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_never_unusable(name, flags, dests, clients):
    r = Rig(name, flags=flags)
    for i, (w, over, act, inact) in enumerate(dests):
        r.add("D%d" % i, w, act=act, inact=inact, overload=over)
    usable = {n for n, d in r.by_name.items()
              if d.weight > 0 and not d.flags & IP_VS_DEST_F_OVERLOAD}
    for host, port in clients:
        got = r.pick(src("198.51.100.%d" % host, port))
        assert got is None or got in usable
        if name in ("fo", "twos"):
            assert (got is None) == (not usable)
        if name == "fo" and got:
            assert r[got].weight == max(r[n].weight for n in usable)
        if name == "ovf":
            cands = [n for n in usable if r[n].activeconns <= r[n].weight]
            assert (got is None) == (not cands)
            if got:
                assert r[got].weight == max(r[n].weight for n in cands)
        if name == "mh" and flags & MH_FALLBACK:
            # Every dest with last_weight > 0 owns slots, so fallback finds one.
            assert (got is None) == (not usable)
