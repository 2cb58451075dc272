"""The engine is sans-IO: no module on the packet path may reach a clock, a socket or randomness."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = {"socket", "select", "selectors", "os", "time", "random", "asyncio", "fcntl", "threading"}
CORE = ["lvs/" + name for name in (
    "engine.py", "core.py", "core6.py", "ipv6.py", "defrag6.py", "proto_icmp6.py", "icmp6.py", "tables.py", "timers.py", "icmp_send.py", "conntab.py", "service.py", "stats.py", "proto_tcp.py", "proto_icmp.py",
    "checksum.py", "icmp.py", "defrag.py", "config.py", "control.py", "registry.py",
    "flags.py", "errors.py", "verdicts.py")]
CORE += ["schedulers/" + f for f in sorted(os.listdir(os.path.join(ROOT, "schedulers"))) if f.endswith(".py")]
CORE += ["forwarders/" + f for f in sorted(os.listdir(os.path.join(ROOT, "forwarders"))) if f.endswith(".py")]


@pytest.mark.parametrize("path", CORE)
def test_no_io_imports(path):
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, "%s imports %s" % (path, name)
