"""`lvsadm`, `lvsadm-save` and `lvsadm-restore`: ipvsadm's commands, answered by `lvs daemon`.

lvsadm passes its command line to the daemon, which runs it against its
tables exactly as ipvsadm runs against the kernel, and prints the answer.
Without a daemon it fails as ipvsadm fails without the ip_vs module, and says
which socket it tried and how to start one.
"""

import os
import sys

from . import ctl


def _reads_stdin(argv):
    """Does this command line ask for -R (so stdin holds the rules)?"""
    for arg in argv:
        if arg in ("--restore",):
            return True
        if arg.startswith("-") and not arg.startswith("--") and "R" in arg[1:]:
            return True
    return False


def call(argv, prog, stdin_text=None, op="adm"):
    path = ctl.socket_path()
    try:
        answer = ctl.request(path, {"op": op, "argv": argv, "stdin": stdin_text, "prog": prog})
    except ctl.NoDaemon:
        sys.stderr.write(
            "Can't initialize ipvs: Protocol not available\n"
            "No pylvs daemon answers on %s: start one with `lvs daemon --detach`"
            " (set LVS_SOCKET or --socket for another path).\n" % path)
        return 2
    if "error" in answer:
        sys.stderr.write("%s: %s\n" % (prog, answer["error"]))
        return 2
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    return answer["status"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    prog = os.path.basename(sys.argv[0]) or "lvsadm"
    stdin_text = sys.stdin.read() if _reads_stdin(argv) else None
    return call(argv, prog, stdin_text)


def save_main(argv=None):
    """lvsadm-save [-n]: ipvsadm-save's script, on lvsadm."""
    argv = sys.argv[1:] if argv is None else argv
    numeric = []
    for arg in argv:
        if arg == "-n":
            numeric = ["-n"]
        elif arg.startswith("-"):
            sys.stderr.write("lvsadm-save: Script to save the IPVS table to stdout.\n"
                             "   With the -n option, prints out the table in numeric format.\n")
            return 1
    return call(["-S"] + numeric, "lvsadm")


def restore_main(argv=None):
    """lvsadm-restore: ipvsadm-restore's script (clear, then -R without # lines), in one step:
    the daemon checks the whole input before it clears anything."""
    text = "".join(line for line in sys.stdin.read().splitlines(True) if not line.startswith("#"))
    return call(["-R"], "lvsadm", text, op="replace")
