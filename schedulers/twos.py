"""Weighted power of two choices: net/netfilter/ipvs/ip_vs_twos.c.

Reproduced exactly, given the random words:
  1. total_weight = sum of the weights of the non-overloaded dests with
     weight > 0; choice1 = the LAST such dest in list order. None: no dest.
  2. total_weight += 1; rweight1 = prandom_u32_max(total_weight), then
     rweight2 likewise: each is get_random_u32_below (drivers/char/random.c),
     i.e. (ceil * r) >> 32 of a 32-bit random word r, redrawing while the
     low 32 bits of the product fall below 2**32 % ceil. So both lie in
     [0, sum] inclusive.
  3. One walk in kernel list order (newest first) over the same dests:
     rweightN -= weight; the first dest where rweightN <= 0 becomes choiceN
     (rweight 0 picks the first usable dest). The walk stops once both are
     set.
  4. choice2 replaces choice1 only if weight2 * overhead1 >
     weight1 * overhead2 (strictly less loaded per weight); a tie keeps
     choice1. overhead = activeconns * 256 + inactconns.
All int arithmetic wraps at 32 bits as in the kernel (built with
-fno-strict-overflow): the weight sum, the rweight walk and the two
products, which do overflow for large weights times thousands of
connections.
Large services find both choices by descending a tree of weight sums
(_index.py) instead of walking; when the sum would wrap, the walk is kept.

Deterministic instead of random: the kernel draws its words from
get_random_u32() (the CRNG). Here each scheduler instance owns a Draws
generator: word i is the low 32 bits of SipHash-2-4(i) under a key derived
from the service's identity (protocol, VIP, port, fwmark) and
getattr(config, "seed", 0). The same service (and seed) always yields the
same sequence; the words themselves are of course not the kernel's. Tests
may replace `scheduler.draws` by any object with a u32() method.
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from . import _index
from ._base import Scheduler
from ._hashing import addr_u32, kernel_order, siphash_1u64

_M32 = 0xFFFFFFFF
# A fixed key mixed with the service identity (any constant would do).
_DRAW_KEY_SALT = (0x7477_6F73_2D64_7261, 0x7773_2D70_796C_7673)


def _s32(x):
    """Wrap to a C int (two's complement, 32 bits)."""
    x &= _M32
    return x - 0x100000000 if x & 0x80000000 else x


class Draws:
    """A reproducible stream of 32-bit words (stands in for get_random_u32)."""

    __slots__ = ("key", "count")

    def __init__(self, k0, k1):
        self.key = ((k0 ^ _DRAW_KEY_SALT[0]) & 0xFFFFFFFFFFFFFFFF,
                    (k1 ^ _DRAW_KEY_SALT[1]) & 0xFFFFFFFFFFFFFFFF)
        self.count = 0

    @classmethod
    def for_service(cls, svc, seed=0):
        k0 = addr_u32(svc.addr) | (svc.port & 0xFFFF) << 32 | (svc.protocol & 0xFF) << 48
        k1 = (svc.fwmark & _M32) | (seed & _M32) << 32
        return cls(k0, k1)

    def u32(self):
        word = siphash_1u64(self.count, self.key) & _M32
        self.count += 1
        return word


def get_random_u32_below(ceil, draws):
    """__get_random_u32_below: uniform in [0, ceil), by Lemire's rejection."""
    ceil &= _M32
    rand = draws.u32()
    if not ceil:
        return rand
    mult = ceil * rand
    if (mult & _M32) < ceil:
        bound = (-ceil & _M32) % ceil
        while (mult & _M32) < bound:
            mult = ceil * draws.u32()
    return mult >> 32


def _overhead(dest):
    """ip_vs_dest_conn_overhead, an int."""
    return _s32((dest.activeconns << 8) + dest.inactconns)


def _weight_leaf(dest):
    return dest.weight if not dest.flags & IP_VS_DEST_F_OVERLOAD and dest.weight > 0 else 0


def _descend(nodes, size, rweight):
    """The first usable dest whose running weight sum reaches rweight (>= 1)."""
    i = 1
    while i < size:
        i <<= 1
        if nodes[i] < rweight:
            rweight -= nodes[i]
            i += 1
    return i - size


@register_scheduler
class WeightedTwoChoices(_index.Indexed, Scheduler):
    name = "twos"

    def make_index(self):
        return _index.DestIndex(_index.Tree(_weight_leaf, _index.add, 0))

    def __init__(self, svc, config=None):
        super().__init__(svc, config)
        seed = getattr(config, "seed", 0) if config is not None else 0
        self.draws = Draws.for_service(svc, seed if isinstance(seed, int) else 0)

    def schedule(self, svc, pkt, now):
        if len(svc.destinations) > _index.SCAN_LIMIT:
            index = self.sched_index()
            nodes = index.tree(svc)
            total = nodes[1]
            if 0 < total < 0x7FFFFFFF:   # no s32 wrap: the tree's sums are the walk's
                return self._indexed(svc, index, nodes, total)
        return self._walk(svc)

    def _indexed(self, svc, index, nodes, total):
        rweight1 = get_random_u32_below(total + 1, self.draws)
        rweight2 = get_random_u32_below(total + 1, self.draws)
        # rweight 0 and 1 both stop at the first usable dest (its weight >= 1).
        dests = svc.destinations
        choice1 = dests[_descend(nodes, index.size, max(rweight1, 1))]
        choice2 = dests[_descend(nodes, index.size, max(rweight2, 1))]
        if _s32(choice2.weight * _overhead(choice1)) > _s32(choice1.weight * _overhead(choice2)):
            return choice2
        return choice1

    def _walk(self, svc):
        choice1 = choice2 = None
        weight1 = weight2 = -1
        overhead1 = overhead2 = 0
        total_weight = 0
        for dest in kernel_order(svc):
            if not dest.flags & IP_VS_DEST_F_OVERLOAD:
                weight = dest.weight
                if weight > 0:
                    total_weight = _s32(total_weight + weight)
                    choice1 = dest
        if choice1 is None:
            return None

        total_weight = _s32(total_weight + 1)
        rweight1 = _s32(get_random_u32_below(total_weight, self.draws))
        rweight2 = _s32(get_random_u32_below(total_weight, self.draws))

        for dest in kernel_order(svc):
            if dest.flags & IP_VS_DEST_F_OVERLOAD:
                continue
            weight = dest.weight
            if weight <= 0:
                continue
            rweight1 = _s32(rweight1 - weight)
            rweight2 = _s32(rweight2 - weight)
            if rweight1 <= 0 and weight1 == -1:
                choice1 = dest
                weight1 = weight
                overhead1 = _overhead(dest)
            if rweight2 <= 0 and weight2 == -1:
                choice2 = dest
                weight2 = weight
                overhead2 = _overhead(dest)
            if weight1 != -1 and weight2 != -1:
                break

        if choice2 is not None and _s32(weight2 * overhead1) > _s32(weight1 * overhead2):
            choice1 = choice2
        return choice1
