"""fjord python3-http runtime: the server behind index.py (see there)."""

import os
import sys
import _socket
import _thread

ROOT = os.path.dirname(os.path.abspath(__file__))


def _setup_path():
    # index.py runs under `python3 -S` (template.yml): site's start-up runs every .pth file
    # of the host's site-packages (setuptools' import hook, and more) and sitecustomize,
    # 3-7 ms of each cold start. The host's site-packages stay importable, appended as site
    # would (their .pth files are not run), and exit()/quit() exist as usual.
    import site

    if sys.flags.no_site:
        for d in site.getsitepackages():
            if d not in sys.path and os.path.isdir(d):
                sys.path.append(d)
        site.setquit()
    # `pip install --target deps` output goes first (after the bundle root), .pth files
    # honoured; function/ goes last so `import handler` works without shadowing the stdlib.
    deps = ROOT + "/deps"
    if os.path.isdir(deps):
        n = len(sys.path)
        site.addsitedir(deps)
        added = sys.path[n:]
        del sys.path[n:]
        sys.path[1:1] = added
    fn = ROOT + "/function"
    if fn not in sys.path:
        sys.path.append(fn)


_setup_path()

from function import handler  # noqa: E402

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
IDLE_TIMEOUT = 180.0  # longer than the gateway's pool idle timeout (90 s)
HEX = frozenset("0123456789abcdefABCDEF")
REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    206: "Partial Content", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 410: "Gone", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _unquote(s, plus):
    if plus:
        s = s.replace("+", " ")
    if "%" not in s:
        return s
    parts = s.encode("utf-8").split(b"%")
    out = [parts[0]]
    for p in parts[1:]:
        h = p[:2].decode("latin-1")
        if len(h) == 2 and h[0] in HEX and h[1] in HEX:
            out.append(bytes((int(h, 16),)) + p[2:])
        else:
            out.append(b"%" + p)
    return b"".join(out).decode("utf-8", "replace")


class Headers:
    """Request headers; names compare case-insensitively (as werkzeug's EnvironHeaders).

    Iterating yields (name, value) pairs, as werkzeug does; names are title-cased
    (`content-type` -> `Content-Type`). A repeated header reads as its values joined by ", "
    through get()/[]; getlist() gives them one by one."""

    __slots__ = ("_items", "_index")

    def __init__(self, items):
        self._items = items
        index = {}
        for k, v in items:
            index.setdefault(k.lower(), []).append(v)
        self._index = index

    def get(self, key, default=None, type=None):
        vals = self._index.get(key.lower()) if isinstance(key, str) else None
        if vals is None:
            return default
        v = vals[0] if len(vals) == 1 else ", ".join(vals)
        if type is not None:
            try:
                return type(v)
            except ValueError:
                return default
        return v

    def __getitem__(self, key):
        if isinstance(key, int):
            return self._items[key]
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def getlist(self, key, type=None):
        vals = self._index.get(key.lower(), ())
        if type is None:
            return list(vals)
        out = []
        for v in vals:
            try:
                out.append(type(v))
            except ValueError:
                pass
        return out

    get_all = getlist

    def __contains__(self, key):
        return isinstance(key, str) and key.lower() in self._index

    has_key = __contains__

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __bool__(self):
        return bool(self._items)

    def keys(self):
        return [k for k, _ in self._items]

    def values(self):
        return [v for _, v in self._items]

    def items(self):
        return list(self._items)

    def to_dict(self):
        return {k: self.get(k) for k, _ in self._items}

    def __repr__(self):
        return "Headers(%r)" % (self._items,)


class Query(dict):
    """Query arguments: a dict of each name's first value (as MultiDict.to_dict()), plus
    getlist(); `?a=1&a=2` -> get("a") == "1", getlist("a") == ["1", "2"]."""

    __slots__ = ("_lists",)

    def __init__(self, pairs=()):
        dict.__init__(self)
        lists = {}
        for k, v in pairs:
            if k in lists:
                lists[k].append(v)
            else:
                lists[k] = [v]
                dict.__setitem__(self, k, v)
        self._lists = lists

    def get(self, key, default=None, type=None):
        if key not in self:
            return default
        v = dict.__getitem__(self, key)
        if type is not None:
            try:
                return type(v)
            except ValueError:
                return default
        return v

    def getlist(self, key, type=None):
        vals = self._lists.get(key, ())
        if type is None:
            return list(vals)
        out = []
        for v in vals:
            try:
                out.append(type(v))
            except ValueError:
                pass
        return out

    def lists(self):
        return [(k, list(v)) for k, v in self._lists.items()]

    def items(self, multi=False):
        if multi:
            return [(k, v) for k, vs in self._lists.items() for v in vs]
        return dict.items(self)

    def to_dict(self, flat=True):
        if flat:
            return dict(self)
        return {k: list(v) for k, v in self._lists.items()}


def _parse_query(qs):
    pairs = []
    if qs:
        for part in qs.split("&"):
            if not part:
                continue
            k, _, v = part.partition("=")
            pairs.append((_unquote(k, True), _unquote(v, True)))
    return Query(pairs)


class Event:
    __slots__ = ("body", "headers", "method", "query", "path")

    def __init__(self, body, headers, method, query, path):
        self.body = body
        self.headers = headers
        self.method = method
        self.query = query
        self.path = path

    def __repr__(self):
        return "Event(method=%r, path=%r, body=%d bytes)" % (self.method, self.path, len(self.body))


class Context:
    __slots__ = ("hostname",)

    def __init__(self):
        self.hostname = os.environ.get("HOSTNAME", "localhost")


# --- responses -------------------------------------------------------------------------

class _Slow(Exception):
    pass


_esc = None


def _enc(o, out):
    # Fast path for plain JSON data (the json module costs ~5 ms to import); anything else
    # raises _Slow and goes through json.dumps.
    t = type(o)
    if t is str:
        out.append(_esc(o))
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif t is int:
        out.append(int.__repr__(o))
    elif t is float:
        if o != o or o in (float("inf"), float("-inf")):
            raise _Slow
        out.append(float.__repr__(o))
    elif t is dict:
        keys = list(o)
        for k in keys:
            if type(k) is not str:
                raise _Slow
        keys.sort()
        out.append("{")
        first = True
        for k in keys:
            if first:
                first = False
            else:
                out.append(",")
            out.append(_esc(k))
            out.append(":")
            _enc(o[k], out)
        out.append("}")
    elif t is list or t is tuple:
        out.append("[")
        first = True
        for v in o:
            if first:
                first = False
            else:
                out.append(",")
            _enc(v, out)
        out.append("]")
    else:
        raise _Slow


def _flask_default(o):
    # What Flask's JSON provider adds to the json module.
    import dataclasses
    import datetime
    import decimal
    import uuid

    if isinstance(o, datetime.date):
        from email.utils import format_datetime, formatdate

        if isinstance(o, datetime.datetime):
            if o.tzinfo:
                o = o.astimezone(datetime.timezone.utc)
            return format_datetime(o.replace(tzinfo=datetime.timezone.utc), usegmt=True)
        return formatdate(
            datetime.datetime(o.year, o.month, o.day, tzinfo=datetime.timezone.utc).timestamp(),
            usegmt=True,
        )
    if isinstance(o, (decimal.Decimal, uuid.UUID)):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if hasattr(o, "__html__"):
        return str(o.__html__())
    raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)


def _to_json(o):
    global _esc
    if _esc is None:
        from _json import encode_basestring_ascii

        _esc = encode_basestring_ascii
    out = []
    try:
        _enc(o, out)
        s = "".join(out)
    except _Slow:
        import json

        s = json.dumps(o, separators=(",", ":"), sort_keys=True, default=_flask_default)
    return (s + "\n").encode("utf-8")


def _as_body(body):
    """(bytes, default content type) for a handler's body value."""
    if body is None:
        return b"", None
    if isinstance(body, (dict, list)):
        return _to_json(body), "application/json"
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), "application/octet-stream"
    return str(body).encode("utf-8"), "text/html; charset=utf-8"


def _header_pairs(h):
    if h is None:
        return []
    pairs = h.items() if hasattr(h, "items") else h
    out = []
    for k, v in pairs:
        if isinstance(v, (list, tuple)):
            out.extend((str(k), str(x)) for x in v)
        else:
            out.append((str(k), str(v)))
    return out


def _format(rv):
    """A handler's return value -> (status, [(name, value)], body bytes)."""
    if rv is None:
        return 200, [], b""
    if isinstance(rv, dict):
        status = int(rv.get("statusCode", 200))
        body, ctype = _as_body(rv["body"]) if "body" in rv else (b"", "text/html; charset=utf-8")
        headers = _header_pairs(rv.get("headers"))
    elif isinstance(rv, tuple):
        body, status, headers = rv[0], 200, None
        if len(rv) == 3:
            status, headers = rv[1], rv[2]
        elif len(rv) == 2:
            if isinstance(rv[1], (dict, list)):
                headers = rv[1]
            else:
                status = rv[1]
        elif len(rv) != 1:
            raise TypeError("a returned tuple must be (body, status, headers), (body, status) or (body, headers)")
        status = int(status)
        body, ctype = _as_body(body)
        headers = _header_pairs(headers)
    else:
        status, headers = 200, []
        body, ctype = _as_body(rv)
    if ctype and not any(k.lower() == "content-type" for k, _ in headers):
        headers.insert(0, ("Content-Type", ctype))
    if not 100 <= status <= 999:
        raise ValueError("invalid status code %r" % (status,))
    return status, headers, body


def _log_exception():
    import traceback

    traceback.print_exc(file=sys.stderr)
    sys.stderr.flush()


# --- connections -----------------------------------------------------------------------

class _BadRequest(Exception):
    def __init__(self, status, msg):
        Exception.__init__(self, msg)
        self.status = status


class _Closed(Exception):
    pass


_active = 0
_active_lock = _thread.allocate_lock()
_draining = False


def _exit_now():
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(0)


def _on_sigterm(signum, frame):
    global _draining
    _draining = True
    if _active == 0:
        _exit_now()


def _simple(sock, status, msg, close=True):
    body = msg.encode("utf-8")
    head = "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%s\r\n" % (
        status, REASONS.get(status, "Error"), len(body), "Connection: close\r\n" if close else "")
    sock.sendall(head.encode("latin-1") + body)


def _conn(sock):
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        sock.settimeout(IDLE_TIMEOUT)
        buf = b""
        while True:
            buf = _serve_one(sock, buf)
            if buf is None:
                break
    except _BadRequest as e:
        try:
            _simple(sock, e.status, str(e) + "\n")
        except OSError:
            pass
    except (OSError, _Closed):
        pass
    except Exception:
        _log_exception()
    finally:
        try:
            sock.close()
        except OSError:
            pass


def _recv(sock):
    data = sock.recv(65536)
    if not data:
        raise _Closed
    return data


def _serve_one(sock, buf):
    """Reads one request from sock (buf: bytes already read), answers it. Returns the bytes
    read past the request, or None to close the connection."""
    global _active
    # Request head.
    while buf[:2] == b"\r\n":
        buf = buf[2:]
    end = buf.find(b"\r\n\r\n")
    while end < 0:
        if len(buf) > MAX_HEAD:
            raise _BadRequest(431, "request head too large")
        try:
            data = sock.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        start = max(0, len(buf) - 3)
        buf += data
        while buf[:2] == b"\r\n":
            buf = buf[2:]
            start = 0
        end = buf.find(b"\r\n\r\n", start)
    if end > MAX_HEAD:
        raise _BadRequest(431, "request head too large")
    head = buf[:end].decode("latin-1")
    buf = buf[end + 4:]
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version == "HTTP/1.1":
        http10 = False
    elif version == "HTTP/1.0":
        http10 = True
    else:
        raise _BadRequest(505 if version.startswith("HTTP/") else 400, "unsupported HTTP version")
    items = []
    te = cl = None
    conn_tokens = ()
    expect = False
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise _BadRequest(400, "malformed header line")
        value = value.strip(" \t")
        lname = name.lower()
        if lname == "content-length":
            if not value.isdigit() or (cl is not None and int(value) != cl):
                raise _BadRequest(400, "invalid Content-Length")
            cl = int(value)
        elif lname == "transfer-encoding":
            te = value.lower() if te is None else te + ", " + value.lower()
        elif lname == "connection":
            conn_tokens = conn_tokens + tuple(t.strip().lower() for t in value.split(","))
        elif lname == "expect":
            expect = value.lower() == "100-continue"
        items.append((name.title(), value))
    if http10:
        keep = "keep-alive" in conn_tokens
    else:
        keep = "close" not in conn_tokens

    # Request body.
    if te is not None:
        if te.rsplit(",", 1)[-1].strip() != "chunked" or http10:
            raise _BadRequest(400 if http10 else 501, "unsupported Transfer-Encoding")
        if expect and not buf:
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body, buf = _read_chunked(sock, buf)
        keep = keep and cl is None
    elif cl:
        if expect and len(buf) < cl and not http10:
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(buf) >= cl:
            body, buf = buf[:cl], buf[cl:]
        else:
            ba = bytearray(cl)
            ba[: len(buf)] = buf
            view = memoryview(ba)
            got = len(buf)
            while got < cl:
                n = sock.recv_into(view[got:], min(cl - got, 1 << 20))
                if not n:
                    raise _Closed
                got += n
            body, buf = bytes(ba), b""
    else:
        body = b""

    # Target.
    if target.startswith(("http://", "https://")):
        slash = target.find("/", target.find("//") + 2)
        target = target[slash:] if slash >= 0 else "/"
    path, _, qs = target.partition("?")
    path = _unquote(path, False)
    event = Event(body, Headers(items), method, _parse_query(qs), path)

    with _active_lock:
        _active += 1
    try:
        try:
            status, headers, out = _format(handler.handle(event, Context()))
            for k, v in headers:
                if "\n" in k or "\r" in k or "\n" in v or "\r" in v or not k:
                    raise ValueError("invalid response header %r" % (k,))
        except Exception:
            _log_exception()
            status, headers, out = 500, [("Content-Type", "text/plain; charset=utf-8")], b"Internal Server Error\n"
        lines = ["HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Unknown"))]
        for k, v in headers:
            lk = k.lower()
            if lk in ("content-length", "transfer-encoding", "connection"):
                continue
            lines.append("%s: %s\r\n" % (k, v))
        no_body = status < 200 or status in (204, 304)
        if not no_body:
            lines.append("Content-Length: %d\r\n" % len(out))
        if not keep or _draining:
            keep = False
            lines.append("Connection: close\r\n")
        elif http10:
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        h = "".join(lines)
        try:
            hb = h.encode("latin-1")
        except UnicodeEncodeError:
            hb = h.encode("utf-8")
        if no_body or method == "HEAD":
            sock.sendall(hb)
        elif len(out) < 65536:
            sock.sendall(hb + out)
        else:
            sock.sendall(hb)
            sock.sendall(out)
    finally:
        with _active_lock:
            _active -= 1
            last = _active == 0
        if _draining and last:
            _exit_now()
    return buf if keep else None


def _read_chunked(sock, buf):
    parts = []
    while True:
        i = buf.find(b"\r\n")
        while i < 0:
            if len(buf) > MAX_CHUNK_LINE:
                raise _BadRequest(400, "chunk size line too long")
            buf += _recv(sock)
            i = buf.find(b"\r\n")
        size_s = buf[:i].split(b";", 1)[0].strip()
        try:
            size = int(size_s, 16)
        except ValueError:
            raise _BadRequest(400, "invalid chunk size")
        if size < 0 or not size_s or size_s[:1] in (b"+", b"-") or b"_" in size_s:
            raise _BadRequest(400, "invalid chunk size")
        buf = buf[i + 2:]
        if size == 0:
            # Trailers (ignored), up to an empty line.
            seen = 0
            while True:
                i = buf.find(b"\r\n")
                while i < 0:
                    if len(buf) > MAX_HEAD:
                        raise _BadRequest(431, "trailers too large")
                    buf += _recv(sock)
                    i = buf.find(b"\r\n")
                line, buf = buf[:i], buf[i + 2:]
                seen += i + 2
                if seen > MAX_HEAD:
                    raise _BadRequest(431, "trailers too large")
                if not line:
                    return b"".join(parts), buf
        need = size + 2
        if len(buf) < need:
            chunks = [buf]
            have = len(buf)
            while have < need:
                data = _recv(sock)
                chunks.append(data)
                have += len(data)
            buf = b"".join(chunks)
        if buf[size:size + 2] != b"\r\n":
            raise _BadRequest(400, "malformed chunk")
        parts.append(buf[:size])
        buf = buf[need:]


def main():
    import _signal

    _signal.signal(_signal.SIGTERM, _on_sigterm)
    port = int(os.environ.get("PORT") or 5000)
    srv = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    srv.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1024)
    print("python3-http listening on 127.0.0.1:%d" % port, flush=True)
    while True:
        try:
            fd, _ = srv._accept()
        except OSError:  # e.g. out of file descriptors: back off a little
            import time

            time.sleep(0.01)
            continue
        _thread.start_new_thread(_conn, (_socket.socket(_socket.AF_INET, _socket.SOCK_STREAM, 0, fd),))

