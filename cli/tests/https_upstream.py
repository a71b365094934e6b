"""An HTTPS upstream for the gateway tests: POST answers 201 with the request's Idempotency-Key
and how many times that key was executed here; GET /executions answers every key's count.
Usage: https_upstream.py CERT KEY; prints its port, then serves until killed."""
import http.server
import json
import ssl
import sys
import threading

executions = {}
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        key = self.headers.get("idempotency-key", "")
        with lock:
            executions[key] = executions.get(key, 0) + 1
            n = executions[key]
        self.answer(201, {"key": key, "n": n})

    def do_GET(self):
        with lock:
            self.answer(200, dict(executions))

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
