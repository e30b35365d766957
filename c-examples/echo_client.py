#!/usr/bin/env python3
"""Test driver for the echo server examples (standard library only).

    echo_client.py -- [WRAPPER...] SERVER

Starts SERVER with port 0, waits for its "listening on PORT" line, then checks over real TCP
connections that every byte comes back unchanged and in order:

* several concurrent connections, each streaming payloads from 1 byte to 1 MiB while a second
  thread reads the echo;
* a connection that sends and then shuts down its write side: the server must echo everything
  before closing;
* a connection that connects and leaves at once;
* an idle connection held open across shutdown: the server must close it.

Finally it sends SIGTERM and requires a clean exit (status 0) within a deadline.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import threading

START_TIMEOUT = 60.0  # valgrind start-up is slow
IO_TIMEOUT = 60.0
EXIT_TIMEOUT = 60.0


def fail(msg):
    print(f"echo_client: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def start_server(argv):
    proc = subprocess.Popen(argv + ["0"], stdout=subprocess.PIPE, text=True)
    result = {}

    def read_line():
        result["line"] = proc.stdout.readline()

    reader = threading.Thread(target=read_line, daemon=True)
    reader.start()
    reader.join(START_TIMEOUT)
    line = result.get("line", "")
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        fail(f"server did not announce its port (got {line!r}, exit {proc.returncode})")
    return proc, int(line.split()[2])


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock, n):
    chunks = []
    while n > 0:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise ConnectionError(f"EOF with {n} bytes still expected")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def streaming_client(port, seed, errors):
    """Sends payloads of growing size while another thread reads the echo concurrently."""
    rng = random.Random(seed)
    sizes = [1, 7, 100, 1500, 4096, 16384, 65537, 300_000, 1 << 20]
    payloads = [rng.randbytes(size) for size in sizes]
    expected = b"".join(payloads)
    received = []
    try:
        with connect(port) as sock:
            def reader():
                try:
                    received.append(recv_exactly(sock, len(expected)))
                except OSError as exc:  # ConnectionError and timeouts
                    received.append(exc)

            t = threading.Thread(target=reader)
            t.start()
            for payload in payloads:
                sock.sendall(payload)
            t.join(IO_TIMEOUT + 5)
            if not received or isinstance(received[0], Exception):
                errors.append(f"client {seed}: reading the echo failed: {received[:1]}")
            elif received[0] != expected:
                first = next(i for i, (a, b) in enumerate(zip(received[0], expected)) if a != b)
                errors.append(f"client {seed}: echo differs at byte {first} of {len(expected)}")
    except OSError as exc:
        errors.append(f"client {seed}: {exc!r}")


def half_close_client(port, errors):
    """Sends, shuts down writing, and expects the whole echo followed by EOF."""
    data = random.Random(99).randbytes(200_000)
    try:
        with connect(port) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            echoed = bytearray()
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                echoed += chunk
            if bytes(echoed) != data:
                errors.append(f"half-close: got {len(echoed)} bytes back, expected {len(data)} identical")
    except OSError as exc:
        errors.append(f"half-close: {exc!r}")


def main():
    if "--" not in sys.argv:
        fail("usage: echo_client.py -- [WRAPPER...] SERVER")
    argv = sys.argv[sys.argv.index("--") + 1:]
    proc, port = start_server(argv)
    errors = []
    try:
        # A connection that leaves at once must not disturb the server.
        connect(port).close()
        idle = connect(port)
        threads = [threading.Thread(target=streaming_client, args=(port, seed, errors)) for seed in range(6)]
        threads.append(threading.Thread(target=half_close_client, args=(port, errors)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # The idle connection still works after all that traffic.
        idle.sendall(b"ping")
        if recv_exactly(idle, 4) != b"ping":
            errors.append("idle connection: wrong echo")
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            fail("server did not exit within %.0f s of SIGTERM" % EXIT_TIMEOUT)
        idle.settimeout(5)
        try:
            if idle.recv(1) != b"":
                errors.append("idle connection: data instead of EOF after shutdown")
        except OSError as exc:
            if not isinstance(exc, ConnectionResetError):
                errors.append(f"idle connection: {exc!r} instead of EOF after shutdown")
        idle.close()
        if rc != 0:
            errors.append(f"server exited with status {rc} after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if errors:
        fail("; ".join(errors))
    print(f"echo_client: {os.path.basename(argv[-1])}: all echoes verified, clean exit")


if __name__ == "__main__":
    main()
