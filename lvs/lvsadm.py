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
    except (OSError, ValueError) as e:
        # a timeout, a reset, an answer that is no JSON: the daemon is there but failed us
        sys.stderr.write("%s: no answer from the pylvs daemon on %s: %s\n"
                         % (prog, path, e.strerror if isinstance(e, OSError) and e.strerror else e))
        return 2
    if not isinstance(answer, dict) or "error" in answer or not isinstance(answer.get("status"), int):
        error = answer.get("error") if isinstance(answer, dict) else None
        _write(sys.stderr, "%s: %s\n" % (prog, error or "the daemon's answer makes no sense"))
        return 2
    _write(sys.stdout, answer.get("stdout") or "")
    _write(sys.stderr, answer.get("stderr") or "")
    return answer["status"]


def _write(stream, text):
    """Text from the daemon, bytes as they came: what was not UTF-8 in our argv or stdin
    (surrogate escapes, as Python decodes them) goes back out as those bytes, as
    ipvsadm would echo them."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "backslashreplace")  # surrogates we did not send
    raw = getattr(stream, "buffer", None)
    if raw is None:
        stream.write(data.decode("utf-8", "replace"))
        return
    stream.flush()
    raw.write(data)
    raw.flush()


def _read_stdin():
    """All of stdin, undecodable bytes kept (surrogateescape): ipvsadm reads bytes."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:
        return sys.stdin.read()
    return raw.read().decode("utf-8", "surrogateescape")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    prog = os.path.basename(sys.argv[0]) or "lvsadm"
    stdin_text = _read_stdin() if _reads_stdin(argv) else None
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


def restore_input(text):
    """What ipvsadm-restore (a shell script) hands `ipvsadm -R`: INPUT="$(grep -v '^#')",
    then echo "$INPUT". Lines end at newlines only (a form feed or carriage return is
    inside a line for grep), trailing newlines go with the command substitution, and
    echo ends the input with one: a last line is never cut short by a missing newline."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return "\n".join(line for line in lines if not line.startswith("#")).rstrip("\n") + "\n"


def restore_main(argv=None):
    """lvsadm-restore: ipvsadm-restore's script (clear, then -R without # lines), in one step:
    the daemon checks the whole input before it clears anything."""
    return call(["-R"], "lvsadm", restore_input(_read_stdin()), op="replace")
