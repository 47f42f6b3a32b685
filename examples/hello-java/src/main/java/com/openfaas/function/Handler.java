package com.openfaas.function;

import com.openfaas.model.IRequest;
import com.openfaas.model.IResponse;
import com.openfaas.model.Response;

/** The OpenFaaS java11 contract: greets the name in the body (or ?name=), in JSON. */
public class Handler extends com.openfaas.model.AbstractHandler {

    public IResponse Handle(IRequest req) {
        String name = req.getBody().trim();
        if (name.isEmpty()) {
            name = req.getQuery().getOrDefault("name", "world");
        }
        Response res = new Response();
        res.setContentType("application/json");
        res.setBody("{\"message\":\"Hello, " + name.replace("\\", "\\\\").replace("\"", "\\\"") + "!\"}");
        return res;
    }
}
