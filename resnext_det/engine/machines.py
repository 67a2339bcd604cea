"""Several machines (``--num-machines N``): a bounded rendezvous and a health watchdog, so that a
machine that cannot start or fails later stops every machine within ``timeout`` seconds with one line
naming it (docs/TRAINING.md, "Several machines"). Machine 0's launcher hosts a ``TCPStore`` at
``--dist-url``, shared by the other launchers and the workers' rendezvous (``TORCHELASTIC_USE_AGENT_STORE``,
:meth:`MachineGroup.worker_env`): one port, outliving a dying worker. Each launcher keeps
``resnext_det/machines/{beat,ready,failed,done}/<r>`` there; its watchdog thread stops its machine (workers
terminated, exit status 1) when another posts ``failed``, has not joined or stops beating, or machine 0 is
gone. A failing worker writes its reason locally (:func:`write_worker_failure`) for its launcher to post,
unless it lost a peer.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta
from typing import Callable, Dict, NoReturn, Optional
from urllib.parse import urlparse

import torch.distributed as dist

from ..config import ResNeXtConfigError

__all__ = ["DEFAULT_TIMEOUT", "MachineError", "MachineGroup", "write_worker_failure",
           "read_worker_failures", "one_line", "is_lost_peer"]

DEFAULT_TIMEOUT = 60.0  # seconds (train_net.py --machine-timeout)
_PREFIX = "resnext_det/machines/"
_SAY_EVERY = 10.0  # seconds between "waiting for ..." lines
# once this machine's workers lost their connection to a peer, a machine whose heartbeat (one a
# second) stopped for this long is the one gone: named then, not after the whole timeout
_LOST_PEER_LAPSE = 3.0
# a worker's error caused by a peer that went away (gloo/NCCL transport), not by this machine
_LOST_PEER_TEXT = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                   "/gloo/transport/", "NCCL communicator was aborted", "Socket Timeout")


class MachineError(RuntimeError):
    """This machine stops because of the group (a peer failed or never joined); one line."""


def one_line(text: str, limit: int = 400) -> str:
    """``text`` as one line (newlines -> '; '), at most ``limit`` characters."""
    line = ""
    for part in (s.strip() for s in str(text).splitlines()):
        if part:
            line += (" " if line.endswith(":") else "; ") + part if line else part
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _first_line(e: BaseException) -> str:
    """An exception's first line (torch's C++ errors append their stack frames)."""
    return one_line(str(e).split("Exception raised from")[0].strip().split("\n")[0], 200)


def _say(msg: str, stream=None) -> None:
    print(f"train_net.py: {msg}", file=stream or sys.stdout, flush=True)


class MachineGroup:
    """The launcher side of machine ``machine_rank`` of ``num_machines`` (module docstring).
    ``dist_url`` is ``tcp://HOST:PORT`` of machine 0; ``timeout``: seconds to wait for a peer to
    join or give its next sign of life; ``say``: where progress lines go (default stdout)."""

    def __init__(self, dist_url: str, num_machines: int, machine_rank: int,
                 timeout: float = DEFAULT_TIMEOUT, say: Optional[Callable[[str], None]] = None):
        url = urlparse(dist_url or "")
        if url.scheme != "tcp" or not url.hostname or not url.port:
            raise ResNeXtConfigError(f"--dist-url {dist_url!r}: several machines need tcp://HOST:PORT, "
                               "HOST being machine 0's address, e.g. tcp://10.0.0.1:29500")
        if not 0 <= machine_rank < num_machines:
            raise ResNeXtConfigError(f"--machine-rank {machine_rank}: give 0 ... {num_machines - 1} "
                               f"(--num-machines {num_machines})")
        if not timeout > 0:
            raise ResNeXtConfigError(f"--machine-timeout {timeout}: give a number of seconds > 0, e.g. 60")
        self.url, self.host, self.port = dist_url, url.hostname, url.port
        self.n, self.rank, self.timeout = num_machines, machine_rank, float(timeout)
        self._say = say or _say
        self._store = None  # the main thread's connection (machine 0: the server too)
        self._stop = threading.Event()  # the watchdog and heartbeat end
        self._watching = threading.Event()  # the watchdog judges (cleared when done)
        self._token = None  # machine 0: the file of sees_folder_of_machine_0
        self._stopping = threading.Event()  # the watchdog is stopping the run (it exits)
        self._peer_lost = threading.Event()  # this machine's workers lost a peer's connection
        self._started = None

    # -- names -----------------------------------------------------------------------------
    def who(self, r: int) -> str:
        return f"machine {r} of {self.n}"

    @staticmethod
    def _key(kind: str, r: int) -> str:
        return f"{_PREFIX}{kind}/{r}"

    # -- connecting ------------------------------------------------------------------------
    def _client(self, timeout: float):
        return dist.TCPStore(self.host, self.port, is_master=False,
                             timeout=timedelta(seconds=timeout))

    def connect(self) -> "MachineGroup":
        """Machine 0 starts the store, the others connect (for at most ``timeout`` s); then the
        heartbeat and the watchdog start."""
        self._started = time.monotonic()
        if self.rank == 0:
            try:
                self._store = dist.TCPStore(self.host, self.port, is_master=True,
                                            wait_for_workers=False,
                                            timeout=timedelta(seconds=self.timeout))
            except Exception as e:  # port taken, or not an address of this machine
                raise MachineError(f"machine 0 cannot listen at {self.url}: {_first_line(e)} "
                                   "(is the port free, and is HOST this machine's address?)") from None
        else:
            self._store = self._connect_to_machine_0()
        self._store.add(self._key("beat", self.rank), 1)
        for target in (self._heartbeat, self._watchdog):
            threading.Thread(target=target, name=f"resnext-machines-{target.__name__}", daemon=True).start()
        self._watching.set()
        return self

    def _connect_to_machine_0(self):
        deadline = self._started + self.timeout
        said = None
        while True:
            try:  # a plain socket first: torch's client logs every refused try with its stack
                socket.create_connection((self.host, self.port), timeout=2.0).close()
                return self._client(max(1.0, min(5.0, deadline - time.monotonic())))
            except Exception as e:  # refused / timed out: machine 0 is not there (yet)
                last = _first_line(e)
            waited = time.monotonic() - self._started
            if said is None or waited - said >= _SAY_EVERY:
                self._say(f"waiting for {self.who(0)} to start the run at {self.url} "
                          f"({waited:.0f} s of {self.timeout:.0f})")
                said = waited
            if waited >= self.timeout:
                raise MachineError(f"waiting for {self.who(0)} at {self.url}: not joined after "
                                   f"{self.timeout:.0f} s ({last})")
            time.sleep(0.5)

    def worker_env(self) -> Dict[str, str]:
        """The environment under which the workers' rendezvous uses machine 0's store."""
        return {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": self.host,
                "MASTER_PORT": str(self.port)}

    # -- the threads -----------------------------------------------------------------------
    def _machine_0_gone(self) -> bool:
        """Machines 1 ... N-1: machine 0's port refuses connections (a plain socket: torch's
        client would log each failure with its C++ stack)."""
        if self.rank == 0:
            return False
        try:
            socket.create_connection((self.host, self.port), timeout=2.0).close()
            return False
        except ConnectionRefusedError:
            return True
        except OSError:  # a timeout: the heartbeat decides
            return False

    def _heartbeat(self):
        with contextlib.suppress(Exception):  # machine 0 gone: the watchdog says so
            store = self._client(self.timeout)
            while not self._stop.wait(1.0):
                if self._machine_0_gone():
                    return
                store.add(self._key("beat", self.rank), 1)

    def _watchdog(self):
        try:
            store = self._client(self.timeout)
        except Exception as e:
            self.stop_run(f"{self.who(0)} at {self.url} is gone: {_first_line(e)}", (0,))
        seen: Dict[int, tuple] = {}  # machine -> (last beat, when it changed)
        said = -_SAY_EVERY
        while not self._stop.wait(1.0):
            if not self._watching.is_set():
                continue
            if self._machine_0_gone():
                self.stop_run(f"{self.who(0)} at {self.url} is gone (it holds the run's "
                              "rendezvous): connection refused", (0,))
            try:
                verdict, waiting = self._judge(store, seen)
            except Exception as e:  # the store (machine 0's launcher) went away
                if self._watching.is_set() and not self._stop.is_set():
                    self.stop_run(f"{self.who(0)} at {self.url} is gone (it holds the run's "
                                  f"rendezvous): {_first_line(e)}", (0,))
                return
            if verdict and self._watching.is_set():
                self.stop_run(*verdict)
            if waiting and time.monotonic() - said >= _SAY_EVERY:
                self._say("; ".join(waiting))
                said = time.monotonic()

    def _judge(self, store, seen):
        """((line that stops the run, machines gone) or None, what this machine waits for)."""
        now = time.monotonic()
        lapse = min(self.timeout, _LOST_PEER_LAPSE) if self._peer_lost.is_set() else self.timeout
        waiting = []
        for r in range(self.n):
            if r == self.rank:
                continue
            if store.check([self._key("failed", r)]):
                reason = store.get(self._key("failed", r)).decode(errors="replace")
                return (f"{self.who(r)} failed: {reason}", ()), waiting
            if store.check([self._key("done", r)]):
                continue
            beat = store.add(self._key("beat", r), 0)
            if beat == 0:
                waited = now - self._started
                if waited > self.timeout:
                    return (f"waiting for {self.who(r)} at {self.url}: not joined after "
                            f"{self.timeout:.0f} s", (r,)), waiting
                waiting.append(f"waiting for {self.who(r)} to join at {self.url} "
                               f"({waited:.0f} s of {self.timeout:.0f})")
                continue
            last, since = seen.get(r, (None, now))
            if beat != last:
                seen[r] = (beat, now)
            elif now - since > lapse:
                return (f"{self.who(r)} stopped responding: no sign of life for "
                        f"{lapse:.0f} s (killed, or its network is down)", (r,)), waiting
            if not store.check([self._key("ready", r)]):
                waiting.append(f"waiting for {self.who(r)}: joined, preparing its data")
        return None, waiting

    def stop_run(self, line: str, gone=()) -> NoReturn:
        """One line on stderr, this machine's workers terminated, exit status 1 (from the
        watchdog thread). ``gone``: machines that will not read the store again."""
        self._stopping.set()
        self._watching.clear()
        self._stop.set()
        _say(f"error: {line}; stopping {self.who(self.rank)}", sys.stderr)
        _terminate_children()
        self._drop_token()
        if self.rank == 0:
            self._linger(len(gone))
        else:
            self.leave()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    # -- the main thread ---------------------------------------------------------------------
    def wait_until_ready(self) -> None:
        """Post ``ready`` and wait until every machine has (the watchdog bounds the wait)."""
        self._store.set(self._key("ready", self.rank), "1")
        keys = [self._key("ready", r) for r in range(self.n)]
        while not self._store.check(keys):
            time.sleep(0.2)
        self._drop_token()

    def _drop_token(self):
        if self._token:
            with contextlib.suppress(OSError):
                os.unlink(self._token)
            self._token = None

    def sees_folder_of_machine_0(self, folder: str) -> bool:
        """Whether ``folder`` is shared with machine 0 (it writes a token file there, removed
        once every machine is ready, and posts its name)."""
        key = f"{_PREFIX}folder_token"
        if self.rank == 0:
            self._token = os.path.join(folder, f".machine0-{os.getpid()}-{time.time_ns()}")
            os.makedirs(folder, exist_ok=True)
            open(self._token, "w").close()
            self._store.set(key, os.path.basename(self._token))
            return True
        while not self._store.check([key]):  # (the watchdog bounds the wait)
            time.sleep(0.2)
        return os.path.isfile(os.path.join(folder, self._store.get(key).decode()))

    def fail(self, reason: str) -> None:
        """Post why this machine fails; machine 0 waits until the others have read it."""
        self._watching.clear()
        self._stop.set()
        self._drop_token()
        if self._store is None:
            return
        try:
            self._store.set(self._key("failed", self.rank), one_line(reason))
        except Exception:
            return
        if self.rank == 0:
            self._linger()

    def _linger(self, gone: int = 0):
        """Machine 0 keeps the store up until the others (but ``gone``) left, at most 10 s."""
        deadline = time.monotonic() + min(self.timeout, 10.0)
        with contextlib.suppress(Exception):
            store = self._store or self._client(5.0)
            while time.monotonic() < deadline:
                if store.add(f"{_PREFIX}left", 0) >= self.n - 1 - gone:
                    return
                time.sleep(0.2)

    def leave(self) -> None:
        """Tell machine 0 this machine is leaving (so it can close the store)."""
        if self.rank == 0:
            return
        with contextlib.suppress(Exception):
            (self._store or self._client(2.0)).add(f"{_PREFIX}left", 1)

    def finish(self) -> None:
        """Post ``done``; machine 0 keeps the store (and watchdog) until every machine is done."""
        self._store.set(self._key("done", self.rank), "1")
        if self.rank == 0:
            keys = [self._key("done", r) for r in range(self.n)]
            while not self._store.check(keys):
                time.sleep(0.2)
        self._watching.clear()
        self._stop.set()
        self.leave()

    def is_stopping(self) -> bool:
        """Whether the watchdog is stopping the run (so the workers' failure is its doing)."""
        return self._stopping.is_set()

    def await_verdict(self, peer_lost: bool = False) -> None:
        """Give the watchdog up to ``timeout`` + 5 s to name the failed peer (it exits the process);
        ``peer_lost``: this machine's workers lost a peer's connection, so a machine whose
        heartbeat stopped for ``_LOST_PEER_LAPSE`` s is named without waiting for ``timeout``."""
        if peer_lost:
            self._peer_lost.set()
        deadline = time.monotonic() + self.timeout + 5.0
        while time.monotonic() < deadline and self._watching.is_set():
            time.sleep(0.2)
        while self._stopping.is_set():  # the watchdog prints its line and ends the process
            time.sleep(0.2)


def _terminate_children(grace: float = 5.0) -> None:
    """Terminate this process's worker processes (SIGTERM, then SIGKILL after ``grace`` s)."""
    children = multiprocessing.active_children()
    for p in children:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in children:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()


# -- worker side ---------------------------------------------------------------------------
def is_lost_peer(e: BaseException) -> bool:
    """Whether a worker's error is a lost connection to another worker (the peer failed)."""
    return isinstance(e, dist.DistError) or (
        isinstance(e, RuntimeError) and any(t in str(e) for t in _LOST_PEER_TEXT))


def write_worker_failure(folder: str, rank: int, e: BaseException, *, user_error: bool,
                         exit_code: int, traceback_dir: str = "") -> None:
    """A worker's error for its launcher in ``<folder>/rank<rank>.json``; non-user errors keep their
    traceback in ``<traceback_dir>/error.rank<rank>.txt``."""
    reason = one_line(e)
    if not user_error:
        reason = f"{type(e).__name__}: {reason}"
        if traceback_dir:
            path = os.path.join(traceback_dir, f"error.rank{rank}.txt")
            with contextlib.suppress(OSError):
                os.makedirs(traceback_dir, exist_ok=True)
                with open(path, "w") as f:
                    f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
                reason += f" (traceback: {path})"
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "reason": reason, "lost_peer": not user_error and is_lost_peer(e),
                   "exit_code": exit_code}, f)


def read_worker_failures(folder: str):
    """The reports :func:`write_worker_failure` left in ``folder``, by rank."""
    out = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if name.startswith("rank") and name.endswith(".json"):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(folder, name)) as f:
                out.append(json.load(f))
    return out
