#!/bin/sh
# Run once per request by the watchdog (fprocess in the Dockerfile). The request body is on
# stdin, the response is what this prints; the request's method, path, query and headers are
# in Http_Method, Http_Path, Http_Query and Http_<Header> variables.
body=$(cat)
echo "Hello, ${body:-world}"
