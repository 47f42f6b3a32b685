package com.openfaas.model;

import java.util.Map;

/** The response the handler returns (OpenFaaS java11 model). */
public interface IResponse {
    String getBody();
    void setBody(String body);

    byte[] getBodyBytes();
    void setBodyBytes(byte[] body);

    String getHeader(String key);
    void setHeader(String key, String value);
    Map<String, String> getHeaders();

    void setContentType(String contentType);
    String getContentType();

    void setStatusCode(int code);
    int getStatusCode();
}
