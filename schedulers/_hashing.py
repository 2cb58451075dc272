"""Helpers the schedulers share: the kernel's hash_32 and its dest walk order.

hash_32 is include/linux/hash.h's generic version (x86_64 has no arch hash):
multiply by GOLDEN_RATIO_32 in 32 bits and keep the top `bits` bits.

kernel_order: __ip_vs_update_dest links a new dest with list_add_rcu, i.e. at
the HEAD of svc->destinations, so every kernel scheduler walks the dests
newest first. svc.destinations is kept in that same order (the engine
inserts new dests at index 0). The recorded rr, wrr and sh goldens only
match in this order.
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD

GOLDEN_RATIO_32 = 0x61C88647


def hash_32(val, bits):
    return ((val * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def addr_u32(addr):
    """ntohl() of a 4-byte network-order address; an IPv6 address is first
    folded to 32 bits by XOR of its four words, as sh, dh, lblc, lblcr and mh
    all do (addr->ip6[0] ^ ... ^ addr->ip6[3])."""
    if len(addr) == 16:
        n = int.from_bytes(addr, "big")
        return (n ^ (n >> 32) ^ (n >> 64) ^ (n >> 96)) & 0xFFFFFFFF
    return int.from_bytes(addr, "big")


def kernel_order(svc):
    """Iterate svc's dests in the kernel's list order (newest first)."""
    return iter(svc.destinations)


def wlc_pick(svc):
    """The weighted least-connection walk shared by wlc, lblc and lblcr
    (ip_vs_wlc_schedule, __ip_vs_lblc_schedule, __ip_vs_lblcr_schedule).

    The first non-overloaded dest with weight > 0 seeds `least`; later
    non-overloaded dests replace it only if strictly lighter:
    loh * dw > doh * lw, with overhead = active*256 + inactive. A weight-0
    dest can never satisfy that (0 > x is false), so it is never chosen.
    """
    it = kernel_order(svc)
    least = None
    for dest in it:
        if not dest.flags & IP_VS_DEST_F_OVERLOAD and dest.weight > 0:
            least = dest
            loh = (dest.activeconns << 8) + dest.inactconns
            break
    if least is None:
        return None
    lw = least.weight
    for dest in it:
        if dest.flags & IP_VS_DEST_F_OVERLOAD:
            continue
        doh = (dest.activeconns << 8) + dest.inactconns
        if loh * dest.weight > doh * lw:
            least, loh, lw = dest, doh, dest.weight
    return least


def is_overloaded(dest, svc):
    """lblc/lblcr is_overloaded: busier than its weight while another is half idle."""
    if dest.activeconns > dest.weight:
        for d in svc.destinations:
            if d.activeconns * 2 < d.weight:
                return True
    return False


# The lblc/lblcr garbage collector (ip_vs_lblc_check_expire and
# ip_vs_lblcr_check_expire are the same code over different entries).
CHECK_EXPIRE_INTERVAL = 60.0    # seconds between timer runs
ENTRY_TIMEOUT = 6 * 60.0        # idle age the size-pressure sweep removes
COUNT_FOR_FULL_EXPIRATION = 30  # every 30th run is a full expiration check


class ExpireTimer:
    """The periodic timer of an lblc/lblcr table, run in arrears.

    `entries` maps a destination address to an object with `lastuse`. The
    kernel arms the timer at init_service and re-arms it CHECK_EXPIRE_INTERVAL
    after each run; run_until(now) performs every run due by `now`, each at
    its own due time. Without a start time the first `now` seen is taken as
    the init time. Bucket positions (hash_32 of the address) matter only to
    the size-pressure sweep, which resumes after `rover` and stops at the
    end of the bucket in which its goal is met.
    """

    __slots__ = ("bits", "max_size", "next_run", "counter", "rover")

    def __init__(self, bits, start=None):
        self.bits = bits
        self.max_size = (1 << bits) * 16
        self.next_run = None if start is None else start + CHECK_EXPIRE_INTERVAL
        self.counter = 1
        self.rover = 0

    def run_until(self, now, entries, expiration):
        if self.next_run is None:
            self.next_run = now + CHECK_EXPIRE_INTERVAL
            return
        while self.next_run <= now:
            # Runs that only count (no entries over max_size, no full check
            # due) are skipped in one step, so a long idle gap stays cheap.
            due = int((now - self.next_run) // CHECK_EXPIRE_INTERVAL) + 1
            if len(entries) <= self.max_size and self.counter % COUNT_FOR_FULL_EXPIRATION:
                if not entries:
                    # Full checks of an empty table only reset the counter.
                    self.counter = (self.counter - 1 + due) % COUNT_FOR_FULL_EXPIRATION + 1
                    self.next_run += due * CHECK_EXPIRE_INTERVAL
                    continue
                k = min(due, COUNT_FOR_FULL_EXPIRATION - self.counter)
                self.counter += k
                self.next_run += k * CHECK_EXPIRE_INTERVAL
                continue
            self._check_expire(self.next_run, entries, expiration)
            self.next_run += CHECK_EXPIRE_INTERVAL

    def _check_expire(self, t, entries, expiration):
        if self.counter % COUNT_FOR_FULL_EXPIRATION == 0:
            # Full check: drop every entry unused for `expiration`; the
            # sweep covers all buckets, so the rover ends where it began.
            for addr in [a for a, en in entries.items() if t >= en.lastuse + expiration]:
                del entries[addr]
            self.counter = 1
            return
        if len(entries) <= self.max_size:
            self.counter += 1
            return
        goal = (len(entries) - self.max_size) * 4 // 3
        goal = min(goal, self.max_size // 2)
        buckets = {}
        for addr in entries:
            buckets.setdefault(hash_32(addr_u32(addr), self.bits), []).append(addr)
        mask = (1 << self.bits) - 1
        j = self.rover
        for _ in range(1 << self.bits):
            j = (j + 1) & mask
            for addr in buckets.get(j, ()):
                if t >= entries[addr].lastuse + ENTRY_TIMEOUT:
                    del entries[addr]
                    goal -= 1
            if goal <= 0:
                break
        self.rover = j


# ---------------------------------------------------------------- SipHash
#
# lib/siphash.c as built for x86_64 (BITS_PER_LONG == 64): siphash() is
# SipHash-2-4 and hsiphash() is SipHash-1-3 over the same 64-bit state,
# truncated to u32 (the 32-bit HalfSipHash variant is not what a 64-bit
# kernel runs). Keys are two 64-bit words (siphash_key_t / hsiphash_key_t
# with unsigned long key[2]); data is read little-endian, the final partial
# word carries len << 56. Checked against lib/test_siphash.c's vectors.

_M64 = 0xFFFFFFFFFFFFFFFF
SIPHASH_CONST_0 = 0x736F6D6570736575
SIPHASH_CONST_1 = 0x646F72616E646F6D
SIPHASH_CONST_2 = 0x6C7967656E657261
SIPHASH_CONST_3 = 0x7465646279746573


def _sipround(v0, v1, v2, v3):
    """SIPHASH_PERMUTATION."""
    v0 = (v0 + v1) & _M64
    v1 = ((v1 << 13) | (v1 >> 51)) & _M64
    v1 ^= v0
    v0 = ((v0 << 32) | (v0 >> 32)) & _M64
    v2 = (v2 + v3) & _M64
    v3 = ((v3 << 16) | (v3 >> 48)) & _M64
    v3 ^= v2
    v0 = (v0 + v3) & _M64
    v3 = ((v3 << 21) | (v3 >> 43)) & _M64
    v3 ^= v0
    v2 = (v2 + v1) & _M64
    v1 = ((v1 << 17) | (v1 >> 47)) & _M64
    v1 ^= v2
    v2 = ((v2 << 32) | (v2 >> 32)) & _M64
    return v0, v1, v2, v3


def _sip(words, tail, length, key, crounds, drounds):
    """The PREAMBLE / word loop / POSTAMBLE shared by every entry point."""
    k0, k1 = key
    v0 = SIPHASH_CONST_0 ^ k0
    v1 = SIPHASH_CONST_1 ^ k1
    v2 = SIPHASH_CONST_2 ^ k0
    v3 = SIPHASH_CONST_3 ^ k1
    for m in words:
        v3 ^= m
        for _ in range(crounds):
            v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((length << 56) | tail) & _M64
    v3 ^= b
    for _ in range(crounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(drounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def _split(data):
    n = len(data) & ~7
    words = [int.from_bytes(data[i:i + 8], "little") for i in range(0, n, 8)]
    return words, int.from_bytes(data[n:], "little")


def siphash(data, key):
    """siphash(data, len, key): SipHash-2-4, u64."""
    words, tail = _split(bytes(data))
    return _sip(words, tail, len(data), key, 2, 4)


def siphash_1u64(first, key):
    return _sip((first,), 0, 8, key, 2, 4)


def siphash_2u64(first, second, key):
    return _sip((first, second), 0, 16, key, 2, 4)


def hsiphash(data, key):
    """hsiphash(data, len, key) on a 64-bit kernel: SipHash-1-3, low 32 bits."""
    words, tail = _split(bytes(data))
    return _sip(words, tail, len(data), key, 1, 3) & 0xFFFFFFFF


def hsiphash_1u32(first, key):
    """hsiphash_1u32 = hsiphash(&u32, 4, key): one SipHash-1-3 block, unrolled.

    This is the per-packet hash of the mh scheduler, so it is written out
    flat; it equals hsiphash(first.to_bytes(4, "little"), key).
    """
    k0, k1 = key
    v0 = SIPHASH_CONST_0 ^ k0
    v1 = SIPHASH_CONST_1 ^ k1
    v2 = SIPHASH_CONST_2 ^ k0
    v3 = SIPHASH_CONST_3 ^ k1
    b = (4 << 56) | (first & 0xFFFFFFFF)
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & 0xFFFFFFFF


class LocalityScheduler:
    """What lblc and lblcr share: a table keyed by destination address, swept
    by the kernel's periodic timer, emptied with the service. Subclasses set
    TAB_BITS and EXPIRATION_SYSCTL (the sysctl naming the idle lifetime)."""

    TAB_BITS = 10
    EXPIRATION_SYSCTL = ""
    DEFAULT_EXPIRATION = 24 * 60 * 60

    def _init_table(self, now):
        self.entries = {}  # daddr (4 bytes) -> entry with .lastuse
        self.timer = ExpireTimer(self.TAB_BITS, now)
        self.dead = False

    def _expiration(self):
        if self.config is None:
            return self.DEFAULT_EXPIRATION
        return getattr(self.config, self.EXPIRATION_SYSCTL)

    def tick(self, now):
        self.timer.run_until(now, self.entries, self._expiration())

    def done_service(self, svc):
        self.dead = True
        self.entries.clear()
