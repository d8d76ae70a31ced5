#!/usr/bin/env python3
"""A network controller that programs nothing: it keeps the ports and security
groups merak tells it about (docs/controller-api.md) in JSON files and logs
every request.

Use it to see what merak sends before writing a controller of your own, or
to test how an emulation behaves when the controller misbehaves:

    controller.py --listen 127.0.0.1:8080 --state ports.json --log requests.jsonl
                  [--groups-state security-groups.json]
    controller.py ... --fail-every 3     # every third request: HTTP 500, nothing done
    controller.py ... --refuse web-7     # ports of EVMs named so: refused, with a message

GET /v1/ports and GET /v1/security-groups list what it holds. Standard
library only.
"""

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT_FIELDS = ("id", "topology", "evm", "group", "vpc", "vni", "subnet", "subnet_cidr", "gateway",
               "ip", "mac", "epm", "epm_ip", "device", "device_model", "security_groups")
GROUP_FIELDS = ("id", "topology", "vpc", "name", "description", "ingress", "egress")
RULE_FIELDS = ("protocol", "protocol_number", "cidr_blocks", "remote_groups")
PORTS, GROUPS = "/v1/ports", "/v1/security-groups"


class Controller:
    def __init__(self, state, groups_state, log, fail_every, refuse):
        self.files = {PORTS: state, GROUPS: groups_state}
        self.log, self.fail_every, self.refuse = log, fail_every, refuse
        self.lock = threading.Lock()
        self.requests = 0
        self.held = {PORTS: {}, GROUPS: {}}
        for path, file in self.files.items():
            if os.path.exists(file):
                with open(file) as f:
                    self.held[path] = json.load(f)

    def save(self, path):
        # Written whole and renamed: a reader never sees half a file.
        file = self.files[path]
        with open(file + ".tmp", "w") as f:
            json.dump(self.held[path], f, indent=1, sort_keys=True)
        os.replace(file + ".tmp", file)

    def record(self, entry):
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def check_put(self, path, body):
        """(items, None) for a well-formed PUT body, else (None, why)."""
        key, fields, kind = ("ports", PORT_FIELDS, "PortBatch") if path == PORTS else \
            ("security_groups", GROUP_FIELDS, "SecurityGroupBatch")
        items = body.get(key)
        if not isinstance(items, list):
            return None, f"the body must be a {kind}: {{\"{key}\": [...]}}"
        missing = [f"{i.get('id', '?')}: {field}" for i in items for field in fields if field not in i]
        if path == GROUPS:
            missing += [f"{g.get('id', '?')}: rule {field}" for g in items
                        for rule in g.get("ingress", []) + g.get("egress", []) for field in RULE_FIELDS
                        if field not in rule]
        if missing:
            return None, f"{key} lack fields: " + ", ".join(missing[:5])
        return items, None

    def handle(self, path, method, body):
        """(status, answer) for one request, under the lock."""
        with self.lock:
            self.requests += 1
            failing = self.fail_every and self.requests % self.fail_every == 0
            if method == "PUT":
                items, why = self.check_put(path, body)
                if why:
                    return 400, {"message": why}
                ids = [i["id"] for i in items]
            else:
                ids = body.get("ids")
                if not isinstance(ids, list):
                    return 400, {"message": "the body must be ids: {\"ids\": [...]}"}
            self.record({"path": path, "method": method, "ids": ids, "status": 500 if failing else 200})
            if failing:
                return 500, {"message": f"request {self.requests} fails on purpose (--fail-every {self.fail_every})"}
            held, results = self.held[path], []
            if method == "PUT":
                for item in items:
                    if path == PORTS and self.refuse and self.refuse in item["evm"]:
                        results.append({"id": item["id"], "ok": False, "message": f"no room for {item['evm']} (--refuse)"})
                        continue
                    held[item["id"]] = item
                    results.append({"id": item["id"], "ok": True})
            else:
                for item_id in ids:
                    held.pop(item_id, None)
                    results.append({"id": item_id, "ok": True})
            self.save(path)
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
            if self.path not in (PORTS, GROUPS):
                return self.answer(404, {"message": f"no such path {self.path}"})
            key = "ports" if self.path == PORTS else "security_groups"
            with controller.lock:
                self.answer(200, {key: list(controller.held[self.path].values())})

        def change(self, method):
            if self.path not in (PORTS, GROUPS):
                return self.answer(404, {"message": f"no such path {self.path}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            except ValueError as e:
                return self.answer(400, {"message": f"not JSON: {e}"})
            self.answer(*controller.handle(self.path, method, body))

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
    parser.add_argument("--groups-state", help="where the security groups are kept (default: beside --state)")
    parser.add_argument("--log", help="JSON lines, one per request")
    parser.add_argument("--fail-every", type=int, default=0, help="answer every Nth request with HTTP 500")
    parser.add_argument("--refuse", help="refuse the ports of EVMs whose name holds this")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    groups_state = args.groups_state or os.path.join(os.path.dirname(args.state) or ".", "security-groups.json")
    controller = Controller(args.state, groups_state, args.log, args.fail_every, args.refuse)
    server = ThreadingHTTPServer((host, int(port)), handler(controller))
    print(f"listening on {host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
