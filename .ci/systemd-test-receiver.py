#!/usr/bin/env python3
"""The webhook receiver of .ci/systemd-test.sh: one file, standard library only.

Usage: systemd-test-receiver.py DIR

Listens on 127.0.0.1 on a free port and writes that port to DIR/port. Every
request is recorded as one line, "PATH CALLID WEBHOOK-ID ATTEMPT", in
DIR/got.log when it is answered 204 (delivered), and in DIR/hung.log when it
is held (see below), so the test can grep which CDRs arrived where.

DIR/mode, read at every request, decides the answer:
  ok (or no file)  answer 204 at once
  hang             hold the request, without answering, until the mode is
                   something else again. Then, if the client is still
                   connected, answer 204 and count it as delivered; if it
                   hung up (the daemon was stopped or killed meanwhile, and
                   will send the CDR again), record it in DIR/gone.log only.

Each response is written with one send() and TCP_NODELAY, so the daemon never
waits on Nagle's algorithm.
"""

import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR = sys.argv[1]
LOCK = threading.Lock()


def mode():
    try:
        with open(os.path.join(DIR, "mode")) as f:
            return f.read().strip() or "ok"
    except FileNotFoundError:
        return "ok"


def record(log, line):
    with LOCK:
        with open(os.path.join(DIR, log), "a") as f:
            f.write(line + "\n")


def peer_gone(conn):
    """True when the client has closed the connection (EOF is waiting)."""
    conn.setblocking(False)
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        conn.setblocking(True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            call_id = json.loads(body).get("CallId") or "-"
        except ValueError:
            call_id = "not-json"
        line = "%s %s %s %s" % (
            self.path,
            call_id,
            self.headers.get("webhook-id", "-"),
            self.headers.get("x-webhook-attempt", "-"),
        )
        if mode() == "hang":
            record("hung.log", line)
            deadline = time.monotonic() + 300
            while mode() == "hang" and time.monotonic() < deadline:
                time.sleep(0.1)
            if peer_gone(self.connection):
                # The daemon that sent it was stopped or killed meanwhile:
                # it never sees an answer, so the CDR is not delivered yet.
                record("gone.log", line)
                return
        record("got.log", line)
        try:
            self.wfile.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except OSError:
            pass

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(os.path.join(DIR, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.rename(os.path.join(DIR, "port.tmp"), os.path.join(DIR, "port"))
server.serve_forever()
