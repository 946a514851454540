# The Sidekiq peer of `cargo xtask bench peers` (benches/benches/peers.rs).
#
# Loaded by the workers (`sidekiq -r ./sidekiq_jobs.rb -c 2`) and by
# sidekiq_enqueue.rb. The job is a no-op that does one redis INCR on
# PEERS_KEY with a connection from Sidekiq's own pool; the run that takes
# the counter to 1 stores the wall-clock time in microseconds at
# PEERS_KEY:t_first, the one that takes it to PEERS_N at PEERS_KEY:t_last.
# REDIS_URL names the server and db (Sidekiq reads it itself).
require "sidekiq"

Sidekiq.logger.level = Logger::WARN

PEERS_KEY = ENV.fetch("PEERS_KEY", "peers:count")
PEERS_N = Integer(ENV.fetch("PEERS_N", "0"))

# Wall-clock microseconds since the epoch.
def peers_now_us
  Process.clock_gettime(Process::CLOCK_REALTIME, :microsecond)
end

# The benchmark's job: one INCR, and a time stamp at the first and last.
class PeersJob
  include Sidekiq::Worker

  def perform
    Sidekiq.redis do |r|
      v = r.incr(PEERS_KEY)
      r.set("#{PEERS_KEY}:t_first", peers_now_us) if v == 1
      r.set("#{PEERS_KEY}:t_last", peers_now_us) if v == PEERS_N
    end
  end
end
