class Handler
  # body: the request body (an IO; body.read, or use it as a String).
  # headers: the request environment, Rack style (REQUEST_METHOD, PATH_INFO, QUERY_STRING,
  # CONTENT_TYPE, HTTP_<NAME> for every other request header).
  def run(body, headers)
    response_headers = {"content-type": "text/plain"}
    body = "Hello world from the Ruby template"

    return body, response_headers
  end
end
