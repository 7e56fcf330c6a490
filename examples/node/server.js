#!/usr/bin/env node
// The example kafka-scc handler in Node.js: a gRPC MessageHandler that posts every record to
// the downstream API (the `api_sink` example) as JSON and maps the outcome to a gRPC status.
//
// | downstream outcome                        | status returned  | kafka-scc does           |
// |-------------------------------------------|------------------|--------------------------|
// | 2xx                                       | OK               | commits                  |
// | no connection, timeout, broken connection | UNAVAILABLE      | closes the gate, retries |
// | 5xx, 408 Request Timeout, 429 Too Many    | UNAVAILABLE      | closes the gate, retries |
// | any other 4xx                             | INVALID_ARGUMENT | logs and commits         |
// | anything else (1xx, unfollowed 3xx)       | INTERNAL         | logs and commits         |
//
// With --no-sink it posts nothing and returns OK for every call. With --record PATH it appends
// one JSON line per call to PATH, written before the status is returned:
// {"topic": ..., "partition": ..., "offset": ..., "attempt": ..., "code": "OK"}.
//
//   node examples/node/server.js                        # 127.0.0.1:50051, posts to :8090
//   node examples/node/server.js --no-sink --record /tmp/calls.jsonl
//   node examples/node/server.js --addr unix:///var/run/scc/handler.sock
//
// Options fall back to the environment: HANDLER_ADDR, SINK_URL, SINK_TIMEOUT_MS. The server
// also serves the standard gRPC health service (grpc.health.v1), which reports SERVING for the
// whole server and for scc.handler.v1.MessageHandler until it starts to stop.
'use strict';

const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { HealthImplementation } = require('grpc-health-check');

const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');
const PROTO_FILE = 'scc/handler/v1/handler.proto';

// The fully qualified name of the handler service, which kafka-scc requests from the health service.
const SERVICE_NAME = 'scc.handler.v1.MessageHandler';

// The prefix of a Unix domain socket address, as grpc-js takes it: unix:///absolute/path.
const UNIX_PREFIX = 'unix://';

// Bound on waiting for running calls after SIGTERM or SIGINT, in milliseconds.
const STOP_GRACE_MS = 5000;

const USAGE = `usage: node server.js [options]
  --addr ADDRESS        serve gRPC on HOST:PORT, where port 0 picks a free one, or on the Unix domain
                         socket unix:///ABSOLUTE/PATH (env HANDLER_ADDR, default 127.0.0.1:50051)
  --sink-url URL         URL each event is posted to (env SINK_URL, default http://127.0.0.1:8090/events)
  --sink-timeout-ms MS   bound on one POST; keep it below kafka-scc's SCC_HANDLER_TIMEOUT_MS
                         (env SINK_TIMEOUT_MS, default 5000)
  --no-sink              post nothing and return OK for every call
  --record PATH          append one JSON line per call to PATH
  --delay-ms MS          simulated work per call (default 0)
  --help                 print this text`;

function log(level, message) {
  console.error(`${new Date().toISOString()} ${level} handler: ${message}`);
}

/** Parses the command line; exits with status 2 and a message on an invalid option. */
function parseOptions(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        addr: { type: 'string', default: process.env.HANDLER_ADDR ?? '127.0.0.1:50051' },
        'sink-url': { type: 'string', default: process.env.SINK_URL ?? 'http://127.0.0.1:8090/events' },
        'sink-timeout-ms': { type: 'string', default: process.env.SINK_TIMEOUT_MS ?? '5000' },
        'no-sink': { type: 'boolean', default: false },
        record: { type: 'string' },
        'delay-ms': { type: 'string', default: '0' },
        help: { type: 'boolean', default: false },
      },
    }));
  } catch (error) {
    exitWithUsage(error.message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const sinkTimeoutMs = parseMilliseconds('--sink-timeout-ms', values['sink-timeout-ms'], 1);
  const delayMs = parseMilliseconds('--delay-ms', values['delay-ms'], 0);
  return {
    addr: values.addr,
    sinkUrl: values['sink-url'],
    sinkTimeoutMs,
    noSink: values['no-sink'],
    record: values.record,
    delayMs,
  };
}

function parseMilliseconds(name, text, minimum) {
  const value = Number(text);
  if (!Number.isInteger(value) || value < minimum) {
    exitWithUsage(`invalid ${name} ${JSON.stringify(text)}: expected a whole number of ms, at least ${minimum}`);
  }
  return value;
}

function exitWithUsage(message) {
  console.error(`server.js: ${message}\n${USAGE}`);
  process.exit(2);
}

/**
 * Builds the JSON event posted for one record: the key as UTF-8 text (invalid bytes replaced)
 * or null, and the value as JSON when it parses, else as text, else null for a tombstone.
 */
function eventJson(request) {
  const key = request.key == null ? null : request.key.toString('utf8');
  let value = null;
  if (request.value != null) {
    const text = request.value.toString('utf8');
    try {
      value = JSON.parse(text);
    } catch {
      value = text;
    }
  }
  return {
    topic: request.topic,
    partition: request.partition,
    offset: request.offset,
    trace_id: request.trace_id,
    key,
    value,
  };
}

/** Maps a non-2xx HTTP status from the sink to the gRPC status kafka-scc acts on. */
function statusForHttp(httpStatus) {
  if (httpStatus >= 500 || httpStatus === 408 || httpStatus === 429) {
    return grpc.status.UNAVAILABLE;
  }
  if (httpStatus >= 400 && httpStatus < 500) {
    return grpc.status.INVALID_ARGUMENT;
  }
  return grpc.status.INTERNAL;
}

/** Returns the innermost cause of a fetch error: "connect ECONNREFUSED 127.0.0.1:8090" rather than "fetch failed". */
function rootCause(error) {
  let current = error;
  while (current.cause instanceof Error) {
    current = current.cause;
  }
  return current.message;
}

/** Posts events to the downstream API; `post` resolves to null on 2xx, else to the failure. */
class SinkClient {
  constructor(url, timeoutMs) {
    this.url = url;
    this.timeoutMs = timeoutMs;
  }

  async post(event, traceparent) {
    const headers = { 'content-type': 'application/json' };
    if (traceparent) {
      headers.traceparent = traceparent;
    }
    let response;
    try {
      response = await fetch(this.url, {
        method: 'POST',
        headers,
        body: JSON.stringify(event),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      // Reading the body to the end lets the connection be reused.
      await response.arrayBuffer();
    } catch (error) {
      if (error.name === 'TimeoutError' || error.name === 'AbortError') {
        return { code: grpc.status.UNAVAILABLE, details: 'sink timed out' };
      }
      return { code: grpc.status.UNAVAILABLE, details: `sink request failed: ${rootCause(error)}` };
    }
    if (response.ok) {
      return null;
    }
    return { code: statusForHttp(response.status), details: `sink returned HTTP ${response.status}` };
  }
}

/**
 * An append-only file with one JSON line per call. Each line is written with a synchronous
 * write before the call returns, so a reader never sees a call as finished before kafka-scc could.
 */
class CallRecord {
  constructor(file) {
    this.fd = fs.openSync(file, 'a');
  }

  write(request, code) {
    if (this.fd === null) {
      return;
    }
    const line = JSON.stringify({
      topic: request.topic,
      partition: request.partition,
      offset: request.offset,
      attempt: request.attempt,
      code: grpc.status[code],
    });
    fs.writeSync(this.fd, `${line}\n`);
  }

  close() {
    if (this.fd !== null) {
      fs.closeSync(this.fd);
      this.fd = null;
    }
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function loadService() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    // Kafka offsets stay far below 2^53, so a JavaScript number represents an int64 offset exactly.
    longs: Number,
    enums: String,
    // Defaults fill the proto3 fields that the wire leaves out when they are zero (offset 0,
    // partition 0). Members of a oneof get none, so an unset optional key or value stays absent.
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).scc.handler.v1.MessageHandler;
}

/**
 * Removes a Unix domain socket left behind by a server that did not stop cleanly, because
 * grpc-js cannot bind over it. A socket that still accepts connections belongs to a running
 * server and is kept, so the bind then fails with EADDRINUSE. Resolves when the path is free
 * or kept.
 */
function removeStaleSocket(socketPath) {
  let stats;
  try {
    stats = fs.lstatSync(socketPath);
  } catch {
    return Promise.resolve();
  }
  if (!stats.isSocket()) {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve();
    });
    probe.once('error', (error) => {
      if (error.code === 'ECONNREFUSED') {
        fs.rmSync(socketPath, { force: true });
      }
      resolve();
    });
  });
}

/** Returns the address the server listens on: a unix:// address as given, else HOST:PORT with the bound port. */
function listeningAddress(addr, port) {
  if (addr.startsWith(UNIX_PREFIX)) {
    return addr;
  }
  return `${addr.slice(0, addr.lastIndexOf(':'))}:${port}`;
}

async function main() {
  const options = parseOptions(process.argv.slice(2));
  const sink = options.noSink ? null : new SinkClient(options.sinkUrl, options.sinkTimeoutMs);
  const record = options.record ? new CallRecord(options.record) : null;
  const counts = new Map();

  async function handle(call, callback) {
    const request = call.request;
    if (options.delayMs > 0) {
      await sleep(options.delayMs);
    }

    let failure = null;
    if (sink !== null) {
      const [traceparent] = call.metadata.get('traceparent');
      failure = await sink.post(eventJson(request), traceparent?.toString());
    }

    const code = failure === null ? grpc.status.OK : failure.code;
    record?.write(request, code);
    counts.set(code, (counts.get(code) ?? 0) + 1);
    if (failure === null) {
      callback(null, {});
      return;
    }
    log(
      'WARN',
      `forwarding to the sink failed: topic=${request.topic} partition=${request.partition} ` +
        `offset=${request.offset} trace_id=${request.trace_id} attempt=${request.attempt} ` +
        `grpc.code=${grpc.status[code]} error=${failure.details}`,
    );
    callback({ code, details: failure.details });
  }

  const server = new grpc.Server();
  server.addService(loadService().service, { Handle: handle });
  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING' });
  health.addToServer(server);

  if (options.addr.startsWith(UNIX_PREFIX)) {
    await removeStaleSocket(options.addr.slice(UNIX_PREFIX.length));
  }
  server.bindAsync(options.addr, grpc.ServerCredentials.createInsecure(), (error, port) => {
    if (error) {
      console.error(`server.js: cannot listen on ${options.addr}: ${error.message}`);
      process.exit(1);
    }
    const target = sink === null ? 'nothing (--no-sink)' : `${sink.url} (timeout ${options.sinkTimeoutMs} ms)`;
    // Scripts and tests read the address from this line on stdout.
    console.log(`node handler: listening on ${listeningAddress(options.addr, port)}, forwarding to ${target}`);
  });

  let stopping = false;
  function stop() {
    if (stopping) {
      return;
    }
    stopping = true;
    // Health checks that arrive while the running calls finish see that the server is stopping.
    health.setStatus('', 'NOT_SERVING');
    health.setStatus(SERVICE_NAME, 'NOT_SERVING');
    let finished = false;
    function finish() {
      if (finished) {
        return;
      }
      finished = true;
      clearTimeout(force);
      record?.close();
      const summary = [...counts].map(([code, count]) => `${count} ${grpc.status[code]}`).join(', ');
      console.log(`node handler: stopped; ${summary || 'no calls'}`);
    }
    const force = setTimeout(() => {
      server.forceShutdown();
      finish();
      // A client that neither closes its connection nor responds to the server's GOAWAY keeps the
      // socket, and with it the process, alive even after forceShutdown.
      process.exit(0);
    }, STOP_GRACE_MS);
    server.tryShutdown(finish);
  }
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((error) => {
  console.error(`server.js: ${error.stack ?? error}`);
  process.exit(1);
});
