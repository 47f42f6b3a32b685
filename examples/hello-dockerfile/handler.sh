#!/bin/sh
# One process per request: the body on stdin, the response on stdout.
body=$(cat)
echo "$(cat greeting), ${body:-world}, from a container built from a Dockerfile"
