"""Least-connection: net/netfilter/ipvs/ip_vs_lc.c.

Picks the dest with the least overhead = activeconns*256 + inactconns
(ip_vs_dest_conn_overhead), skipping overloaded and weight-0 dests. Weights
play no other part. Ties go to the first in the kernel's list order (the
comparison is a strict <). Large services: the same fold kept as a tree
(_index.py).
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from . import _index
from ._base import Scheduler
from ._hashing import kernel_order


def _fewer(left, right):
    if left is None:
        return right
    if right is None:
        return left
    loh = (left.activeconns << 8) + left.inactconns
    return right if (right.activeconns << 8) + right.inactconns < loh else left


@register_scheduler
class LeastConnection(_index.Indexed, Scheduler):
    name = "lc"

    def make_index(self):
        return _index.DestIndex(_index.Tree(_index.usable_leaf, _fewer))

    def schedule(self, svc, pkt, now):
        if len(svc.destinations) > _index.SCAN_LIMIT:
            return self.sched_index().root(svc)
        least = None
        loh = 0
        for dest in kernel_order(svc):
            if dest.flags & IP_VS_DEST_F_OVERLOAD or dest.weight == 0:
                continue
            doh = (dest.activeconns << 8) + dest.inactconns
            if least is None or doh < loh:
                least, loh = dest, doh
        return least
