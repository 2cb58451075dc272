"""`lvs top`: a running daemon's services, real servers, counts, rates and drops, on screen."""

import os
import subprocess
import sys
import time

from lvs import ctl, top

from test_daemon import CAPTURE, ROOT, RULES, lvs, sock  # noqa: F401  (the daemon helpers and fixture)


def started(sock, *extra):  # noqa: F811
    r = lvs("daemon", "--socket", sock, "--rules", RULES, "--clock", "capture", "--detach", *extra)
    assert r.returncode == 0, r.stderr
    answer = ctl.request(sock, {"op": "feed", "path": CAPTURE})
    assert answer["status"] == 0


def test_once_shows_services_servers_and_drops(sock):  # noqa: F811
    started(sock)
    r = lvs("top", "--socket", sock, "--once")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b" not in out                       # no terminal: no ANSI
    lines = out.splitlines()
    assert lines[0].startswith("pylvs top  %s  pid " % sock)
    assert lines[1].startswith("1 services, 3 real servers, 0 active and 6 inactive connections")
    svc = next(line.split() for line in lines if line.startswith("TCP  198.51.100.2:80"))
    # Prot, address, scheduler, active, inactive, then CPS InPPS OutPPS InB/s OutB/s.
    assert svc[:5] == ["TCP", "198.51.100.2:80", "rr", "0", "6"]
    rows = {line.split()[1]: line.split() for line in lines if line.startswith("  -> 198.")}
    assert sorted(rows) == ["198.51.100.10:80", "198.51.100.11:80", "198.51.100.12:12"]
    for name, fwd in (("198.51.100.10:80", "Route"), ("198.51.100.11:80", "Tunnel"),
                      ("198.51.100.12:12", "Masq")):
        assert rows[name][2:6] == [fwd, "1", "0", "2"]       # forward, weight, active, inactive
        assert int(rows[name][7]) > 0                          # InPPS from the estimator
    assert int(svc[5]) > 0 and int(svc[6]) > 0 and int(svc[8]) > 0   # CPS, InPPS, InB/s
    assert lines[-1] == "drops: arp=1 no_service=2"


def test_snapshot_follows_lvsadm(sock):  # noqa: F811
    started(sock)
    ctl.request(sock, {"op": "adm", "argv": ["-e", "-t", "198.51.100.2:80", "-r",
                                             "198.51.100.11:11", "-i", "-w", "5"]})
    ctl.request(sock, {"op": "adm", "argv": ["-A", "-u", "198.51.100.2:53", "-s", "wlc",
                                             "-p", "60"]})
    snap = ctl.request(sock, {"op": "top"})
    assert [s["name"] for s in snap["services"]] == ["TCP  198.51.100.2:80", "UDP  198.51.100.2:53"]
    assert snap["services"][1]["scheduler"] == "wlc" and snap["services"][1]["persistent"] == 60
    weights = {d["name"]: d["weight"] for d in snap["services"][0]["dests"]}
    assert weights["198.51.100.11:80"] == 5
    screen = top.render(snap, sock)
    assert "UDP  198.51.100.2:53" in screen and "wlc p60" in screen
    assert snap["drops"] == {"arp": 1, "no_service": 2} and snap["director"] is None


def test_count_and_interval(sock):  # noqa: F811
    started(sock)
    r = lvs("top", "--socket", sock, "--count", "3", "--interval", "0.1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("pylvs top  ") == 3 and "every 0.1s" in r.stdout


def test_no_daemon_is_status_1(tmp_path):
    r = lvs("top", "--socket", str(tmp_path / "none.sock"), "--once")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("lvs top: no daemon answers on %s" % (tmp_path / "none.sock"))


def test_the_daemon_going_away_is_status_1(sock):  # noqa: F811
    started(sock)
    p = subprocess.Popen([sys.executable, "-m", "lvs", "top", "--socket", sock, "--interval", "0.1"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert p.poll() is None
        assert lvs("daemon", "--socket", sock, "--stop").returncode == 0
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1
    assert "pylvs top" in out
    assert "lvs top: the daemon on %s went away" % sock in err


def test_ctrl_c_exits_cleanly(sock):  # noqa: F811
    started(sock)
    p = subprocess.Popen([sys.executable, "-m", "lvs", "top", "--socket", sock, "--interval", "0.1"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        p.send_signal(2)  # SIGINT, to our own child by its PID
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in err, err


def test_terminal_screens_are_redrawn_in_place():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    snap = {"pid": 1, "services": [], "drops": {"no_service": 3}, "director": None}
    calls = []

    def fake_fetch(path, timeout):
        calls.append(path)
        return snap
    real, top._fetch = top._fetch, fake_fetch
    try:
        out = Tty()
        assert top.run("/x.sock", interval=0.01, count=2, out=out) == 0
    finally:
        top._fetch = real
    text = out.getvalue()
    assert text.count(top.HOME) == 2 and text.count(top.CLEAR_DOWN) == 2
    assert "(no services)\x1b[K\n" in text and "drops: no_service=3" in text
    assert len(calls) == 2 and os.sep in calls[0]
