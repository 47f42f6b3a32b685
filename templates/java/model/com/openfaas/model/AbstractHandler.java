package com.openfaas.model;

/** Base class of handlers (`public class Handler extends AbstractHandler`). */
public abstract class AbstractHandler implements IHandler {
    public abstract IResponse Handle(IRequest request);

    /** Writes a line to the function's log (stderr). */
    public void Log(String message) {
        System.err.println(message);
    }
}
