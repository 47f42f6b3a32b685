// fjord node runtime shim: the OpenFaaS node18/node20 handler contract
// (`module.exports = async (event, context) => ...` in function/handler.js) on Node's built-in
// http module only (no express/body-parser: they cost tens of milliseconds at every cold start).
//
// Server: 127.0.0.1:$PORT, HTTP/1.1 keep-alive (idle connections kept 180 s, longer than the
// gateway's 90 s pool timeout). Every method on every path goes to the handler. SIGTERM: stop
// accepting, answer the requests in progress, then exit.
//
// event:   body     parsed as express+body-parser do in the upstream template: JSON for
//                   application/json (strict: an object or array; invalid JSON -> 400), a string
//                   for text/* and for a missing Content-Type (treated as text/plain), an object
//                   for application/x-www-form-urlencoded (qs-style: a=1&a=2 -> ["1","2"],
//                   a[b]=c -> {b: "c"}), a Buffer for any other type. RAW_BODY=true: a Buffer
//                   whatever the type. No body at all (no Content-Length, no Transfer-Encoding,
//                   e.g. a GET): {} as upstream. Limits: MAX_JSON_SIZE for JSON, MAX_RAW_SIZE
//                   for everything else (default "100kb" each, units b/kb/mb/gb) -> 413.
//          headers  lower-cased names (content-type defaults to text/plain), method, query
//                   (parsed like express's req.query), path (without the query string).
// context: status(code), headers(obj) (both chainable; without argument they return the current
//          value), succeed(value), fail(err) (500 if the status is still 200).
// A value returned without calling succeed() is succeed(value). Objects and arrays are sent as
// JSON (Content-Type application/json; charset=utf-8 unless the handler set one), strings as
// text/html; charset=utf-8 unless set (express's default), Buffers as application/octet-stream
// unless set, null/undefined as an empty body. A thrown error or rejected promise is sent as
// its text (String(err)), with the *current* status: 200 unless the handler set another (only
// fail() bumps 200 to 500); the error is logged on stderr.

'use strict';

const http = require('http');
const handler = require('./function/handler');

const RAW_BODY = process.env.RAW_BODY === 'true';
const JSON_LIMIT = parseSize(process.env.MAX_JSON_SIZE, '100kb');
const RAW_LIMIT = parseSize(process.env.MAX_RAW_SIZE, '100kb');
const PROTO_KEYS = new Set(Object.getOwnPropertyNames(Object.prototype));
const INDEX = /^\d+$/;
let draining = false;

function parseSize(value, fallback) {
  const m = /^\s*(\d+(?:\.\d*)?|\.\d+)\s*(b|kb|mb|gb|tb)?\s*$/i.exec(String(value || fallback));
  if (!m) return parseSize(fallback, '100kb');
  const unit = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3, tb: 1024 ** 4 }[(m[2] || 'b').toLowerCase()];
  return Math.floor(parseFloat(m[1]) * unit);
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function mediaType(ct) {
  return String(ct || '').split(';')[0].trim().toLowerCase();
}

function charsetOf(ct) {
  const m = /;\s*charset\s*=\s*"?([^";\s]+)"?/i.exec(String(ct || ''));
  return m ? m[1].toLowerCase() : undefined;
}

function decodeText(buf, charset) {
  const cs = charset || 'utf-8';
  try {
    return new TextDecoder(cs).decode(buf);
  } catch (e) {
    throw new HttpError(415, `unsupported charset "${cs.toUpperCase()}"`);
  }
}

// --- query strings (a subset of qs, as express and body-parser's urlencoded parser use) -----

function decodeComponent(s) {
  const t = s.replace(/\+/g, ' ');
  try {
    return decodeURIComponent(t);
  } catch (e) {
    return t;
  }
}

function splitKey(key) {
  const open = key.indexOf('[');
  if (open <= 0) return [key];
  const segs = [key.slice(0, open)];
  let rest = key.slice(open);
  while (segs.length <= 5) {
    const m = /^\[([^[\]]*)\]/.exec(rest);
    if (!m) break;
    segs.push(m[1]);
    rest = rest.slice(m[0].length);
  }
  if (segs.length === 1) return [key];
  if (rest && segs.length > 5 && rest[0] === '[') segs.push(rest);
  return segs;
}

function isIndex(k) {
  return k === '' || (INDEX.test(k) && Number(k) <= 20);
}

function setIn(root, segs, val) {
  let parent = null;
  let pkey = null;
  let cur = root;
  for (let i = 0; i < segs.length; i++) {
    let k = segs[i];
    if (Array.isArray(cur)) {
      if (k === '') k = cur.length;
      else if (isIndex(k)) k = Number(k);
      else cur = parent[pkey] = Object.assign({}, cur);
    }
    const has = Object.prototype.hasOwnProperty.call(cur, k);
    if (i === segs.length - 1) {
      if (!has) cur[k] = val;
      else if (Array.isArray(cur[k])) cur[k].push(val);
      else cur[k] = [cur[k], val];
      return;
    }
    const fresh = isIndex(segs[i + 1]) ? [] : {};
    if (!has) {
      cur[k] = fresh;
    } else if (cur[k] === null || typeof cur[k] !== 'object') {
      cur[k] = [cur[k], fresh];
      parent = cur[k];
      pkey = 1;
      cur = fresh;
      continue;
    }
    parent = cur;
    pkey = k;
    cur = cur[k];
  }
}

function compact(v) {
  if (Array.isArray(v)) return v.filter(() => true).map(compact);
  if (v && typeof v === 'object') {
    for (const k of Object.keys(v)) v[k] = compact(v[k]);
  }
  return v;
}

function parseQs(str) {
  const out = {};
  if (!str) return out;
  for (const part of str.split('&', 1000)) {
    if (!part) continue;
    const bracketEq = part.indexOf(']=');
    const eq = bracketEq === -1 ? part.indexOf('=') : bracketEq + 1;
    const key = decodeComponent(eq === -1 ? part : part.slice(0, eq));
    if (!key) continue;
    const val = eq === -1 ? '' : decodeComponent(part.slice(eq + 1));
    const segs = splitKey(key);
    if (segs.some((s) => PROTO_KEYS.has(s))) continue;
    setIn(out, segs, val);
  }
  return compact(out);
}

// --- request bodies --------------------------------------------------------------------

function parseBody(kind, buf, ct) {
  switch (kind) {
    case 'json': {
      const cs = charsetOf(ct) || 'utf-8';
      if (!cs.startsWith('utf-')) throw new HttpError(415, `unsupported charset "${cs.toUpperCase()}"`);
      const s = decodeText(buf, cs);
      if (s.length === 0) return {};
      const first = /^[\x20\x09\x0a\x0d]*(.)/s.exec(s);
      if (!first || (first[1] !== '{' && first[1] !== '[')) {
        throw new HttpError(400, 'invalid JSON body: expected an object or an array');
      }
      try {
        return JSON.parse(s);
      } catch (e) {
        throw new HttpError(400, `invalid JSON body: ${e.message}`);
      }
    }
    case 'text':
      return decodeText(buf, charsetOf(ct));
    case 'urlencoded': {
      const cs = charsetOf(ct) || 'utf-8';
      if (cs !== 'utf-8' && cs !== 'utf8') throw new HttpError(415, `unsupported charset "${cs.toUpperCase()}"`);
      return parseQs(buf.toString('utf8'));
    }
    default:
      return buf;
  }
}

function bodyKind(ct) {
  if (RAW_BODY) return 'raw';
  const type = mediaType(ct);
  if (type === 'application/json') return 'json';
  if (type.startsWith('text/')) return 'text';
  if (type === 'application/x-www-form-urlencoded') return 'urlencoded';
  return 'raw';
}

// --- the contract ----------------------------------------------------------------------

class FunctionEvent {
  constructor(req, body) {
    const url = req.url || '/';
    const q = url.indexOf('?');
    this.body = body;
    this.headers = req.headers;
    this.method = req.method;
    this.query = q < 0 ? {} : parseQs(url.slice(q + 1));
    this.path = q < 0 ? url : url.slice(0, q);
  }
}

class FunctionContext {
  constructor(cb) {
    this.statusCode = 200;
    this.cb = cb;
    this.headerValues = {};
    this.cbCalled = 0;
  }

  status(statusCode) {
    if (!statusCode) return this.statusCode;
    this.statusCode = statusCode;
    return this;
  }

  headers(value) {
    if (!value) return this.headerValues;
    this.headerValues = value;
    return this;
  }

  succeed(value) {
    let err;
    this.cbCalled++;
    this.cb(err, value);
  }

  fail(value) {
    let message;
    if (this.status() == '200') this.status(500);
    this.cbCalled++;
    this.cb(value, message);
  }
}

function errorText(err) {
  try {
    return typeof err.toString === 'function' ? String(err.toString()) : String(err);
  } catch (e) {
    return 'Error';
  }
}

function setCharset(type) {
  const parts = type.split(';').filter((p) => !/^\s*charset\s*=/i.test(p));
  return `${parts.join(';')}; charset=utf-8`;
}

function sendPlain(res, status, text) {
  const buf = Buffer.from(text + '\n', 'utf8');
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': buf.length,
    Connection: 'close',
  });
  res.end(buf);
}

function send(req, res, status, headers, value, isError) {
  const code = Number(status);
  if (!Number.isInteger(code) || code < 100 || code > 999) {
    console.error(`invalid status code: ${status}`);
    return sendPlain(res, 500, `invalid status code: ${status}`);
  }
  let body = null;
  let isString = false;
  let defType;
  if (value === undefined || value === null) {
    body = null;
  } else if (Buffer.isBuffer(value)) {
    body = value;
    defType = 'application/octet-stream';
  } else if (value instanceof Uint8Array) {
    body = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    defType = 'application/octet-stream';
  } else if (typeof value === 'string') {
    body = value;
    isString = true;
    defType = isError ? 'text/plain; charset=utf-8' : 'text/html; charset=utf-8';
  } else if (typeof value === 'object' || typeof value === 'number' || typeof value === 'boolean') {
    try {
      body = JSON.stringify(value);
    } catch (e) {
      console.error(e);
      return send(req, res, status, null, errorText(e), true);
    }
    if (body === undefined) body = null;
    isString = body !== null;
    defType = 'application/json; charset=utf-8';
  } else {
    body = String(value);
    isString = true;
    defType = 'text/html; charset=utf-8';
  }
  const out = [];
  let hasType = false;
  try {
    if (headers && typeof headers === 'object') {
      for (const name of Object.keys(headers)) {
        let v = headers[name];
        if (v === undefined || v === null) continue;
        const lower = name.toLowerCase();
        if (lower === 'content-length' || lower === 'transfer-encoding' || lower === 'connection') continue;
        if (lower === 'content-type') {
          hasType = true;
          v = String(v);
          if (isString) v = setCharset(v);
        }
        v = Array.isArray(v) ? v.map(String) : String(v);
        http.validateHeaderName(name);
        for (const x of Array.isArray(v) ? v : [v]) http.validateHeaderValue(name, x);
        out.push([name, v]);
      }
    }
  } catch (e) {
    console.error(e);
    return sendPlain(res, 500, errorText(e));
  }
  if (!hasType && defType && body !== null) out.push(['Content-Type', defType]);
  const buf = body === null ? null : isString ? Buffer.from(body, 'utf8') : body;
  for (const [name, v] of out) res.setHeader(name, v);
  if (draining) res.setHeader('Connection', 'close');
  if (code < 200 || code === 204 || code === 304) {
    res.writeHead(code);
    res.end();
    return;
  }
  res.setHeader('Content-Length', buf ? buf.length : 0);
  res.writeHead(code);
  res.end(req.method === 'HEAD' || !buf ? undefined : buf);
}

function run(req, res, body) {
  let done = false;
  const cb = (err, functionResult) => {
    if (done) {
      console.error('the function answered this request already; later result ignored');
      return;
    }
    done = true;
    if (err) {
      console.error(err);
      return send(req, res, fnContext.status(), null, errorText(err), true);
    }
    send(req, res, fnContext.status(), fnContext.headers(), functionResult, false);
  };
  const fnEvent = new FunctionEvent(req, body);
  const fnContext = new FunctionContext(cb);
  let ret;
  try {
    ret = handler(fnEvent, fnContext, cb);
  } catch (e) {
    return cb(e);
  }
  Promise.resolve(ret)
    .then((result) => {
      if (!fnContext.cbCalled) fnContext.succeed(result);
    })
    .catch((e) => cb(e));
}

function onRequest(req, res) {
  if (!req.headers['content-type']) req.headers['content-type'] = 'text/plain';
  const cl = req.headers['content-length'];
  const hasBody = req.headers['transfer-encoding'] !== undefined || (cl !== undefined && !isNaN(cl));
  if (!hasBody) {
    run(req, res, {});
    return;
  }
  const ct = req.headers['content-type'];
  const kind = bodyKind(ct);
  const limit = kind === 'json' ? JSON_LIMIT : RAW_LIMIT;
  if (cl !== undefined && Number(cl) > limit) {
    sendPlain(res, 413, 'request entity too large');
    return;
  }
  const chunks = [];
  let size = 0;
  let over = false;
  req.on('data', (c) => {
    if (over) return;
    size += c.length;
    if (size > limit) {
      over = true;
      chunks.length = 0;
      sendPlain(res, 413, 'request entity too large');
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (over) return;
    let parsed;
    try {
      parsed = parseBody(kind, Buffer.concat(chunks, size), ct);
    } catch (e) {
      sendPlain(res, e.status || 400, e.message);
      return;
    }
    run(req, res, parsed);
  });
  req.on('error', () => {});
}

const server = http.createServer(onRequest);
server.keepAliveTimeout = 180 * 1000;
server.headersTimeout = 185 * 1000;

process.on('SIGTERM', () => {
  draining = true;
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});

const port = Number(process.env.PORT || 3000);
server.listen(port, '127.0.0.1', () => {
  console.log(`node listening on 127.0.0.1:${port}`);
});
