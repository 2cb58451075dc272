"""Engine settings: the kernel's IPVS sysctls, by their /proc/sys/net/ipv4/vs/ names.

Defaults are the kernel's (ip_vs_ctl.c ip_vs_control_net_init_sysctl,
ip_vs_lblc.c, ip_vs_lblcr.c). Every name the kernel has is accepted so that a
sysctl dump loads; HONOURED lists the ones whose behaviour the engine reproduces.
The others are stored and shown but change nothing (they govern conntrack
or routing, neither of which exists here; sync_sock_size: the sync sockets
keep the host's default size). Memory pressure is the connection table's free
room (lvs/defense.py).
"""

from .errors import ConfigError

# The kernel's default is nr_free_buffer_pages() / 32, which depends on the
# machine's memory; this is its value in the oracle VM (Debian's 6.1).
SYNC_QLEN_MAX = 15191

DEFAULTS = {
    "am_droprate": 10,
    "amemthresh": 1024,
    "backup_only": 0,
    "cache_bypass": 0,
    "conn_reuse_mode": 1,
    "conntrack": 0,
    "debug_level": 0,
    "drop_entry": 0,
    "drop_packet": 0,
    "expire_nodest_conn": 0,
    "expire_quiescent_template": 0,
    "ignore_tunneled": 0,
    "lblc_expiration": 24 * 60 * 60,
    "lblcr_expiration": 24 * 60 * 60,
    "nat_icmp_send": 0,
    "pmtu_disc": 1,
    "run_estimation": 1,
    "schedule_icmp": 0,
    "secure_tcp": 0,
    "sloppy_sctp": 0,
    "sloppy_tcp": 0,
    "snat_reroute": 1,
    "sync_persist_mode": 0,
    "sync_ports": 1,
    "sync_qlen_max": SYNC_QLEN_MAX,
    "sync_refresh_period": 0,
    "sync_retries": 0,
    "sync_sock_size": 0,
    "sync_threshold": (3, 50),
    "sync_version": 1,
}

HONOURED = frozenset({
    "conn_reuse_mode", "expire_nodest_conn", "expire_quiescent_template",
    "nat_icmp_send", "secure_tcp", "sloppy_tcp", "schedule_icmp", "cache_bypass",
    "drop_packet", "am_droprate", "drop_entry", "amemthresh", "lblc_expiration", "lblcr_expiration",
    "run_estimation", "pmtu_disc", "sync_threshold", "sync_version", "sync_refresh_period",
    "sync_retries", "sync_persist_mode", "sync_qlen_max", "backup_only", "sync_ports",
})

DEFENSE_MODES = ("drop_entry", "drop_packet", "secure_tcp")

# Ranges the kernel's handlers enforce (proc_dointvec_minmax, proc_do_defense_mode).
_RANGES = {
    "drop_entry": (0, 3), "drop_packet": (0, 3), "secure_tcp": (0, 3),
    "sync_version": (0, 1), "sync_retries": (0, 3), "sync_ports": (1, 1 << 30),
}


class EngineConfig:
    """The sysctl table of one network namespace's IPVS.

    Each sysctl is a plain attribute (config.conn_reuse_mode), read on the
    packet path; set() is the one way to change it, with the kernel's checks.
    """

    def __init__(self, **overrides):
        self.__dict__.update(DEFAULTS)
        self.secure_tcp_on = False   # TCP follows TCP_STATES_DOS (lvs/defense.py sets it)
        self.defense_hook = None     # Engine.update_defense_level, once an engine has this config
        self.generation = 0   # moves with every set(): the fast path starts again
        for name, value in overrides.items():
            self.set(name, value)

    @property
    def values(self):
        return {name: self.__dict__[name] for name in DEFAULTS}

    def assign(self, item):
        """Set one sysctl from "NAME=VALUE" (a command line's --sysctl)."""
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError("bad sysctl %r: want NAME=VALUE" % item)
        self.set(name.strip(), value.strip())

    def set(self, name, value):
        """Set one sysctl; `value` may be the text written to /proc."""
        if name not in DEFAULTS:
            raise ConfigError("unknown sysctl %r (known: %s)" % (name, " ".join(sorted(DEFAULTS))))
        try:
            if name == "sync_threshold":
                parts = value.split() if isinstance(value, str) else list(value)
                parsed = tuple(int(p) for p in parts)
                if len(parsed) != 2:
                    raise ValueError
            else:
                parsed = int(value)
        except (TypeError, ValueError):
            raise ConfigError("invalid value %r for sysctl %s" % (value, name)) from None
        if name == "sync_threshold" and (min(parsed) < 0 or (parsed[0] >= parsed[1] and parsed[1])):
            raise ConfigError("invalid value %r for sysctl %s" % (value, name))  # proc_do_sync_threshold
        if name == "sync_ports" and parsed & (parsed - 1):
            raise ConfigError("invalid value %r for sysctl %s" % (value, name))  # proc_do_sync_ports
        if not all(-0x80000000 <= p <= 0x7FFFFFFF for p in (parsed if isinstance(parsed, tuple) else (parsed,))):
            raise ConfigError("invalid value %r for sysctl %s" % (value, name))  # proc_dointvec: an int
        lo_hi = _RANGES.get(name)
        if lo_hi and not lo_hi[0] <= parsed <= lo_hi[1]:
            raise ConfigError("invalid value %r for sysctl %s" % (value, name))
        before = self.__dict__[name]
        self.__dict__[name] = parsed
        self.generation += 1
        if name in DEFENSE_MODES and parsed != before and self.defense_hook is not None:
            self.defense_hook()   # proc_do_defense_mode: the levels follow at once
