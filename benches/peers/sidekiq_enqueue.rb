# Enqueues ARGV[0] PeersJob jobs with one Sidekiq::Client.push_bulk (in
# Sidekiq 6.4, one LPUSH of every payload) and prints `enqueue_secs=S
# version=V`, the time of the push alone (the connection is opened before
# the clock starts).
require_relative "sidekiq_jobs"

n = Integer(ARGV.fetch(0))
Sidekiq.redis { |r| r.ping }
args = Array.new(n) { [] }
t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
Sidekiq::Client.push_bulk("class" => PeersJob, "args" => args)
secs = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t
puts "enqueue_secs=#{secs} version=#{Sidekiq::VERSION}"
