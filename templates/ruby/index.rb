# fjord ruby runtime shim: the OpenFaaS ruby-http handler contract (`class Handler` with
# `run(body, headers)` in function/handler.rb) on a small HTTP/1.1 server from Ruby's standard
# library only (socket). No Sinatra/Rack/WEBrick: WEBrick left the standard library in Ruby 3,
# and RubyGems alone costs ~30 ms per start (fprocess runs `ruby --disable-gems`).
#
# Server: 127.0.0.1:$PORT, one thread per connection, HTTP/1.1 keep-alive (HTTP/1.0 with
# `Connection: keep-alive`; idle connections kept 180 s, longer than the gateway's 90 s pool
# timeout), Content-Length and chunked request bodies, `Expect: 100-continue`, HEAD (headers
# only), request head limited to 64 KiB (431 beyond). Every method on every path goes to the
# handler. SIGTERM: exit once the requests in progress have been answered.
#
# Contract (as upstream openfaas/ruby-http, which runs the handler under Sinatra):
#   Handler.new.run(body, headers), a new Handler per request, as upstream.
#   body     the request body as an IO (StringIO: body.read, as Rack's rack.input); it also
#            converts to a String (to_s/to_str), so "#{body}" and JSON.parse(body) work.
#   headers  the Rack environment: REQUEST_METHOD, PATH_INFO (raw, without the query string),
#            QUERY_STRING, REQUEST_URI, SERVER_PROTOCOL, SERVER_NAME, SERVER_PORT, CONTENT_TYPE,
#            CONTENT_LENGTH, HTTP_<NAME> for every other header (X-Custom -> HTTP_X_CUSTOM;
#            a repeated header's values joined by ", "), rack.input (= body).
#   Return [body, headers, status] (Sinatra's `res, res_headers, status = ...`): headers a
#   Hash (String or Symbol keys; an Array value sends the header once per element) or nil,
#   status defaults to 200 (204 for OPTIONS, as upstream). A lone value is the body. Body: a
#   String as is, nil -> empty, an Array -> its elements joined (a Rack body), anything else
#   -> to_s. Content-Type defaults to Sinatra's "text/html;charset=utf-8".
#   An exception -> 500 "Internal Server Error", the error and its backtrace on stderr.

$stdout.sync = true
$stderr.sync = true

require 'socket'
require 'stringio'

# The handler's folder is on the load path (after the standard library), so `require
# 'helper'` finds function/helper.rb; require_relative works too.
$LOAD_PATH.push(File.join(__dir__, 'function'))
# Gems vendored with `bundle install --standalone` (bundler's path vendor/bundle): its
# setup.rb puts their lib folders on the load path without RubyGems.
%w[vendor/bundle bundle].each do |dir|
  setup = File.join(__dir__, 'function', dir, 'bundler', 'setup.rb')
  if File.file?(setup)
    require setup
    break
  end
end
require_relative 'function/handler'

module FjordHttp
  MAX_HEAD = 64 * 1024
  MAX_CHUNK_LINE = 4096
  IDLE_TIMEOUT = 180
  BINARY = Encoding::BINARY
  REASONS = {
    100 => 'Continue', 200 => 'OK', 201 => 'Created', 202 => 'Accepted', 204 => 'No Content',
    206 => 'Partial Content', 301 => 'Moved Permanently', 302 => 'Found', 303 => 'See Other',
    304 => 'Not Modified', 307 => 'Temporary Redirect', 308 => 'Permanent Redirect',
    400 => 'Bad Request', 401 => 'Unauthorized', 403 => 'Forbidden', 404 => 'Not Found',
    405 => 'Method Not Allowed', 409 => 'Conflict', 410 => 'Gone', 413 => 'Content Too Large',
    415 => 'Unsupported Media Type', 422 => 'Unprocessable Content', 429 => 'Too Many Requests',
    431 => 'Request Header Fields Too Large', 500 => 'Internal Server Error',
    501 => 'Not Implemented', 502 => 'Bad Gateway', 503 => 'Service Unavailable',
    504 => 'Gateway Timeout', 505 => 'HTTP Version Not Supported'
  }.freeze
  HEX = /\A[0-9a-fA-F]+\z/.freeze
  TOKEN = /\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\z/.freeze

  class BadRequest < StandardError
    attr_reader :status

    def initialize(status, msg)
      super(msg)
      @status = status
    end
  end

  class Closed < StandardError; end

  # The request body: an IO as Rack's rack.input, that also reads as a String.
  class Body < StringIO
    def to_s
      s = string.dup.force_encoding(Encoding::UTF_8)
      s.valid_encoding? ? s : string.dup
    end
    alias to_str to_s
  end

  @active = 0
  @lock = Mutex.new
  @draining = false

  class << self
    attr_reader :active

    def draining?
      @draining
    end

    def exit_now
      $stdout.flush
      $stderr.flush
    ensure
      exit!(0)
    end

    def on_sigterm
      @draining = true
      exit_now if @active.zero?
    end

    def recv(sock)
      raise Closed unless IO.select([sock], nil, nil, IDLE_TIMEOUT)

      sock.readpartial(65_536)
    rescue EOFError, IOError, SystemCallError
      raise Closed
    end

    def simple(sock, status, msg)
      sock.write("HTTP/1.1 #{status} #{REASONS.fetch(status, 'Error')}\r\n" \
                 "Content-Type: text/plain; charset=utf-8\r\nContent-Length: #{msg.bytesize}\r\n" \
                 "Connection: close\r\n\r\n#{msg}")
    end

    def conn(sock)
      sock.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
      buf = String.new(encoding: BINARY)
      buf = serve_one(sock, buf) while buf
    rescue BadRequest => e
      begin
        simple(sock, e.status, "#{e.message}\n")
      rescue IOError, SystemCallError
        nil
      end
    rescue Closed, IOError, SystemCallError
      nil
    rescue Exception => e # rubocop:disable Lint/RescueException -- a thread must not die silently
      log_exception(e)
    ensure
      sock.close unless sock.closed?
    end

    def log_exception(e)
      $stderr.write("#{e.backtrace&.first}: #{e.message} (#{e.class})\n" +
                    (e.backtrace || [])[1..].to_a.map { |l| "\tfrom #{l}\n" }.join)
    end

    # Reads one request (buf: bytes already read) and answers it. Returns the bytes read past
    # the request, or nil to close the connection.
    def serve_one(sock, buf)
      buf = buf.byteslice(2..) while buf.start_with?("\r\n")
      until (i = buf.index("\r\n\r\n"))
        raise BadRequest.new(431, 'request head too large') if buf.bytesize > MAX_HEAD

        begin
          buf << recv(sock)
        rescue Closed
          return nil
        end
        buf = buf.byteslice(2..) while buf.start_with?("\r\n")
      end
      raise BadRequest.new(431, 'request head too large') if i > MAX_HEAD

      lines = buf.byteslice(0, i).split("\r\n")
      buf = buf.byteslice((i + 4)..)
      parts = lines.shift.to_s.split(' ', -1)
      raise BadRequest.new(400, 'malformed request line') unless parts.size == 3 && parts.none?(&:empty?)

      method, target, version = parts
      raise BadRequest.new(400, 'malformed request line') unless TOKEN.match?(method)

      http10 = case version
               when 'HTTP/1.1' then false
               when 'HTTP/1.0' then true
               else raise BadRequest.new(version.start_with?('HTTP/') ? 505 : 400, 'unsupported HTTP version')
               end
      env = {}
      te = cl = nil
      conn_tokens = []
      expect = false
      host = nil
      lines.each do |line|
        name, sep, value = line.partition(':')
        raise BadRequest.new(400, 'malformed header line') if sep.empty? || !TOKEN.match?(name)

        value = value.strip
        case name.downcase
        when 'content-length'
          raise BadRequest.new(400, 'invalid Content-Length') unless /\A\d+\z/.match?(value) && (cl.nil? || cl == value.to_i)

          cl = value.to_i
        when 'transfer-encoding'
          te = te ? "#{te}, #{value.downcase}" : value.downcase
        when 'connection'
          conn_tokens.concat(value.downcase.split(',').map(&:strip))
        when 'expect'
          expect = value.casecmp?('100-continue')
        when 'host'
          host ||= value
        end
        key = name.upcase.tr('-', '_')
        key = "HTTP_#{key}" unless %w[CONTENT_TYPE CONTENT_LENGTH].include?(key)
        env[key] = env.key?(key) ? "#{env[key]}, #{value}" : value
      end
      keep = http10 ? conn_tokens.include?('keep-alive') : !conn_tokens.include?('close')

      if te
        raise BadRequest.new(http10 ? 400 : 501, 'unsupported Transfer-Encoding') if http10 || te.split(',').last.strip != 'chunked'

        sock.write("HTTP/1.1 100 Continue\r\n\r\n") if expect && buf.empty?
        body, buf = read_chunked(sock, buf)
        keep &&= cl.nil?
      elsif cl&.positive?
        sock.write("HTTP/1.1 100 Continue\r\n\r\n") if expect && buf.bytesize < cl && !http10
        buf << recv(sock) while buf.bytesize < cl
        body = buf.byteslice(0, cl)
        buf = buf.byteslice(cl..)
      else
        body = String.new(encoding: BINARY)
      end

      if target.start_with?('http://', 'https://')
        slash = target.index('/', target.index('//') + 2)
        target = slash ? target[slash..] : '/'
      end
      path, _, qs = target.partition('?')
      server_name, _, server_port = (host || 'localhost').rpartition(':')
      server_name, server_port = server_port, '80' if server_name.empty?
      input = Body.new(body)
      env.merge!(
        'REQUEST_METHOD' => method, 'SCRIPT_NAME' => '', 'PATH_INFO' => path,
        'QUERY_STRING' => qs, 'REQUEST_URI' => target, 'REQUEST_PATH' => path,
        'SERVER_PROTOCOL' => version, 'HTTP_VERSION' => version,
        'SERVER_NAME' => server_name, 'SERVER_PORT' => server_port,
        'REMOTE_ADDR' => '127.0.0.1', 'rack.input' => input, 'rack.url_scheme' => 'http'
      )
      env['CONTENT_LENGTH'] = body.bytesize.to_s if te

      @lock.synchronize { @active += 1 }
      begin
        status, headers, out = respond(method, input, env)
        head = String.new("HTTP/1.1 #{status} #{REASONS.fetch(status, 'Unknown')}\r\n", encoding: BINARY)
        headers.each { |k, v| head << k.b << ': ' << v.b << "\r\n" }
        no_body = status < 200 || status == 204 || status == 304
        head << "Content-Length: #{out.bytesize}\r\n" unless no_body
        if !keep || @draining
          keep = false
          head << "Connection: close\r\n"
        elsif http10
          head << "Connection: keep-alive\r\n"
        end
        head << "\r\n"
        if no_body || method == 'HEAD'
          sock.write(head)
        elsif out.bytesize < 65_536
          sock.write(head << out.b)
        else
          sock.write(head)
          sock.write(out)
        end
      ensure
        last = @lock.synchronize { (@active -= 1).zero? }
        exit_now if @draining && last
      end
      keep ? buf : nil
    end

    # The handler's answer as (status, [[name, value]], body bytes).
    def respond(method, input, env)
      res, res_headers, status = Handler.new.run(input, env)
      status = Integer(status || (method == 'OPTIONS' ? 204 : 200))
      raise ArgumentError, "invalid status code #{status}" unless (100..999).cover?(status)

      out = case res
            when nil then +''
            when String then res
            when Array then res.map(&:to_s).join
            else res.to_s
            end
      headers = []
      (res_headers || {}).each do |k, v|
        name = k.to_s
        next if %w[content-length transfer-encoding connection].include?(name.downcase)

        (v.is_a?(Array) ? v : [v]).each do |x|
          x = x.to_s
          raise ArgumentError, "invalid response header #{name.inspect}" if name.empty? || /[\r\n:]/.match?(name) || /[\r\n]/.match?(x)

          headers << [name, x]
        end
      end
      no_body = status < 200 || status == 204 || status == 304
      if no_body
        headers.reject! { |k, _| k.casecmp?('content-type') }
      elsif headers.none? { |k, _| k.casecmp?('content-type') }
        headers.unshift(['Content-Type', 'text/html;charset=utf-8'])
      end
      [status, headers, out]
    rescue StandardError, ScriptError, SystemStackError => e
      log_exception(e)
      [500, [['Content-Type', 'text/plain; charset=utf-8']], +"Internal Server Error\n"]
    end

    def read_chunked(sock, buf)
      body = String.new(encoding: BINARY)
      loop do
        until (i = buf.index("\r\n"))
          raise BadRequest.new(400, 'chunk size line too long') if buf.bytesize > MAX_CHUNK_LINE

          buf << recv(sock)
        end
        size_s = buf.byteslice(0, i).split(';', 2).first.to_s.strip
        raise BadRequest.new(400, 'invalid chunk size') unless HEX.match?(size_s)

        size = size_s.to_i(16)
        buf = buf.byteslice((i + 2)..)
        if size.zero?
          # Trailers (ignored), up to an empty line.
          seen = 0
          loop do
            until (i = buf.index("\r\n"))
              raise BadRequest.new(431, 'trailers too large') if buf.bytesize > MAX_HEAD

              buf << recv(sock)
            end
            seen += i + 2
            raise BadRequest.new(431, 'trailers too large') if seen > MAX_HEAD

            line = buf.byteslice(0, i)
            buf = buf.byteslice((i + 2)..)
            return [body, buf] if line.empty?
          end
        end
        buf << recv(sock) while buf.bytesize < size + 2
        raise BadRequest.new(400, 'malformed chunk') unless buf.byteslice(size, 2) == "\r\n"

        body << buf.byteslice(0, size)
        buf = buf.byteslice((size + 2)..)
      end
    end

    def main
      Signal.trap('TERM') { on_sigterm }
      port = Integer(ENV['PORT'].to_s.empty? ? 5000 : ENV['PORT'])
      srv = TCPServer.new('127.0.0.1', port)
      srv.listen(1024)
      puts "ruby listening on 127.0.0.1:#{port}"
      loop do
        sock = begin
          srv.accept
        rescue SystemCallError # e.g. out of file descriptors: back off a little
          sleep 0.01
          next
        end
        Thread.new(sock) { |s| conn(s) }
      end
    end
  end
end

FjordHttp.main
