"""Changes to the host, made so that they can be undone exactly.

The live daemon and `lvs realserver` change the host they run on: an
nftables table, sysctls, addresses, routes, interface features. Each change
goes through a HostChanges journal, which prints it with the reason when it
is made, and writes the step that undoes it to a state file before moving
on. Undo runs the steps in reverse order; it is what a clean exit does, and
what `--cleanup` / `--down` do from the state file after a SIGKILL.

Only the host's own tools are used (ip, nft, ethtool, /proc/sys), so that
what we print is what a person could type.
"""

import json
import os
import socket
import subprocess
import sys


class HostError(Exception):
    """A change could not be made (the command's own message is included)."""


def netns_name():
    """The name of the network namespace we are in, as `ip netns identify` gives it ('' if none)."""
    try:
        me = os.stat("/proc/self/ns/net")
        for name in sorted(os.listdir("/run/netns")):
            st = os.stat(os.path.join("/run/netns", name))
            if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                return name
    except OSError:
        pass
    return ""


def run_dir():
    """Where this namespace's sockets and state files live: one directory per named netns."""
    name = netns_name()
    return "/run/pylvs/netns-%s" % name if name else "/run/pylvs"


def run(argv, check=True, input=None):
    """Run one host command; HostError with its stderr if it fails and `check`."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostError("%s: %s" % (" ".join(argv), e))
    if check and r.returncode != 0:
        raise HostError("%s: %s" % (" ".join(argv), (r.stderr or r.stdout).strip()))
    return r.stdout


def ip_json(*args):
    """What `ip -j ARGS` prints, decoded; HostError if ip fails."""
    try:
        return json.loads(run(["ip", "-j"] + list(args)) or "[]")
    except ValueError as e:
        raise HostError("ip -j %s: %s" % (" ".join(args), e))


def link_info(ifname):
    """`ip -j link show dev IF`'s entry, or None if there is no such interface."""
    try:
        links = ip_json("link", "show", "dev", ifname)
    except HostError:
        return None
    return links[0] if links else None


def ipv4_addresses(ifname=None):
    """[(address bytes, prefix length, interface)] of this namespace's IPv4 addresses
    (of one interface), each interface's primary address first."""
    found = []
    for link in ip_json("-4", "addr", "show", *(["dev", ifname] if ifname else [])):
        for a in link.get("addr_info", ()):
            if a.get("family") == "inet":
                found.append((socket.inet_aton(a["local"]), a.get("prefixlen", 32), link.get("ifname", "")))
    return found


def sysctl_path(name):
    return "/proc/sys/" + name.replace(".", "/")


def read_sysctl(name):
    with open(sysctl_path(name)) as f:
        return f.read().strip()


def write_sysctl(name, value):
    try:
        with open(sysctl_path(name), "w") as f:
            f.write(str(value))
    except OSError as e:
        raise HostError("sysctl %s=%s: %s" % (name, value, e.strerror))


class HostChanges:
    def __init__(self, state_path, log=None, owner="lvs"):
        self.state_path = state_path
        self.log = log or (lambda text: sys.stderr.write(text + "\n"))
        self.owner = owner
        self.steps = []

    # ------------------------------------------------------------ recording

    def save(self):
        directory = os.path.dirname(self.state_path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"owner": self.owner, "pid": os.getpid(), "netns": netns_name(),
                       "undo": self.steps}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def _record(self, step):
        self.steps.append(step)
        self.save()

    def claim(self):
        """Start a journal: refuse if a previous one was not undone (run cleanup first)."""
        if os.path.exists(self.state_path):
            raise HostError("%s exists: a previous %s did not clean up; run its cleanup first"
                            % (self.state_path, self.owner))
        self.save()

    # ------------------------------------------------------------ changes

    def sysctl(self, name, value, why):
        old = read_sysctl(name)
        if old == str(value):
            return
        self.log("%s: sysctl %s=%s (was %s): %s" % (self.owner, name, value, old, why))
        self._record({"sysctl": name, "value": old, "what": "sysctl %s=%s" % (name, old)})
        write_sysctl(name, value)

    def command(self, argv, undo, why, input=None):
        """Run `argv`; `undo` is the command that reverses it."""
        self.log("%s: %s: %s" % (self.owner, " ".join(argv), why))
        self._record({"run": undo, "what": " ".join(undo)})
        try:
            run(argv, input=input)
        except HostError:
            self.steps.pop()  # nothing was changed, nothing to undo
            self.save()
            raise

    def nft_table(self, family, name, body, why):
        """Create nftables table `family name` from `body` (its chains and sets)."""
        text = "table %s %s {\n%s\n}\n" % (family, name, body)
        self.log("%s: nft table %s %s: %s\n%s" % (self.owner, family, name, why, text.rstrip()))
        self._record({"run": ["nft", "delete", "table", family, name],
                      "what": "nft delete table %s %s" % (family, name)})
        try:
            run(["nft", "-f", "-"], input=text)
        except HostError:
            self.steps.pop()
            self.save()
            raise

    def ethtool_off(self, ifname, features, why):
        """Turn offload features off; only those that were on are recorded."""
        out = run(["ethtool", "-k", ifname], check=False)
        on = []
        for feature, long_name in features:
            for line in out.splitlines():
                key, _, value = line.strip().partition(":")
                if key == long_name and value.strip().startswith("on") and "[fixed]" not in value:
                    on.append(feature)
        if on:
            argv = ["ethtool", "-K", ifname] + [x for f in on for x in (f, "off")]
            undo = ["ethtool", "-K", ifname] + [x for f in on for x in (f, "on")]
            self.command(argv, undo, why)

    # ------------------------------------------------------------ undoing

    def undo(self):
        """Undo every change, newest first; returns the list of failures (as text)."""
        failures = undo_steps(self.steps, self.log, self.owner)
        self.steps = []
        try:
            os.unlink(self.state_path)
        except OSError:
            pass
        return failures


def undo_steps(steps, log, owner):
    failures = []
    for step in reversed(steps):
        log("%s: undo: %s" % (owner, step["what"]))
        try:
            if "sysctl" in step:
                write_sysctl(step["sysctl"], step["value"])
            else:
                run(step["run"])
        except HostError as e:
            failures.append(str(e))
            log("%s: undo failed: %s" % (owner, e))
    return failures


def cleanup(state_path, log=None, owner="lvs"):
    """Undo what a dead process recorded in `state_path`. Returns (found, failures)."""
    log = log or (lambda text: sys.stderr.write(text + "\n"))
    try:
        with open(state_path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return False, []
    except (OSError, ValueError) as e:
        return True, ["cannot read %s: %s" % (state_path, e)]
    pid = state.get("pid")
    if isinstance(pid, int) and writer_alive(pid, owner.split()[-1]):
        return True, ["pid %d, which made these changes, is still running: stop it instead" % pid]
    failures = undo_steps(state.get("undo", []), log, owner)
    os.unlink(state_path)
    return True, failures


def writer_alive(pid, command):
    """Is `pid` still the process that wrote a journal: alive, in this network namespace,
    running `lvs COMMAND` (not a reused pid, not an `lvs COMMAND --down/--cleanup`)?"""
    if pid == os.getpid() or not process_alive(pid):
        return False
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        same_net = os.stat("/proc/%d/ns/net" % pid).st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False
    return (same_net and command.encode() in argv
            and b"--down" not in argv and b"--cleanup" not in argv)


def process_alive(pid):
    """Is `pid` a live process (a zombie left for a busy init does not count)?"""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
