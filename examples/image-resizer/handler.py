"""image-resizer: POST a JPEG or PNG, get back a JPEG that fits in 128x128, aspect ratio kept.

The classic serverless example, unchanged from what runs on OpenFaaS's python3-http template.
"""
import io

from PIL import Image, UnidentifiedImageError

SIZE = (128, 128)


def _error(status, message):
    return {
        "statusCode": status,
        "body": message + "\n",
        "headers": {"Content-Type": "text/plain; charset=utf-8"},
    }


def handle(event, context):
    if event.method not in ("POST", "PUT"):
        return _error(405, "POST a JPEG or PNG image to get a 128x128 thumbnail")
    body = event.body or b""
    if not body:
        return _error(400, "empty body: POST a JPEG or PNG image")
    try:
        img = Image.open(io.BytesIO(body))
        if img.format not in ("JPEG", "PNG"):
            return _error(400, "unsupported image format %s: POST a JPEG or PNG" % img.format)
        # JPEG can decode at a reduced scale directly: far less memory and time for big photos.
        img.draft("RGB", (SIZE[0] * 2, SIZE[1] * 2))
        img.load()
    except Image.DecompressionBombError:
        return _error(413, "image is too large to resize")
    except UnidentifiedImageError:
        return _error(400, "not an image: POST a JPEG or PNG")
    except (OSError, SyntaxError, ValueError) as e:
        return _error(400, "not a valid JPEG or PNG image: %s" % e)
    img.thumbnail(SIZE)
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return {
        "statusCode": 200,
        "body": out.getvalue(),
        "headers": {"Content-Type": "image/jpeg", "X-Thumbnail-Size": "%dx%d" % img.size},
    }
