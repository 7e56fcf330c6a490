#!/usr/bin/env python3
"""The example kafka-scc handler in Python: a gRPC MessageHandler that posts every record to
the downstream API (the `api_sink` example) as JSON and maps the outcome to a gRPC status.

| downstream outcome                        | status returned  | kafka-scc does           |
|-------------------------------------------|------------------|--------------------------|
| 2xx                                       | OK               | commits                  |
| no connection, timeout, broken connection | UNAVAILABLE      | closes the gate, retries |
| 5xx, 408 Request Timeout, 429 Too Many    | UNAVAILABLE      | closes the gate, retries |
| any other 4xx                             | INVALID_ARGUMENT | logs and commits         |
| anything else (1xx, unfollowed 3xx)       | INTERNAL         | logs and commits         |

With --no-sink it posts nothing and returns OK for every call. With --record PATH it appends
one JSON line per call to PATH, flushed before the status is returned:
{"topic": ..., "partition": ..., "offset": ..., "attempt": ..., "code": "OK"}.

    python3 examples/python/server.py                      # 127.0.0.1:50051, posts to :8090
    python3 examples/python/server.py --no-sink --record /tmp/calls.jsonl
    python3 examples/python/server.py --addr unix:///var/run/scc/handler.sock

Options fall back to the environment: HANDLER_ADDR, SINK_URL, SINK_TIMEOUT_MS.
"""

import argparse
import http.client
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures
from pathlib import Path

# generate.py writes the code for proto/ here; the folder is not committed.
GENERATED = Path(__file__).resolve().parent / "generated"
sys.path.insert(0, str(GENERATED))

try:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from scc.handler.v1 import handler_pb2, handler_pb2_grpc
except ImportError as error:
    print(
        f"server.py: {error}. Install the dependencies and generate the gRPC code first:\n"
        "  python3 -m pip install -r examples/python/requirements.txt\n"
        "  python3 examples/python/generate.py",
        file=sys.stderr,
    )
    sys.exit(2)

LOG = logging.getLogger("handler")

SERVICE_NAME = "scc.handler.v1.MessageHandler"

# Bound on waiting for running calls after SIGTERM or SIGINT, in seconds.
STOP_GRACE_SECONDS = 5.0


class CallFailed(Exception):
    """A call that ends with a non-OK status."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


def event_json(request: handler_pb2.HandleRequest) -> dict:
    """Build the JSON event posted for one record: the key as UTF-8 text (invalid bytes
    replaced) or null, and the value as JSON when it parses, else as text, else null for a
    tombstone."""
    key = request.key.decode("utf-8", errors="replace") if request.HasField("key") else None
    value = None
    if request.HasField("value"):
        text = request.value.decode("utf-8", errors="replace")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
    return {
        "topic": request.topic,
        "partition": request.partition,
        "offset": request.offset,
        "trace_id": request.trace_id,
        "key": key,
        "value": value,
    }


class SinkClient:
    """Posts events to the downstream API and turns each failure into the status to return."""

    def __init__(self, url: str, timeout_seconds: float):
        self.url = url
        self.timeout_seconds = timeout_seconds

    def post(self, event: dict, traceparent: str | None) -> None:
        """Post one event; raise CallFailed with the status for kafka-scc unless it got 2xx."""
        headers = {"Content-Type": "application/json"}
        if traceparent:
            headers["traceparent"] = traceparent
        body = json.dumps(event).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                response.read()
        except urllib.error.HTTPError as error:
            # HTTPError is a subclass of URLError, so it is caught first: the sink sent a status.
            raise CallFailed(status_for_http(error.code), f"sink returned HTTP {error.code}") from error
        except urllib.error.URLError as error:
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, f"sink connection failed: {error.reason}") from error
        except TimeoutError as error:
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, "sink timed out") from error
        except (ConnectionError, http.client.HTTPException) as error:
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, f"sink request failed: {error!r}") from error


def status_for_http(code: int) -> grpc.StatusCode:
    """Map a non-2xx HTTP status from the sink to the gRPC status kafka-scc acts on."""
    if code >= 500 or code in (408, 429):
        return grpc.StatusCode.UNAVAILABLE
    if 400 <= code < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


class CallRecord:
    """An append-only file with one JSON line per call.

    Each line is flushed before the call returns, so a reader never sees a call as finished
    before kafka-scc could."""

    def __init__(self, path: str):
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, request: handler_pb2.HandleRequest, code: grpc.StatusCode) -> None:
        line = json.dumps(
            {
                "topic": request.topic,
                "partition": request.partition,
                "offset": request.offset,
                "attempt": request.attempt,
                "code": code.name,
            }
        )
        with self._lock:
            # A call that outlives the stop grace period finds the file closed; its status
            # never reaches kafka-scc, so it is not a finished call either.
            if self._file.closed:
                return
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class Counts:
    """Number of calls per returned status, for the stop line."""

    def __init__(self):
        self._lock = threading.Lock()
        self.by_code: dict[str, int] = {}

    def add(self, code: grpc.StatusCode) -> None:
        with self._lock:
            self.by_code[code.name] = self.by_code.get(code.name, 0) + 1

    def describe(self) -> str:
        with self._lock:
            if not self.by_code:
                return "no calls"
            return ", ".join(f"{count} {name}" for name, count in sorted(self.by_code.items()))


class MessageHandler(handler_pb2_grpc.MessageHandlerServicer):
    """The MessageHandler service; `sink` is None in --no-sink mode."""

    def __init__(self, sink: SinkClient | None, record: CallRecord | None, delay_seconds: float):
        self.sink = sink
        self.record = record
        self.delay_seconds = delay_seconds
        self.counts = Counts()

    def Handle(self, request, context):
        if self.delay_seconds > 0:
            time.sleep(self.delay_seconds)

        code, details = grpc.StatusCode.OK, ""
        if self.sink is not None:
            traceparent = dict(context.invocation_metadata()).get("traceparent")
            try:
                self.sink.post(event_json(request), traceparent)
            except CallFailed as failure:
                code, details = failure.code, failure.details

        if self.record is not None:
            self.record.write(request, code)
        self.counts.add(code)
        if code != grpc.StatusCode.OK:
            LOG.warning(
                "forwarding to the sink failed: topic=%s partition=%d offset=%d trace_id=%s attempt=%d "
                "grpc.code=%s error=%s",
                request.topic,
                request.partition,
                request.offset,
                request.trace_id,
                request.attempt,
                code.name,
                details,
            )
            context.abort(code, details)
        return handler_pb2.HandleResponse()

    def HandleBatch(self, request, context):
        # This handler takes one record per call. Returning UNIMPLEMENTED here, rather than
        # through the generated servicer's exception, keeps grpcio from logging a traceback
        # when kafka-scc probes at start-up whether batches are served.
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("this handler serves Handle only")
        return handler_pb2.HandleBatchResponse()

    def HandleStream(self, request_iterator, context):
        # The same for the optional stream, which kafka-scc opens at start-up to learn whether
        # the handler takes records on one long-lived stream.
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("this handler serves Handle only")
        return iter(())


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Example kafka-scc MessageHandler in Python.")

    parser.add_argument(
        "--addr",
        default=os.environ.get("HANDLER_ADDR", "127.0.0.1:50051"),
        help="host:port to serve gRPC on, where port 0 picks a free one, or unix:///absolute/path for a "
        "Unix domain socket (env HANDLER_ADDR, default %(default)s)",
    )
    parser.add_argument(
        "--sink-url",
        default=os.environ.get("SINK_URL", "http://127.0.0.1:8090/events"),
        help="URL each event is posted to (env SINK_URL, default %(default)s)",
    )
    parser.add_argument(
        "--sink-timeout-ms",
        type=int,
        default=int(os.environ.get("SINK_TIMEOUT_MS", "5000")),
        help="bound on one POST in ms; keep it below kafka-scc's SCC_HANDLER_TIMEOUT_MS "
        "(env SINK_TIMEOUT_MS, default %(default)s)",
    )

    parser.add_argument("--no-sink", action="store_true", help="post nothing and return OK for every call")
    parser.add_argument("--record", metavar="PATH", help="append one JSON line per call to PATH")
    parser.add_argument("--delay-ms", type=int, default=0, help="simulated work per call in ms (default 0)")
    parser.add_argument("--workers", type=int, default=32, help="threads serving calls (default %(default)s)")
    args = parser.parse_args(argv)

    if args.sink_timeout_ms <= 0:
        parser.error(f"invalid --sink-timeout-ms {args.sink_timeout_ms}: expected a positive number of ms")
    if args.delay_ms < 0:
        parser.error(f"invalid --delay-ms {args.delay_ms}: expected 0 or more ms")
    if args.workers <= 0:
        parser.error(f"invalid --workers {args.workers}: expected 1 or more")
    return args


def listening_address(addr: str, port: int) -> str:
    """Return the address the server listens on: a unix: address as given, else host:port with
    the port that was bound, which differs from the requested one when that was 0."""
    if addr.startswith("unix:"):
        return addr
    host = addr.rsplit(":", 1)[0]
    return f"{host}:{port}"


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    sink = None if args.no_sink else SinkClient(args.sink_url, args.sink_timeout_ms / 1000)
    record = CallRecord(args.record) if args.record else None
    service = MessageHandler(sink, record, args.delay_ms / 1000)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    handler_pb2_grpc.add_MessageHandlerServicer_to_server(service, server)
    health_service = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    try:
        port = server.add_insecure_port(args.addr)
    except RuntimeError as error:
        print(f"server.py: cannot listen on {args.addr}: {error}", file=sys.stderr)
        return 1
    server.start()
    for name in ("", SERVICE_NAME):
        health_service.set(name, health_pb2.HealthCheckResponse.SERVING)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    target = "nothing (--no-sink)" if sink is None else f"{sink.url} (timeout {args.sink_timeout_ms} ms)"
    # Scripts and tests read the address from this line, so it goes to stdout at once.
    print(f"python handler: listening on {listening_address(args.addr, port)}, forwarding to {target}", flush=True)

    stop.wait()
    health_service.enter_graceful_shutdown()
    server.stop(STOP_GRACE_SECONDS).wait()
    if record is not None:
        record.close()
    print(f"python handler: stopped; {service.counts.describe()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
