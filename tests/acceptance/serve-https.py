#!/usr/bin/env python3
"""Serves a directory over HTTPS on 127.0.0.1, at a port the kernel picks.

    serve-https.py CERT KEY DIR

Prints the port on the first line of stdout, then serves until killed. The
release test serves `make release`'s network-mirror layout with it, as a
team's private mirror would (Terraform accepts network mirrors over HTTPS
only).
"""
import functools
import http.server
import ssl
import sys


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Files of the directory, without a log line per request on stderr."""

    def log_message(self, format, *args):
        pass


def main():
    cert, key, root = sys.argv[1:4]
    handler = functools.partial(QuietHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
