#!/usr/bin/env bash
# fjord bash function: one process per request (fork mode), run as `bash function/handler.sh`
# from the bundle root. The request body arrives on stdin; whatever you print on stdout is the
# response body. A non-zero exit status turns the response into a 500.
#
# Request metadata, as the OpenFaaS classic watchdog sets it:
#   Http_Method          GET, POST, ...
#   Http_Path            the request path (when not empty)
#   Http_Query           the raw query string, without "?" (when not empty)
#   Http_Content_Type    and one Http_<Header> per request header: dashes become
#   Http_User_Agent      underscores, canonical case (X-Call-Id -> Http_X_Call_Id)
#   Http_Content_Length  (-1 for a chunked body)
# Plus the function's own environment (fprocess, OPENFAAS_NAME, HOSTNAME, ...).
set -eo pipefail

body=$(cat)
echo "Hello, ${body:-world}"
