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
    """ntohl() of a 4-byte network-order address."""
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
