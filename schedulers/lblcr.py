"""Locality-based least-connection with replication: net/netfilter/ipvs/ip_vs_lblcr.c.

Each destination address maps to a SET of dests (newest first, as
list_add_rcu puts them). A packet takes the set's weighted least-connection
member (ip_vs_dest_set_min: skips overloaded, needs weight > 0 and
AVAILABLE, strict loh*dw > doh*lw). If the set has more than one member and
was not modified for lblcr_expiration, its most loaded member
(ip_vs_dest_set_max) is dropped - after the min was chosen, so the dest
returned may be the one just dropped. If the min is missing or lblc-style
overloaded (is_overloaded), the service-wide wlc choice is made and added
to the set. Entry expiry is the same periodic timer as lblc.

A set of more than _index.SCAN_LIMIT members keeps a tree (_SetTree) whose
root is ip_vs_dest_set_min's answer, so a set that grows to every server
(one busy destination address) costs O(log n) per decision, not a walk.
"""

import weakref

from lvs.flags import IP_VS_DEST_F_AVAILABLE, IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from . import _index
from ._base import Scheduler
from ._hashing import LocalityScheduler
from ._index import LocalityIndexed, refold, wlc_lighter

IP_VS_LBLCR_TAB_BITS = 10


def _overhead(dest):
    return (dest.activeconns << 8) + dest.inactconns


class _Entry:
    __slots__ = ("dests", "lastmod", "lastuse", "tree")

    def __init__(self, dest, now):
        self.dests = [dest]
        self.lastmod = now
        self.lastuse = now
        self.tree = None     # a _SetTree once the set is large


def _member_leaf(d):
    if d.flags & IP_VS_DEST_F_OVERLOAD or d.weight <= 0 or not d.flags & IP_VS_DEST_F_AVAILABLE:
        return None
    return d


def _newest_lighter(left, right):
    """Leaves run oldest to newest; the set's walk starts from the newest, so
    the right one wins ties."""
    return wlc_lighter(right, left)


class _SetTree:
    """A set's members as leaves in the order they joined (newest rightmost),
    folded so that the root is set_min(set)."""

    __slots__ = ("nodes", "size", "pos", "count", "__weakref__")

    def __init__(self, oldest_first):
        members = list(oldest_first)
        size = 1
        while size < 2 * len(members) + 1:
            size <<= 1
        self.size = size
        self.nodes = nodes = [None] * (2 * size)
        self.pos = {}
        for i, d in enumerate(members):
            nodes[size + i] = _member_leaf(d)
            self.pos[d] = size + i
        self.count = len(members)
        for i in range(size - 1, 0, -1):
            nodes[i] = _newest_lighter(nodes[2 * i], nodes[2 * i + 1])

    def add(self, dest):
        """A new newest member; the tree doubles when full (holes left by removals go)."""
        if self.count == self.size:
            members = sorted(self.pos, key=self.pos.get)
            self.__init__(members + [dest])
            return
        i = self.size + self.count
        self.count += 1
        self.pos[dest] = i
        self.nodes[i] = _member_leaf(dest)
        refold(self.nodes, _newest_lighter, i)

    def remove(self, dest):
        i = self.pos.pop(dest)
        self.nodes[i] = None
        refold(self.nodes, _newest_lighter, i)

    def changed(self, dest):
        i = self.pos.get(dest)
        if i is not None:
            self.nodes[i] = _member_leaf(dest)
            refold(self.nodes, _newest_lighter, i)


def set_min(dests):
    it = iter(dests)
    least = None
    for d in it:
        if d.flags & IP_VS_DEST_F_OVERLOAD:
            continue
        if d.weight > 0 and d.flags & IP_VS_DEST_F_AVAILABLE:
            least, loh = d, _overhead(d)
            break
    if least is None:
        return None
    for d in it:
        if d.flags & IP_VS_DEST_F_OVERLOAD:
            continue
        doh = _overhead(d)
        if loh * d.weight > doh * least.weight and d.flags & IP_VS_DEST_F_AVAILABLE:
            least, loh = d, doh
    return least


def set_max(dests):
    it = iter(dests)
    most = None
    for d in it:
        if d.weight > 0:
            most, moh = d, _overhead(d)
            break
    if most is None:
        return None
    for d in it:
        doh = _overhead(d)
        if moh * d.weight < doh * most.weight and d.weight > 0:
            most, moh = d, doh
    return most


@register_scheduler
class LocalityLeastConnectionReplicated(LocalityIndexed, LocalityScheduler, Scheduler):
    name = "lblcr"
    TAB_BITS = IP_VS_LBLCR_TAB_BITS
    EXPIRATION_SYSCTL = "lblcr_expiration"

    def __init__(self, svc, config=None, now=None):
        super().__init__(svc, config)
        self._init_table(now)
        self.member_of = {}    # dest -> weak references to the _SetTrees it is in (entries expire)

    def make_index(self):
        index = super().make_index()
        index.also = self._member_changed
        return index

    def _member_changed(self, dest):
        refs = self.member_of.get(dest)
        if refs is None:
            return
        gone = False
        for ref in refs:
            tree = ref()
            if tree is None:
                gone = True     # its entry expired
            else:
                tree.changed(dest)
        if gone:
            refs[:] = [ref for ref in refs if ref() is not None]

    def _join(self, en, dest, svc):
        en.dests.insert(0, dest)
        if en.tree is not None:
            en.tree.add(dest)
            self._watch(dest, en.tree)
        elif len(en.dests) > _index.SCAN_LIMIT:
            self.sched_index().root(svc)   # built: the service's dests report their changes
            en.tree = _SetTree(reversed(en.dests))
            for d in en.dests:
                self._watch(d, en.tree)

    def _watch(self, dest, tree):
        if dest.watch is None:
            dest.watch = self.sched_index().changed   # a deleted dest: still reports
        self.member_of.setdefault(dest, []).append(weakref.ref(tree))

    def done_service(self, svc):
        self.member_of.clear()
        super().done_service(svc)

    def schedule(self, svc, pkt, now):
        self.tick(now)
        en = self.entries.get(pkt.daddr)
        if en is None:
            dest = self.wlc_choice(svc)
            if dest is not None and not self.dead:
                self.entries[pkt.daddr] = _Entry(dest, now)
            return dest
        en.lastuse = now
        dest = en.tree.nodes[1] if en.tree is not None else set_min(en.dests)
        # Compaction: a set untouched for the expiration drops its busiest.
        if len(en.dests) > 1 and now > en.lastmod + self._expiration():
            m = set_max(en.dests)
            if m is not None:
                en.dests.remove(m)
                if en.tree is not None:
                    en.tree.remove(m)
                    refs = self.member_of[m]
                    refs[:] = [ref for ref in refs if ref() is not en.tree]
                en.lastmod = now
        if dest is not None and not self.overloaded(dest, svc):
            return dest
        dest = self.wlc_choice(svc)
        if dest is None:
            return None
        if not self.dead and (dest not in en.tree.pos if en.tree is not None
                              else dest not in en.dests):
            self._join(en, dest, svc)
            en.lastmod = now
        return dest
