import os


def handle(req):
    """Classic (fork mode): req is the request body; the return value is the response."""
    name = req.strip() or "world"
    return "Hello, %s! (%s %s)" % (name, os.environ.get("Http_Method", "?"), os.environ.get("Http_Path", "/"))
