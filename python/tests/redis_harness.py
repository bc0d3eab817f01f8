"""Real redis-server processes for the Python tests, as tests/redis_harness.c does for C.

Each server runs on a free loopback port with its files in a temporary directory, is started
with subprocess and stopped by its pid. It dies with the test process whatever kills it
(PR_SET_PDEATHSIG), and before a server counts as started it must answer INFO with its own
process_id: another test program that took the same port first is not ours. Waits are bounded.
"""

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

READY_S = 10.0  # longest wait for a server to answer as itself
CLUSTER_S = 20.0  # longest wait for a cluster to agree it is ok

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port():
    """A free loopback port below the ephemeral range, whose +10000 (a cluster bus) is free too."""
    for _ in range(1000):
        p = random.randint(10000, 22700)
        if _port_free(p) and _port_free(p + 10000):
            return p
    raise RuntimeError("no free port")


def command(port, *args, password=None, timeout=2.0):
    """One command on a new connection; the reply decoded (str, int, list, or an Exception for -ERR)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        cmds = ([("AUTH", password)] if password else []) + [args]
        for c in cmds:
            out = b"*%d\r\n" % len(c)
            for a in c:
                a = str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            reply = _read(f)
        return reply


def _read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise ValueError(f"bad reply {line!r}")


class RedisServer:
    """One redis-server (or sentinel) on a free loopback port."""

    def __init__(self, root, *, password=None, extra=(), sentinel=False):
        self.port = pick_port()
        self.password = password
        self.sentinel = sentinel
        self.dir = os.path.join(root, f"n{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "sentinel.conf" if sentinel else "redis.conf")
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", f"logfile {self.dir}/log",
                 "daemonize no"]
        if not sentinel:
            lines += ['save ""', "appendonly no"]
        if password:
            lines.append(f"requirepass {password}")
        lines += list(extra)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self):
        args = ["redis-server", self.conf] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                info = command(self.port, "INFO", "server", password=self.password)
                if isinstance(info, str) and f"process_id:{self.proc.pid}\r" in info:
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        log = open(os.path.join(self.dir, "log")).read() if os.path.exists(os.path.join(self.dir, "log")) else ""
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")

    def cmd(self, *args):
        return command(self.port, *args, password=self.password)

    def pause(self, paused):
        os.kill(self.proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    @property
    def url(self):
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"


class Harness:
    """The servers of one test session, in one temporary directory, all stopped by stop()."""

    def __init__(self):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found (Debian: redis-server)")
        self.root = tempfile.mkdtemp(prefix="traffic-pyredis-")
        self.servers = []

    def server(self, **kw):
        s = RedisServer(self.root, **kw)
        self.servers.append(s)
        return s.start()

    def sentinel_set(self, master_name="mymaster"):
        """A master and one sentinel monitoring it as master_name."""
        master = self.server()
        sentinel = self.server(sentinel=True, extra=[
            f"sentinel monitor {master_name} 127.0.0.1 {master.port} 1",
            f"sentinel down-after-milliseconds {master_name} 500",
            f"sentinel failover-timeout {master_name} 2000",
        ])
        return master, sentinel

    def cluster(self, n=3):
        """n masters, slots split evenly, waited for until cluster_state:ok."""
        nodes = [self.server(extra=["cluster-enabled yes", "cluster-node-timeout 2000"]) for _ in range(n)]
        per = 16384 // n
        for i, node in enumerate(nodes):
            lo, hi = i * per, (16383 if i == n - 1 else (i + 1) * per - 1)
            node.cmd("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for node in nodes[1:]:
            node.cmd("CLUSTER", "MEET", "127.0.0.1", nodes[0].port)
        deadline = time.monotonic() + CLUSTER_S
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in n.cmd("CLUSTER", "INFO") for n in nodes):
                return nodes
            time.sleep(0.1)
        raise RuntimeError("cluster did not become ok")

    def stop(self):
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.root, ignore_errors=True)
