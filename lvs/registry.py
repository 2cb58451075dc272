"""Scheduler registry: the analogue of ip_vs_sched.c.

A scheduler module registers itself when imported; a name not yet registered
is looked up by importing `schedulers.<name>`, as the kernel runs
request_module("ip_vs_%s") before giving up.
"""

import importlib

from .errors import ConfigError

_schedulers = {}

# ipvsadm's text for ENOENT from IP_VS_SO_SET_ADD / EDIT.
NOT_FOUND = "Scheduler or persistence engine not found"


def register_scheduler(cls):
    name = cls.name
    if not name or name in _schedulers:
        raise ValueError("scheduler %r already registered or unnamed" % name)
    _schedulers[name] = cls
    return cls


def scheduler_class(name):
    cls = _schedulers.get(name)
    if cls is None and name.isidentifier() and not name.startswith("_"):
        try:
            importlib.import_module("schedulers." + name)
        except ImportError:
            pass
        cls = _schedulers.get(name)
    if cls is None:
        raise ConfigError(NOT_FOUND)
    return cls
