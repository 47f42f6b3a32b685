require 'json'

# The OpenFaaS ruby-http contract: run(body, headers) with the Rack environment as headers;
# return [body, headers, status].
class Handler
  def run(body, headers)
    query = headers['QUERY_STRING'].to_s[/(?:\A|&)name=([^&]*)/, 1]
    name = body.read.strip
    name = query || 'world' if name.empty?
    [JSON.generate({ message: "Hello, #{name}!" }), { 'Content-Type' => 'application/json' }, 200]
  end
end
