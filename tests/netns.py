"""Two test hosts on one machine: network namespaces joined by a veth pair, each with an address and,
for the processes started in it, a hostname of its own (and, for the second, a private folder where
Ray keeps its sockets: two Ray nodes must not share one).

Needs root and iproute2 (`ip netns`); hosts_available() says whether this machine has them.
"""

import os
import shutil
import subprocess


def hosts_available():
    """'' if two hosts can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not (shutil.which("ip") and shutil.which("unshare")):
        return "network namespaces need iproute2 (ip) and util-linux (unshare)"
    return ""


class Hosts:
    """Hosts 'a' and 'b' at 10.213.N.1 and 10.213.N.2 (N from our pid: parallel runs do not collide).
    run(host, cmd, ...) starts cmd there as a subprocess.Popen; close() kills what was started and
    removes the namespaces."""

    def __init__(self, private_dir):
        tag, n = os.getpid() % 100000, os.getpid() % 250 + 1
        self.ns = {"a": f"mg{tag}a", "b": f"mg{tag}b"}
        self.ip = {"a": f"10.213.{n}.1", "b": f"10.213.{n}.2"}
        self.private_dir, self.procs = str(private_dir), []
        veth = {"a": f"mv{tag}a", "b": f"mv{tag}b"}
        try:
            for h in "ab":
                _ip("netns", "add", self.ns[h])
            _ip("link", "add", veth["a"], "type", "veth", "peer", "name", veth["b"])
            for h in "ab":
                _ip("link", "set", veth[h], "netns", self.ns[h])
                _ip("-n", self.ns[h], "addr", "add", f"{self.ip[h]}/24", "dev", veth[h])
                _ip("-n", self.ns[h], "link", "set", veth[h], "up")
                _ip("-n", self.ns[h], "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def run(self, host, cmd, env, **popen):
        """cmd on host `host` ('a' or 'b'), as machine-a / machine-b; on b, private_dir is its own."""
        setup = f"hostname machine-{host}"
        if host == "b":
            setup = f"mount -t tmpfs tmpfs {self.private_dir} && {setup}"
        wrapped = ["ip", "netns", "exec", self.ns[host], "unshare", "--uts", "--mount", "--propagation", "private",
                   "sh", "-c", f'{setup} && exec "$@"', "sh", *map(str, cmd)]
        p = subprocess.Popen(wrapped, env=env, **popen)
        self.procs.append(p)
        return p

    def close(self, timeout=120):
        for p in reversed(self.procs):   # SIGTERM: `ray start --block` stops its node's processes
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in self.ns.values():   # deleting a namespace deletes its end of the veth, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
