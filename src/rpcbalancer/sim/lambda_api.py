"""A Lambda Runtime API on loopback, to run a handler under AWS's real runtime client.

Lambda starts the runtime client (``python -m awslambdaric module.handler``) with
``AWS_LAMBDA_RUNTIME_API=host:port``; the client long-polls ``GET .../invocation/next`` for
an event, calls the handler, and posts the result to ``.../invocation/{id}/response`` (or
``/error``). :class:`RuntimeApi` serves those routes, and an invoke route like the Runtime
Interface Emulator's (``POST /2015-03-31/functions/function/invocations``) that queues an
event and answers with the function's result, so tests invoke the function over HTTP.

Used by the test suite and ``bench/lambda_runtime.py``; a stand-in for what AWS runs, not
part of the balancer.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

from .process import stop_process

PREFIX = "/2018-06-01/runtime"
INVOKE = "/2015-03-31/functions/function/invocations"


@dataclass
class Invocation:
    request_id: str
    event: bytes
    timeout: float
    done: threading.Event = field(default_factory=threading.Event)
    result: bytes = b""
    error_type: str | None = None
    """Set when the function failed: ``Lambda-Runtime-Function-Error-Type``."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A runtime client that went away mid-poll (stopped) is not an error worth a trace."""
        import sys as _sys

        if not isinstance(_sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RuntimeApi:
    """``with RuntimeApi() as api:`` serves on ``api.address`` (``127.0.0.1:port``)."""

    def __init__(self, function_timeout: float = 15.0) -> None:
        self.function_timeout = function_timeout
        self.pending: queue.Queue[Invocation] = queue.Queue()
        self.running: dict[str, Invocation] = {}
        self.init_errors: list[bytes] = []
        self.polls = 0
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    self._send(404, b'{"errorMessage": "not found"}')
                    return
                invocation = api._next()
                if invocation is None:
                    self._send(503, b'{"errorMessage": "shutting down"}')
                    return
                deadline = int((time.time() + invocation.timeout) * 1000)
                self._send(
                    200,
                    invocation.event,
                    {
                        "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                        "Lambda-Runtime-Deadline-Ms": str(deadline),
                        "Lambda-Runtime-Invoked-Function-Arn": (
                            "arn:aws:lambda:us-east-1:123456789012:function:rpcbalancer"
                        ),
                        "Lambda-Runtime-Trace-Id": f"Root=1-00000000-{invocation.request_id}",
                    },
                )

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.split("/")
                if self.path == INVOKE:
                    invocation = api._queue(body)
                    if not invocation.done.wait(api.function_timeout + 5):
                        self._send(504, b'{"errorMessage": "function timed out"}')
                        return
                    extra = {}
                    if invocation.error_type is not None:
                        extra["X-Amz-Function-Error"] = "Unhandled"
                    self._send(200, invocation.result, extra)
                elif self.path == f"{PREFIX}/init/error":
                    api.init_errors.append(body)
                    self._send(202, b'{"status": "OK"}')
                elif (
                    len(parts) == 6
                    and parts[4] in api.running
                    and parts[5] in ("response", "error")
                ):
                    invocation = api.running.pop(parts[4])
                    invocation.result = body
                    if parts[5] == "error":
                        invocation.error_type = self.headers.get(
                            "Lambda-Runtime-Function-Error-Type", "Unhandled"
                        )
                    invocation.done.set()
                    self._send(202, b'{"status": "OK"}')
                else:
                    self._send(404, b'{"errorMessage": "unknown invocation"}')

            def _send(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RuntimeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    @property
    def invoke_url(self) -> str:
        return f"http://{self.address}{INVOKE}"

    def _queue(self, event: bytes) -> Invocation:
        invocation = Invocation(f"req-{next(self._ids):06d}", event, self.function_timeout)
        self.pending.put(invocation)
        return invocation

    def _next(self) -> Invocation | None:
        self.polls += 1
        while not self._stopping.is_set():
            try:
                invocation = self.pending.get(timeout=0.2)
            except queue.Empty:
                continue
            self.running[invocation.request_id] = invocation
            return invocation
        return None


def decode(result: bytes) -> Any:
    return json.loads(result) if result else None


def install_runtime(target: Path, python_version: str) -> None:
    """What the Lambda Python runtime brings besides the function (its runtime client and
    boto3), installed into ``target`` for ``python_version`` on this machine's platform."""
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--target", str(target), "--platform", f"manylinux2014_{platform.machine()}",
            "--implementation", "cp", "--python-version", python_version,
            "--only-binary=:all:", "awslambdaric>=3", "boto3",
        ],
        check=True,
    )  # fmt: skip


class LambdaFunction:
    """One runtime process (``python -S -m awslambdaric handler``) polling its own
    :class:`RuntimeApi`, with only ``task_root`` (the unpacked zip) and ``runtime_site``
    (:func:`install_runtime`) on its path, as in Lambda."""

    def __init__(
        self,
        handler: str,
        env: dict[str, str],
        *,
        python: str,
        task_root: Path,
        runtime_site: Path,
        log: Path,
    ) -> None:
        self.api = RuntimeApi(function_timeout=15).__enter__()
        self.log = log
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_RUNTIME_API": self.api.address,
            "LAMBDA_TASK_ROOT": str(task_root),
            "PYTHONPATH": f"{task_root}:{runtime_site}",
            "AWS_LAMBDA_FUNCTION_NAME": "rpcbalancer",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            **env,
        }
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [python, "-S", "-m", "awslambdaric", handler],
            cwd=task_root,
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def invoke(self, event: Any, timeout: float = 30.0) -> tuple[Any, bool]:
        """The function's result, and whether it was an error (``X-Amz-Function-Error``)."""
        if self.process.poll() is not None:
            raise RuntimeError(f"the runtime exited: {self.log.read_text()[-2000:]}")
        request = Request(
            self.api.invoke_url,
            data=json.dumps(event).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urlopen(request, timeout=timeout) as response:
            failed = response.headers.get("X-Amz-Function-Error") is not None
            return decode(response.read()), failed

    def stop(self) -> None:
        stop_process(self.process)
        self.api.__exit__(None, None, None)
        self._log.close()
