"""Never queue: net/netfilter/ipvs/ip_vs_nq.c.

Skips overloaded and weight-0 dests. The first dest (kernel list order) with
no active connection is returned at once, whatever its weight or inactive
count; otherwise the choice is sed's: least (activeconns + 1)/weight, strict
comparison loh*dw > doh*lw, ties to the earlier dest. Large services: the
same fold kept as a tree (_index.py).
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from . import _index
from ._base import Scheduler
from ._hashing import kernel_order
from .sed import sed_shorter


def _sooner(left, right):
    """The leftmost idle dest wins outright; otherwise sed's comparison."""
    if left is None:
        return right
    if right is None or left.activeconns == 0:
        return left
    if right.activeconns == 0:
        return right
    return sed_shorter(left, right)


@register_scheduler
class NeverQueue(_index.Indexed, Scheduler):
    name = "nq"

    def make_index(self):
        return _index.DestIndex(_index.Tree(_index.usable_leaf, _sooner))

    def schedule(self, svc, pkt, now):
        if len(svc.destinations) > _index.SCAN_LIMIT:
            return self.sched_index().root(svc)
        least = None
        loh = 0
        for dest in kernel_order(svc):
            if dest.flags & IP_VS_DEST_F_OVERLOAD or not dest.weight:
                continue
            if dest.activeconns == 0:
                return dest  # idle: no queue at all
            doh = dest.activeconns + 1
            if least is None or loh * dest.weight > doh * least.weight:
                least, loh = dest, doh
        return least
