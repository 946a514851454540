//! Shared helpers for the benchmarks: the raw broker loops that the
//! per-broker benches (`benches/{redis,beanstalkd}.rs`) and the end-to-end
//! harness (`benches/e2e.rs`) use as their baselines, so each baseline is
//! written once.
//!
//! ```no_run
//! let mut raw = prefork_benches::raw_beanstalkd::Raw::new("127.0.0.1:11300", "bench");
//! raw.one_job(); // put + reserve-with-timeout 0 + delete
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Payload of every baseline job: small, so the figures are about the
/// mechanism.
pub const PAYLOAD: &[u8] = &[b'x'; 64];

/// Raw Redis Streams commands with the `redis` client, no prefork:
/// `XADD`, `XREADGROUP`, `XACK` on a stream and group of their own.
pub mod raw_redis {
    use redis::{Connection, Value};

    use super::PAYLOAD;

    /// A connection and a stream (`prefork-bench:raw-<tag>-<pid>`) with a
    /// consumer group `g`.
    pub struct Raw {
        conn: Connection,
        stream: String,
    }

    impl std::fmt::Debug for Raw {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Raw").field("stream", &self.stream).finish()
        }
    }

    impl Raw {
        /// Connects to `url` and creates the stream and group.
        ///
        /// # Panics
        ///
        /// When the server cannot be reached or refuses a command.
        pub fn new(url: &str, tag: &str) -> Raw {
            let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
            let stream = format!("prefork-bench:raw-{tag}-{}", std::process::id());
            let _: Value = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg("g")
                .arg("0")
                .arg("MKSTREAM")
                .query(&mut conn)
                .unwrap();
            Raw { conn, stream }
        }

        /// `n` `XADD`s, one `XREADGROUP COUNT n`, one `XACK` of the `n` ids:
        /// `n` jobs, `n + 2` commands, one at a time.
        ///
        /// # Panics
        ///
        /// When a command fails or returns fewer entries than published.
        pub fn publish_fetch_ack(&mut self, n: usize) {
            for _ in 0..n {
                let _: Value = redis::cmd("XADD")
                    .arg(&self.stream)
                    .arg("*")
                    .arg("p")
                    .arg(PAYLOAD)
                    .query(&mut self.conn)
                    .unwrap();
            }
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(n)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">")
                .query(&mut self.conn)
                .unwrap();
            let ids = entry_ids(reply);
            assert_eq!(ids.len(), n, "raw read");
            let acked: i64 = redis::cmd("XACK")
                .arg(&self.stream)
                .arg("g")
                .arg(&ids)
                .query(&mut self.conn)
                .unwrap();
            assert_eq!(acked as usize, n);
        }

        /// Deletes the stream.
        ///
        /// # Panics
        ///
        /// When the command fails.
        pub fn cleanup(&mut self) {
            let _: Value = redis::cmd("DEL")
                .arg(&self.stream)
                .query(&mut self.conn)
                .unwrap();
        }
    }

    fn entry_ids(reply: Value) -> Vec<Vec<u8>> {
        let mut ids = Vec::new();
        if let Value::Array(streams) = reply {
            for s in streams {
                if let Value::Array(mut pair) = s
                    && let Some(Value::Array(entries)) = pair.pop()
                {
                    for e in entries {
                        if let Value::Array(mut e) = e
                            && let Some(Value::BulkString(id)) = e.drain(..).next()
                        {
                            ids.push(id);
                        }
                    }
                }
            }
        }
        ids
    }
}

/// Bare beanstalk commands over a plain `TcpStream`, no prefork: `put`,
/// `reserve-with-timeout 0`, `delete`.
pub mod raw_beanstalkd {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;

    use super::{PAYLOAD, black_box};

    /// A connection using and watching one tube; a line reader, no checks
    /// beyond the reply word.
    #[derive(Debug)]
    pub struct Raw {
        out: TcpStream,
        input: BufReader<TcpStream>,
        line: String,
        body: Vec<u8>,
        cmd: Vec<u8>,
    }

    impl Raw {
        /// Connects to `address` (`host:port`) and uses/watches `tube`.
        ///
        /// # Panics
        ///
        /// When the server cannot be reached.
        pub fn new(address: &str, tube: &str) -> Raw {
            let out = TcpStream::connect(address).expect("connect");
            out.set_nodelay(true).unwrap();
            let input = BufReader::new(out.try_clone().unwrap());
            let mut raw = Raw {
                out,
                input,
                line: String::new(),
                body: Vec::new(),
                cmd: Vec::new(),
            };
            for c in [
                format!("use {tube}"),
                format!("watch {tube}"),
                "ignore default".into(),
            ] {
                raw.send(c.as_bytes());
                raw.reply();
            }
            raw
        }

        fn send(&mut self, line: &[u8]) {
            self.out.write_all(&[line, b"\r\n"].concat()).unwrap();
        }

        fn reply(&mut self) -> &str {
            self.line.clear();
            self.input.read_line(&mut self.line).unwrap();
            &self.line
        }

        /// `put`, `reserve-with-timeout 0`, `delete`: one job, three round
        /// trips.
        ///
        /// # Panics
        ///
        /// On an I/O error or an unexpected reply.
        pub fn one_job(&mut self) {
            self.cmd.clear();
            write!(self.cmd, "put 1024 0 60 {}\r\n", PAYLOAD.len()).unwrap();
            self.cmd.extend_from_slice(PAYLOAD);
            self.cmd.extend_from_slice(b"\r\n");
            self.out.write_all(&self.cmd).unwrap();
            assert!(self.reply().starts_with("INSERTED"));
            self.send(b"reserve-with-timeout 0");
            let line = self.reply().to_owned();
            let mut words = line.split_whitespace();
            assert_eq!(words.next(), Some("RESERVED"), "{line}");
            let id = words.next().unwrap().to_owned();
            let len: usize = words.next().unwrap().parse().unwrap();
            self.body.resize(len + 2, 0);
            self.input.read_exact(&mut self.body).unwrap();
            black_box(&self.body);
            self.send(format!("delete {id}").as_bytes());
            assert!(self.reply().starts_with("DELETED"));
        }
    }
}

/// Raw AMQP 0-9-1 with amiquip, no prefork, on a quorum queue of its own
/// over a stream with `TCP_NODELAY` (as the adapter opens it): persistent
/// publishes with publisher confirms, and the usual consumer loop (a
/// prefetch, one `basic.ack` per delivery).
pub mod raw_rabbitmq {
    use std::net::TcpStream;

    use amiquip::{
        AmqpProperties, AmqpValue, Auth, Channel, Confirm, Connection, ConnectionOptions,
        ConnectionTuning, FieldTable, Publish, QueueDeclareOptions,
    };
    use crossbeam_channel::Receiver;

    use super::{PAYLOAD, black_box};

    /// A connection, its channel (confirms on) and a quorum queue of its
    /// own, deleted on drop.
    pub struct Raw {
        channel: Channel,
        confirms: Receiver<Confirm>,
        queue: String,
        // Dropped last: the channel closes before the connection.
        _conn: Connection,
    }

    impl Raw {
        /// Connects to the server of `url` (`amqp://user:pass@host:port/vhost`)
        /// and declares the durable quorum queue `queue`.
        ///
        /// # Panics
        ///
        /// When the URL does not parse or the server cannot be reached.
        pub fn new(url: &str, queue: &str) -> Raw {
            let config = prefork_rabbitmq::Config::from_url(url).expect("an amqp:// URL");
            let password = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .and_then(|(userinfo, _)| userinfo.split_once(':'))
                .map_or("guest", |(_, p)| p);
            let tcp = TcpStream::connect((config.host(), config.port())).expect("connect");
            tcp.set_nodelay(true).unwrap();
            let stream = mio06::net::TcpStream::from_stream(tcp).unwrap();
            let options = ConnectionOptions::default()
                .auth(Auth::Plain {
                    username: config.user().to_owned(),
                    password: password.to_owned(),
                })
                .virtual_host(config.vhost());
            let mut conn =
                Connection::insecure_open_stream(stream, options, ConnectionTuning::default())
                    .expect("AMQP connection");
            let channel = conn.open_channel(None).unwrap();
            let confirms = channel.listen_for_publisher_confirms().unwrap();
            channel.enable_publisher_confirms().unwrap();
            let arguments: FieldTable = [(
                "x-queue-type".to_owned(),
                AmqpValue::LongString("quorum".into()),
            )]
            .into_iter()
            .collect();
            channel
                .queue_declare(
                    queue,
                    QueueDeclareOptions {
                        durable: true,
                        arguments,
                        ..QueueDeclareOptions::default()
                    },
                )
                .unwrap();
            Raw {
                channel,
                confirms,
                queue: queue.to_owned(),
                _conn: conn,
            }
        }

        /// Publishes `n` persistent jobs and waits for every confirm: the
        /// backlog [`Raw::drain`] then takes.
        ///
        /// # Panics
        ///
        /// On a connection error or a refused publish.
        pub fn fill(&mut self, n: usize) {
            for _ in 0..n {
                let props = AmqpProperties::default().with_delivery_mode(2);
                self.channel
                    .basic_publish("", Publish::with_properties(PAYLOAD, &self.queue, props))
                    .unwrap();
            }
            let mut smoother = amiquip::ConfirmSmoother::new();
            let mut confirmed = 0;
            while confirmed < n as u64 {
                for c in smoother.process(self.confirms.recv().unwrap()) {
                    let Confirm::Ack(p) = c else {
                        panic!("a publish was refused")
                    };
                    confirmed = confirmed.max(p.delivery_tag);
                }
            }
        }

        /// Takes `n` jobs with the usual AMQP consumer loop: `basic.consume`
        /// with a prefetch of `prefetch`, one `basic.ack` per delivery (not
        /// waited for), then cancels.
        ///
        /// # Panics
        ///
        /// On a connection error, or fewer than `n` jobs in the queue.
        pub fn drain(&mut self, n: usize, prefetch: u16) {
            self.channel.qos(0, prefetch, false).unwrap();
            let consumer = self
                .channel
                .basic_consume(&self.queue, amiquip::ConsumerOptions::default())
                .unwrap();
            for _ in 0..n {
                match consumer.receiver().recv().unwrap() {
                    amiquip::ConsumerMessage::Delivery(d) => {
                        black_box(&d.body);
                        consumer.ack(d).unwrap();
                    }
                    other => panic!("consumer ended: {other:?}"),
                }
            }
            consumer.cancel().unwrap();
        }
    }

    impl std::fmt::Debug for Raw {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Raw").field("queue", &self.queue).finish()
        }
    }

    impl Drop for Raw {
        fn drop(&mut self) {
            let _ = self.channel.queue_delete(&self.queue, Default::default());
        }
    }
}

/// Raw Kafka with rdkafka, no prefork: a backlog produced to a topic of
/// its own, then drained by a group consumer of its own that commits each
/// message's offset synchronously (the fetch/ack loop of a consumer that
/// a kill must not make skip or repeat a finished message, as the
/// adapter's pull-mode ack).
pub mod raw_kafka {
    use std::time::{Duration, Instant};

    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::{PAYLOAD, black_box};

    /// The bootstrap servers and the topic (also the group's name).
    #[derive(Debug)]
    pub struct Raw {
        servers: String,
        topic: String,
    }

    impl Raw {
        /// A loop on `topic` of the cluster at `servers` (`host:port,...`).
        pub fn new(servers: &str, topic: &str) -> Raw {
            Raw {
                servers: servers.to_owned(),
                topic: topic.to_owned(),
            }
        }

        /// Produces `n` jobs and waits until every one is acknowledged.
        ///
        /// # Panics
        ///
        /// When the broker cannot be reached.
        pub fn fill(&mut self, n: usize) {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &self.servers)
                .set("acks", "all")
                .create()
                .expect("a producer");
            for _ in 0..n {
                loop {
                    match p.send(BaseRecord::<(), [u8]>::to(&self.topic).payload(PAYLOAD)) {
                        Ok(()) => break,
                        Err(_) => {
                            p.poll(Duration::from_millis(10));
                        }
                    }
                }
            }
            p.flush(Duration::from_secs(30))
                .expect("every job produced");
        }

        /// Takes `n` jobs with a group consumer, a synchronous commit each; returns
        /// jobs/s from the first job to the last (the join excluded).
        ///
        /// # Panics
        ///
        /// When fewer than `n` jobs come within 60 s.
        pub fn drain(&mut self, n: usize) -> f64 {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &self.servers)
                .set("group.id", format!("raw-{}", self.topic))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .create()
                .expect("a consumer");
            c.subscribe(&[&self.topic]).expect("subscribe");
            let limit = Instant::now() + Duration::from_secs(60);
            let mut first = None;
            let mut got = 0;
            while got < n {
                assert!(Instant::now() < limit, "only {got} of {n} jobs in 60 s");
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    black_box(m.payload());
                    first.get_or_insert_with(Instant::now);
                    c.commit_message(&m, CommitMode::Sync).expect("commit");
                    got += 1;
                }
            }
            let t = first.expect("a first job");
            (n - 1) as f64 / t.elapsed().as_secs_f64()
        }
    }
}

/// Runs the arms `rounds` times, interleaved, and prints the median time
/// per job of each (an arm doing `jobs` jobs per call is divided by it) and
/// the ratio to the first arm.
pub fn interleaved(title: &str, arms: &mut [(&str, u32, &mut dyn FnMut())], rounds: usize) {
    let mut times = vec![Vec::with_capacity(rounds); arms.len()];
    for _ in 0..rounds {
        for ((_, jobs, arm), samples) in arms.iter_mut().zip(&mut times) {
            let start = Instant::now();
            arm();
            samples.push(start.elapsed() / *jobs);
        }
    }
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|s| {
            s.sort_unstable();
            s[s.len() / 2]
        })
        .collect();
    println!("\ninterleaved, {rounds} rounds, {title} (median):");
    for ((name, _, _), m) in arms.iter().zip(&medians) {
        println!(
            "  {name:<36} {:>8.1} us  ({:.2}x baseline)",
            m.as_secs_f64() * 1e6,
            m.as_secs_f64() / medians[0].as_secs_f64()
        );
    }
}
