"""lvsadm end to end: the command line, the socket, the daemon's tables."""

import os
import subprocess
import sys

import pytest

from lvs import ctl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTURE = os.path.join(ROOT, "examples", "tutorial.pcap")
RUNNER = "import sys; sys.argv[0] = %r; import lvs.lvsadm as m; sys.exit(m.%s())"


def tool(name, entry, *args, input=None, sock):
    env = dict(os.environ, LVS_SOCKET=sock)
    return subprocess.run([sys.executable, "-c", RUNNER % (name, entry)] + list(args), input=input,
                          capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


def lvsadm(*args, input=None, sock):
    return tool("lvsadm", "main", *args, input=input, sock=sock)


@pytest.fixture
def sock(tmp_path):
    path = str(tmp_path / "lvs.sock")
    r = subprocess.run([sys.executable, "-m", "lvs", "daemon", "--socket", path, "--clock", "capture",
                        "--detach"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    pid = ctl.request(path, {"op": "ping"})["pid"]
    yield path
    try:
        subprocess.run([sys.executable, "-m", "lvs", "daemon", "--socket", path, "--stop"],
                       capture_output=True, timeout=30, cwd=ROOT)
    finally:
        _kill(pid)


def _kill(pid):
    """A daemon that did not stop (a failed test may leave it busy) ends by its PID."""
    import signal
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_the_tutorial_sequence(sock):
    for line in ("-A -t 198.51.100.2:80 -s rr",
                 "-a -t 198.51.100.2:80 -r 198.51.100.10:10 -g -w 1",
                 "-a -t 198.51.100.2:80 -r 198.51.100.11:11 -i -w 1",
                 "-a -t 198.51.100.2:80 -r 198.51.100.12:12 -m -w 1"):
        r = lvsadm(*line.split(), sock=sock)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = tool("lvsadm-save", "save_main", "-n", sock=sock)
    assert r.stdout == ("-A -t 198.51.100.2:80 -s rr\n"
                        "-a -t 198.51.100.2:80 -r 198.51.100.10:80 -g -w 1\n"
                        "-a -t 198.51.100.2:80 -r 198.51.100.11:80 -i -w 1 --tun-type ipip\n"
                        "-a -t 198.51.100.2:80 -r 198.51.100.12:12 -m -w 1\n")
    r = lvsadm("-Ln", sock=sock)
    assert r.stdout.splitlines()[3:] == [
        "TCP  198.51.100.2:80 rr",
        "  -> 198.51.100.10:80             Route   1      0          0         ",
        "  -> 198.51.100.11:80             Tunnel  1      0          0         ",
        "  -> 198.51.100.12:12             Masq    1      0          0         "]


def test_errors_come_back_with_ipvsadm_text_and_status(sock):
    r = lvsadm("-A", "-t", "198.51.100.2:80", "-s", "nosuch", sock=sock)
    assert (r.returncode, r.stdout, r.stderr) == (255, "", "Scheduler or persistence engine not found\n")
    r = lvsadm("-A", "-t", "198.51.100.300:80", sock=sock)
    assert (r.returncode, r.stderr) == (2, "illegal virtual server address[:port] specified\n")
    r = lvsadm("-L", "-n", "-t", "198.51.100.2:81", sock=sock)
    assert (r.returncode, r.stderr) == (1, "No such service\n")


def test_restore_from_stdin_is_atomic(sock):
    good = "-A -t 198.51.100.2:80 -s wlc\n-a -t 198.51.100.2:80 -r 192.0.2.11:80 -m -w 2\n"
    assert lvsadm("-R", input=good, sock=sock).returncode == 0
    before = lvsadm("-S", "-n", sock=sock).stdout
    bad = "-A -u 198.51.100.2:53 -s rr\n-A -t 198.51.100.2:80 -s rr\n"
    r = lvsadm("-R", input=bad, sock=sock)
    assert r.returncode == 255 and r.stderr == "line 2: Service already exists\n"
    assert lvsadm("-S", "-n", sock=sock).stdout == before  # nothing applied


def test_lvsadm_restore_replaces_only_when_all_lines_are_good(sock):
    lvsadm("-A", "-t", "198.51.100.2:80", "-s", "rr", sock=sock)
    r = tool("lvsadm-restore", "restore_main", input="# saved\n-A -u 198.51.100.2:53 -s rr\n-A -u 198.51.100.2:53\n",
             sock=sock)
    assert r.returncode != 0
    assert lvsadm("-S", "-n", sock=sock).stdout == "-A -t 198.51.100.2:80 -s rr\n"
    r = tool("lvsadm-restore", "restore_main", input="# saved\n-A -u 198.51.100.2:53 -s rr\n", sock=sock)
    assert r.returncode == 0
    assert lvsadm("-S", "-n", sock=sock).stdout == "-A -u 198.51.100.2:53 -s rr\n"


def test_fed_traffic_shows_in_the_listings(sock):
    # ipvsadm -R takes no comments (ipvsadm-restore strips them): nor does lvsadm -R.
    rules = [line for line in open(os.path.join(ROOT, "examples", "tutorial.rules")) if not line.startswith("#")]
    r = lvsadm("-R", input="".join(rules), sock=sock)
    assert r.returncode == 0, r.stderr
    assert ctl.request(sock, {"op": "feed", "path": CAPTURE})["sent"] == 40
    stats = lvsadm("-Ln", "--stats", sock=sock).stdout.splitlines()
    assert stats[3].split() == ["TCP", "198.51.100.2:80", "6", "30", "10", "1500", "468"]
    conns = lvsadm("-Lnc", sock=sock).stdout.splitlines()
    assert len(conns) == 2 + 6 and conns[2].split()[2] == "TIME_WAIT"
    r = lvsadm("-Z", sock=sock)
    assert r.returncode == 0
    assert lvsadm("-Ln", "--stats", sock=sock).stdout.splitlines()[3].split()[2:] == ["0"] * 5


def test_save_script_rejects_unknown_options(sock):
    r = tool("lvsadm-save", "save_main", "-x", sock=sock)
    assert r.returncode == 1 and "Script to save the IPVS table" in r.stderr


# What Debian's ipvsadm-restore made of odd inputs in the oracle VM (tests/data/golden/
# probe_restore.sh): ipvsadm -C, then INPUT="$(grep -v '^#')"; echo "$INPUT" | ipvsadm -R.
RESTORE_INPUTS = {
    "two-blanks-no-newline": "-A -t 203.0.113.200:80 -s rr  ",
    "form-feed-comment": "-A -t 203.0.113.200:80 -s rr\n-A -t 203.0.113.200:81 -s rr\f#x\n"
                         "-A -t 203.0.113.200:82 -s rr\n",
    "cr-comment": "-A -t 203.0.113.200:80 -s rr\r#x\n-A -t 203.0.113.200:83 -s rr\n",
    "hash-line": "#c\n-A -t 203.0.113.200:84 -s rr\n  #c\n",
}


@pytest.mark.parametrize("name", sorted(RESTORE_INPUTS))
def test_restore_input_is_what_ipvsadm_restore_hands_ipvsadm(name):
    from lvs import adm
    from lvs.engine import Engine
    from lvs.lvsadm import restore_input
    with open(os.path.join(ROOT, "tests", "data", "golden", "restore.txt")) as f:
        recorded = f.read()
    sections = dict(part.split("\n", 1) for part in recorded.split("== ")[1:])
    want = [(k, v) for k, v in sections.items() if k.startswith(name + " ")][0]
    head, text = want
    engine = Engine()
    out, err, status = adm.run(engine, ["-R"], restore_input(RESTORE_INPUTS[name]), prog="ipvsadm")
    saved = adm.run(engine, ["-S", "-n"])[0]
    messages = "".join(line.split(": ", 1)[1] + "\n" for line in err.splitlines())  # "line N: " off
    assert out == "" and text.startswith(messages)
    if not messages:
        assert (head, text) == ("%s rc=%d" % (name, status), saved)
    else:
        # ipvsadm went on past a kernel refusal, or stopped at a parse error after the lines
        # before it; pylvs's -R refuses the whole input, naming the line, and applies nothing.
        assert saved == "" and status != 0
        if head.endswith(("rc=2", "rc=255")):
            assert head == "%s rc=%d" % (name, status)
