# frozen_string_literal: true

# Chatwoot's rate limit, for the tests and the benchmark of issue 14: rack-attack 6.6.1 with a
# Redis store, throttling as Chatwoot's config/initializers/rack_attack.rb does
# (`throttle('req/ip', limit: RACK_ATTACK_LIMIT, period: 1.minute, &:ip)`), in front of an
# app that forwards every request to the fake Chatwoot server.
#
# Receives (environment):
#   UPSTREAM            the fake Chatwoot server, http://127.0.0.1:PORT
#   REDIS_URL           redis://127.0.0.1:PORT/0, the throttle's store (one per test)
#   RACK_ATTACK_LIMIT   requests per window and IP
#   RACK_ATTACK_PERIOD  the window in seconds (Chatwoot: 60; the tests use 2 to 5)
#   RETRY_AFTER=1       turns on rack-attack's Retry-After header (Chatwoot leaves it off)
#   CLOCK_OFFSET_SECS   shifts this process's clock, so the windows start where a server whose
#                       clock is that far ahead (or behind, if negative) would start them
#   SEND_DATE=1         adds a Date header from that clock to every answer, as nginx in front
#                       would (puma alone sends none)
#   REQUEST_LOG         a file that gets one line per request, throttled or not:
#                       "<epoch seconds by this clock> <status> <X-Client header or export>"
# Emits: the upstream's status and body with its Content-Type, or Chatwoot's throttled answer
# (429, text/plain, "Retry later\n", no Retry-After unless RETRY_AFTER=1).

require 'net/http'
require 'time'
require 'uri'
require 'redis'
require 'rack/attack'

offset = Float(ENV.fetch('CLOCK_OFFSET_SECS', '0'))
unless offset.zero?
  # rack-attack takes its window from Time.now (Cache#key_and_expiry), so shifting Time.now
  # moves the window boundaries exactly as a server clock that is off would.
  Time.singleton_class.prepend(Module.new do
    define_method(:now) { |*args, **kwargs| super(*args, **kwargs) + offset }
  end)
end

# RedisProxy is the store proxy rack-attack 6.6.1 picks for a plain Redis client
# (StoreProxy::RedisProxy.handle? checks `store.class == ::Redis`): INCRBY and EXPIRE in one
# pipeline, the key being "rack::attack:<epoch / period>:req/ip:<ip>".
Rack::Attack.cache.store = Redis.new(url: ENV.fetch('REDIS_URL'))

# Chatwoot safelists 127.0.0.1, ::1 and RACK_ATTACK_ALLOWED_IPS. The exporter under test runs
# on loopback, so that safelist is deliberately left out: with it nothing would be throttled.
Rack::Attack.throttle(
  'req/ip',
  limit: Integer(ENV.fetch('RACK_ATTACK_LIMIT')),
  period: Integer(ENV.fetch('RACK_ATTACK_PERIOD')),
  &:ip
)

# Chatwoot keeps rack-attack's default responder with this option off: 429, text/plain,
# "Retry later\n" and no Retry-After. With it on, Retry-After is the rest of the window.
Rack::Attack.throttled_response_retry_after_header = ENV['RETRY_AFTER'] == '1'

# Outside Rack::Attack, so throttled answers get a Date too, as they would from nginx.
class DateHeader
  def initialize(app)
    @app = app
  end

  def call(env)
    status, headers, body = @app.call(env)
    [status, headers.merge('date' => Time.now.httpdate), body]
  end
end

# Forwards method, path, query, the token header and the body to UPSTREAM; answers with the
# upstream's status, Content-Type and body only (its Date would tell the client the fake's
# clock, which is not the clock that rack-attack counts by).
class Proxy
  def initialize(upstream)
    @upstream = URI(upstream)
  end

  def call(env)
    request = Rack::Request.new(env)
    forwarded = Net::HTTPGenericRequest.new(
      request.request_method, request.body && true, true, request.fullpath
    )
    token = env['HTTP_API_ACCESS_TOKEN']
    forwarded['api_access_token'] = token if token
    forwarded['content-type'] = request.content_type if request.content_type
    body = request.body&.read
    forwarded.body = body if body && !body.empty?
    answer = Net::HTTP.start(@upstream.host, @upstream.port) { |http| http.request(forwarded) }
    headers = {}
    headers['content-type'] = answer['content-type'] if answer['content-type']
    [answer.code.to_i, headers, [answer.body.to_s]]
  end
end

# Outermost: every request with its final status, stamped when it arrived (about when
# rack-attack counted it), so the harness can tell what each client was served in each window.
class RequestLog
  def initialize(app, path)
    @app = app
    @log = File.open(path, 'a')
    @log.sync = true
    @lock = Mutex.new
  end

  def call(env)
    arrived = Time.now.to_f
    status, headers, body = @app.call(env)
    line = format("%.3f %d %s\n", arrived, status, env['HTTP_X_CLIENT'] || 'export')
    @lock.synchronize { @log.write(line) }
    [status, headers, body]
  end
end

use RequestLog, ENV['REQUEST_LOG'] if ENV['REQUEST_LOG']
use DateHeader if ENV['SEND_DATE'] == '1'
use Rack::Attack
run Proxy.new(ENV.fetch('UPSTREAM'))
