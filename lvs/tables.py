"""The table operations lvsadm drives: what ip_vs_ctl.c does.

Add, edit and delete services and real servers, flush, zero, --set, and
the trash that keeps deleted real servers while connections use them.
A mixin of Engine (lvs/engine.py); a mistake raises ConfigError with
ipvsadm's text and changes nothing.
"""

import functools

from . import ipv6, proto_tcp
from .control import (ADD_DEST, ADD_SERVICE, DEL_DEST, DEL_SERVICE, EDIT_DEST,
                      EDIT_SERVICE, FLUSH, SET_TIMEOUT, ZERO)
from .errors import ConfigError
from .flags import (IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_TUNNEL, IP_VS_DEST_F_AVAILABLE,
                    IPPROTO_TCP, IPPROTO_UDP)
from .registry import scheduler_class
from .service import Dest, Service
from .stats import Stats

HZ = 250                       # Debian's kernel: timeouts are kept in jiffies
DEST_TRASH_PERIOD = 120.0      # IP_VS_DEST_TRASH_PERIOD
EINVAL_TEXT = "Invalid operation.  Possibly wrong module version, address not unicast, ..."


def _changes_tables(method):
    """A change of the tables: what the fast path prepared (lvs/fastpath.py) is out of date."""
    @functools.wraps(method)
    def change(self, *args, **kwargs):
        self.generation += 1
        return method(self, *args, **kwargs)
    return change


class Tables:
    """Engine's control operations (ip_vs_ctl.c)."""

    def apply(self, command):
        """Carry out a lvs.control.Command (what ipvsadm asks of the kernel)."""
        cmd = command.cmd
        if cmd == ADD_SERVICE:
            self.add_service(command.svc)
        elif cmd == EDIT_SERVICE:
            self.edit_service(command.svc)
        elif cmd == DEL_SERVICE:
            self.del_service(command.svc)
        elif cmd == FLUSH:
            self.flush()
        elif cmd == ADD_DEST:
            self.add_dest(command.svc, command.dest)
        elif cmd == EDIT_DEST:
            self.edit_dest(command.svc, command.dest)
        elif cmd == DEL_DEST:
            self.del_dest(command.svc, command.dest)
        elif cmd == ZERO:
            self.zero(command.svc)
        elif cmd == SET_TIMEOUT:
            self.set_timeouts(*command.timeouts)
        else:
            raise ConfigError("unsupported command %r" % cmd, 2)

    def _find_service(self, spec):
        return self.services.get(spec.key)

    def _make_scheduler(self, svc, name):
        if name == "none":
            return None
        return scheduler_class(name)(svc, self.config)

    @staticmethod
    def _check_service_spec(spec):
        if spec.pe_name:
            # No persistence engine is built (the kernel's only one, sip, needs
            # SIP parsing and conntrack helpers): answered as a missing module.
            raise ConfigError("Scheduler or persistence engine not found")
        if len(spec.addr) == 16 and not 1 <= spec.netmask <= 128:
            # ip_vs_add_service / ip_vs_edit_service: an IPv6 prefix length,
            # checked once the scheduler is found
            if spec.sched_name != "none":
                scheduler_class(spec.sched_name)
            raise ConfigError(EINVAL_TEXT)

    @_changes_tables
    def add_service(self, spec):
        if spec.key in self.services:
            raise ConfigError("Service already exists")
        if not spec.fwmark and spec.protocol not in (IPPROTO_TCP, IPPROTO_UDP):
            raise ConfigError("Protocol not available")
        self._check_service_spec(spec)
        svc = Service(0 if spec.fwmark else spec.protocol, spec.addr, spec.port, spec.fwmark)
        sched = self._make_scheduler(svc, spec.sched_name)  # may raise: nothing changed yet
        self._set_service(svc, spec)
        svc.scheduler = sched
        svc.sched_name = spec.sched_name
        self.services[svc.key] = svc
        return svc

    @_changes_tables
    def edit_service(self, spec):
        svc = self._find_service(spec)
        if svc is None:
            raise ConfigError("No such service")
        self._check_service_spec(spec)
        if spec.sched_name != svc.sched_name:
            sched = self._make_scheduler(svc, spec.sched_name)
            if svc.scheduler is not None:
                svc.scheduler.done_service(svc)
            svc.scheduler = sched
            svc.sched_name = spec.sched_name
        self._set_service(svc, spec)

    @staticmethod
    def _set_service(svc, spec):
        svc.flags = spec.flags & ~0x0002  # HASHED is the kernel's own business
        svc.timeout = spec.timeout
        svc.netmask = spec.netmask
        svc.pe_name = spec.pe_name

    @_changes_tables
    def del_service(self, spec):
        svc = self.services.pop(spec.key, None)
        if svc is None:
            raise ConfigError("No such service")
        self._unlink_service(svc)

    def _unlink_service(self, svc):
        for dest in list(svc.destinations):
            self._unlink_dest(svc, dest, svcupd=False)
        if svc.scheduler is not None:
            svc.scheduler.done_service(svc)

    @_changes_tables
    def flush(self):
        for svc in list(self.services.values()):
            self._unlink_service(svc)
        self.services.clear()

    @staticmethod
    def _check_dest_spec(spec):
        if spec.weight < 0 or spec.l_threshold > spec.u_threshold:
            raise ConfigError("Numerical result out of range")
        if spec.tun_type == 1 and spec.tun_port == 0:  # GUE needs a port
            raise ConfigError(EINVAL_TEXT)

    def _check_dest_family(self, svc, spec):
        """ip_vs_genl_set_cmd, for -a and -e: a real server of another family
        than its service only for a tunnel, and never while a sync daemon
        runs (the sync protocol cannot carry it)."""
        if len(spec.addr) != len(svc.addr):
            if getattr(self, "sync_daemons", None):
                raise ConfigError(EINVAL_TEXT)
            if spec.conn_flags & IP_VS_CONN_F_FWD_MASK != IP_VS_CONN_F_TUNNEL:
                raise ConfigError(EINVAL_TEXT)

    def mixed_family_dests(self):
        """ipvs->mixed_address_family_dests: the real servers whose family is
        not their service's (a sync daemon cannot start while there are any)."""
        return sum(1 for svc in self.services.values() for dest in svc.destinations
                   if len(dest.addr) != len(svc.addr))

    def _dest_addr_refused(self, addr):
        """ip_vs_new_dest's address check (EINVAL)."""
        if len(addr) == 16:
            # ipv6_addr_type(): not IPV6_ADDR_UNICAST (multicast, ::, v4-mapped),
            # or link-local, and no address of the director's own
            # (__ip_vs_addr_is_local_v6)
            link_local = addr[0] == 0xFE and addr[1] & 0xC0 == 0x80
            return ((not ipv6.is_unicast(addr) or link_local)
                    and addr != getattr(self, "director_addr6", None))
        # not RTN_UNICAST/RTN_LOCAL
        return addr[0] == 0 or addr[0] >= 224 or addr == b"\xff\xff\xff\xff"

    @_changes_tables
    def add_dest(self, svc_spec, spec):
        svc = self._find_service(svc_spec)
        if svc is None:
            raise ConfigError("Service not defined")
        self._check_dest_family(svc, spec)
        self._check_dest_spec(spec)
        if svc.find_dest(spec.addr, spec.port) is not None:
            raise ConfigError("Destination already exists")
        if self._dest_addr_refused(spec.addr):
            raise ConfigError(EINVAL_TEXT)
        dest = self._trash_get(svc, spec.addr, spec.port)
        if dest is None:
            dest = Dest(svc, spec.addr, spec.port)
        self._update_dest(svc, dest, spec, add=True)

    def _update_dest(self, svc, dest, spec, add):
        dest.update(spec.weight, spec.conn_flags, spec.u_threshold, spec.l_threshold,
                    spec.tun_type, spec.tun_port, spec.tun_flags, add=add)
        if add:
            svc.destinations.insert(0, dest)  # list_add_rcu: at the head
            if svc.scheduler is not None:
                svc.scheduler.add_dest(svc, dest)
        elif svc.scheduler is not None:
            svc.scheduler.upd_dest(svc, dest)

    @_changes_tables
    def edit_dest(self, svc_spec, spec):
        svc = self._find_service(svc_spec)
        if svc is None:
            raise ConfigError("Service not defined")
        self._check_dest_family(svc, spec)
        self._check_dest_spec(spec)
        dest = svc.find_dest(spec.addr, spec.port)
        if dest is None:
            raise ConfigError("No such destination")
        self._update_dest(svc, dest, spec, add=False)

    @_changes_tables
    def del_dest(self, svc_spec, spec):
        svc = self._find_service(svc_spec)
        if svc is None:
            raise ConfigError("Service not defined")
        dest = svc.find_dest(spec.addr, spec.port)
        if dest is None:
            raise ConfigError("No such destination")
        self._unlink_dest(svc, dest, svcupd=True)

    def _unlink_dest(self, svc, dest, svcupd):
        """__ip_vs_unlink_dest + __ip_vs_del_dest: unavailable at once, kept in trash."""
        dest.flags &= ~IP_VS_DEST_F_AVAILABLE
        if dest.watch is not None:
            dest.watch(dest)  # a scheduler's tree may hold it (lblcr's sets)
        svc.destinations.remove(dest)
        if svcupd and svc.scheduler is not None:
            svc.scheduler.del_dest(svc, dest)
        if not self.trash:
            self._trash_timer = (self.now or 0.0) + DEST_TRASH_PERIOD / 2
        dest.idle_start = 0.0
        self.trash.insert(0, dest)
        if self.config.expire_nodest_conn:
            # ip_vs_enqueue_expire_nodest_conns: a flush one jiffy later.
            self._nodest_flush = (self.now or 0.0) + 1.0 / HZ

    def _trash_get(self, svc, addr, port):
        """ip_vs_trash_get_dest: a dest deleted from this service's address (the
        service itself may be a new one, after -C and -R) comes back, with its
        connections and counters."""
        for i, dest in enumerate(self.trash):
            old = dest.svc
            if (dest.addr == addr and dest.port == port and old.fwmark == svc.fwmark
                    and old.protocol == svc.protocol
                    and (svc.fwmark or (old.addr == svc.addr and old.port == svc.port))):
                del self.trash[i]
                if old is not svc:
                    # __ip_vs_update_dest: bound to another service, counters restart.
                    dest.stats = Stats()
                    dest.svc = svc
                return dest
        return None

    def _trash_expire(self, now):
        """ip_vs_dest_trash_expire: every 60 s; a dest unused at one pass is freed 120 s later."""
        keep = []
        wake = None  # when a later pass can next change something
        for dest in self.trash:
            if dest.refcnt:
                t = self.conntab.next_deadline()  # only an expiry can free it
            elif not dest.idle_start:
                dest.idle_start = now
                t = now
            elif now < dest.idle_start + DEST_TRASH_PERIOD:
                t = dest.idle_start + DEST_TRASH_PERIOD
            else:
                continue
            keep.append(dest)
            if t is not None and (wake is None or t < wake):
                wake = t
        self.trash = keep
        if not keep:
            self._trash_timer = None
            return
        period = DEST_TRASH_PERIOD / 2
        passes = 1
        if wake is not None and wake > now + period:
            passes = int((wake - now) // period)  # passes that could change nothing
        elif wake is None:
            passes = 1 << 40
        self._trash_timer = now + passes * period

    def _flush_nodest(self, now):
        """ip_vs_expire_nodest_conn_flush: connections to deleted dests go at once."""
        for cp in self.conn_list():
            dest = cp.dest
            if cp.dead or dest is None or dest.flags & IP_VS_DEST_F_AVAILABLE or cp.n_control:
                continue
            ct = cp.control
            self._conn_del(cp, now)
            if ct is not None and not ct.n_control and not ct.dead:
                self._conn_del(ct, now)

    def _conn_del(self, cp, now):
        """ip_vs_conn_del: expire now; a controlled one takes its unused template along."""
        if cp.control is not None:
            cp.timeout = 0
        self._conn_expire(cp, now)

    def zero(self, svc_spec=None):
        if svc_spec is not None:
            svc = self._find_service(svc_spec)
            if svc is None:
                raise ConfigError("No such service")
            targets = [svc]
        else:
            targets = list(self.services.values())
            self.tot_stats.zero_out()
        for svc in targets:
            svc.stats.zero_out()
            for dest in svc.destinations:
                dest.stats.zero_out()

    @_changes_tables
    def set_timeouts(self, tcp, tcpfin, udp):
        """ip_vs_set_timeout: 0 keeps a value."""
        for value in (tcp, tcpfin, udp):
            if value < 0 or value > 2147483647 // HZ:
                raise ConfigError(EINVAL_TEXT)
        if tcp:
            self.tcp_timeouts[proto_tcp.ESTABLISHED] = tcp
        if tcpfin:
            self.tcp_timeouts[proto_tcp.FIN_WAIT] = tcpfin
        if udp:
            self.udp_timeout = udp

    def timeouts(self):
        return (self.tcp_timeouts[proto_tcp.ESTABLISHED],
                self.tcp_timeouts[proto_tcp.FIN_WAIT], self.udp_timeout)
