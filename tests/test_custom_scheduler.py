"""A scheduler of one's own, from one Python file: lvs.registry.load_scheduler_file,
`--scheduler-path` for lvs replay and lvs daemon, the example (examples/scheduler_p2c.py),
the load errors, and a faulty scheduler refusing connections without taking the engine down."""

import os
import sys
import textwrap

import pytest

pytest.importorskip("scapy.all")
from scapy.layers.inet import ICMP, IP, TCP  # noqa: E402

from lvs import adm, ctl, registry  # noqa: E402
from lvs.engine import Engine  # noqa: E402
from lvs.errors import ConfigError  # noqa: E402

from test_daemon import lvs, sock  # noqa: E402,F401  (the daemon helpers and fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "scheduler_p2c.py")
CAPTURE = os.path.join(ROOT, "examples", "tutorial.pcap")
VIP, RS = "203.0.113.200", ("192.0.2.11", "192.0.2.12", "192.0.2.13")
CLIENT = "198.51.100.7"

FAULTY = '''
from schedulers._base import Scheduler


class Boom(Scheduler):
    name = "boom"

    def schedule(self, svc, pkt, now):
        return 1 // 0


class Bogus(Scheduler):
    name = "bogus"

    def schedule(self, svc, pkt, now):
        return "192.0.2.11"


class Stranger(Scheduler):
    """Returns a real server of another service."""
    name = "stranger"
    other = None

    def schedule(self, svc, pkt, now):
        return Stranger.other


class Hooks(Scheduler):
    """Its hooks raise; its schedule is fine."""
    name = "badhooks"

    def add_dest(self, svc, dest):
        raise RuntimeError("add_dest is broken")

    def tick(self, now):
        raise RuntimeError("tick is broken")

    def schedule(self, svc, pkt, now):
        return svc.destinations[0] if svc.destinations else None


class NoStart(Scheduler):
    name = "nostart"

    def __init__(self, svc, config=None):
        raise ValueError("needs a config file")
'''


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def syn(sport, dport=80, src=CLIENT, dst=VIP):
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))


def run(eng, *argv):
    out, err, status = adm.run(eng, list(argv), None)
    assert status == 0, err
    return out


def engine_with(sched, port=80, dests=RS, persistent=False):
    eng = Engine(seed=1)
    run(eng, "-A", "-t", "%s:%d" % (VIP, port), "-s", sched, *(["-p", "60"] if persistent else []))
    for i, rs in enumerate(dests):
        run(eng, "-a", "-t", "%s:%d" % (VIP, port), "-r", rs, "-g", "-w", str(i + 1))
    return eng


# ---------------------------------------------------------------- the example

def test_example_loads_and_schedules_through_lvsadm():
    assert registry.load_scheduler_file(EXAMPLE) == ["p2c"]
    assert registry.load_scheduler_file(EXAMPLE) == ["p2c"]   # the same file again: replaced
    picks = []
    for _ in range(2):
        eng = engine_with("p2c")
        assert "%s:80 p2c" % VIP in run(eng, "-Ln")
        assert "-s p2c" in run(eng, "-S", "-n")
        sent = [eng.receive(syn(40000 + i), 1000.0 + i) for i in range(30)]
        assert all(len(out) == 1 for out in sent), eng.drops
        picks.append([".".join(map(str, out[0].nexthop)) for out in sent])
        assert len(eng.conn_list()) == 30
    assert picks[0] == picks[1]                  # seeded: the same picks every run
    counts = {rs: picks[0].count(rs) for rs in RS}
    assert all(counts.values()), counts           # every server got some
    # Two choices by overhead/weight: the heaviest server carries the most.
    assert counts[RS[2]] > counts[RS[0]], counts


def test_builtin_schedulers_are_not_wrapped():
    registry.load_scheduler_file(EXAMPLE)
    eng = engine_with("rr")
    sched = next(iter(eng.services.values())).scheduler
    assert type(sched).__module__ == "schedulers.rr" and not hasattr(sched, "fault")


# ---------------------------------------------------------------- load errors

@pytest.mark.parametrize("text, message", [
    ("class X(:\n    pass\n", ":1: syntax error"),
    ("x = 1\n", "no scheduler class"),
    ("raise RuntimeError('no numpy here')\n", "RuntimeError: no numpy here"),
    ("from schedulers._base import Scheduler\nclass R(Scheduler):\n    name = 'rr'\n"
     "    def schedule(self, svc, pkt, now):\n        return None\n",
     "'rr' is the name of a built-in scheduler"),
    # A built-in not imported yet is found all the same.
    ("from schedulers._base import Scheduler\nclass O(Scheduler):\n    name = 'ovf'\n"
     "    def schedule(self, svc, pkt, now):\n        return None\n",
     "'ovf' is the name of a built-in scheduler"),
    ("class N:\n    name = 'none'\n    def schedule(self, svc, pkt, now):\n        return None\n",
     "'none' is the name of a built-in scheduler"),
    ("class N:\n    name = 'two words'\n    def schedule(self, svc, pkt, now):\n        return None\n",
     "bad scheduler name 'two words'"),
    ("class N:\n    name = 'sixteen_chars_xx'\n    def schedule(self, svc, pkt, now):\n"
     "        return None\n", "bad scheduler name"),
])
def test_load_errors(tmp_path, text, message):
    path = write(tmp_path, "sched.py", text)
    with pytest.raises(ConfigError) as e:
        registry.load_scheduler_file(path)
    assert message in e.value.message and path in e.value.message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        registry.load_scheduler_file(str(tmp_path / "nope.py"))
    assert "nope.py: No such file or directory" in e.value.message


def test_a_name_from_another_file_clashes(tmp_path):
    one = write(tmp_path, "one.py", "class A:\n    name = 'mine'\n"
                "    def schedule(self, svc, pkt, now):\n        return None\n")
    two = write(tmp_path, "two.py", "class B:\n    name = 'mine'\n"
                "    def schedule(self, svc, pkt, now):\n        return None\n")
    assert registry.load_scheduler_file(one) == ["mine"]
    with pytest.raises(ConfigError) as e:
        registry.load_scheduler_file(two)
    assert "'mine' is already registered from %s" % os.path.realpath(one) in e.value.message


def test_register_scheduler_in_a_file_and_a_plain_class(tmp_path):
    """A file may decorate with register_scheduler (it is still guarded) or not; a class
    without Scheduler as base gets its default hooks."""
    path = write(tmp_path, "both.py", """
        from lvs.registry import register_scheduler
        from schedulers._base import Scheduler
        from schedulers.wlc import WeightedLeastConnection   # imported, not ours

        @register_scheduler
        class First(Scheduler):
            name = "firstdest"

            def schedule(self, svc, pkt, now):
                return svc.destinations[-1]

        class Plain:
            name = "plain"

            def __init__(self, svc, config=None):
                pass

            def schedule(self, svc, pkt, now):
                return svc.destinations[0]
        """)
    assert registry.load_scheduler_file(path) == ["firstdest", "plain"]
    for name, want in (("firstdest", RS[0]), ("plain", RS[2])):
        eng = engine_with(name)
        out = eng.receive(syn(40001), 1.0)
        assert [".".join(map(str, t.nexthop)) for t in out] == [want]
        assert hasattr(next(iter(eng.services.values())).scheduler, "fault")


def test_cli_load_errors_exit_before_anything_runs(tmp_path, sock):  # noqa: F811
    bad = write(tmp_path, "bad.py", "def broken(:\n")
    rules = write(tmp_path, "r.rules", "-A -t 198.51.100.2:80 -s rr\n")
    r = lvs("replay", "--scheduler-path", bad, "--rules", rules, CAPTURE)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("lvs replay: scheduler file %s:1: syntax error" % bad)
    r = lvs("replay", "--scheduler-path", str(tmp_path / "missing.py"), "--rules", rules, CAPTURE)
    assert r.returncode == 2 and "missing.py: No such file or directory" in r.stderr
    r = lvs("daemon", "--socket", sock, "--scheduler-path", bad, "--detach")
    assert r.returncode == 1 and "lvs daemon: scheduler file %s:1: syntax error" % bad in r.stderr
    assert not os.path.exists(sock)
    clash = write(tmp_path, "clash.py", "class W:\n    name = 'wlc'\n"
                  "    def schedule(self, svc, pkt, now):\n        return None\n")
    r = lvs("daemon", "--socket", sock, "--scheduler-path", clash, "--detach")
    assert r.returncode == 1 and "'wlc' is the name of a built-in scheduler" in r.stderr
    # A name the rules use but no file gives: ipvsadm's answer, as for any unknown scheduler.
    rules2 = write(tmp_path, "r2.rules", "-A -t 198.51.100.2:80 -s p2c_typo\n")
    r = lvs("replay", "--scheduler-path", EXAMPLE, "--rules", rules2, CAPTURE)
    assert r.returncode == 2 and "Scheduler or persistence engine not found" in r.stderr


# ---------------------------------------------------------------- faults at run time

@pytest.fixture(scope="module")
def faulty_path(tmp_path_factory):
    # One file for the module: the registry is the process's, and a name stays with its file.
    return write(tmp_path_factory.mktemp("faulty"), "faulty.py", FAULTY)


@pytest.fixture
def faulty(faulty_path):
    assert registry.load_scheduler_file(faulty_path) == ["boom", "bogus", "stranger", "badhooks",
                                                  "nostart"]
    heard = []
    previous = registry.set_fault_reporter(lambda *a: heard.append(a))
    yield heard
    registry.set_fault_reporter(previous)


def _refused(out, sport, client=CLIENT):
    assert len(out) == 1
    p = IP(out[0].packet)
    assert ICMP in p and (p[ICMP].type, p[ICMP].code) == (3, 3) and p.dst == client
    assert p[ICMP].payload.sport == sport


@pytest.mark.parametrize("persistent", [False, True])
def test_faulty_schedulers_refuse_and_count(faulty, persistent):
    eng = Engine(seed=1)
    for port, sched in ((80, "boom"), (81, "bogus"), (82, "stranger"), (83, "rr")):
        run(eng, "-A", "-t", "%s:%d" % (VIP, port), "-s", sched,
            *(["-p", "60"] if persistent else []))
        run(eng, "-a", "-t", "%s:%d" % (VIP, port), "-r", RS[0], "-g")
    other = eng.services[next(k for k in eng.services if k[2] == 83)]
    faulty_module = sys.modules[type(eng.services[next(k for k in eng.services if k[2] == 82)]
                                     .scheduler).guarded_class.__module__]
    faulty_module.Stranger.other = other.destinations[0]
    _refused(eng.receive(syn(40001, 80), 1.0), 40001)
    _refused(eng.receive(syn(40002, 80, src="198.51.100.8"), 1.1), 40002, "198.51.100.8")
    _refused(eng.receive(syn(40003, 81), 1.2), 40003)
    _refused(eng.receive(syn(40004, 82), 1.3), 40004)
    assert eng.drops["scheduler_error"] == 2
    assert eng.drops["scheduler_bad_dest"] == 2
    assert eng.drops["no_dest"] == 0 and eng.drops["internal_error"] == 0
    assert [c for c in eng.conn_list() if not c.is_template] == []
    # The next connection, to a built-in scheduler's service, goes through.
    out = eng.receive(syn(40005, 83), 1.4)
    assert len(out) == 1 and out[0].nexthop == bytes(int(x) for x in RS[0].split("."))
    # Once per scheduler, the exception's first line.
    assert [(name, reason) for name, reason, _ in faulty] == [
        ("boom", "scheduler_error"), ("bogus", "scheduler_bad_dest"),
        ("stranger", "scheduler_bad_dest")]
    assert faulty[0][2].startswith("ZeroDivisionError: ")
    assert faulty[0][2].endswith("faulty.py:9)")    # where it was raised: `return 1 // 0`
    assert "'192.0.2.11'" in faulty[1][2]
    # A genuine "no server" on the faulty service is still no_dest afterwards.
    run(eng, "-d", "-t", "%s:81" % VIP, "-r", RS[0])
    eng.receive(syn(40006, 81), 1.5)
    assert eng.drops["scheduler_bad_dest"] == 3   # bogus still answers a string
    out = eng.receive(syn(40007, 84), 1.6)        # no such service: untouched
    assert eng.drops["no_service"] == 1


def test_faulty_hooks_and_init(faulty):
    eng = engine_with("badhooks")                 # add_dest raises, -a still works
    assert len(next(iter(eng.services.values())).destinations) == 3
    out = eng.receive(syn(40001), 1.0)
    assert len(out) == 1
    eng.expire(100.0)                             # tick raises on the estimator's beat
    assert [(n, r) for n, r, _ in faulty] == [("badhooks", "scheduler_error")]
    assert "add_dest(): RuntimeError: add_dest is broken" in faulty[0][2]
    out, err, status = adm.run(Engine(), ["-A", "-t", "%s:80" % VIP, "-s", "nostart"], None)
    assert status == 255 and "scheduler nostart: cannot start: ValueError: needs a config file" in err


def test_daemon_logs_a_fault_once(tmp_path, sock, faulty_path):  # noqa: F811
    path = faulty_path
    rules = write(tmp_path, "r.rules", "-A -t 198.51.100.2:80 -s boom\n"
                  "-a -t 198.51.100.2:80 -r 198.51.100.10:80 -g\n")
    log = str(tmp_path / "daemon.log")
    r = lvs("daemon", "--socket", sock, "--scheduler-path", path, "--rules", rules,
            "--clock", "capture", "--log", log, "--detach")
    assert r.returncode == 0, r.stderr
    answer = ctl.request(sock, {"op": "feed", "path": CAPTURE})
    assert answer["status"] == 0 and answer["drops"]["scheduler_error"] == 6
    answer = ctl.request(sock, {"op": "adm", "argv": ["-Ln"]})
    assert "198.51.100.2:80 boom" in answer["stdout"]
    lvs("daemon", "--socket", sock, "--stop")
    lines = [line for line in open(log) if "scheduler boom" in line]
    assert len(lines) == 1 and "ZeroDivisionError" in lines[0] and "scheduler_error" in lines[0]


# ---------------------------------------------------------------- lvs replay

def test_replay_with_the_example_end_to_end(tmp_path):
    rules = write(tmp_path, "p2c.rules", """
        -A -t 198.51.100.2:80 -s p2c
        -a -t 198.51.100.2:80 -r 198.51.100.10:10 -g -w 1
        -a -t 198.51.100.2:80 -r 198.51.100.11:11 -i -w 1
        -a -t 198.51.100.2:80 -r 198.51.100.12:12 -m -w 1
        """)
    out = str(tmp_path / "out.pcap")
    r = lvs("replay", "--scheduler-path", EXAMPLE, "--rules", rules, CAPTURE, "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    listing = r.stdout.split("\n\n")[0].splitlines()
    dests = [line for line in listing if line.startswith("  -> 198.51.100.1")]
    assert len(dests) == 3
    assert sum(int(line.split()[2]) for line in dests) == 6       # the six connections
    assert r.stdout.count("198.51.100.2:80    198.51.100.1") == 6  # six in -Lnc
    assert os.path.getsize(out) > 24
    again = lvs("replay", "--scheduler-path", EXAMPLE, "--rules", rules, CAPTURE)
    assert again.stdout == r.stdout                                  # reproducible


def test_replay_with_a_faulty_scheduler_goes_on(tmp_path, faulty_path):
    path = faulty_path
    rules = write(tmp_path, "boom.rules", "-A -t 198.51.100.2:80 -s boom\n"
                  "-a -t 198.51.100.2:80 -r 198.51.100.10:10 -g\n")
    r = lvs("replay", "--scheduler-path", path, "--rules", rules, CAPTURE)
    assert r.returncode == 0, r.stderr
    assert "scheduler_error=6" in r.stdout.splitlines()[-1]
    assert r.stderr.count("lvs replay: scheduler boom: ZeroDivisionError") == 1
