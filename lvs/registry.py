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
    if _loading is not None and cls.__module__ == _loading[0]:
        # A file being loaded (load_scheduler_file): registered once it has run, guarded.
        _loading[1].append(cls)
        return cls
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


# ---------------------------------------------------------------- schedulers from files
#
# `lvs replay/daemon --scheduler-path FILE`: a researcher's scheduler, one Python
# file with a class like the built-in ones (schedulers/_base.py: a `name` and a
# schedule(svc, pkt, now) method, the hooks optional). Such a class is registered
# wrapped in a guard, so that a bug in it refuses one connection instead of taking
# the engine down: a schedule() that raises, or that returns anything but one of
# the service's available real servers, answers None and leaves the reason in
# `fault`, which the packet path counts instead of no_dest (lvs/core.py
# _no_dest_reason). The built-in schedulers are not wrapped: their path is unchanged.

SCHEDULER_ERROR = "scheduler_error"        # schedule() raised
SCHEDULER_BAD_DEST = "scheduler_bad_dest"  # it returned something not a real server of the service
SCHED_NAME_MAX = 15                        # IP_VS_SCHEDNAME_MAXLEN - 1: what -s keeps

_from_files = {}      # name -> the resolved path of the file that registered it
_loaded_files = 0     # for unique module names
_loading = None       # (module name, classes register_scheduler saw) while a file loads
_reporter = None      # reporter(name, reason, text), once per scheduler (set_fault_reporter)
_reported = set()


def set_fault_reporter(reporter):
    """Who hears of a file-loaded scheduler's first fault: reporter(name, reason, text),
    called once per scheduler name (the daemon logs it). Returns the previous one."""
    global _reporter
    previous, _reporter = _reporter, reporter
    _reported.clear()
    return previous


def _first_line(exc):
    """`Type: first line of the message (at FILE:LINE)`, from the innermost frame."""
    text = str(exc).strip().splitlines()
    line = "%s: %s" % (type(exc).__name__, text[0]) if text else type(exc).__name__
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        line += " (at %s:%d)" % (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
    return line


def _report(name, reason, text):
    if _reporter is not None and name not in _reported:
        _reported.add(name)
        try:
            _reporter(name, reason, text)
        except Exception:
            pass


def _guarded(cls):
    """A subclass of `cls` whose hooks cannot raise and whose picks are checked."""
    from .flags import IP_VS_DEST_F_AVAILABLE
    from schedulers._base import Scheduler
    bases = (cls,) if issubclass(cls, Scheduler) else (cls, Scheduler)

    def __init__(self, svc, config=None):
        self.fault = None
        try:
            super(guarded, self).__init__(svc, config)
        except Exception as e:
            raise ConfigError("scheduler %s: cannot start: %s" % (self.name, _first_line(e)))

    def schedule(self, svc, pkt, now):
        try:
            dest = super(guarded, self).schedule(svc, pkt, now)
        except Exception as e:
            self.fault = SCHEDULER_ERROR
            _report(self.name, SCHEDULER_ERROR, _first_line(e))
            return None
        if dest is None or (getattr(dest, "svc", None) is svc
                            and getattr(dest, "flags", 0) & IP_VS_DEST_F_AVAILABLE):
            self.fault = None
            return dest
        self.fault = SCHEDULER_BAD_DEST
        _report(self.name, SCHEDULER_BAD_DEST,
                "schedule() returned %.80r, not one of the service's real servers" % (dest,))
        return None

    def hook(method):
        def call(self, *args):
            try:
                getattr(super(guarded, self), method)(*args)
            except Exception as e:
                _report(self.name, SCHEDULER_ERROR, "%s(): %s" % (method, _first_line(e)))
        call.__name__ = method
        return call

    namespace = {"__init__": __init__, "schedule": schedule, "__module__": cls.__module__,
                 "__qualname__": cls.__qualname__, "__doc__": cls.__doc__, "guarded_class": cls}
    for method in ("add_dest", "del_dest", "upd_dest", "done_service", "tick"):
        namespace[method] = hook(method)
    guarded = type(cls.__name__, bases, namespace)
    return guarded


def builtin_scheduler(name):
    """Is `name` one of the shipped schedulers (or "none")?"""
    if name == "none":
        return True
    if name in _schedulers and name not in _from_files:
        return True
    if not name.isidentifier() or name.startswith("_"):
        return False
    import importlib.util
    try:
        return importlib.util.find_spec("schedulers." + name) is not None
    except (ImportError, ValueError):
        return False


def _candidates(module, seen):
    """The scheduler classes a loaded file defines: those it passed to
    register_scheduler, and the classes of its own with a name and a schedule()."""
    found = list(seen)
    for value in vars(module).values():
        if (isinstance(value, type) and value.__module__ == module.__name__ and value not in found
                and isinstance(getattr(value, "name", None), str) and value.name
                and callable(getattr(value, "schedule", None))):
            found.append(value)
    return found


def load_scheduler_file(path):
    """Load one Python file as a module and register its scheduler classes.

    Returns the names registered, in the file's order. ConfigError, before
    anything is registered, if the file cannot be read or compiled, fails when
    run, defines no scheduler class, or names one as a built-in scheduler (or as
    one another file registered). Loading the same file again replaces its
    schedulers (services made before keep the old instances)."""
    global _loaded_files, _loading
    import importlib.util
    import pathlib
    import sys
    try:
        resolved = str(pathlib.Path(path).resolve())
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        raise ConfigError("scheduler file %s: %s" % (path, e.strerror or e))
    try:
        code = compile(source, path, "exec")
    except SyntaxError as e:
        raise ConfigError("scheduler file %s:%s: syntax error: %s" % (path, e.lineno, e.msg))
    except ValueError as e:  # NUL bytes
        raise ConfigError("scheduler file %s: %s" % (path, e))
    _loaded_files += 1
    stem = "".join(c if c.isalnum() else "_" for c in pathlib.Path(path).stem)
    modname = "pylvs_scheduler_file_%d_%s" % (_loaded_files, stem)
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module   # dataclasses, pickling and typing look modules up here
    _loading = (modname, [])
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as e:
        sys.modules.pop(modname, None)
        raise ConfigError("scheduler file %s: %s" % (path, _first_line(e)))
    finally:
        seen, _loading = _loading[1], None
    classes = _candidates(module, seen)
    if not classes:
        sys.modules.pop(modname, None)
        raise ConfigError("scheduler file %s: no scheduler class (a class with a `name` and a "
                          "schedule(self, svc, pkt, now) method, as in schedulers/_base.py)" % path)
    names = []
    for cls in classes:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError("scheduler file %s: class %s has no name" % (path, cls.__name__))
        if (len(name) > SCHED_NAME_MAX or not name.isprintable() or any(c.isspace() for c in name)
                or not name.isascii()):
            raise ConfigError("scheduler file %s: bad scheduler name %r (1 to %d printable ASCII "
                              "characters, no spaces)" % (path, name, SCHED_NAME_MAX))
        if not callable(getattr(cls, "schedule", None)):
            raise ConfigError("scheduler file %s: class %s has no schedule() method"
                              % (path, cls.__name__))
        if builtin_scheduler(name):
            raise ConfigError("scheduler file %s: %r is the name of a built-in scheduler"
                              % (path, name))
        if _from_files.get(name, resolved) != resolved:
            raise ConfigError("scheduler file %s: %r is already registered from %s"
                              % (path, name, _from_files[name]))
        if name in names:
            raise ConfigError("scheduler file %s: two classes are named %r" % (path, name))
        names.append(name)
    for cls in classes:
        _schedulers[cls.name] = _guarded(cls)
        _from_files[cls.name] = resolved
    return names
