# fjord python3-http runtime shim: the OpenFaaS python3-http handler contract
# (`def handle(event, context)` in function/handler.py) on a lean HTTP/1.1 server.
#
# The server lives in fjord_http.py (next to this file). Cold start matters more than anything
# else here, so it imports only built-in C modules at start (_socket, _thread); json, traceback
# and friends are imported on first use. No Flask/waitress and no http.server (its imports
# alone cost ~15 ms). This file stays tiny because the main script is compiled on every start,
# while an imported module can come from a .pyc (`python3 -m compileall` of the bundle at
# build time saves ~4 ms per start).
# Measured (2 vCPU host, Debian python3 3.11, skeleton handler, time from subprocess.Popen to
# the first 200 over TCP, 21 runs): p50 9.5 ms with the .pyc files `fjord build` writes
# (compileall), 12.8 ms without; bare `python3 -c pass` takes 7.9 ms (p50) on that host.
#
# Server: 127.0.0.1:$PORT, one thread per connection, HTTP/1.1 keep-alive (HTTP/1.0 with
# `Connection: keep-alive`), Content-Length and chunked request bodies, `Expect: 100-continue`,
# HEAD (headers only), request head limited to 64 KiB (431 beyond). Every method on every path
# goes to the handler. SIGTERM: exit once the requests in progress have been answered.
#
# Contract (as upstream openfaas/python-flask-template python3-http):
#   event.body     bytes
#   event.headers  case-insensitive: .get(name), [name], `name in`, .getlist(name), .items()
#   event.method   "GET", "POST", ...
#   event.query    dict of first values plus .getlist(name) / .to_dict(flat=False)
#   event.path     percent-decoded path without the query string
#   context.hostname  $HOSTNAME
# handle() returns a dict {"statusCode": 200, "body": ..., "headers": {...} or [(k, v), ...]}:
# a dict/list body is sent as JSON (Content-Type: application/json, as Flask's jsonify: keys
# sorted, compact, trailing newline), bytes as they are, anything else as str() with
# Content-Type text/html; charset=utf-8 (Flask's default). Handler headers replace the
# default Content-Type. None -> empty 200. A str, bytes or list return value is the body; a
# tuple is read as Flask does: (body, status), (body, headers), (body, status, headers).
# An exception -> 500 "Internal Server Error", traceback on stderr.

import fjord_http

fjord_http.main()
