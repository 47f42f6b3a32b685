package com.openfaas.model;

import java.util.Map;

/** The request as the handler sees it (OpenFaaS java11 model). */
public interface IRequest {
    String getBody();
    byte[] getBodyBytes();
    Map<String, String> getHeaders();
    String getHeader(String key);
    String getQueryRaw();
    Map<String, String> getQuery();
    String getPathRaw();
    Map<String, String> getPath();
}
