"""Fuzz `lvs daemon`'s control socket and lvsadm's rules input (issue 11, the control side).

    python -m tools.fuzz.control [--requests N] [--seed S] [--time-limit SECONDS] [--json]

It starts its own daemon (socket in a temporary directory, some services loaded with
--rules, --clock capture), then throws at the socket, by category:

  binary      random bytes
  badjson     text that is almost a request, but not JSON
  types       JSON of the wrong types: no object, op missing or no string, argv no list
              of strings, stdin/prog no strings, huge integers, nesting depth bombs...
  oversized   lines beyond the daemon's cap (16 MiB), up to 64 MiB, and endless streams
  truncated   a request that would change the tables, cut short and the connection closed
  slow        silent clients, partial requests, a client dripping its request byte by
              byte, one that does not read a long answer: none may delay the others;
              silent ones must be hung up on after the daemon's client timeout
  concurrent  many clients at once, sending the above and good requests
  argv        mutated ipvsadm command lines: huge numbers, ports 65536, bad addresses,
              long strings, unknown options...; where the case is a standard one, the
              exact message and status ipvsadm 1.31 gives
  encoding    NUL bytes, non-UTF-8 (raw, and as lvsadm sends it: surrogate escapes),
              lone surrogates, in argv and in the JSON itself
  restore     -R and replace (lvsadm-restore) input with binary garbage, huge numbers,
              1 MB lines, one bad line among good ones: all of it refused
  cli         lvsadm -R / lvsadm-restore with garbage stdin, lvsadm with non-UTF-8 argv,
              lvs replay --rules and lvs daemon --rules with garbage files

After each request: the answer must be a clear error (a JSON "error", or ipvsadm's message
with a non-zero status and nothing on stdout; never "internal error"), the daemon must
still answer ping, and the tables, timeouts, sync daemons and sysctls must be as before
when the request was refused. A request that was accepted (a mutation can be valid) is
undone by restoring the baseline. The report gives the counts per category, the failures
(there must be none) and the requests per second; the exit status is 1 on any failure.

No name is resolved: the daemon (and the lvs commands run) see a resolver that knows only
"localhost" (socket.gethostbyname/gethostbyaddr replaced), so a mutated host name sends
nothing to DNS; nothing leaves the Unix socket. --start-daemon is never sent (multicast).
"""

import argparse
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lvs import ctl  # noqa: E402

MAX_REQUEST = ctl.MAX_REQUEST
CLIENT_TIMEOUT = 2.0       # the fuzzed daemon's (lvs.daemon.CLIENT_TIMEOUT is 10 s)
MAX_CLIENTS = 64           # lvs.daemon.MAX_CLIENTS
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)   # Linux's; PyPy's select lacks the name
STALL = 1.0                # a ping slower than this while others misbehave: stalled

# Runs `lvs ...` (or lvsadm, with LVS_FUZZ_ENTRY=lvsadm...) with an offline resolver.
SHIM = r"""
import os, socket, sys
def gethostbyname(name):
    if name == "localhost":
        return "127.0.0.1"
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
def gethostbyaddr(addr):
    raise socket.herror(1, "Unknown host")
socket.gethostbyname = gethostbyname
socket.gethostbyaddr = gethostbyaddr
sys.path.insert(0, os.environ["LVS_FUZZ_ROOT"])
import lvs.daemon
if os.environ.get("LVS_FUZZ_CLIENT_TIMEOUT"):
    lvs.daemon.CLIENT_TIMEOUT = float(os.environ["LVS_FUZZ_CLIENT_TIMEOUT"])
entry = os.environ.get("LVS_FUZZ_ENTRY", "lvs")
if entry == "lvs":
    from lvs.cli import main
    sys.exit(main(sys.argv[1:]))
import lvs.lvsadm
sys.argv[0] = entry
sys.exit({"lvsadm": lvs.lvsadm.main, "lvsadm-restore": lvs.lvsadm.restore_main,
          "lvsadm-save": lvs.lvsadm.save_main}[entry]())
"""

BASE_RULES = """\
-A -t 198.51.100.2:80 -s rr
-a -t 198.51.100.2:80 -r 192.0.2.10:80 -m -w 1
-a -t 198.51.100.2:80 -r 192.0.2.11:80 -m -w 2
-A -u 198.51.100.2:53 -s wrr -p 300
-a -u 198.51.100.2:53 -r 192.0.2.20:53 -g -w 5
-A -f 7 -s sh -b sh-port
-a -f 7 -r 192.0.2.30:0 -g -w 1
-A -t [2001:db8::2]:443 -s wlc
-a -t [2001:db8::2]:443 -r [2001:db8::10]:443 -m -w 3
"""

# Valid command lines (against BASE_RULES or not: mutations start from them).
CORPUS = [
    "-A -t 198.51.100.3:80 -s rr",
    "-A -t 198.51.100.3:8080 -s wlc -p 600 -M 255.255.255.0",
    "-A -u 198.51.100.4:53 -s sh -b sh-port,sh-fallback",
    "-A -f 9 -s mh -b mh-port",
    "-A -f 10 -6 -s lc",
    "-A -t [2001:db8::3]:80 -s sed -p -M 64",
    "-E -t 198.51.100.2:80 -s wrr",
    "-E -u 198.51.100.2:53 -s wrr -p 120",
    "-D -t 198.51.100.2:80",
    "-a -t 198.51.100.2:80 -r 192.0.2.12:80 -m -w 4",
    "-a -t 198.51.100.2:80 -r 192.0.2.13 -g -x 100 -y 10",
    "-a -t 198.51.100.2:80 -r 192.0.2.14 -i --tun-type gue --tun-port 6080 --tun-csum",
    "-a -t [2001:db8::2]:443 -r [2001:db8::11]:443 -m -w 1",
    "-e -t 198.51.100.2:80 -r 192.0.2.10:80 -m -w 7",
    "-d -t 198.51.100.2:80 -r 192.0.2.11:80",
    "-d -u 198.51.100.2:53 -r 192.0.2.20",
    "-L -n", "-Ln --stats", "-L -n --rate --exact", "-L -n -t 198.51.100.2:80 --thresholds",
    "-L -n --persistent-conn", "-L -n --tun-info", "-L -n -c", "-L --timeout", "-L --daemon",
    "-S -n", "-S", "-Z", "-Z -t 198.51.100.2:80", "--set 900 120 300", "-C", "-h", "-v",
    "--stop-daemon master",
]

# Tokens a mutation may insert.
VOCABULARY = [
    "-A", "-E", "-D", "-C", "-R", "-S", "-a", "-e", "-d", "-L", "-l", "-Z", "-h", "-v", "-n",
    "-c", "-t", "-u", "-f", "-s", "-p", "-M", "-r", "-g", "-i", "-m", "-w", "-x", "-y", "-6",
    "-o", "-b", "-X", "--set", "--timeout", "--daemon", "--stats", "--rate", "--exact",
    "--thresholds", "--persistent-conn", "--nosort", "--sort", "--tun-info", "--tun-type",
    "--tun-port", "--tun-nocsum", "--tun-csum", "--tun-remcsum", "--pe", "--sched-flags",
    "--syncid", "--mcast-group", "--mcast-port", "--mcast-ttl", "--sync-maxlen",
    "--mcast-interface", "--weight=5", "--weight", "-w=3", "-Ln", "-Lnc", "-At", "--", "-",
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh",
    "sip", "ipip", "gue", "gre", "master", "backup", "sh-port", "flag-1,flag-2",
    "198.51.100.2:80", "198.51.100.2", "192.0.2.10:80", "[2001:db8::2]:443", "2001:db8::10",
    "7", "0", "1", "65535", "300", "255.255.255.0", "128", "ipvsadm", "#", "localhost:80",
    "198.51.100.2:http", "-Q", "--bogus", "--numeric=1",
]

HUGE_NUMBERS = ["99999999999999999999", "18446744073709551616", "9223372036854775808",
                "340282366920938463463374607431768211456", "1e999", "0x7fffffff"]
BAD_NUMBERS = ["", "12abc", "1.5", "0x10", "5 ", "+", "\uff15", "\u0665", "1_000", "Infinity",
               "nan", "--1", "1e3", "4 2"]
BAD_PORTS = ["65536", "99999", "70000", "4294967296", "-1", "99999999999999999999", "0x50",
             "\uff18\uff10", "80 ", "8O", "http-nonexistent"]
BAD_ADDRS = ["256.1.1.1", "198.51.100.2.5", "1.2.3.4.5", "::g", "[2001:db8::2", "2001:db8::2::1",
             "1.2.3.4/24", "", "-", "nosuchhost.invalid", "a" * 300, "198.51.100.2\0", "\udcff\udcfe",
             "\ud800", "198.51.100.\uff12", "[]", "[::1]x"]
BAD_BARE_ADDRS = ["80", "[2001:db8::2]", "0"]   # bad only without a ":port" after them

# Standard cases: one value made bad in a valid line, with what ipvsadm 1.31 says
# (ipvsadm.c's parse_options; status 2, the message on stderr, nothing on stdout).
# X stands for the value; "%s" in the message is that value.
NUMBER_SLOTS = [
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.40:80", "-m", "-w", "X"], "illegal weight specified"),
    (["-e", "-t", "198.51.100.2:80", "-r", "192.0.2.10:80", "-m", "-x", "X"],
     "illegal u_threshold specified"),
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.41:80", "-y", "X"], "illegal l_threshold specified"),
    (["-A", "-t", "198.51.100.3:80", "-p", "X", "-s", "rr"], "invalid timeout value `%s' specified"),
    (["-A", "-f", "X", "-s", "rr"], "invalid fwmark value `%s' specified"),
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.42:80", "-i", "--tun-type", "gue", "--tun-port",
      "X"], "illegal tunnel port specified"),
    (["--set", "X", "120", "300"], "invalid timeout value `%s' specified"),
    (["-A", "-t", "198.51.100.3:80", "-M", "X"], "illegal virtual server persistent mask specified"),
]
ADDR_SLOTS = [
    (["-A", "-t", "X", "-s", "rr"], "illegal virtual server address[:port] specified"),
    (["-A", "-u", "X"], "illegal virtual server address[:port] specified"),
    (["-a", "-t", "198.51.100.2:80", "-r", "X", "-m"], "illegal real server address[:port] specified"),
    (["-D", "-t", "X"], "illegal virtual server address[:port] specified"),
    (["-L", "-n", "-t", "X"], "illegal virtual server address[:port] specified"),
]
# (argv, status, stderr): ipvsadm's own answers.
STANDARD = [
    (["-A", "-t", "198.51.100.3:80", "-Q"], 255, "-Q: unknown option\n"),
    (["-L", "-n", "--bogus"], 255, "--bogus: unknown option\n"),
    (["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.43", "-w"], 255, "-w: missing argument\n"),
    (["-L", "-n", "--numeric=1"], 255, "--numeric=1: option does not take an argument\n"),
    (["-A", "-t", "198.51.100.3:80", "-s", "rr", "-w", "5"], 2,
     "Illegal 'weight' option with the 'add-service' command\n"),
    (["-L", "-n", "junk"], 2, "unexpected argument junk\n"),
    (["-A", "-t", "198.51.100.3:0", "-s", "rr"], 2, "Zero port specified for non-persistent service\n"),
    (["-A", "-t", "198.51.100.3:80", "-o"], 2, "One-Packet Scheduling is only for UDP virtual services\n"),
    (["-Q"], 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information.\n"),
    (["junk"], 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information.\n"),
    (["-A", "-t", "198.51.100.3:80", "-s", "x" * 100000], 255,
     "Scheduler or persistence engine not found\n"),
    (["-A", "-t", "198.51.100.2:80", "-s", "rr"], 255, "Service already exists\n"),
    (["-L", "-n", "-t", "198.51.100.9:80"], 1, "No such service\n"),
    (["-a", "-t", "198.51.100.9:80", "-r", "192.0.2.10"], 255, "Service not defined\n"),
    (["-d", "-t", "198.51.100.2:80", "-r", "192.0.2.99:80"], 255, "No such destination\n"),
    (["--set", "1", "2"], 2, "--set option requires 3 timeout values\n"),
]

TRY_HELP = "Try `%s -h' or '%s --help' for more information.\n"


# ---------------------------------------------------------------- the daemon under fuzz

def shim_env(extra=None):
    env = dict(os.environ)
    env["LVS_FUZZ_ROOT"] = ROOT
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def run_shim(args, entry="lvs", input=None, env=None, timeout=60, python=None):
    """`lvs ARGS` (or lvsadm...) in a subprocess with the offline resolver; bytes in and out."""
    return subprocess.run([python or sys.executable, "-c", SHIM] + list(args), input=input,
                          capture_output=True, cwd=ROOT, timeout=timeout,
                          env=shim_env(dict(env or {}, LVS_FUZZ_ENTRY=entry)))


class FuzzDaemon:
    """`lvs daemon` in the foreground, ours by its PID: started with BASE_RULES (or `rules`),
    the offline resolver and a short client timeout; stopped by a stop request, else
    killed by its PID."""

    def __init__(self, directory=None, rules=BASE_RULES, client_timeout=CLIENT_TIMEOUT,
                 python=None):
        self.owned_dir = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="lvs-fuzz-")
        self.path = os.path.join(self.dir, "run", "lvs.sock")
        self.rules = rules
        self.client_timeout = client_timeout
        self.python = python or sys.executable
        self.proc = None
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.pid = None

    def start(self):
        rules_path = os.path.join(self.dir, "base.rules")
        with open(rules_path, "w") as f:
            f.write(self.rules)
        env = {"LVS_FUZZ_ENTRY": "lvs"}
        if self.client_timeout is not None:
            env["LVS_FUZZ_CLIENT_TIMEOUT"] = str(self.client_timeout)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.python, "-c", SHIM, "daemon", "--socket", self.path, "--clock", "capture",
             "--rules", rules_path], stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            cwd=ROOT, env=shim_env(env))
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the daemon exited (%s): %s" % (self.proc.returncode, self.log_text()))
            if ctl.alive(self.path, timeout=1.0):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("the daemon did not answer within 30 s")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                try:
                    ctl.request(self.path, {"op": "stop"}, timeout=5.0)
                except (ctl.NoDaemon, OSError, ValueError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)   # ours, by its PID
                    self.proc.wait(timeout=10)
        finally:
            self.proc = None
            self.log.close()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def cleanup(self):
        self.stop()
        if self.owned_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


# ---------------------------------------------------------------- talking to it

def encode(message):
    return json.dumps(message).encode() + b"\n"


def request_line(argv=None, op="adm", stdin=None, prog="ipvsadm"):
    message = {"pylvs": 1, "op": op, "prog": prog}
    if argv is not None:
        message["argv"] = argv
    if stdin is not None:
        message["stdin"] = stdin
    return encode(message)


class Exchange:
    """What one connection got: the answer line (bytes, None if the daemon closed without
    one), its decoding, and how the sending went."""

    def __init__(self):
        self.raw = None
        self.answer = None
        self.send_error = None
        self.recv_error = None
        self.seconds = 0.0

    def decoded(self):
        if self.raw is None:
            return None
        try:
            return json.loads(self.raw.decode("utf-8"))
        except ValueError:
            return None


def exchange(path, data, shut=True, timeout=10.0, read=True, pieces=None, pause=0.0):
    """Send `data` on a new connection (in `pieces` with `pause` between them), close our
    sending side if `shut`, read the answer line if `read`, close."""
    result = Exchange()
    started = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        try:
            if pieces:
                for i in range(0, len(data), pieces):
                    s.sendall(data[i:i + pieces])
                    if pause:
                        time.sleep(pause)
            elif data:
                s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except OSError as e:
            result.send_error = e
        if read:
            try:
                result.raw = _read_answer(s)
            except OSError as e:
                result.recv_error = e
    finally:
        s.close()
    result.seconds = time.monotonic() - started
    result.answer = result.decoded()
    return result


def _read_answer(s):
    chunks = []
    while True:
        try:
            chunk = s.recv(1 << 20)
        except ConnectionResetError:
            if chunks:
                break
            raise
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    data = b"".join(chunks)
    return data.rstrip(b"\n") if data else None


def ask(path, message, timeout=10.0):
    """A well-formed request; the decoded answer (an exception if there is none)."""
    r = exchange(path, encode(dict(message, pylvs=1)), timeout=timeout)
    if r.answer is None:
        raise ctl.NoDaemon("no answer (%r, %r)" % (r.send_error or r.recv_error, r.raw))
    return r.answer


def adm(path, *argv, stdin=None):
    return ask(path, {"op": "adm", "argv": list(argv), "stdin": stdin, "prog": "ipvsadm"})


# ---------------------------------------------------------------- what a clear error is

def json_error_problem(answer, exchange_=None, contains=None):
    """None if `answer` is a clear protocol error: {"pylvs": 1, "error": "..."}."""
    if answer is None:
        return "no answer (the daemon closed without one%s)" % (
            ": %r" % (exchange_.send_error or exchange_.recv_error) if exchange_ else "")
    if not isinstance(answer, dict):
        return "the answer is no object"
    if answer.get("pylvs") != 1:
        return "the answer has no pylvs: 1"
    error = answer.get("error")
    if not isinstance(error, str) or not error.strip():
        return "no error in the answer"
    if "internal error" in error or "Traceback" in error:
        return "an internal error: " + error[:300]
    if contains and contains not in error:
        return "the error does not say %r" % contains
    if set(answer) - {"pylvs", "error", "status"}:
        return "an error answer with more: %s" % sorted(answer)
    return None


def adm_error_problem(answer, status=None, stderr=None, line=None, prog="ipvsadm"):
    """None if `answer` is ipvsadm's refusal: non-zero status, a message, empty stdout."""
    if not isinstance(answer, dict):
        return "the answer is no object"
    if "error" in answer:
        return "a protocol error where ipvsadm answers: %s" % str(answer["error"])[:300]
    out, err, st = answer.get("stdout"), answer.get("stderr"), answer.get("status")
    if not isinstance(out, str) or not isinstance(err, str) or not isinstance(st, int):
        return "not an adm answer: %s" % sorted(answer)
    if st == 0:
        return "accepted (status 0)"
    if out:
        return "a refusal with stdout: %r" % out[:200]
    if not err.strip() or not err.endswith("\n"):
        return "no message on stderr: %r" % err[:200]
    if "Traceback" in err or "internal error" in err:
        return "a traceback on stderr"
    if status is not None and st != status:
        return "status %d, ipvsadm's is %d (%r)" % (st, status, err[:200])
    if stderr is not None and err != stderr:
        return "stderr %r, ipvsadm's is %r" % (err[:200], stderr[:200])
    if line is not None and not err.startswith("line %d: " % line):
        return "the message does not name line %d: %r" % (line, err[:200])
    return None


def adm_any_problem(answer):
    """A mutation that may be valid: accepted, or refused clearly."""
    if isinstance(answer, dict) and answer.get("status") == 0 and "error" not in answer:
        if "Traceback" in (answer.get("stderr") or ""):
            return "a traceback on stderr"
        return None
    return adm_error_problem(answer)


def _short(value, limit=160):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(%d chars)" % len(text)


# ---------------------------------------------------------------- the fuzzer

CATEGORIES = ("binary", "badjson", "types", "oversized", "truncated", "slow", "concurrent",
              "argv", "encoding", "restore", "cli")
WEIGHTS = {"binary": 12, "badjson": 12, "types": 14, "oversized": 0.25, "truncated": 8,
           "slow": 1.2, "concurrent": 1.5, "argv": 26, "encoding": 10, "restore": 12, "cli": 0.12}


class Failure(Exception):
    pass


class Fuzzer:
    def __init__(self, daemon, seed=0, requests=1000, time_limit=None, categories=CATEGORIES,
                 cli=True, log=None):
        self.daemon = daemon
        self.path = daemon.path
        self.rng = random.Random(seed)
        self.seed = seed
        self.target = requests
        self.time_limit = time_limit
        self.categories = [c for c in categories if cli or c != "cli"]
        self.counts = {c: {"requests": 0, "cases": 0, "refused": 0, "accepted": 0, "failures": 0,
                           "seconds": 0.0} for c in CATEGORIES}
        self.failures = []
        self.checks = 0           # ping and state requests
        self.requests = 0         # abusive requests (connections) sent
        self.silent = []          # (socket, opened at, reads it): must be hung up on after the timeout
        self.silent_closed = 0
        self.restarts = 0
        self.log = log
        self.scratch = tempfile.mkdtemp(prefix="lvs-fuzz-files-")
        self.case_no = 0
        self.baseline = self.state()

    # -- bookkeeping

    def sent(self, category, n=1):
        self.requests += n
        self.counts[category]["requests"] += n

    def fail(self, category, what, why):
        self.counts[category]["failures"] += 1
        if len(self.failures) < 200:
            self.failures.append({"category": category, "case": self.case_no, "what": _short(what, 300),
                                  "why": why})
        if self.log:
            self.log("FAIL [%s #%d] %s: %s" % (category, self.case_no, _short(what, 200), why))

    def check(self, category, what, problem):
        if problem:
            self.fail(category, what, problem)
            return False
        return True

    # -- the daemon's state

    def state(self):
        self.checks += 4
        save = adm(self.path, "-S", "-n")
        timeouts = adm(self.path, "-L", "--timeout")
        daemons = adm(self.path, "-L", "--daemon")
        sysctls = ask(self.path, {"op": "sysctl", "set": {}})
        return (save.get("stdout"), timeouts.get("stdout"), daemons.get("stdout"),
                json.dumps(sysctls.get("values"), sort_keys=True))

    def restore_baseline(self):
        save, timeouts, _, sysctls = self.baseline
        ask(self.path, {"op": "replace", "stdin": save, "prog": "ipvsadm"})
        values = timeouts.split(":")[1].split()
        adm(self.path, "--set", *values)
        for state in ("master", "backup"):
            adm(self.path, "--stop-daemon", state)
        ask(self.path, {"op": "sysctl", "set": {k: (" ".join(map(str, v)) if isinstance(v, list) else v)
                                               for k, v in json.loads(sysctls).items()}})
        self.checks += 5

    def after(self, category, what, may_change=False):
        """The daemon still serves; the tables are as before unless the request was accepted."""
        self.checks += 1
        try:
            pong = ask(self.path, {"op": "ping"}, timeout=10.0)
        except (ctl.NoDaemon, OSError) as e:
            pong = {"error": str(e)}
        if pong.get("pid") != self.daemon.pid:
            self.fail(category, what, "the daemon does not answer ping: %s (process %s)"
                      % (pong, "alive" if self.daemon.alive() else "gone"))
            self.restart()
            return
        now = self.state()
        if now != self.baseline:
            if not may_change:
                self.fail(category, what, "a refused request changed the state: %s"
                          % _diff(self.baseline, now))
            self.restore_baseline()
            if self.state() != self.baseline:
                self.fail(category, what, "the baseline could not be restored")

    def restart(self):
        self.restarts += 1
        self.daemon.stop()
        self.daemon.start()
        self.path = self.daemon.path
        for entry in self.silent:
            entry[0].close()
        self.silent = []

    def pinged_fast(self, category, what):
        t = time.monotonic()
        try:
            ask(self.path, {"op": "ping"}, timeout=10.0)
        except (ctl.NoDaemon, OSError) as e:
            self.fail(category, what, "no ping: %s" % e)
            return
        self.checks += 1
        took = time.monotonic() - t
        if took > STALL:
            self.fail(category, what, "a ping took %.2f s: the daemon is stalled by a client" % took)

    # -- the run

    def run(self):
        started = time.monotonic()
        weights = [WEIGHTS[c] for c in self.categories]
        # Every category at least once, then at random.
        order = list(self.categories)
        while self.requests < self.target:
            if self.time_limit is not None and time.monotonic() - started > self.time_limit:
                break
            category = order.pop(0) if order else self.rng.choices(self.categories, weights)[0]
            self.case_no += 1
            self.counts[category]["cases"] += 1
            t0 = time.monotonic()
            try:
                getattr(self, "case_" + category)()
            except Failure as e:
                self.fail(category, "case", str(e))
            except (ctl.NoDaemon, OSError) as e:
                self.fail(category, "case", "the daemon failed us: %r" % e)
                if not self.daemon.alive():
                    self.restart()
            self.poll_silent()
            self.counts[category]["seconds"] += time.monotonic() - t0
        self.poll_silent(final=True)
        for c in self.counts.values():
            c["seconds"] = round(c["seconds"], 2)
        elapsed = time.monotonic() - started
        log = self.daemon.log_text()
        if "Traceback" in log or "internal error" in log:
            self.fail("types", "daemon log", "the daemon logged: %s" % log[-2000:])
        return self.report(elapsed)

    def report(self, elapsed):
        return {
            "seed": self.seed,
            "requests": self.requests,
            "check_requests": self.checks,
            "seconds": round(elapsed, 2),
            "requests_per_s": round(self.requests / elapsed, 1) if elapsed else None,
            "all_requests_per_s": round((self.requests + self.checks) / elapsed, 1) if elapsed else None,
            "categories": self.counts,
            "silent_clients_hung_up": self.silent_closed,
            "daemon_restarts": self.restarts,
            "failures": len([1 for c in self.counts.values() for _ in range(c["failures"])]),
            "failure_list": self.failures,
        }

    # -- a request and its checks

    def send_json_error(self, category, data, contains=None, what=None, **kw):
        self.sent(category)
        r = exchange(self.path, data, **kw)
        if self.check(category, what or data, json_error_problem(r.answer, r, contains)):
            self.counts[category]["refused"] += 1
        self.after(category, what or data)

    def send_adm(self, category, message, status=None, stderr=None, line=None, any_=False, what=None):
        self.sent(category)
        r = exchange(self.path, encode(message))
        what = what or message
        if r.answer is None:
            self.fail(category, what, "no answer: %r" % (r.send_error or r.recv_error))
            self.after(category, what)
            return
        if any_:
            problem = adm_any_problem(r.answer)
        else:
            problem = adm_error_problem(r.answer, status, stderr, line)
        accepted = isinstance(r.answer, dict) and r.answer.get("status") == 0
        if self.check(category, what, problem):
            self.counts[category]["accepted" if accepted else "refused"] += 1
        self.after(category, what, may_change=accepted and any_)

    # ------------------------------------------------------------ categories

    def random_bytes(self, n):
        return bytes(self.rng.getrandbits(8) for _ in range(n))

    def case_binary(self):
        rng = self.rng
        n = rng.choice([0, 1, 2, 7, 64, 300, 1500, 4096, 20000])
        data = self.random_bytes(n)
        if rng.random() < 0.3:
            data = rng.choice([b"{", b'{"pylvs": 1, "op": "', b"\xef\xbb\xbf{", b"\x00", b"\n"]) + data
        if rng.random() < 0.5:
            data += b"\n"
        line = data.split(b"\n", 1)[0]
        try:
            if isinstance(json.loads(line.decode("utf-8")), dict):
                return  # a real object by chance: not garbage
        except (ValueError, RecursionError):
            pass
        # Without a newline the request ends with our shutdown (else it would wait for the
        # daemon's timeout: the slow category's business).
        self.send_json_error("binary", data, shut=not data.endswith(b"\n") or rng.random() < 0.8)

    def case_badjson(self):
        rng = self.rng
        good = json.dumps({"pylvs": 1, "op": "adm", "argv": ["-A", "-t", "198.51.100.3:80", "-s", "rr"],
                           "prog": "ipvsadm"})
        kind = rng.randrange(12)
        if kind == 0:                      # a character dropped
            i = rng.randrange(len(good))
            text = good[:i] + good[i + 1:]
        elif kind == 1:                    # one inserted
            i = rng.randrange(len(good))
            text = good[:i] + rng.choice('{}[],:"\\ x0\x01') + good[i:]
        elif kind == 2:
            text = good.replace('"', "'")
        elif kind == 3:
            text = good[:-1] + ",}"
        elif kind == 4:
            text = '{"pylvs": 1, "op": "ping", "x": %s}' % rng.choice(["NaN", "Infinity", "-Infinity", "nan",
                                                                       "undefined", "0x10", "01", ".5"])
        elif kind == 5:
            text = '{"pylvs": 1, "op": "adm", "argv": ["-L\x01\n"]}'  # raw control characters
        elif kind == 6:
            text = '{"pylvs": 1, "op": "adm", "argv": ["\\x41", "\\u12"]}'  # bad escapes
        elif kind == 7:
            text = '{"pylvs": 1, "op": "ping"} // comment'
        elif kind == 8:
            text = '{"pylvs": 1, "op": "ping"}{"pylvs": 1, "op": "stop"}'
        elif kind == 9:
            text = good + "]"
        elif kind == 10:
            text = "{" * rng.randrange(1, 50)
        else:
            text = '{"pylvs" 1, "op" "ping"}'
        try:
            value = json.loads(text)
            if isinstance(value, dict):
                return  # still valid: not this category's
        except (ValueError, RecursionError):
            pass
        data = text.encode("utf-8") + (b"\n" if "\n" not in text else b"")
        self.send_json_error("badjson", data)

    def case_types(self):
        rng = self.rng
        huge = int("9" * rng.choice([20, 400, 4300]))
        cases = [
            ([], None), ("adm", None), (1, None), (None, None), (True, None), ([{"op": "ping"}], None),
            ({"pylvs": 1}, None), ({"op": "ping"}, "protocol"), ({"pylvs": 0, "op": "ping"}, "protocol"),
            ({"pylvs": 2, "op": "ping"}, "protocol"), ({"pylvs": "1", "op": "ping"}, "protocol"),
            ({"pylvs": True, "op": "ping"}, "protocol"), ({"pylvs": 1.0, "op": "ping"}, "protocol"),
            ({"pylvs": huge, "op": "ping"}, "protocol"), ({"pylvs": -1, "op": "ping"}, "protocol"),
            ({"pylvs": 1, "op": None}, None), ({"pylvs": 1, "op": 7}, None),
            ({"pylvs": 1, "op": huge}, None), ({"pylvs": 1, "op": ["adm"]}, None),
            ({"pylvs": 1, "op": {"adm": 1}}, None), ({"pylvs": 1, "op": "ADM"}, "unknown op"),
            ({"pylvs": 1, "op": "x" * 100000}, "unknown op"), ({"pylvs": 1, "op": ""}, "unknown op"),
            ({"pylvs": 1, "op": "adm"}, "argv"), ({"pylvs": 1, "op": "adm", "argv": None}, "argv"),
            ({"pylvs": 1, "op": "adm", "argv": "-L -n"}, "argv"),
            ({"pylvs": 1, "op": "adm", "argv": {"0": "-L"}}, "argv"),
            ({"pylvs": 1, "op": "adm", "argv": 5}, "argv"),
            ({"pylvs": 1, "op": "adm", "argv": ["-A", "-t", "198.51.100.3:80", 5]}, "argv"),
            ({"pylvs": 1, "op": "adm", "argv": ["-C", None]}, "argv"),
            ({"pylvs": 1, "op": "adm", "argv": ["-C", ["-C"]]}, "argv"),
            ({"pylvs": 1, "op": "adm", "argv": ["-C", True]}, "argv"),
            ({"pylvs": 1, "op": "adm", "argv": ["-a", "-t", "198.51.100.2:80", "-r", "192.0.2.9", "-w", huge]},
             "argv"),
            ({"pylvs": 1, "op": "adm", "argv": ["-C", 1.5]}, "argv"),
            ({"pylvs": 1, "op": "adm", "argv": ["-R"], "stdin": 5}, "stdin"),
            ({"pylvs": 1, "op": "adm", "argv": ["-R"], "stdin": ["-C"]}, "stdin"),
            ({"pylvs": 1, "op": "adm", "argv": ["-R"], "stdin": {"-C": 1}}, "stdin"),
            ({"pylvs": 1, "op": "adm", "argv": ["-C"], "prog": 5}, "prog"),
            ({"pylvs": 1, "op": "adm", "argv": ["-C"], "prog": ["ipvsadm"]}, "prog"),
            ({"pylvs": 1, "op": "replace", "stdin": 5}, "stdin"),
            ({"pylvs": 1, "op": "replace", "stdin": ["-C"]}, "stdin"),
            ({"pylvs": 1, "op": "replace", "stdin": "", "prog": {}}, "prog"),
            ({"pylvs": 1, "op": "sysctl", "set": []}, None), ({"pylvs": 1, "op": "sysctl", "set": "x=1"}, None),
            ({"pylvs": 1, "op": "sysctl", "set": {"nosuch": 1}}, "unknown sysctl"),
            ({"pylvs": 1, "op": "sysctl", "set": {"am_droprate": [1, [2]]}}, "invalid value"),
            ({"pylvs": 1, "op": "sysctl", "set": {"am_droprate": "x" * 1000}}, "invalid value"),
            ({"pylvs": 1, "op": "sysctl", "set": {"am_droprate": 5, "sync_ports": 3}}, "invalid value"),
            ({"pylvs": 1, "op": "sysctl", "set": {"sync_threshold": "1 2 3"}}, "invalid value"),
            ({"pylvs": 1, "op": "sysctl", "set": {"drop_entry": huge}}, "invalid value"),
            ({"pylvs": 1, "op": "sysctl", "set": {"amemthresh": huge}}, "invalid value"),
            ({"pylvs": 1, "op": "sysctl", "set": {"lblc_expiration": "2147483648"}}, "invalid value"),
            ({"pylvs": 1, "op": "sysctl", "set": {"sync_threshold": "3 %d" % huge}}, "invalid value"),
            ({"pylvs": 1, "op": "feed"}, "path"), ({"pylvs": 1, "op": "feed", "path": 5}, "path"),
            ({"pylvs": 1, "op": "feed", "path": "/nonexistent/x.pcap"}, None),
            ({"pylvs": 1, "op": "feed", "path": "/"}, None),
            ({"pylvs": 1, "op": "feed", "path": "/dev/null"}, "not a regular file"),
            ({"pylvs": 1, "op": "feed", "path": "/dev/zero"}, "not a regular file"),
            ({"pylvs": 1, "op": "feed", "path": "a\0b"}, None),
            ({"pylvs": 1, "op": "feed", "path": self.garbage_file()}, None),
            ({"pylvs": 1, "op": "vips", "own": True}, "no live data plane"),
            ({"pylvs": 1, "op": "vips", "own": [1]}, "no live data plane"),
        ]
        message, contains = rng.choice(cases + [(None, "bomb")] * 8)
        if contains == "bomb":
            depth = rng.choice([200, 1000, 5000, 100000, 1000000])
            opener, closer = rng.choice([("[", "]"), ('{"a":', "}"), ('{"pylvs":1,"op":"adm","argv":[', "]}")])
            data = (opener * depth + "1" + closer * depth).encode() + b"\n"
            self.send_json_error("types", data, what="depth %d %s" % (depth, opener))
            return
        if not isinstance(message, dict):
            contains = None
        data = json.dumps(message).encode() + b"\n"
        self.send_json_error("types", data, contains=contains, what=message)

    def garbage_file(self):
        path = os.path.join(self.scratch, "garbage-%d.pcap" % self.rng.randrange(4))
        if not os.path.exists(path):
            with open(path, "wb") as f:
                # no capture's magic number: garbage from its first byte, or a magic and
                # then less than a whole file header
                magic = self.rng.choice([b"\xd4\xc3\xb2\xa1", b"\x0a\x0d\x0d\x0a", b"\xa1\xb2\xc3\xd4"])
                f.write(self.rng.choice([b"GARB" + self.random_bytes(self.rng.randrange(0, 3000)),
                                         magic + self.random_bytes(self.rng.randrange(0, 8))]))
        return path

    def case_oversized(self):
        rng = self.rng
        kind = rng.randrange(4)
        if kind == 3:
            # an endless stream without a newline: the daemon must stop us
            self.sent("oversized")
            what = "endless stream"
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(20)
            s.connect(self.path)
            block = b"A" * (1 << 20)
            sent = 0
            stopped = None
            try:
                while sent < 8 * MAX_REQUEST:
                    s.sendall(block)
                    sent += len(block)
            except OSError as e:
                stopped = e
            raw = None
            try:
                raw = _read_answer(s)
            except OSError:
                pass
            s.close()
            if stopped is None:
                self.fail("oversized", what, "the daemon read %d bytes without a newline" % sent)
            elif raw is not None:
                try:
                    answer = json.loads(raw.decode())
                except ValueError:
                    answer = None
                if self.check("oversized", what, json_error_problem(answer, contains="longer than")):
                    self.counts["oversized"]["refused"] += 1
            else:
                self.counts["oversized"]["refused"] += 1   # hung up on: acceptable
            self.after("oversized", what)
            return
        size = rng.choice([MAX_REQUEST + 1, MAX_REQUEST + 65536, MAX_REQUEST + (1 << 20), 64 << 20])
        prefix = rng.choice([b"", b'{"pylvs": 1, "op": "adm", "argv": ["-A", "-t", "',
                             b'{"pylvs": 1, "op": "replace", "stdin": "-C\\n'])
        data = prefix + b"9" * (size - len(prefix))
        if kind == 2:
            data += b"\n"
        self.sent("oversized")
        r = exchange(self.path, data, timeout=30)
        what = "%d bytes (%r...)" % (len(data), prefix[:20])
        if r.answer is None and (r.send_error is not None or r.recv_error is not None):
            self.counts["oversized"]["refused"] += 1   # hung up on: acceptable
        elif self.check("oversized", what, json_error_problem(r.answer, r, contains="longer than")):
            self.counts["oversized"]["refused"] += 1
        self.after("oversized", what)

    def a_changing_request(self):
        rng = self.rng
        return rng.choice([
            request_line(["-A", "-t", "198.51.100.%d:80" % rng.randrange(3, 250), "-s", "rr"]),
            request_line(["-C"]),
            request_line(["-D", "-t", "198.51.100.2:80"]),
            request_line(["-R"], stdin="-A -t 198.51.100.7:80 -s rr\n-a -t 198.51.100.7:80 -r 192.0.2.77 -m\n"),
            request_line(op="replace", stdin="-A -u 198.51.100.8:53 -s rr\n"),
            request_line(["--set", "1", "2", "3"]),
            encode({"pylvs": 1, "op": "sysctl", "set": {"am_droprate": 33}}),
            encode({"pylvs": 1, "op": "stop"}),
        ])

    def case_truncated(self):
        rng = self.rng
        full = self.a_changing_request()
        text = full.rstrip(b"\n")
        cut = rng.randrange(1, len(text))   # strictly inside: never a whole object
        data = text[:cut]
        mode = rng.randrange(3)
        what = "%r cut at %d/%d (%s)" % (text[:50], cut, len(text), ("read", "close", "pause")[mode])
        if mode == 0:      # we stop sending and wait for the answer
            self.send_json_error("truncated", data, what=what)
        elif mode == 1:    # we hang up at once, reading nothing
            self.sent("truncated")
            exchange(self.path, data, shut=False, read=False)
            self.counts["truncated"]["refused"] += 1
            self.after("truncated", what)
        else:              # in pieces, a pause, then we hang up
            self.sent("truncated")
            exchange(self.path, data, shut=False, read=False, pieces=max(1, cut // 3), pause=0.002)
            self.counts["truncated"]["refused"] += 1
            self.after("truncated", what)

    def case_slow(self):
        rng = self.rng
        kind = rng.randrange(5)
        if kind == 0:
            # Silent clients, and clients that stop mid-request: kept open, the daemon must
            # go on serving, and hang up on them after its timeout (poll_silent).
            n = rng.randrange(1, 6)
            for _ in range(n):
                if len(self.silent) >= 24:
                    break
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.path)
                if rng.random() < 0.5:
                    s.sendall(self.a_changing_request()[:rng.randrange(1, 20)])
                self.silent.append((s, time.monotonic(), True))
                self.sent("slow")
            self.pinged_fast("slow", "%d silent clients" % len(self.silent))
            self.after("slow", "silent clients")
            return
        if kind == 1:
            # A request dripped byte by byte while others are served.
            line = request_line(["-S", "-n"])
            result = {}

            def drip():
                result["r"] = exchange(self.path, line, pieces=1, pause=0.003, timeout=20)
            t = threading.Thread(target=drip)
            t.start()
            self.sent("slow")
            for _ in range(5):
                self.pinged_fast("slow", "a client dripping its request")
                time.sleep(0.01)
            t.join(30)
            answer = result.get("r").answer if result.get("r") else None
            if not isinstance(answer, dict) or answer.get("stdout") != self.baseline[0]:
                self.fail("slow", "drip", "the dripped request got %s" % _short(answer))
            else:
                self.counts["slow"]["accepted"] += 1
            self.after("slow", "drip")
            return
        if kind == 2:
            # A long answer (600 KB and more) that its client does not read for a while.
            stdin = "-S -n\n" * rng.choice([2000, 5000])
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(20)
            s.connect(self.path)
            s.sendall(request_line(["-R"], stdin=stdin))
            s.shutdown(socket.SHUT_WR)
            self.sent("slow")
            for _ in range(3):
                self.pinged_fast("slow", "a client not reading its long answer")
            raw = _read_answer(s)
            s.close()
            try:
                answer = json.loads(raw.decode())
            except (ValueError, AttributeError):
                answer = None
            n = stdin.count("\n")
            if not isinstance(answer, dict) or answer.get("stdout") != self.baseline[0] * n:
                self.fail("slow", "long answer", "the long answer was %s" % _short(answer))
            else:
                self.counts["slow"]["accepted"] += 1
            self.after("slow", "long answer")
            return
        if kind == 3:
            # A long answer its client never reads: the daemon hangs up after the timeout.
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.path)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(request_line(["-R"], stdin="-S -n\n" * 3000))
            s.shutdown(socket.SHUT_WR)
            self.sent("slow")
            self.silent.append((s, time.monotonic(), False))
            self.pinged_fast("slow", "a client that never reads")
            self.after("slow", "never reads")
            return
        # More connections than the daemon takes: the extra ones are told it is busy.
        extra = 6
        socks, busy = [], 0
        try:
            for _ in range(MAX_CLIENTS + extra):
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(10)
                s.connect(self.path)
                socks.append(s)
            self.sent("slow", len(socks))
            time.sleep(0.05)
            for s in socks[MAX_CLIENTS - len(self.silent):]:
                s.setblocking(False)
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                try:
                    answer = json.loads(data.decode())
                except ValueError:
                    answer = None
                if json_error_problem(answer, contains="busy") is None:
                    busy += 1
        finally:
            for s in socks:
                s.close()
        if busy < extra:
            self.fail("slow", "%d connections" % (MAX_CLIENTS + extra),
                      "only %d of the connections beyond %d were told busy" % (busy, MAX_CLIENTS))
        else:
            self.counts["slow"]["refused"] += busy
        time.sleep(0.02)
        self.pinged_fast("slow", "after the busy ones")
        self.after("slow", "busy")

    def poll_silent(self, final=False):
        """Silent clients must be hung up on once the daemon's timeout has passed (told so
        first, if they were still sending), not before; `final`: wait for all of them."""
        timeout = self.daemon.client_timeout or 10.0
        deadline = time.monotonic() + timeout * 2 + 5.0
        while self.silent:
            now = time.monotonic()
            keep = []
            for s, opened, reads in self.silent:
                data, eof = b"", False
                if not reads:
                    # a client that never reads its answer: hung up on, unread (reading it
                    # would let the daemon finish its answer)
                    p = select.poll()
                    p.register(s, POLLRDHUP)
                    eof = any(ev & (POLLRDHUP | select.POLLHUP) for _, ev in p.poll(0))
                    if eof:
                        now = time.monotonic()
                        self.silent_closed += 1
                        s.close()
                        if now - opened < timeout * 0.9:
                            self.fail("slow", "a client that does not read", "hung up on after %.2f s, "
                                      "before the timeout" % (now - opened))
                        continue
                else:
                    s.setblocking(False)
                    try:
                        while True:
                            chunk = s.recv(1 << 20)
                            if not chunk:
                                eof = True
                                break
                            data += chunk
                    except BlockingIOError:
                        pass
                    except OSError:
                        eof = True
                if eof:
                    self.silent_closed += 1
                    s.close()
                    line = data.split(b"\n", 1)[0]
                    if now - opened < timeout * 0.9:
                        self.fail("slow", "silent client", "hung up on after %.2f s, before the timeout"
                                  % (now - opened))
                    elif line and b'"error"' in line and b"timeout" not in line:
                        self.fail("slow", "silent client", "hung up on with %r" % line[:200])
                elif now - opened > timeout * 2 + 5.0:
                    self.fail("slow", "silent client", "not hung up on %.1f s after it connected"
                              % (now - opened))
                    s.close()
                else:
                    keep.append((s, opened, reads))
            self.silent = keep
            if not final or time.monotonic() > deadline:
                break
            time.sleep(0.05)

    def case_concurrent(self):
        rng = self.rng
        if rng.random() < 0.3:
            # Many clients adding services at once: each answered 0, all of them there after.
            n = rng.randrange(4, 24)
            lines = [request_line(["-A", "-t", "203.0.113.%d:80" % (i + 1), "-s", "rr"]) for i in range(n)]
            results = [None] * n

            def go(i):
                results[i] = exchange(self.path, lines[i], timeout=30)
            threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.sent("concurrent", n)
            ok = sum(1 for r in results if r is not None and isinstance(r.answer, dict)
                     and r.answer.get("status") == 0)
            save = adm(self.path, "-S", "-n")["stdout"]
            self.checks += 1
            there = sum(1 for i in range(n) if "-A -t 203.0.113.%d:80 " % (i + 1) in save)
            if ok != n or there != n:
                self.fail("concurrent", "%d adds" % n, "%d answered 0, %d in the tables" % (ok, there))
            else:
                self.counts["concurrent"]["accepted"] += n
            self.after("concurrent", "adds", may_change=True)
            return
        n = rng.randrange(4, 32)
        jobs = []
        for _ in range(n):
            kind = rng.randrange(6)
            if kind == 0:
                jobs.append((encode({"pylvs": 1, "op": "ping"}), "ping"))
            elif kind == 1:
                jobs.append((request_line(["-S", "-n"]), "save"))
            elif kind == 2:
                jobs.append((self.random_bytes(rng.randrange(1, 500)).replace(b"{", b"(") + b"\n", "error"))
            elif kind == 3:
                argv, status, stderr = rng.choice(STANDARD)
                jobs.append((request_line(argv), ("adm", status, stderr)))
            elif kind == 4:
                jobs.append((self.a_changing_request().rstrip(b"\n")[:-1], "error"))
            else:
                jobs.append((b"[" * 50000 + b"\n", "error"))
        results = [None] * n

        def go(i):
            results[i] = exchange(self.path, jobs[i][0], timeout=30)
        threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.sent("concurrent", n)
        for (data, expect), r in zip(jobs, results):
            what = "concurrent %s: %s" % (expect if isinstance(expect, str) else "adm", _short(data, 80))
            answer = r.answer if r is not None else None
            if expect == "ping":
                problem = None if isinstance(answer, dict) and answer.get("pid") == self.daemon.pid \
                    else "ping answered %s" % _short(answer)
            elif expect == "save":
                problem = None if isinstance(answer, dict) and answer.get("stdout") == self.baseline[0] \
                    else "-S -n answered %s" % _short(answer)
            elif expect == "error":
                problem = json_error_problem(answer, r)
            else:
                problem = adm_error_problem(answer, expect[1], expect[2])
            if self.check("concurrent", what, problem):
                self.counts["concurrent"]["refused" if expect not in ("ping", "save") else "accepted"] += 1
        self.after("concurrent", "%d clients" % n)

    # -- ipvsadm command lines

    def bad_number(self):
        rng = self.rng
        r = rng.random()
        if r < 0.4:
            return rng.choice(HUGE_NUMBERS)
        if r < 0.55:
            return "9" * rng.choice([20, 100, 4301, 100000, 1000000])
        return rng.choice(BAD_NUMBERS)

    def bad_addr(self, slot_argv):
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            host = rng.choice(["198.51.100.2", "[2001:db8::2]", "192.0.2.10"])
            return "%s:%s" % (host, rng.choice(BAD_PORTS))
        if r < 0.5:
            return "198.51.100.2:" + "9" * rng.choice([20, 5000, 1000000])
        if r < 0.6:
            return rng.choice(BAD_BARE_ADDRS)
        return rng.choice(BAD_ADDRS) + rng.choice(["", ":80"])

    def case_argv(self):
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            argv, status, stderr = rng.choice(STANDARD)
            self.send_adm("argv", {"pylvs": 1, "op": "adm", "argv": argv, "prog": "ipvsadm"}, status, stderr)
            return
        if r < 0.4:
            template, message = rng.choice(NUMBER_SLOTS)
            value = self.bad_number()
            if value.startswith("-"):
                value = "x" + value   # a value like an option: popt's business, not this slot's
            if template[0] == "-A" and "-M" in template:
                value = rng.choice(["256.0.0.0", "255.255.255.0/24", "", "x" * 1000, "\0"])
        elif r < 0.55:
            template, message = rng.choice(ADDR_SLOTS)
            value = self.bad_addr(template)
        else:
            self.send_adm("argv", {"pylvs": 1, "op": "adm", "argv": self.mutated_argv(), "prog": "ipvsadm"},
                          any_=True)
            return
        argv = [value if t == "X" else t for t in template]
        stderr = (message % value if "%s" in message else message) + "\n"
        self.send_adm("argv", {"pylvs": 1, "op": "adm", "argv": argv, "prog": "ipvsadm"}, 2, stderr,
                      what=argv)

    def mutated_argv(self):
        rng = self.rng
        argv = rng.choice(CORPUS).split()
        for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
            op = rng.randrange(10)
            i = rng.randrange(len(argv) + 1)
            if op == 0 and argv:
                del argv[min(i, len(argv) - 1)]
            elif op == 1:
                argv.insert(i, rng.choice(VOCABULARY))
            elif op == 2 and argv:
                argv[min(i, len(argv) - 1)] = self.bad_number()
            elif op == 3 and argv:
                argv[min(i, len(argv) - 1)] = self.bad_addr(argv)
            elif op == 4 and argv:
                j = min(i, len(argv) - 1)
                argv.insert(j, argv[j])
            elif op == 5 and len(argv) > 1:
                j, k = rng.randrange(len(argv)), rng.randrange(len(argv))
                argv[j], argv[k] = argv[k], argv[j]
            elif op == 6:
                argv = argv[:i]
            elif op == 7:
                argv.insert(i, rng.choice(["x", "-", "9", "\0", "\udcff"]) * rng.choice([1000, 100000, 1 << 20]))
            elif op == 8 and argv:
                j = min(i, len(argv) - 1)
                k = rng.randrange(len(argv[j]) + 1)
                argv[j] = argv[j][:k] + rng.choice(["\0", "\udcff", "\ud800", "\x7f", " ", "=", ",", "\n",
                                                    "\uffff", "\U0001f600", "%s", "%n"]) + argv[j][k:]
            else:
                argv.append(rng.choice(VOCABULARY + ["--" + "x" * 1000, "-" + "L" * 1000]))
        if any("start-daemon" in a for a in argv):
            argv = [a for a in argv if "start-daemon" not in a]   # no multicast from a fuzzer
        return argv

    def case_encoding(self):
        rng = self.rng
        kind = rng.randrange(6)
        if kind == 0:
            # raw invalid UTF-8 inside the JSON text
            bad = rng.choice([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80",
                              b"\xe2\x82", b"\xf4\x90\x80\x80"])
            data = b'{"pylvs": 1, "op": "adm", "argv": ["-A", "-t", "' + bad + b':80"]}\n'
            self.send_json_error("encoding", data, contains="UTF-8", what=data)
            return
        if kind == 1:
            # a NUL or a non-UTF-8 byte (as lvsadm sends it) in an address: still illegal
            bad = rng.choice(["\0", "\udcff", "\udc80", "\ud800", "\U0001f600"])
            host = "198.51.100.2"
            k = rng.randrange(len(host) + 1)
            argv = ["-A", "-t", host[:k] + bad + host[k:] + ":80", "-s", "rr"]
            self.send_adm("encoding", {"pylvs": 1, "op": "adm", "argv": argv, "prog": "ipvsadm"}, 2,
                          "illegal virtual server address[:port] specified\n", what=argv)
            return
        if kind == 2:
            # in an unknown option: echoed back as given
            bad = rng.choice(["\0", "\udcff", "\ud800", "\uffff", "\x1b[2J"])
            argv = ["-L", "-n", "--x" + bad]
            self.send_adm("encoding", {"pylvs": 1, "op": "adm", "argv": argv, "prog": "ipvsadm"}, 255,
                          "--x%s: unknown option\n" % bad, what=argv)
            return
        if kind == 3:
            # a scheduler name with them: no such scheduler
            bad = rng.choice(["\0", "\udcff", "\ud800", "\u00e9"])
            argv = ["-A", "-t", "198.51.100.3:80", "-s", "r" + bad + "r"]
            self.send_adm("encoding", {"pylvs": 1, "op": "adm", "argv": argv, "prog": "ipvsadm"}, 255,
                          "Scheduler or persistence engine not found\n", what=argv)
            return
        if kind == 4:
            # -R input with them: refused, the line named
            bad = self.garbage_line(rng.randrange(1, 200)).decode("utf-8", "surrogateescape")
            stdin = "-A -t 198.51.100.5:80 -s rr\nx" + bad + "\n"
            self.send_adm("encoding", {"pylvs": 1, "op": "adm", "argv": ["-R"], "stdin": stdin,
                                       "prog": "ipvsadm"}, line=2, what=stdin)
            return
        # anything of these anywhere in a command line
        argv = self.mutated_argv()
        if argv:
            j = rng.randrange(len(argv))
            argv[j] += rng.choice(["\0", "\udcff", "\ud800\udc00", "\udbff", "\ufeff", "\u202e"])
        self.send_adm("encoding", {"pylvs": 1, "op": "adm", "argv": argv, "prog": "ipvsadm"}, any_=True)

    # -- -R and replace

    def garbage_line(self, n):
        """Random bytes for one line of -R input that ipvsadm must refuse: no newline, and no
        '-' (a token like "-v" or "-h" is a command: version or help, status 0)."""
        return self.random_bytes(n).replace(b"\n", b"").replace(b"-", b"_")

    def bad_rule_line(self):
        """(text without newline, status, message or None): a line ipvsadm refuses."""
        rng = self.rng
        kind = rng.randrange(8)
        if kind == 0:
            garbage = self.garbage_line(rng.randrange(1, 300))
            first = bytes([rng.choice(b"!$%&()*+/0123456789:;<=>?@BFGJKQTUWYZ[]^_`{|}~")])
            return first + garbage, 255, None
        if kind == 1:
            return ("-a -t 198.51.100.2:80 -r 192.0.2.50 -w %s" % rng.choice(HUGE_NUMBERS)).encode(), 2, \
                "illegal weight specified\n"
        if kind == 2:
            return ("-A -t 198.51.100.2:%s -s rr" % rng.choice(BAD_PORTS[:5])).encode(), 2, \
                "illegal virtual server address[:port] specified\n"
        if kind == 3:
            return b"-A -t 198.51.100.6:80 -s " + b"x" * (1 << 20), 255, \
                "Scheduler or persistence engine not found\n"
        if kind == 4:
            return b"x" * (1 << 20), 255, TRY_HELP % ("ipvsadm", "ipvsadm")
        if kind == 5:
            return b"-A -t " + b"a" * rng.choice([1000, 1 << 20]), 2, \
                "illegal virtual server address[:port] specified\n"
        if kind == 6:
            return b"-a -t 198.51.100.2:80 -r 192.0.2.51:80 -m -w 1 -x " + b"9" * rng.choice([30, 5000, 1 << 20]), \
                2, "illegal u_threshold specified\n"
        return b"-A -t 198.51.100.2:80 -s rr", 255, "Service already exists\n"   # exists in the base

    def case_restore(self):
        rng = self.rng
        good = ["-A -t 198.51.100.%d:80 -s rr" % n for n in rng.sample(range(10, 250), rng.randrange(0, 5))]
        good += ["-a -t 198.51.100.2:80 -r 192.0.2.%d:80 -m -w %d" % (n, rng.randrange(0, 100))
                 for n in rng.sample(range(100, 250), rng.randrange(0, 4))]
        rng.shuffle(good)
        op = rng.choice(["adm", "replace"])
        if rng.random() < 0.1:
            # all good (and one line 1 MB long, of blanks around a command): applied
            lines = [line.encode() for line in good] + [b" " * (1 << 20) + b"-A -t 198.51.100.9:80 -s rr"]
            stdin = b"\n".join(lines).decode() + "\n"
            if op == "replace":
                stdin = self.baseline[0] + stdin
            message = {"pylvs": 1, "op": op, "stdin": stdin, "prog": "ipvsadm"}
            if op == "adm":
                message["argv"] = ["-R"]
            self.sent("restore")
            r = exchange(self.path, encode(message), timeout=30)
            what = "good restore of %d lines (%s)" % (len(lines), op)
            if not isinstance(r.answer, dict) or r.answer.get("status") != 0:
                self.fail("restore", what, "refused: %s" % _short(r.answer))
            else:
                self.counts["restore"]["accepted"] += 1
            self.after("restore", what, may_change=True)
            return
        bad, status, message_text = self.bad_rule_line()
        if op == "replace":
            # lvsadm-restore starts from empty tables: the base first, as a saved file has it
            good = self.baseline[0].splitlines() + good
        at = rng.randrange(len(self.baseline[0].splitlines()) if op == "replace" else 0, len(good) + 1)
        lines = [line.encode() for line in good[:at]] + [bad] + [line.encode() for line in good[at:]]
        stdin = b"\n".join(lines).decode("utf-8", "surrogateescape") + "\n"
        message = {"pylvs": 1, "op": op, "stdin": stdin, "prog": "ipvsadm"}
        if op == "adm":
            message["argv"] = ["-R"]
        what = "restore (%s) of %d lines, line %d bad: %s" % (op, len(lines), at + 1, _short(bad, 60))
        stderr = "line %d: %s" % (at + 1, message_text) if message_text else None
        self.send_adm("restore", message, status, stderr, line=at + 1, what=what)

    # -- the command-line tools

    def case_cli(self):
        rng = self.rng
        kind = rng.randrange(6)
        env = {"LVS_SOCKET": self.path}
        garbage = b"x" + self.garbage_line(rng.randrange(1, 5000))
        if kind in (0, 1):
            entry = "lvsadm" if kind == 0 else "lvsadm-restore"
            data = garbage if rng.random() < 0.5 else (
                b"-A -t 198.51.100.5:80 -s rr\n-a -t 198.51.100.2:80 -r 192.0.2.60 -w " + b"9" * 30 + b"\n")
            args = ["-R"] if entry == "lvsadm" else []
            r = run_shim(args, entry=entry, input=data, env=env)
            what = "%s %s < %r" % (entry, " ".join(args), data[:40])
            self.sent("cli")
            self.cli_check(what, r, expect_line=True)
            self.after("cli", what)
            return
        if kind == 2:
            args = [b"-A", b"-t", rng.choice([b"\xff\xfe:80", b"198.51.100.2\xc0:80", b"\xed\xa0\x80"]),
                    b"-s", b"rr"]
            r = run_shim(args, entry="lvsadm", env=env)
            self.sent("cli")
            what = "lvsadm %r" % args
            if r.returncode != 2 or r.stderr != b"illegal virtual server address[:port] specified\n":
                self.fail("cli", what, "exit %d, stderr %r" % (r.returncode, r.stderr[:300]))
            else:
                self.counts["cli"]["refused"] += 1
            self.after("cli", what)
            return
        if kind == 3:
            # an unknown option with non-UTF-8 bytes comes back as those bytes
            arg = b"--x\xff\xfe"
            r = run_shim([b"-L", arg], entry="lvsadm", env=env)
            self.sent("cli")
            if r.returncode != 255 or r.stderr != arg + b": unknown option\n":
                self.fail("cli", "lvsadm -L --x\\xff\\xfe", "exit %d, stderr %r" % (r.returncode, r.stderr[:300]))
            else:
                self.counts["cli"]["refused"] += 1
            self.after("cli", "lvsadm -L --x\\xff\\xfe")
            return
        path = os.path.join(self.scratch, "garbage.rules")
        with open(path, "wb") as f:
            f.write(rng.choice([garbage, b"-A -t 198.51.100.5:80 -w " + b"9" * 100000 + b"\n",
                                b"-A -t 198.51.100.5:80 -s rr\n" + b"x" * (1 << 20) + b"\n",
                                b"@inf -C\n", b"@nan -C\n", b"\x00" * 100]))
        if kind == 4:
            capture = os.path.join(ROOT, "examples", "tutorial.pcap")
            r = run_shim(["replay", "--rules", path, capture])
            what = "lvs replay --rules garbage"
            prefix = b"lvs replay: "
        else:
            sock = os.path.join(self.scratch, "other", "lvs.sock")
            r = run_shim(["daemon", "--socket", sock, "--rules", path])
            what = "lvs daemon --rules garbage"
            prefix = b"lvs daemon: "
        self.sent("cli")
        lines = r.stderr.splitlines()
        if r.returncode == 0 or b"Traceback" in r.stderr or len(lines) != 1 or not lines[0].startswith(prefix):
            self.fail("cli", what, "exit %d, stderr %r" % (r.returncode, r.stderr[-500:]))
        else:
            self.counts["cli"]["refused"] += 1
        self.after("cli", what)

    def cli_check(self, what, r, expect_line):
        err = r.stderr
        if r.returncode == 0 or b"Traceback" in err or r.stdout or not err.endswith(b"\n"):
            self.fail("cli", what, "exit %d, stdout %r, stderr %r" % (r.returncode, r.stdout[:100], err[-500:]))
        elif expect_line and not err.startswith(b"line "):
            self.fail("cli", what, "the message names no line: %r" % err[:300])
        else:
            self.counts["cli"]["refused"] += 1


def _diff(before, after):
    names = ("-S -n", "--timeout", "--daemon", "sysctls")
    return "; ".join("%s: %r -> %r" % (n, _short(a, 200), _short(b, 200))
                     for n, a, b in zip(names, before, after) if a != b)


def fuzz(requests=1000, seed=0, time_limit=None, categories=CATEGORIES, cli=True, log=None,
         client_timeout=CLIENT_TIMEOUT, python=None):
    """Start a daemon, fuzz it, stop it; the report (a dict)."""
    daemon = FuzzDaemon(client_timeout=client_timeout, python=python)
    daemon.start()
    try:
        fuzzer = Fuzzer(daemon, seed=seed, requests=requests, time_limit=time_limit,
                        categories=categories, cli=cli, log=log)
        try:
            report = fuzzer.run()
        finally:
            for entry in fuzzer.silent:
                entry[0].close()
            shutil.rmtree(fuzzer.scratch, ignore_errors=True)
        report["daemon_pid"] = daemon.pid
        return report
    finally:
        daemon.cleanup()


def print_report(report, out=sys.stdout):
    out.write("control socket fuzz: seed %d, %d requests (+%d checks) in %.1f s: %.0f requests/s "
              "(%.0f with the checks)\n" % (report["seed"], report["requests"], report["check_requests"],
                                             report["seconds"], report["requests_per_s"] or 0,
                                             report["all_requests_per_s"] or 0))
    out.write("%-11s %8s %6s %8s %8s %8s %8s\n" % ("category", "requests", "cases", "refused", "accepted",
                                                     "failures", "seconds"))
    for name, c in report["categories"].items():
        out.write("%-11s %8d %6d %8d %8d %8d %8.1f\n" % (name, c["requests"], c["cases"], c["refused"],
                                                          c["accepted"], c["failures"], c["seconds"]))
    out.write("silent clients hung up on after the timeout: %d; daemon restarts: %d\n"
              % (report["silent_clients_hung_up"], report["daemon_restarts"]))
    out.write("failures: %d\n" % report["failures"])
    for f in report["failure_list"][:50]:
        out.write("  [%s #%d] %s\n      %s\n" % (f["category"], f["case"], f["what"], f["why"]))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.fuzz.control", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="abusive requests to send (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument("--no-cli", action="store_true", help="no lvsadm/lvs subprocesses")
    p.add_argument("--category", action="append", choices=CATEGORIES, help="only these (repeatable)")
    p.add_argument("--verbose", action="store_true", help="failures as they happen, on stderr")
    args = p.parse_args(argv)
    log = (lambda text: sys.stderr.write(text + "\n")) if args.verbose else None
    report = fuzz(args.requests, args.seed, args.time_limit, tuple(args.category or CATEGORIES),
                  cli=not args.no_cli, log=log)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        print_report(report)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
