//! One job through prefork-spool (publish + fetch + ack) against the bare
//! file operations any directory spool needs for it (create and write a
//! temp file, rename it into `ready/`, rename it into `claimed/`, read it,
//! unlink it), in the same run, with and without fsync. Quote the ratios.
//!
//! Also measured: batches of 16 (publish 16, one `fetch(16)`, 16 acks),
//! which pay for one directory listing per batch instead of one per job.
//!
//! The machine is shared and noisy, so after criterion's groups the bench
//! also runs the arms interleaved (one of each per round, so a change of
//! load hits all alike) and prints the medians and ratios.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::Criterion;
use prefork_benches::interleaved;
use prefork_broker::Broker;
use prefork_spool::{Durability, Options, Queue, Spool};

/// Payload of every job: small, so the figures are about the mechanism.
const PAYLOAD: &[u8] = &[b'x'; 64];
/// The spool's file header, written by the baseline too.
const HEADER: usize = 24;

/// The bare-syscall baseline: the same directory layout, no naming scheme,
/// no listing, no checks.
struct Raw {
    tmp: PathBuf,
    ready: PathBuf,
    claimed: PathBuf,
    ready_dir: Option<File>,
    n: u64,
    buf: Vec<u8>,
}

impl Raw {
    fn new(root: &Path, fsync: bool) -> Raw {
        let dirs = ["tmp", "ready", "claimed"].map(|d| root.join(d));
        for d in &dirs {
            fs::create_dir_all(d).unwrap();
        }
        let [tmp, ready, claimed] = dirs;
        Raw {
            ready_dir: fsync.then(|| File::open(&ready).unwrap()),
            tmp,
            ready,
            claimed,
            n: 0,
            buf: Vec::with_capacity(HEADER + PAYLOAD.len()),
        }
    }

    fn one_job(&mut self) {
        self.n += 1;
        let name = format!("{:016x}", self.n);
        let (tmp, ready, claimed) = (
            self.tmp.join(&name),
            self.ready.join(&name),
            self.claimed.join(&name),
        );
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .unwrap();
        f.write_all(&[0; HEADER]).unwrap();
        f.write_all(PAYLOAD).unwrap();
        if let Some(dir) = &self.ready_dir {
            f.sync_data().unwrap();
            drop(f);
            fs::rename(&tmp, &ready).unwrap();
            dir.sync_all().unwrap();
        } else {
            drop(f);
            fs::rename(&tmp, &ready).unwrap();
        }
        fs::rename(&ready, &claimed).unwrap();
        self.buf.clear();
        File::open(&claimed)
            .unwrap()
            .read_to_end(&mut self.buf)
            .unwrap();
        black_box(&self.buf);
        fs::remove_file(&claimed).unwrap();
    }
}

fn queue(root: &Path, durability: Durability) -> Queue {
    Spool::with_options(root, Options::default().durability(durability))
        .unwrap()
        .queue("bench")
        .unwrap()
}

fn spool_one_job(q: &mut Queue) {
    q.publish(PAYLOAD, Duration::ZERO).unwrap();
    let d = q.fetch_one(Duration::ZERO).unwrap().expect("the job");
    black_box(d.payload());
    q.ack(d).unwrap();
}

fn spool_batch16(q: &mut Queue) {
    for _ in 0..16 {
        q.publish(PAYLOAD, Duration::ZERO).unwrap();
    }
    let got = q.fetch(16, Duration::ZERO).unwrap();
    assert_eq!(got.len(), 16);
    for d in got {
        q.ack(d).unwrap();
    }
}

fn raw_batch16(raw: &mut Raw) {
    for _ in 0..16 {
        raw.one_job();
    }
}

fn main() {
    let root = std::env::temp_dir().join(format!("prefork-bench-spool-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let mut raw_buf = Raw::new(&root.join("raw-buffered"), false);
    let mut raw_sync = Raw::new(&root.join("raw-fsync"), true);
    let mut q_buf = queue(&root.join("spool-buffered"), Durability::Buffered);
    let mut q_sync = queue(&root.join("spool-fsync"), Durability::Fsync);
    let mut q_batch = queue(&root.join("spool-batch"), Durability::Buffered);

    let mut g = c.benchmark_group("spool_job_buffered");
    g.bench_function("baseline_raw_create_rename_rename_read_unlink", |b| {
        b.iter(|| raw_buf.one_job())
    });
    g.bench_function("spool_publish_fetch_ack", |b| {
        b.iter(|| spool_one_job(&mut q_buf))
    });
    g.finish();

    let mut g = c.benchmark_group("spool_job_batch16_buffered");
    g.bench_function("baseline_raw_x16", |b| b.iter(|| raw_batch16(&mut raw_buf)));
    g.bench_function("spool_publish16_fetch16_ack16", |b| {
        b.iter(|| spool_batch16(&mut q_batch))
    });
    g.finish();

    let mut g = c.benchmark_group("spool_job_fsync");
    g.bench_function("baseline_raw_with_fsync", |b| b.iter(|| raw_sync.one_job()));
    g.bench_function("spool_publish_fetch_ack_fsync", |b| {
        b.iter(|| spool_one_job(&mut q_sync))
    });
    g.finish();
    c.final_summary();

    interleaved(
        "buffered, per job",
        &mut [
            ("baseline raw file ops", 1, &mut || raw_buf.one_job()),
            ("spool publish+fetch+ack", 1, &mut || {
                spool_one_job(&mut q_buf)
            }),
            ("spool batch of 16", 16, &mut || spool_batch16(&mut q_batch)),
        ],
        2000,
    );
    interleaved(
        "fsync, per job",
        &mut [
            ("baseline raw file ops + fsync", 1, &mut || {
                raw_sync.one_job()
            }),
            ("spool publish+fetch+ack (Fsync)", 1, &mut || {
                spool_one_job(&mut q_sync)
            }),
        ],
        300,
    );
    let _ = fs::remove_dir_all(&root);
}
