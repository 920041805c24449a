"""Pre-warmed replica launcher (fork server): imports the runtime and its backend once, then forks replicas.

autoscaler.local.prewarm starts one per backend kind and asks it over a Unix socket to fork a replica; the
child sets up its own session, environment and stdio, then runs runtime.server.main like `python -m runtime`.

Protocol, one connection per replica: the launcher sends one JSON line `{"argv": [...], "env": {...},
"cwd": "..."}` with two file descriptors attached (SCM_RIGHTS: the replica's stdout and stderr); the
zygote answers `{"pid": N}` (or `{"error": "..."}`) and later `{"exit": code}` when it reaps the replica.
The replica keeps the connection too, as its lifeline: when the launcher's end closes (the autoscaler
exited), the replica shuts down gracefully.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

# Import-only pre-warming: no thread pools. OpenBLAS (numpy) would start one per core at import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

KINDS = ("paddle", "onnx")
MAX_REQUEST = 1 << 20


def preload(kind: str) -> float:
    """Import everything a replica of this kind needs before it can load its model; returns seconds."""
    t0 = time.perf_counter()
    import runtime.handlers.image  # noqa: F401
    import runtime.handlers.lac  # noqa: F401
    import runtime.handlers.raw  # noqa: F401
    import runtime.protocols.v2_grpc  # noqa: F401 - grpc only imported: its threads start with a server
    import runtime.server  # noqa: F401

    if kind == "paddle":
        import paddle.inference  # noqa: F401

        # The OCR handler's libraries when the `ocr` extra is installed: 0.08 s and ~6 MB, no threads.
        with contextlib.suppress(ImportError):
            import cv2  # noqa: F401
            import rapidocr_paddle  # noqa: F401
    elif kind == "onnx":
        import onnxruntime  # noqa: F401
    else:
        raise ValueError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    return time.perf_counter() - t0


def _lifeline(conn: socket.socket) -> None:
    """In the replica's lifeline thread: SIGTERM ourselves (graceful drain) when the launcher's end closes."""
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def _child(zygote: Zygote, conn: socket.socket, request: dict, fds: list[int]) -> None:
    """Runs in the forked replica; never returns."""
    code = 70
    try:
        zygote.close_in_child()
        conn.settimeout(None)
        os.setsid()  # its own process group: the platform signals the group
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in (devnull, *fds):
            os.close(fd)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        os.environ.clear()
        os.environ.update(request.get("env") or {})
        if request.get("cwd"):
            os.chdir(request["cwd"])
        # Thread counts are the replica's own, set after the fork (the zygote pinned them to 1).
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        if os.environ.get("ELASTICSERVING_ZYGOTE_FAULT") == "hang":  # tests: a replica that never turns ready
            while True:
                time.sleep(3600)
        threading.Thread(target=_lifeline, args=(conn,), name="lifeline", daemon=True).start()
        from runtime.server import main

        sys.argv = ["python -m runtime", *request["argv"]]
        code = main(list(request["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException:  # noqa: BLE001 - report anything, then exit with a code
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class Zygote:
    """The fork server's loop: accept requests, fork replicas, reap them and report their exit codes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        Path(path).unlink(missing_ok=True)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(64)
        self.children: dict[int, socket.socket] = {}
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()

    def close_in_child(self) -> None:
        """The forked replica keeps none of the zygote's descriptors but its own connection."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        self.listener.close()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        for other in self.children.values():
            other.close()

    def serve(self) -> None:
        wake_r = self.wake_r
        os.set_blocking(self.wake_w, False)
        os.set_blocking(wake_r, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(wake_r, selectors.EVENT_READ, "signal")
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        while not self.stopping:
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "accept":
                    self._accept()
                elif key.data == "signal":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
            self._reap()
        self.listener.close()
        Path(self.path).unlink(missing_ok=True)

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.settimeout(5.0)
        fds: list[int] = []
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 2)
            request = json.loads(data.decode("utf-8"))
            if len(fds) != 2 or not isinstance(request, dict) or not isinstance(request.get("argv"), list):
                raise ValueError("expected {argv, env} with two file descriptors (stdout, stderr)")
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"error": f"bad request: {exc}"}).encode() + b"\n")
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            _child(self, conn, request, fds)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.zygote", description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, help="Unix socket path to listen on")
    p.add_argument("--kind", choices=KINDS, default="paddle", help="backend to import ahead of time")
    args = p.parse_args(argv)
    seconds = preload(args.kind)
    print(json.dumps({"preloaded": args.kind, "seconds": round(seconds, 3)}), file=sys.stderr, flush=True)
    Zygote(args.socket).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
