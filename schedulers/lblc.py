"""Locality-based least-connection: net/netfilter/ipvs/ip_vs_lblc.c.

A table maps each destination address (iph->daddr) to the dest last chosen
for it. A cached dest is reused (and its entry's lastuse refreshed) while it
is available, has weight > 0 and is not "overloaded" in lblc's own sense
(is_overloaded: activeconns > weight while some dest in the service has
activeconns*2 < weight); note the OVERLOAD flag is not checked here.
Otherwise the wlc choice (__ip_vs_lblc_schedule) is made and replaces the
entry. lblc has no add/del/upd hooks: a deleted dest stays cached, and is
refused only because the engine clears its AVAILABLE flag.

Entries are expired by the kernel's periodic timer (see _hashing.ExpireTimer):
every 30th run drops entries unused for lblc_expiration; the other runs only
act when the table holds more than 16 * 1024 entries.
"""

from lvs.flags import IP_VS_DEST_F_AVAILABLE
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import LocalityScheduler
from ._index import LocalityIndexed

IP_VS_LBLC_TAB_BITS = 10


class _Entry:
    __slots__ = ("dest", "lastuse")

    def __init__(self, dest, lastuse):
        self.dest = dest
        self.lastuse = lastuse


@register_scheduler
class LocalityLeastConnection(LocalityIndexed, LocalityScheduler, Scheduler):
    name = "lblc"
    TAB_BITS = IP_VS_LBLC_TAB_BITS
    EXPIRATION_SYSCTL = "lblc_expiration"

    def __init__(self, svc, config=None, now=None):
        super().__init__(svc, config)
        self._init_table(now)

    def schedule(self, svc, pkt, now):
        self.tick(now)  # timer runs due before this packet come first
        en = self.entries.get(pkt.daddr)
        if en is not None:
            en.lastuse = now
            dest = en.dest
            if (dest.flags & IP_VS_DEST_F_AVAILABLE and dest.weight > 0
                    and not self.overloaded(dest, svc)):
                return dest
        dest = self.wlc_choice(svc)
        if dest is None:
            return None
        if not self.dead and (en is None or en.dest is not dest):
            # ip_vs_lblc_new: a different dest replaces the entry afresh.
            self.entries[pkt.daddr] = _Entry(dest, now)
        return dest
