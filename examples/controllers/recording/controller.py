#!/usr/bin/env python3
"""A network controller that programs nothing: it keeps the ports merak tells
it about (docs/controller-api.md) in a JSON file and logs every request.

Use it to see what merak sends before writing a controller of your own, or
to test how an emulation behaves when the controller misbehaves:

    controller.py --listen 127.0.0.1:8080 --state ports.json --log requests.jsonl
    controller.py ... --fail-every 3     # every third request: HTTP 500, nothing done
    controller.py ... --refuse web-7     # ports of EVMs named so: refused, with a message

GET /v1/ports lists the ports it holds. Standard library only.
"""

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT_FIELDS = ("id", "topology", "evm", "group", "vpc", "vni", "subnet", "subnet_cidr", "gateway",
               "ip", "mac", "epm", "epm_ip", "device", "device_model")


class Controller:
    def __init__(self, state, log, fail_every, refuse):
        self.state, self.log, self.fail_every, self.refuse = state, log, fail_every, refuse
        self.lock = threading.Lock()
        self.requests = 0
        self.ports = {}
        if os.path.exists(state):
            with open(state) as f:
                self.ports = json.load(f)

    def save(self):
        # Written whole and renamed: a reader never sees half a file.
        with open(self.state + ".tmp", "w") as f:
            json.dump(self.ports, f, indent=1, sort_keys=True)
        os.replace(self.state + ".tmp", self.state)

    def record(self, entry):
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def handle(self, method, body):
        """(status, answer) for one request, under the lock."""
        with self.lock:
            self.requests += 1
            failing = self.fail_every and self.requests % self.fail_every == 0
            if method == "PUT":
                ports = body.get("ports")
                if not isinstance(ports, list):
                    return 400, {"message": "the body must be a PortBatch: {\"ports\": [...]}"}
                missing = [f"{p.get('id', '?')}: {field}" for p in ports for field in PORT_FIELDS if field not in p]
                if missing:
                    return 400, {"message": "ports lack fields: " + ", ".join(missing[:5])}
                ids = [p["id"] for p in ports]
            else:
                ids = body.get("ids")
                if not isinstance(ids, list):
                    return 400, {"message": "the body must be PortIds: {\"ids\": [...]}"}
            self.record({"method": method, "ids": ids, "status": 500 if failing else 200})
            if failing:
                return 500, {"message": f"request {self.requests} fails on purpose (--fail-every {self.fail_every})"}
            results = []
            if method == "PUT":
                for port in ports:
                    if self.refuse and self.refuse in port["evm"]:
                        results.append({"id": port["id"], "ok": False, "message": f"no room for {port['evm']} (--refuse)"})
                        continue
                    self.ports[port["id"]] = port
                    results.append({"id": port["id"], "ok": True})
            else:
                for port_id in ids:
                    self.ports.pop(port_id, None)
                    results.append({"id": port_id, "ok": True})
            self.save()
            return 200, {"results": results}


def handler(controller):
    class Handler(BaseHTTPRequestHandler):
        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path != "/v1/ports":
                return self.answer(404, {"message": f"no such path {self.path}"})
            with controller.lock:
                self.answer(200, {"ports": list(controller.ports.values())})

        def change(self, method):
            if self.path != "/v1/ports":
                return self.answer(404, {"message": f"no such path {self.path}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            except ValueError as e:
                return self.answer(400, {"message": f"not JSON: {e}"})
            self.answer(*controller.handle(method, body))

        def do_PUT(self):
            self.change("PUT")

        def do_DELETE(self):
            self.change("DELETE")

        def log_message(self, format, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port")
    parser.add_argument("--state", default="ports.json", help="where the ports are kept (survives restarts)")
    parser.add_argument("--log", help="JSON lines, one per request")
    parser.add_argument("--fail-every", type=int, default=0, help="answer every Nth request with HTTP 500")
    parser.add_argument("--refuse", help="refuse the ports of EVMs whose name holds this")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    controller = Controller(args.state, args.log, args.fail_every, args.refuse)
    server = ThreadingHTTPServer((host, int(port)), handler(controller))
    print(f"listening on {host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
