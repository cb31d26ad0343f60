"""A real OpenTelemetry collector for the tracing tests: rotel (from PyPI), run in the foreground.

rotel receives OTLP over gRPC and over HTTP/protobuf and, with `--debug-log traces --debug-log-verbosity
detailed`, prints every request it decoded on stdout in the OpenTelemetry Collector's debug-exporter layout.
That printout is read back here and parsed into `Span`s, so the tests see exactly what the collector decoded.

Ports: rotel binds both receivers before it logs anything and never reports the ports it got, and it keys its
listeners by the configured address, so two `:0` endpoints on one address collide. The gRPC receiver binds
127.0.0.1:0 and the HTTP one 127.0.0.2:0 (all of 127.0.0.0/8 is loopback); the ports the kernel chose are read
from the process's own listening sockets in /proc. Nothing is guessed and nothing can race.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import rotel

AGENT = Path(rotel.__file__).resolve().parent / "rotel-agent"
GRPC_HOST = "127.0.0.1"
HTTP_HOST = "127.0.0.2"

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@dataclass
class Span:
    """One span as the collector decoded it; attribute values keep their OTLP type (Str -> str, Int -> int)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    trace_state: str
    start_ns: int
    end_ns: int
    status_code: str
    status_message: str
    attributes: dict[str, object] = field(default_factory=dict)
    resource: dict[str, object] = field(default_factory=dict)
    scope: str = ""

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(text: str) -> object:
    """`Str(x)`, `Int(3)`, `Bool(true)`, `Double(1.5)` as the debug exporter writes an AnyValue."""
    match = re.fullmatch(r"(Str|Int|Bool|Double)\((.*)\)", text, re.DOTALL)
    if match is None:
        raise ValueError(f"unexpected attribute value in the collector's output: {text!r}")
    kind, raw = match.groups()
    if kind == "Int":
        return int(raw)
    if kind == "Bool":
        return raw == "true"
    if kind == "Double":
        return float(raw)
    return raw


# `    Trace ID       : 4bf9...`: a span field, its name left-aligned in 15 columns.
SPAN_FIELD = re.compile(r"^ {4}(.{15}): (.*)$")
ATTRIBUTE = re.compile(r"^ {5}-> ([^:]+): (.*)$")
FIELD_NAMES = {
    "Trace ID": "trace_id",
    "Parent ID": "parent_id",
    "ID": "span_id",
    "Name": "name",
    "Kind": "kind",
    "TraceState": "trace_state",
    "Status code": "status_code",
    "Status message": "status_message",
}


def parse(lines: list[str]) -> list[Span]:
    """Every span in rotel's detailed debug printout; rotel's own JSON log lines are skipped."""
    spans: list[Span] = []
    resource: dict[str, object] = {}
    scope = ""
    fields: dict[str, object] | None = None
    section: dict[str, object] | None = None

    def close() -> None:
        nonlocal fields
        if fields is not None:
            spans.append(Span(**fields))
        fields = None

    for line in lines:
        if line.startswith("{") or not line.strip():
            continue
        if line.startswith("ResourceSpans #"):
            close()
            resource, scope, section = {}, "", None
        elif line == "Resource attributes:":
            section = resource
        elif line.startswith("ScopeSpans #") or line.startswith("ScopeSpans SchemaURL") or line.startswith(
            "Resource SchemaURL"
        ):
            section = None
        elif line.startswith("InstrumentationScope "):
            scope, section = line[len("InstrumentationScope ") :].strip(), None
        elif line.startswith("Span #"):
            close()
            fields = {
                "trace_state": "",
                "status_code": "",
                "status_message": "",
                "attributes": {},
                "resource": dict(resource),
                "scope": scope,
            }
            section = None
        elif (match := ATTRIBUTE.match(line)) and section is not None:
            section[match.group(1)] = _value(match.group(2))
        elif fields is not None and (match := SPAN_FIELD.match(line)) and match.group(1).strip() in FIELD_NAMES:
            fields[FIELD_NAMES[match.group(1).strip()]] = match.group(2)
        elif fields is not None and line.startswith("Start time: "):
            fields["start_ns"] = int(line.split(": ", 1)[1])
        elif fields is not None and line.startswith("End time: "):
            fields["end_ns"] = int(line.split(": ", 1)[1])
        elif line == "Attributes:" and fields is not None:
            section = fields["attributes"]
        elif line in ("Events:", "Links:"):
            section = None
    close()
    return spans


def _listening_ports(pid: int) -> dict[str, int]:
    """The TCP ports `pid` listens on, by IPv4 address, from its socket inodes and /proc/<pid>/net/tcp."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = {}
    for row in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        columns = row.split()
        local, state, inode = columns[1], columns[3], columns[9]
        if state != "0A" or inode not in inodes:  # 0A: LISTEN
            continue
        address, port = local.split(":")
        host = socket.inet_ntoa(int(address, 16).to_bytes(4, "little"))
        ports[host] = int(port, 16)
    return ports


class Collector:
    """A running rotel agent and everything it has received so far."""

    def __init__(self, workdir: Path, name: str = "rotel"):
        self.name = name
        self._stderr_path = workdir / f"{name}.stderr"
        self._lines: list[str] = []
        self._spans: list[Span] = []
        self._cond = threading.Condition()
        self._eof = False
        self._parse_error: str | None = None
        with open(self._stderr_path, "wb") as stderr:
            self.popen = subprocess.Popen(
                [
                    str(AGENT),
                    "start",
                    "--otlp-grpc-endpoint",
                    f"{GRPC_HOST}:0",
                    "--otlp-http-endpoint",
                    f"{HTTP_HOST}:0",
                    "--exporter",
                    "blackhole",
                    "--debug-log",
                    "traces",
                    "--debug-log-verbosity",
                    "detailed",
                    "--log-format",
                    "json",
                ],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self._reader = threading.Thread(target=self._read, name=f"stdout-{name}", daemon=True)
        self._reader.start()
        try:
            self.grpc_port, self.http_port = self._bound_ports()
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        # rotel writes each received request's printout with one write() to the pipe; a read returns whole
        # writes while the pipe is drained promptly, so the spans are re-parsed once per read and a span is
        # never seen with only some of its attributes.
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        pending = b""
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            with self._cond:
                self._lines.extend(line.decode("utf-8", "replace") for line in complete)
                try:
                    self._spans = parse(self._lines)
                except (ValueError, TypeError, KeyError) as error:
                    self._parse_error = f"cannot read the collector's output: {error!r}"
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _bound_ports(self) -> tuple[int, int]:
        deadline = time.monotonic() + START_TIMEOUT
        with self._cond:
            while not any(self._is_log(line, "Starting Rotel.") for line in self._lines):
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise AssertionError(f"{self.name} did not start within {START_TIMEOUT}s:\n{self.output()}")
                self._cond.wait(left)
        # The receivers were bound before that first log line was written.
        ports = _listening_ports(self.popen.pid)
        if GRPC_HOST not in ports or HTTP_HOST not in ports:
            raise AssertionError(f"{self.name} listens on {ports}, not on both receivers:\n{self.output()}")
        return ports[GRPC_HOST], ports[HTTP_HOST]

    @staticmethod
    def _is_log(line: str, message: str) -> bool:
        if not line.startswith("{"):
            return False
        try:
            return json.loads(line).get("msg") == message
        except ValueError:
            return False

    def endpoint(self, protocol: str) -> str:
        """The URL the proxy's `otlp_endpoint` names for `protocol` (grpc or http)."""
        if protocol == "grpc":
            return f"http://{GRPC_HOST}:{self.grpc_port}"
        return f"http://{HTTP_HOST}:{self.http_port}"

    def spans(self) -> list[Span]:
        with self._cond:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans() if s.trace_id == trace_id]

    def wait_for(self, predicate: Callable[[list[Span]], bool], what: str, timeout: float = 15.0) -> list[Span]:
        """Every span received so far, once `predicate` holds for them; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._spans):
                left = deadline - time.monotonic()
                if self._parse_error:
                    raise AssertionError(f"{self.name}: {self._parse_error}\n{self.output()}")
                if self._eof or left <= 0:
                    raise AssertionError(
                        f"{self.name}: {what} not received within {timeout}s; it received:\n"
                        + "\n".join(f"  {s.trace_id} {s.span_id} {s.kind} {s.name!r}" for s in self._spans)
                    )
                self._cond.wait(left)
            return list(self._spans)

    def wait_for_trace(self, trace_id: str, count: int, timeout: float = 15.0) -> list[Span]:
        """The spans of `trace_id`, once at least `count` of them arrived."""
        spans = self.wait_for(
            lambda spans: sum(s.trace_id == trace_id for s in spans) >= count,
            f"{count} spans of trace {trace_id}",
            timeout,
        )
        return [s for s in spans if s.trace_id == trace_id]

    def output(self) -> str:
        with self._cond:
            stdout = "\n".join(self._lines[-200:])
        stderr = self._stderr_path.read_text(errors="replace") if self._stderr_path.exists() else ""
        return f"{stdout}\n{stderr}".strip()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)


def render(spans: list[Span]) -> str:
    """A trace as a tree: each span under its parent, children in start order, with its attributes."""
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[Span]] = {}
    roots = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        if span.parent_id in by_id:
            children.setdefault(span.parent_id, []).append(span)
        else:
            roots.append(span)
    origin = min((s.start_ns for s in spans), default=0)
    lines = []
    if spans:
        resource = ", ".join(f"{k}={v}" for k, v in spans[0].resource.items())
        lines.append(f"trace {spans[0].trace_id}  [{resource}] [scope {spans[0].scope}]")

    def describe(span: Span, lead: str, branch: str, rest: str) -> None:
        status = span.status_code.removeprefix("STATUS_CODE_")
        if span.status_message:
            status += f" {span.status_message!r}"
        parent = span.parent_id or "-"
        lines.append(
            f"{lead}{branch}{span.kind.removeprefix('SPAN_KIND_')} {span.name!r}  span {span.span_id} parent {parent}"
            f"  +{(span.start_ns - origin) / 1e6:.2f} ms, {span.duration_ms:.2f} ms  status {status}"
        )
        kids = children.get(span.span_id, [])
        detail = lead + rest + ("│   " if kids else "    ")
        if span.trace_state:
            lines.append(f"{detail}tracestate {span.trace_state}")
        for key, value in span.attributes.items():
            lines.append(f"{detail}{key} = {value!r}")
        for index, child in enumerate(kids):
            last = index == len(kids) - 1
            describe(child, lead + rest, "└── " if last else "├── ", "    " if last else "│   ")

    for root in roots:
        describe(root, "", "", "")
    return "\n".join(lines)
