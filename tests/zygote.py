"""Python commands for the end-to-end tests, started without paying the imports each time.

Importing torch, torchvision and detectron2 costs seconds of CPU per process (benchmarks/<kind>/
suite-profile.json), and the end-to-end tests start tools/train_net.py, tools/predict.py and their
like dozens of times.
:func:`start` runs such a command (a script path or ``-c`` code, with its argv, cwd and
environment) in a process forked from a *zygote*: a clean interpreter, one per pytest worker,
that has imported those libraries and nothing else (no dataset registered, no logger set up,
no OpenMP pool started: it has run no tensor operation). The child then runs the script as
``python script args`` would, under ``__main__``, so torch's spawned workers (detectron2's
launch) re-import it as usual; they start fresh, as always.

What differs from a fresh interpreter, and why no test that uses this can tell: warnings of the
zygote's imports were shown (or not) in the zygote, and the child exits without tearing its
modules down (no warnings from that teardown): the tests of what importing and exiting print
start real processes (tests/tools/test_quiet_tools.py, test_imports.py, the README's first
block in test_readme.py); a PYTHONWARNINGS of bare actions in the command's environment is
applied in the child as an interpreter applies it at start. OpenMP reads its environment when
torch loads, so the child applies OMP_NUM_THREADS itself (torch.set_num_threads), and the wait
policy is the zygote's (PASSIVE: no thread spins). Everything else the command reads (argv,
cwd, environment variables, DETECTRON2_DATASETS included: resnext_det re-points detectron2's
COCO splits when a run starts) is the child's own.

The child is the pytest worker's own child (the worker is made a child subreaper and the
zygote forks twice), so its exit status is waited for as a Popen's is, SIGKILL included:
:class:`Process` has Popen's ``pid``, ``stdout``, ``poll``, ``wait``, ``communicate`` and
``returncode``. ``RESNEXT_DET_TEST_ZYGOTE=0`` runs every command as a real subprocess instead.
"""
import ctypes
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PRELOAD = ("torch", "torchvision", "detectron2.engine", "detectron2.evaluation", "detectron2.modeling",
           "resnext_det", "resnext_det.cli", "resnext_det.apps.predict", "resnext_det.apps.export")
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
_lock = threading.Lock()
_server = {}


def enabled():
    return os.environ.get("RESNEXT_DET_TEST_ZYGOTE", "1") != "0" and sys.platform.startswith("linux")


# ---- the zygote (runs as ``python tests/zygote.py SOCKET``) ------------------------------------

def _serve(path):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # gone with the pytest worker
    if os.getppid() == 1:
        return
    for name in PRELOAD:
        __import__(name)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 2)
        if not msg:
            return
        while True:  # the rest of a long request, up to the client's end of writing
            more = conn.recv(1 << 16)
            if not more:
                break
            msg += more
        first = os.fork()
        if first == 0:
            if os.fork():  # the command's process is orphaned at once: the pytest worker adopts it
                os._exit(0)
            srv.close()
            _run(conn, json.loads(msg), fds)  # ends the process
        os.waitpid(first, 0)
        conn.close()
        for fd in fds:
            os.close(fd)


def _run(conn, req, fds):
    """In the forked child: become ``python [-W ignore] script args`` in req's cwd and env."""
    if req["new_session"]:
        os.setsid()
    if req["affinity"]:
        os.sched_setaffinity(0, req["affinity"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in (devnull, *fds):
        os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    import warnings

    if req["ignore_warnings"]:
        warnings.simplefilter("ignore")
    elif req["env"].get("PYTHONWARNINGS"):
        # as an interpreter started with it: its actions before the default filters (changing the
        # filters also makes every module forget which warnings it has shown)
        for action in req["env"]["PYTHONWARNINGS"].split(","):  # in order: the last one wins
            warnings.simplefilter(action)  # bare actions only ("default", "error", ...)
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    conn.sendall(json.dumps({"pid": os.getpid()}).encode())
    conn.close()
    argv = req["argv"]
    code = 0
    try:
        if argv[0] == "-c":
            sys.argv = ["-c"] + argv[2:]
            sys.path[0] = ""
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            import runpy

            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    # what the interpreter's shutdown does that a command can see (non-daemon threads joined,
    # atexit handlers, streams flushed), without tearing every module down (a second or more
    # with torch loaded)
    import atexit
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    os._exit(code & 0xFF)


# ---- the client (in the pytest worker) --------------------------------------------------------

def _zygote():
    with _lock:
        if _server.get("pid") != os.getpid() or _server["proc"].poll() is not None:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
            path = os.path.join(tempfile.mkdtemp(prefix="resnext_det_zygote_"), "socket")
            env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), path], env=env,
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready", "the test zygote did not start"
            _server.update(pid=os.getpid(), proc=proc, path=path)
        return _server["path"]


class Process:
    """A command started by the zygote; Popen's interface as the tests use it."""

    def __init__(self, argv, cwd, env, stdout, stderr, new_session, ignore_warnings, affinity=None):
        self.returncode = None
        self.stdout = self.stderr = None
        out_r = err_r = None
        if stdout == subprocess.PIPE:
            out_r, out_w = os.pipe()
        else:  # a file, or None: the worker's own
            out_w = os.dup(1 if stdout is None else stdout.fileno())
        if stderr == subprocess.STDOUT:
            err_w = os.dup(out_w)
        elif stderr == subprocess.PIPE:
            err_r, err_w = os.pipe()
        else:
            err_w = os.dup(2 if stderr is None else stderr.fileno())
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd or os.getcwd()),
               "env": dict(os.environ if env is None else env), "new_session": new_session,
               "ignore_warnings": ignore_warnings, "affinity": list(affinity or [])}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(_zygote())
            socket.send_fds(s, [json.dumps(req).encode()], [out_w, err_w])
            s.shutdown(socket.SHUT_WR)
            os.close(out_w)
            os.close(err_w)
            reply = s.recv(1 << 16)
        if not reply:
            raise RuntimeError("the test zygote did not start the command")
        self.pid = json.loads(reply)["pid"]
        if out_r is not None:
            self.stdout = io.open(out_r, "r", encoding="utf-8", errors="replace")
        if err_r is not None:
            self.stderr = io.open(err_r, "r", encoding="utf-8", errors="replace")

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - reaped elsewhere
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.time() + timeout
        delay = 0.001
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(["zygote", str(self.pid)], timeout)
            time.sleep(delay)
            delay = min(2 * delay, 0.05)
        return self.returncode

    def communicate(self, timeout=None):
        results = {}

        def read(name, stream):  # to the end, then closed (as Popen.communicate does)
            if stream is not None:
                with stream:
                    results[name] = stream.read()

        readers = [threading.Thread(target=read, args=(n, s), daemon=True)
                   for n, s in (("out", self.stdout), ("err", self.stderr))]
        for t in readers:
            t.start()
        self.wait(timeout)
        for t in readers:
            t.join(timeout=30)
        return results.get("out"), results.get("err")

    def kill(self):
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def start(argv, cwd=None, env=None, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, new_session=False,
          ignore_warnings=False, affinity=None):
    """``python [-W ignore] *argv`` (argv: a script and its arguments, or ``-c CODE ...``) as a
    :class:`Process` forked from the zygote, or as a subprocess.Popen when the zygote is off;
    ``affinity``: the cores the command may use (default: the worker's)."""
    if not enabled():
        flags = ["-W", "ignore"] if ignore_warnings else []
        return subprocess.Popen([sys.executable] + flags + [str(a) for a in argv], cwd=cwd, env=env,
                                stdout=stdout, stderr=stderr, text=True, start_new_session=new_session,
                                preexec_fn=(lambda: os.sched_setaffinity(0, affinity)) if affinity else None)
    return Process(argv, cwd, env, stdout, stderr, new_session, ignore_warnings, affinity)


def run(argv, cwd=None, env=None, timeout=None, ignore_warnings=False):
    """subprocess.run(capture_output=True, text=True) for a Python command through the zygote."""
    p = start(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              ignore_warnings=ignore_warnings)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


if __name__ == "__main__":
    _serve(sys.argv[1])
