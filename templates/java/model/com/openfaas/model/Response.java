package com.openfaas.model;

import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;

/** fjord's implementation of the OpenFaaS java11 response: status 200 unless set. */
public class Response implements IResponse {
    private int statusCode = 200;
    private byte[] body;
    private String contentType = "";
    private final Map<String, String> headers = new LinkedHashMap<>();

    public int getStatusCode() {
        return statusCode;
    }

    public void setStatusCode(int statusCode) {
        this.statusCode = statusCode;
    }

    public Map<String, String> getHeaders() {
        return headers;
    }

    /** A null value removes the header. */
    public void setHeader(String key, String value) {
        if (value == null) {
            headers.remove(key);
        } else {
            headers.put(key, value);
        }
    }

    public String getHeader(String key) {
        return headers.get(key);
    }

    public void setContentType(String contentType) {
        this.contentType = contentType == null ? "" : contentType;
    }

    public String getContentType() {
        return contentType;
    }

    public void setBody(String body) {
        this.body = body == null ? null : body.getBytes(StandardCharsets.UTF_8);
    }

    public void setBodyBytes(byte[] body) {
        this.body = body;
    }

    public String getBody() {
        return body == null ? null : new String(body, StandardCharsets.UTF_8);
    }

    public byte[] getBodyBytes() {
        return body;
    }
}
