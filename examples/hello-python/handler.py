def handle(event, context):
    name = event.body.decode("utf-8", "replace").strip() or event.query.get("name") or "world"
    return {
        "statusCode": 200,
        "body": {"message": "Hello, %s!" % name, "from": context.hostname},
    }
