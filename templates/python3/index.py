# fjord python3 (classic) runtime shim: one process per request, as the OpenFaaS classic
# watchdog's python3 template. The request body arrives on stdin (read whole, as str),
# function/handler.py's handle(req) is called with it, and its return value (if not None) is
# printed to stdout, which is the response body. Request metadata is in Http_* environment
# variables (Http_Method, Http_Path, Http_Query, Http_Content_Type, ...): read them with
# os.environ / os.getenv.
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))

# Run under `python3 -S` (template.yml): site's start-up runs every .pth file of the host's
# site-packages and sitecustomize, 3-7 ms of each request here (a process per request). The
# host's site-packages stay importable, appended as site would (their .pth files not run).
import site  # noqa: E402

if sys.flags.no_site:
    for _d in site.getsitepackages():
        if _d not in sys.path and os.path.isdir(_d):
            sys.path.append(_d)
    site.setquit()

# `pip install --target deps` output goes first (after the bundle root), .pth files honoured;
# function/ goes last so a plain `import handler` works without shadowing the stdlib.
_deps = ROOT + "/deps"
if os.path.isdir(_deps):
    _n = len(sys.path)
    site.addsitedir(_deps)
    _added = sys.path[_n:]
    del sys.path[_n:]
    sys.path[1:1] = _added
if ROOT + "/function" not in sys.path:
    sys.path.append(ROOT + "/function")

from function import handler  # noqa: E402


def get_stdin():
    return sys.stdin.read()


if __name__ == "__main__":
    st = get_stdin()
    ret = handler.handle(st)
    if ret is not None:
        print(ret)
