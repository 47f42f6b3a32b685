package com.openfaas.model;

/** The OpenFaaS java11 handler contract: one call per HTTP request. */
public interface IHandler {
    IResponse Handle(IRequest request);
}
