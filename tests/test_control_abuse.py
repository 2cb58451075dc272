"""The control socket and the rules input under abuse (issue 11): garbage, bad JSON, wrong
types, oversized and truncated requests, silent and concurrent clients, huge numbers, long
lines, NUL and non-UTF-8. Each gets a clear error; the daemon goes on serving; nothing
is applied. Then a short run of tools/fuzz/control.py."""

import json
import os
import random
import socket
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lvs import ctl, rules  # noqa: E402
from lvs.errors import ConfigError  # noqa: E402
from tools.fuzz import control as fz  # noqa: E402

TIMEOUT = 1.0   # the daemon's client timeout here (lvs.daemon.CLIENT_TIMEOUT is 10 s)
CAPTURE = os.path.join(ROOT, "examples", "tutorial.pcap")


@pytest.fixture(scope="module")
def daemon():
    d = fz.FuzzDaemon(client_timeout=TIMEOUT)
    d.start()
    try:
        yield d
    finally:
        d.cleanup()
    assert "Traceback" not in d.log_text()


@pytest.fixture
def sock(daemon):
    """The socket of a daemon holding fz.BASE_RULES; checked (still serving, nothing
    applied) after the test."""
    before = state(daemon.path)
    yield daemon.path
    assert ctl.request(daemon.path, {"op": "ping"}, timeout=5)["pid"] == daemon.pid
    assert state(daemon.path) == before


def state(path):
    return (fz.adm(path, "-S", "-n")["stdout"], fz.adm(path, "-L", "--timeout")["stdout"],
            fz.ask(path, {"op": "sysctl", "set": {}})["values"])


def raw(path, data, **kw):
    r = fz.exchange(path, data, **kw)
    return r.answer


def error_of(path, data, **kw):
    answer = raw(path, data, **kw)
    assert fz.json_error_problem(answer) is None, answer
    return answer["error"]


def adm(path, argv, stdin=None, op="adm"):
    return fz.ask(path, {"op": op, "argv": argv, "stdin": stdin, "prog": "ipvsadm"})


# ---------------------------------------------------------------- the protocol

def test_binary_garbage(sock):
    rng = random.Random(1)
    for n in (1, 100, 5000):
        data = bytes(rng.getrandbits(8) for _ in range(n)).replace(b"{", b"(")
        assert error_of(sock, data).startswith("bad request: ")
    assert error_of(sock, b"\xff\xfe{}\n") == "bad request: not UTF-8 (byte 0xff at offset 0)"
    assert error_of(sock, b"\n") == "bad request: empty request"
    assert error_of(sock, b"") == "bad request: empty request"


def test_bad_json(sock):
    for text in (b"not json\n", b"{'pylvs': 1, 'op': 'ping'}\n", b'{"pylvs": 1, "op": "ping",}\n',
                 b'{"pylvs": 1, "op": "ping"} {"op": "stop"}\n', b'{"pylvs": 1, "op": "ping", "x": NaN}\n',
                 b'{"pylvs": 1, "op": "ping", "x": Infinity}\n', b'{"pylvs": 1, "op": "\\x41"}\n'):
        assert error_of(sock, text).startswith("bad request: "), text


@pytest.mark.parametrize("message, error", [
    ([{"op": "ping"}], "bad request: not a JSON object"),
    ("ping", "bad request: not a JSON object"),
    ({"pylvs": 1}, "bad request: op must be a string, not None"),
    ({"pylvs": 1, "op": ["adm"]}, "bad request: op must be a string, not ['adm']"),
    ({"op": "ping"}, "unsupported protocol version None"),
    ({"pylvs": True, "op": "ping"}, "unsupported protocol version True"),
    ({"pylvs": 10 ** 100, "op": "ping"}, "unsupported protocol version <a huge integer>"),
    ({"pylvs": 1, "op": "x" * 100000}, "unknown op '" + "x" * 59 + "..."),
    ({"pylvs": 1, "op": "adm", "argv": "-C"}, "argv must be a list of strings"),
    ({"pylvs": 1, "op": "adm"}, "argv must be a list of strings"),
    ({"pylvs": 1, "op": "adm", "argv": ["-C", 1]}, "argv must be a list of strings"),
    ({"pylvs": 1, "op": "adm", "argv": ["-C", None]}, "argv must be a list of strings"),
    ({"pylvs": 1, "op": "adm", "argv": ["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.9", "-w", 10 ** 4000]},
     "argv must be a list of strings"),
    ({"pylvs": 1, "op": "adm", "argv": ["-R"], "stdin": 5}, "stdin must be a string"),
    ({"pylvs": 1, "op": "adm", "argv": ["-C"], "prog": ["ipvsadm"]}, "prog must be a string"),
    ({"pylvs": 1, "op": "replace", "stdin": ["-C"]}, "stdin must be a string"),
    ({"pylvs": 1, "op": "sysctl", "set": []}, "set must be an object of sysctl names and values"),
    ({"pylvs": 1, "op": "sysctl", "set": {"am_droprate": 5, "sync_ports": 3}},
     "invalid value '3' for sysctl sync_ports"),
    ({"pylvs": 1, "op": "sysctl", "set": {"amemthresh": 10 ** 30}},
     "invalid value '%d' for sysctl amemthresh" % 10 ** 30),
    ({"pylvs": 1, "op": "feed", "path": "/dev/zero"}, "/dev/zero: not a regular file"),
    ({"pylvs": 1, "op": "feed", "path": "a\0b"}, "embedded null byte"),
    ({"pylvs": 1, "op": "vips", "own": [1]}, "no live data plane (--iface): no VIPs to own"),
])
def test_wrong_types(sock, message, error):
    assert error_of(sock, json.dumps(message).encode() + b"\n") == error


def test_huge_integers_and_depth_bombs(sock):
    assert error_of(sock, b'{"pylvs": 1, "op": "ping", "x": ' + b"9" * 5000 + b"}\n") == \
        "bad request: integer of 5000 digits"
    for bomb in (b"[" * 100000, b'{"a":' * 100000 + b"1" + b"}" * 100000,
                 b'{"pylvs": 1, "op": "adm", "argv": ' + b"[" * 1000000 + b"]" * 1000000 + b"}"):
        assert error_of(sock, bomb + b"\n") == "bad request: nested too deeply"


def test_oversized_line_is_answered_and_cut(sock):
    data = b'{"pylvs": 1, "op": "adm", "argv": ["-A", "-t", "' + b"9" * (ctl.MAX_REQUEST + 10)
    assert error_of(sock, data + b'"]}\n', timeout=30) == \
        "bad request: longer than %d bytes without a newline" % ctl.MAX_REQUEST
    # An endless stream: the daemon stops reading (we get EPIPE) and says why.
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(sock)
    sent, block = 0, b"x" * (1 << 20)
    with pytest.raises(OSError):
        while sent < 64 << 20:
            s.sendall(block)
            sent += len(block)
    assert sent < 2 * ctl.MAX_REQUEST
    answer = json.loads(fz._read_answer(s).decode())
    s.close()
    assert "longer than" in answer["error"]


def test_truncated_requests_apply_nothing(sock):
    full = fz.request_line(["-A", "-t", "198.51.100.77:80", "-s", "rr"]).rstrip(b"\n")
    for cut in (1, len(full) // 2, len(full) - 1):
        assert error_of(sock, full[:cut]).startswith("bad request: ")    # we stop, then read
        fz.exchange(sock, full[:cut], shut=False, read=False)            # we hang up mid-line
    stop = fz.encode({"pylvs": 1, "op": "stop"}).rstrip(b"\n")
    fz.exchange(sock, stop[:-1], shut=False, read=False)                 # a stop cut short stops nothing
    assert "198.51.100.77" not in fz.adm(sock, "-S", "-n")["stdout"]


# ---------------------------------------------------------------- clients

def test_silent_clients_block_nobody_and_are_hung_up_on(sock):
    silent = []
    for i in range(6):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        if i % 2:
            s.sendall(b'{"pylvs": 1, "op": "adm", "argv": ["-C"')          # and never the rest
        silent.append(s)
    opened = time.monotonic()
    for _ in range(10):
        t = time.monotonic()
        assert fz.ask(sock, {"op": "ping"})["pid"]
        assert time.monotonic() - t < 0.5
    assert fz.adm(sock, "-L", "-n")["status"] == 0
    for s in silent:   # after the timeout: told so, then EOF
        s.settimeout(TIMEOUT + 5)
        answer = json.loads(fz._read_answer(s).decode())
        assert answer["error"] == "timeout: no complete request within %g s" % TIMEOUT
        assert s.recv(10) == b""
        assert time.monotonic() - opened >= TIMEOUT * 0.9
        s.close()


def test_a_slow_client_and_one_that_does_not_read_block_nobody(sock):
    save = fz.adm(sock, "-S", "-n")["stdout"]
    result = {}

    def drip():
        result["r"] = fz.exchange(sock, fz.request_line(["-S", "-n"]), pieces=1, pause=0.003)
    t = threading.Thread(target=drip)
    t.start()
    # A long answer (about 1 MB) left unread for a while.
    lazy = socket.socket(socket.AF_UNIX)
    lazy.settimeout(10)
    lazy.connect(sock)
    lazy.sendall(fz.request_line(["-R"], stdin="-S -n\n" * 3000))
    lazy.shutdown(socket.SHUT_WR)
    for _ in range(10):
        started = time.monotonic()
        fz.ask(sock, {"op": "ping"})
        assert time.monotonic() - started < 0.5
    t.join(10)
    assert result["r"].answer["stdout"] == save
    assert json.loads(fz._read_answer(lazy).decode())["stdout"] == save * 3000
    lazy.close()


def test_concurrent_clients(sock):
    rng = random.Random(2)
    jobs = []
    for i in range(40):
        kind = i % 5
        if kind == 0:
            jobs.append((fz.encode({"pylvs": 1, "op": "ping"}), "ping"))
        elif kind == 1:
            jobs.append((fz.request_line(["-A", "-t", "203.0.113.%d:80" % i, "-s", "rr"]), "add"))
        elif kind == 2:
            jobs.append((bytes(rng.getrandbits(8) for _ in range(300)).replace(b"{", b"(") + b"\n", "error"))
        elif kind == 3:
            jobs.append((fz.request_line(["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.60", "-w",
                                          "99999999999999999999"]), "weight"))
        else:
            jobs.append((b"[" * 100000 + b"\n", "error"))
    results = [None] * len(jobs)

    def go(i):
        results[i] = fz.exchange(sock, jobs[i][0], timeout=30)
    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for (_, kind), r in zip(jobs, results):
        if kind == "ping":
            assert "pid" in r.answer
        elif kind == "add":
            assert r.answer["status"] == 0
        elif kind == "error":
            assert fz.json_error_problem(r.answer) is None
        else:
            assert (r.answer["status"], r.answer["stderr"]) == (2, "illegal weight specified\n")
    saved = fz.adm(sock, "-S", "-n")["stdout"]
    assert all("-A -t 203.0.113.%d:80 -s rr" % i in saved for i in range(1, 40, 5))
    for i in range(1, 40, 5):
        assert fz.adm(sock, "-D", "-t", "203.0.113.%d:80" % i)["status"] == 0


def test_too_many_connections_are_told_busy(sock):
    socks, busy = [], 0
    try:
        for _ in range(70):
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            socks.append(s)
        time.sleep(0.1)
        for s in socks:
            s.setblocking(False)
            try:
                answer = json.loads(s.recv(65536).decode())
            except BlockingIOError:
                continue
            assert answer["error"] == "busy: 64 control connections are open"
            busy += 1
    finally:
        for s in socks:
            s.close()
    assert busy == 70 - 64
    time.sleep(0.05)


# ---------------------------------------------------------------- ipvsadm's input

@pytest.mark.parametrize("argv, status, stderr", [
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.40", "-w", "99999999999999999999"], 2,
     "illegal weight specified\n"),
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.40", "-w", "9" * 5000], 2, "illegal weight specified\n"),
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.40", "-x", "9" * (1 << 20)], 2,
     "illegal u_threshold specified\n"),
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.40", "-w", "\uff15"], 2, "illegal weight specified\n"),
    (["-A", "-t", "198.51.100.3:65536", "-s", "rr"], 2, "illegal virtual server address[:port] specified\n"),
    (["-A", "-t", "198.51.100.3:" + "9" * 5000], 2, "illegal virtual server address[:port] specified\n"),
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.40:65536", "-m"], 2,
     "illegal real server address[:port] specified\n"),
    (["-A", "-t", "256.1.1.1:80"], 2, "illegal virtual server address[:port] specified\n"),
    (["-A", "-t", "[2001:db8::2:80"], 2, "illegal virtual server address[:port] specified\n"),
    (["-A", "-t", "198.51.100.3:80", "-p", "99999999999999999999"], 2,
     "invalid timeout value `99999999999999999999' specified\n"),
    (["-A", "-f", "4294967296"], 2, "invalid fwmark value `4294967296' specified\n"),
    (["--set", "9" * 30, "1", "1"], 2, "invalid timeout value `%s' specified\n" % ("9" * 30)),
    (["-A", "-t", "198.51.100.3:80", "-s", "x" * (1 << 20)], 255, "Scheduler or persistence engine not found\n"),
    (["-A", "-t", "a" * (1 << 20)], 2, "illegal virtual server address[:port] specified\n"),
    (["-L", "-n", "--" + "x" * 1000], 255, "--%s: unknown option\n" % ("x" * 1000)),
    (["-A", "-t", "198.51.100.3:80", "-Q"], 255, "-Q: unknown option\n"),
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.43", "-w"], 255, "-w: missing argument\n"),
    (["-L", "-n", "junk"], 2, "unexpected argument junk\n"),
])
def test_huge_numbers_and_long_strings_get_ipvsadms_answer(sock, argv, status, stderr):
    answer = adm(sock, argv)
    assert (answer["status"], answer["stdout"], answer["stderr"]) == (status, "", stderr)


def test_huge_numbers_cost_no_time():
    started = time.monotonic()
    with pytest.raises(ConfigError) as e:
        rules.parse_cli(["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.40", "-w", "9" * (16 << 20)])
    assert e.value.message == "illegal weight specified"
    assert time.monotonic() - started < 2.0
    # atoi, as glibc's: clamped to a long, cut to an int (ipvsadm's -M for IPv6 services)
    assert rules._atoi("4294967297") == 1 and rules._atoi("9" * 100) == -1


@pytest.mark.parametrize("argv, status, stderr", [
    (["-A", "-t", "198.51.10\0" "0.2:80", "-s", "rr"], 2, "illegal virtual server address[:port] specified\n"),
    (["-A", "-u", "198.51.100.2\0"], 2, "illegal virtual server address[:port] specified\n"),
    (["-A", "-t", "198.51.100.2:8\0" "0"], 2, "illegal virtual server address[:port] specified\n"),
    (["-A", "-t", "198.51.100.2\udcff:80"], 2, "illegal virtual server address[:port] specified\n"),
    (["-A", "-t", "198.51.100.2:80\ud800"], 2, "illegal virtual server address[:port] specified\n"),
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.4\0" "1"], 2, "illegal real server address[:port] specified\n"),
    (["-L", "-n", "--x\udcff\0"], 255, "--x\udcff\0: unknown option\n"),
    (["-A", "-t", "198.51.100.3:80", "-s", "r\udcffr"], 255, "Scheduler or persistence engine not found\n"),
])
def test_nul_and_non_utf8_in_argv(sock, argv, status, stderr):
    answer = adm(sock, argv)
    assert (answer["status"], answer["stdout"], answer["stderr"]) == (status, "", stderr)


def test_non_utf8_in_the_json_itself(sock):
    for bad in (b"\xff", b"\xc0\x80", b"\xed\xa0\x80"):
        data = b'{"pylvs": 1, "op": "adm", "argv": ["-A", "-t", "' + bad + b':80"]}\n'
        assert error_of(sock, data).startswith("bad request: not UTF-8 (byte ")


@pytest.mark.parametrize("op", ["adm", "replace"])
def test_restore_with_garbage_huge_numbers_long_lines_applies_nothing(sock, op):
    base = fz.adm(sock, "-S", "-n")["stdout"] if op == "replace" else ""
    head = base + "-A -t 198.51.100.70:80 -s rr\n-a -t 198.51.100.70:80 -r 192.0.2.70 -m\n"
    n = head.count("\n") + 1
    rng = random.Random(3)
    # no '-': a token "-v" or "-h" would be a command (version, help: status 0)
    garbage = b"x" + bytes(rng.getrandbits(8) for _ in range(2000)).replace(b"\n", b"").replace(b"-", b"_")
    cases = [
        (garbage.decode("utf-8", "surrogateescape"), 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information.\n"),
        ("-a -t 198.51.100.70:80 -r 192.0.2.71 -w 99999999999999999999", 2, "illegal weight specified\n"),
        ("-A -t 198.51.100.71:65536 -s rr", 2, "illegal virtual server address[:port] specified\n"),
        ("-A -t 198.51.100.71:80 -s " + "x" * (1 << 20), 255, "Scheduler or persistence engine not found\n"),
        ("x" * (1 << 20), 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information.\n"),
        ("-A -t 198.51.100.7\0" "1:80", 2, "illegal virtual server address[:port] specified\n"),
    ]
    for line, status, message in cases:
        stdin = head + line + "\n-A -t 198.51.100.72:80 -s rr\n"
        answer = adm(sock, ["-R"] if op == "adm" else None, stdin, op=op)
        assert (answer["status"], answer["stdout"], answer["stderr"]) == (status, "", "line %d: %s" % (n, message))
    # A good input with a 1 MB line (blanks around a command) is applied, all of it.
    answer = adm(sock, ["-R"] if op == "adm" else None, head + " " * (1 << 20) + "-A -t 198.51.100.72:80 -s rr\n",
                 op=op)
    assert answer["status"] == 0
    saved = fz.adm(sock, "-S", "-n")["stdout"]
    assert "198.51.100.70:80" in saved and "198.51.100.72:80" in saved
    for vip in ("198.51.100.70:80", "198.51.100.72:80"):
        fz.adm(sock, "-D", "-t", vip)


# ---------------------------------------------------------------- the command-line tools

def test_lvsadm_with_garbage_stdin_and_non_utf8_argv(sock):
    env = {"LVS_SOCKET": sock}
    rng = random.Random(4)
    garbage = b"x" + bytes(rng.getrandbits(8) for _ in range(3000)).replace(b"\n", b"").replace(b"-", b"_")
    r = fz.run_shim(["-R"], entry="lvsadm", input=b"-A -t 198.51.100.80:80 -s rr\n" + garbage + b"\n", env=env)
    assert (r.returncode, r.stdout) == (255, b"")
    assert r.stderr == b"line 2: Try `lvsadm -h' or 'lvsadm --help' for more information.\n"
    r = fz.run_shim([], entry="lvsadm-restore", input=garbage + b"\n-a -t 1.2.3.4:80 -r 1.2.3.5 -w " + b"9" * 99,
                    env=env)
    assert r.returncode == 255 and r.stdout == b"" and r.stderr.startswith(b"line 1: Try `lvsadm -h'")
    # Bytes that are no UTF-8 come back as they were given, as ipvsadm echoes them.
    r = fz.run_shim([b"-L", b"--x\xff\xfe"], entry="lvsadm", env=env)
    assert (r.returncode, r.stderr) == (255, b"--x\xff\xfe: unknown option\n")
    r = fz.run_shim([b"-A", b"-t", b"\xff:80"], entry="lvsadm", env=env)
    assert (r.returncode, r.stderr) == (2, b"illegal virtual server address[:port] specified\n")


def test_replay_and_daemon_rules_with_garbage(tmp_path):
    garbage = tmp_path / "garbage.rules"
    garbage.write_bytes(b"-A -t 198.51.100.2:80 -s rr\n\xff\xfe\x00garbage\n")
    r = fz.run_shim(["replay", "--rules", str(garbage), CAPTURE])
    assert (r.returncode, r.stderr) == (2, b"lvs replay: %s:2: not UTF-8 text (byte 0xff)\n" % str(garbage).encode())
    huge = tmp_path / "huge.rules"
    huge.write_bytes(b"-A -t 198.51.100.2:80 -s rr\n" + b"-a -t 198.51.100.2:80 -r 192.0.2.9 -w " + b"9" * 100000
                     + b"\n@inf -C\n")
    r = fz.run_shim(["replay", "--rules", str(huge), CAPTURE])
    assert (r.returncode, r.stderr) == (2, b"lvs replay: %s:2: illegal weight specified\n" % str(huge).encode())
    r = fz.run_shim(["daemon", "--socket", str(tmp_path / "s" / "lvs.sock"), "--rules", str(garbage)])
    assert (r.returncode, r.stderr) == (1, b"lvs daemon: %s:2: not UTF-8 text (byte 0xff)\n" % str(garbage).encode())
    assert not (tmp_path / "s" / "lvs.sock").exists()


# ---------------------------------------------------------------- the fuzzer

def test_a_short_fuzz_run_finds_nothing():
    report = fz.fuzz(requests=300, seed=11, cli=False, client_timeout=TIMEOUT)
    assert report["failures"] == 0, report["failure_list"]
    assert report["daemon_restarts"] == 0
    assert all(c["cases"] for name, c in report["categories"].items() if name != "cli")
