#!/usr/bin/env python3
"""An external controller for merak that programs OVN: it runs OVN's
central part (the northbound and southbound databases and ovn-northd) and
serves merak's controller API (docs/controller-api.md), turning port
batches into logical switches, routers and ports, and attaching each EVM's
device to br-int on its EPM's chassis (examples/controllers/ovn/ovn-chassis.sh,
run by an epm_agent).

    adapter.py --dir /var/lib/ovn-lab --listen 127.0.0.1:8080

Chassis reach the southbound database at unix:DIR/sb.sock and keep their
state in DIR/chassis/<epm>. Logical topology, per merak VPC: a logical
router <topology>.<vpc>; per subnet a logical switch <topology>.<vpc>.<subnet>
joined to the router at the subnet's gateway; per EVM a logical switch port
named after the port id. VPCs share nothing, so they stay apart.

Security groups, as Neutron's OVN driver maps them: a port group per merak
group (named pg_<hash of its id>, its id in external_ids), a port in the
port groups of its `security_groups`, and per group ACLs: each rule an
allow-related at priority 1002 (ingress: to-lport on the group's ports,
from its cidr_blocks or its remote groups' address sets; egress: from-lport
from them), and a drop of the rest of the group's IPv4 at 1001. A port
that allows through any of its groups passes; replies pass (conntrack).
Ports in no group are not filtered.

Standard library only, plus the ovs and ovn command-line tools.
"""

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def run(*command):
    """Runs an ovs/ovn tool; raises with its stderr on failure."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}...: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def router_mac(name):
    """A locally administered MAC, stable for the router port's name."""
    digest = hashlib.sha256(name.encode()).digest()
    return "0a:" + ":".join(f"{b:02x}" for b in digest[:5])


def port_group(group_id):
    """An OVN port group name for a merak group id (OVN names allow no '/')."""
    return "pg_" + hashlib.sha256(group_id.encode()).hexdigest()[:16]


def rule_match(direction, own, vpc_id, rule):
    """The ACL match of one rule of group `own` (a port group name)."""
    port, peer = ("outport", "ip4.src") if direction == "ingress" else ("inport", "ip4.dst")
    peers = list(rule["cidr_blocks"]) + [f"${port_group(vpc_id + '/' + g)}_ip4" for g in rule["remote_groups"]]
    match = [f"{port} == @{own}", "ip4", f"{peer} == {{{', '.join(peers)}}}"]
    number = rule["protocol_number"]
    if number in (6, 17):
        layer = "tcp" if number == 6 else "udp"
        match.append(layer)
        if rule.get("from_port") is not None:
            match.append(f"{layer}.dst >= {rule['from_port']} && {layer}.dst <= {rule.get('to_port', rule['from_port'])}")
    elif number == 1:
        match.append("icmp4")
    elif number:
        match.append(f"ip.proto == {number}")
    return " && ".join(match)


class Ovn:
    def __init__(self, directory):
        self.dir = directory
        self.children = []
        self.lock = threading.Lock()
        os.makedirs(os.path.join(directory, "chassis"), exist_ok=True)

    def nb(self, *args):
        return run("ovn-nbctl", f"--db=unix:{self.dir}/nb.sock", *args)

    def start(self):
        for db, schema in (("nb", "/usr/share/ovn/ovn-nb.ovsschema"), ("sb", "/usr/share/ovn/ovn-sb.ovsschema")):
            path = os.path.join(self.dir, f"{db}.db")
            if not os.path.exists(path):
                run("ovsdb-tool", "create", path, schema)
            self.children.append(subprocess.Popen([
                "ovsdb-server", path, f"--remote=punix:{self.dir}/{db}.sock", f"--unixctl={self.dir}/{db}.ctl",
                f"--pidfile={self.dir}/{db}.pid", f"--log-file={self.dir}/{db}.log", "-vconsole:off"]))
        for _ in range(200):
            if all(os.path.exists(os.path.join(self.dir, f"{db}.sock")) for db in ("nb", "sb")):
                break
            threading.Event().wait(0.05)
        self.children.append(subprocess.Popen([
            "ovn-northd", f"--ovnnb-db=unix:{self.dir}/nb.sock", f"--ovnsb-db=unix:{self.dir}/sb.sock",
            f"--unixctl={self.dir}/northd.ctl", f"--pidfile={self.dir}/northd.pid", f"--log-file={self.dir}/northd.log", "-vconsole:off"]))

    def stop(self):
        for child in reversed(self.children):
            child.terminate()
        for child in self.children:
            child.wait(timeout=10)

    def chassis_db(self, epm):
        return f"unix:{self.dir}/chassis/{epm}/run/db.sock"

    def ensure_subnet(self, port):
        """The VPC's router and the subnet's switch, joined at the gateway."""
        router = f"{port['topology']}.{port['vpc']}"
        switch = f"{router}.{port['subnet']}"
        prefix = port["subnet_cidr"].split("/")[1]
        router_port = f"rp-{switch}"
        self.nb("--may-exist", "lr-add", router)
        self.nb("--may-exist", "ls-add", switch)
        if not self.nb("--bare", "--columns=name", "find", "Logical_Router_Port", f"name={router_port}").strip():
            self.nb("lrp-add", router, router_port, router_mac(router_port), f"{port['gateway']}/{prefix}")
        self.nb("--may-exist", "lsp-add", switch, f"sp-{switch}", "--", "lsp-set-type", f"sp-{switch}", "router",
                "--", "lsp-set-addresses", f"sp-{switch}", "router", "--", "lsp-set-options", f"sp-{switch}", f"router-port={router_port}")
        return switch

    def put_group(self, group):
        """The group's port group, its ACLs replaced whole in one transaction."""
        name, vpc_id = port_group(group["id"]), f"{group['topology']}/{group['vpc']}"
        with self.lock:
            if not self.nb("--bare", "--columns=name", "find", "Port_Group", f"name={name}").strip():
                self.nb("pg-add", name, "--", "set", "Port_Group", name,
                        f"external_ids:merak-id=\"{group['id']}\"", f"external_ids:merak-vpc=\"{vpc_id}\"")
            command = ["acl-del", name]
            for direction, lport in (("ingress", "to-lport"), ("egress", "from-lport")):
                port = "outport" if direction == "ingress" else "inport"
                command += ["--", "acl-add", name, lport, "1001", f"{port} == @{name} && ip4", "drop"]
                for rule in group[direction]:
                    command += ["--", "acl-add", name, lport, "1002", rule_match(direction, name, vpc_id, rule), "allow-related"]
            self.nb(*command)

    def delete_group(self, group_id):
        """The port group and its ACLs; one already gone is not an error."""
        name = port_group(group_id)
        with self.lock:
            if self.nb("--bare", "--columns=name", "find", "Port_Group", f"name={name}").strip():
                self.nb("pg-del", name)

    def set_port_groups(self, port):
        """The port in the port groups of its security groups, out of its VPC's others."""
        vpc_id = f"{port['topology']}/{port['vpc']}"
        wanted = {port_group(f"{vpc_id}/{g}") for g in port.get("security_groups", [])}
        groups = set(self.nb("--bare", "--columns=name", "find", "Port_Group", f"external_ids:merak-vpc=\"{vpc_id}\"").split())
        if wanted - groups:
            raise RuntimeError(f"security groups {sorted(port['security_groups'])} are not all known here")
        if not groups:
            return
        uuid = self.nb("--bare", "--columns=_uuid", "find", "Logical_Switch_Port", f"name=\"{port['id']}\"").strip()
        command = []
        for name in sorted(groups):
            command += ["--", "add" if name in wanted else "remove", "Port_Group", name, "ports", uuid]
        self.nb(*command[1:])

    def put(self, port):
        with self.lock:
            switch = self.ensure_subnet(port)
            self.nb("--may-exist", "lsp-add", switch, port["id"], "--", "lsp-set-addresses", port["id"], f"{port['mac']} {port['ip']}")
            self.set_port_groups(port)
        # The device, on its EPM's chassis: iface-id binds it to the port.
        run("ovs-vsctl", f"--db={self.chassis_db(port['epm'])}", "--timeout=10", "--may-exist", "add-port", "br-int", port["device"],
            "--", "set", "Interface", port["device"], f"external_ids:iface-id={port['id']}", f"external_ids:merak-port={port['id']}")

    def delete(self, port_id):
        with self.lock:
            try:
                switch = self.nb("lsp-get-ls", port_id).split(" (")[1].strip().rstrip(")")
            except (RuntimeError, IndexError):
                switch = None  # already gone: a DELETE is idempotent
            self.nb("--if-exists", "lsp-del", port_id)
            if switch:
                self.remove_if_unused(switch)
        # Whichever chassis holds the device lets it go.
        for epm in os.listdir(os.path.join(self.dir, "chassis")):
            db = self.chassis_db(epm)
            if not os.path.exists(db[len("unix:"):]):
                continue
            names = run("ovs-vsctl", f"--db={db}", "--timeout=10", "--bare", "--columns=name", "find", "Interface", f"external_ids:merak-port=\"{port_id}\"").split()
            for name in names:
                run("ovs-vsctl", f"--db={db}", "--timeout=10", "--if-exists", "del-port", "br-int", name)


    def remove_if_unused(self, switch):
        """A subnet's switch with no EVM port left goes, with its router
        port; a VPC's router with no port left goes too."""
        ports = [line.split(" (")[1].rstrip(")") for line in self.nb("lsp-list", switch).splitlines() if " (" in line]
        if any(not port.startswith("sp-") for port in ports):
            return
        router = switch.rsplit(".", 1)[0]
        self.nb("--if-exists", "ls-del", switch)
        self.nb("--if-exists", "lrp-del", f"rp-{switch}")
        if not self.nb("lrp-list", router).strip():
            self.nb("--if-exists", "lr-del", router)


def handler(ovn):
    class Handler(BaseHTTPRequestHandler):
        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def change(self, method):
            if self.path == "/v1/ports":
                key, put, delete = "ports", ovn.put, ovn.delete
            elif self.path == "/v1/security-groups":
                key, put, delete = "security_groups", ovn.put_group, ovn.delete_group
            else:
                return self.answer(404, {"message": f"no such path {self.path}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            except ValueError as e:
                return self.answer(400, {"message": f"not JSON: {e}"})
            results = []
            items = body.get(key, []) if method == "PUT" else body.get("ids", [])
            for item in items:
                port_id = item["id"] if method == "PUT" else item
                try:
                    put(item) if method == "PUT" else delete(port_id)
                    results.append({"id": port_id, "ok": True})
                except (RuntimeError, KeyError, subprocess.TimeoutExpired) as e:
                    results.append({"id": port_id, "ok": False, "message": str(e)})
            self.answer(200, {"results": results})

        def do_PUT(self):
            self.change("PUT")

        def do_DELETE(self):
            self.change("DELETE")

        def log_message(self, format, *args):
            sys.stderr.write("adapter: " + format % args + "\n")

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="OVN's databases and logs; chassis state under DIR/chassis")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port of merak's controller API")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    ovn = Ovn(os.path.abspath(args.dir))
    ovn.start()
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), handler(ovn))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"listening on {host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        ovn.stop()


if __name__ == "__main__":
    main()
