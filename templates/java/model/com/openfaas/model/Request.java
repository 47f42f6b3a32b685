package com.openfaas.model;

import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.Collections;
import java.util.HashMap;
import java.util.Map;
import java.util.TreeMap;

/**
 * fjord's implementation of the OpenFaaS java11 request. Headers: the first value of each,
 * looked up case-insensitively (getHeader("X-Custom") finds "x-custom"). Query: decoded
 * name=value pairs of the raw query. Path: the raw path's segments taken as key/value pairs
 * ("/a/1/b" gives {a=1, b=""}), as upstream.
 */
public class Request implements IRequest {
    private final Map<String, String> headers;
    private final byte[] body;
    private final String queryRaw;
    private final Map<String, String> query;
    private final String pathRaw;
    private final Map<String, String> path;

    public Request(byte[] body, Map<String, String> headers) {
        this(body, headers, null, null);
    }

    public Request(String body, Map<String, String> headers) {
        this(body == null ? null : body.getBytes(StandardCharsets.UTF_8), headers, null, null);
    }

    public Request(byte[] body, Map<String, String> headers, String queryRaw, String path) {
        this.body = body == null ? new byte[0] : body;
        Map<String, String> h = new TreeMap<>(String.CASE_INSENSITIVE_ORDER);
        if (headers != null) {
            h.putAll(headers);
        }
        this.headers = h;
        this.queryRaw = queryRaw;
        this.query = parseQuery(queryRaw);
        this.pathRaw = path;
        this.path = parsePath(path);
    }

    public String getBody() {
        return new String(body, StandardCharsets.UTF_8);
    }

    public byte[] getBodyBytes() {
        return body;
    }

    public Map<String, String> getHeaders() {
        return headers;
    }

    public String getHeader(String key) {
        return key == null ? null : headers.get(key);
    }

    public String getQueryRaw() {
        return queryRaw;
    }

    public Map<String, String> getQuery() {
        return query;
    }

    public String getPathRaw() {
        return pathRaw;
    }

    public Map<String, String> getPath() {
        return path;
    }

    private static Map<String, String> parsePath(String raw) {
        Map<String, String> res = new HashMap<>();
        if (raw == null || raw.length() <= 1) {
            return res;
        }
        String key = "";
        for (String seg : raw.substring(1).split("/")) {
            if (key.length() > 0) {
                res.put(key, seg);
                key = "";
            } else {
                key = seg;
            }
        }
        if (key.length() > 0) {
            res.put(key, "");
        }
        return res;
    }

    private static Map<String, String> parseQuery(String raw) {
        Map<String, String> res = new HashMap<>();
        if (raw == null || raw.isEmpty()) {
            return res;
        }
        for (String pair : raw.split("&")) {
            if (pair.isEmpty()) {
                continue;
            }
            int eq = pair.indexOf('=');
            String k = eq < 0 ? pair : pair.substring(0, eq);
            String v = eq < 0 ? null : pair.substring(eq + 1);
            res.put(decode(k), v == null ? null : decode(v));
        }
        return Collections.unmodifiableMap(res);
    }

    private static String decode(String s) {
        try {
            return URLDecoder.decode(s, StandardCharsets.UTF_8);
        } catch (IllegalArgumentException e) {
            return s;
        }
    }
}
