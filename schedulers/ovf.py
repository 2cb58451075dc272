"""Weighted overflow: net/netfilter/ipvs/ip_vs_ovf.c.

The highest-weight dest takes connections while its activeconns do not
exceed its weight (activeconns == weight is still accepted: the test is
activeconns > weight), then traffic overflows to the next highest.
Skipped: overloaded dests, weight 0, activeconns > weight. Among the rest
the first in kernel list order (newest first) wins a tie (w > hw is
strict). Inactive connections do not count. Large services: the same fold
kept as a tree (_index.py).
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from . import _index
from ._base import Scheduler
from ._hashing import kernel_order
from .fo import heavier


def _room_leaf(dest):
    w = dest.weight
    if dest.flags & IP_VS_DEST_F_OVERLOAD or dest.activeconns > w or w == 0:
        return None
    return dest


@register_scheduler
class WeightedOverflow(_index.Indexed, Scheduler):
    name = "ovf"

    def make_index(self):
        return _index.DestIndex(_index.Tree(_room_leaf, heavier))

    def schedule(self, svc, pkt, now):
        if len(svc.destinations) > _index.SCAN_LIMIT:
            return self.sched_index().root(svc)
        h = None
        hw = 0
        for dest in kernel_order(svc):
            w = dest.weight
            if dest.flags & IP_VS_DEST_F_OVERLOAD or dest.activeconns > w or w == 0:
                continue
            if h is None or w > hw:
                h = dest
                hw = w
        return h
