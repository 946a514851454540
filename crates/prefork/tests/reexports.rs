//! Every item reached through every path the facade offers is the same
//! item as in its own crate (crossbeam's `subcrates` test, in spirit).

use std::time::Duration;

#[test]
fn the_top_level_names_are_the_masters() {
    let err = prefork::Master::builder()
        .timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    let same: &prefork_master::ConfigError = &err;
    assert_eq!(same.setting(), "timeout");
    let via_module: prefork::master::Builder = prefork::master::Master::builder();
    assert!(via_module.workers(2).build().is_ok());
    assert_eq!(prefork::MAX_WORKERS, prefork_master::MAX_WORKERS);
    let _: fn(prefork::Phase) -> prefork_master::Phase = |p| p;
    let _: fn(prefork::Shutdown) -> prefork::master::Shutdown = |s| s;
}

#[test]
fn a_closure_is_a_worker() {
    fn takes_worker(_: impl prefork::Worker) {}
    takes_worker(prefork::from_fn(|ctx| {
        let _ = ctx.worker_index();
        Ok(())
    }));
}

#[test]
fn the_parts_are_reachable() {
    let (mut a, mut b) = prefork::heartbeat::Channel::pair().unwrap();
    a.send(&prefork::heartbeat::Message::Ready { pid: 1 })
        .unwrap();
    assert_eq!(
        b.recv().unwrap(),
        Some(prefork_heartbeat::Message::Ready { pid: 1 })
    );
    assert_eq!(
        prefork::proc::ExitStatus::Exited(3),
        prefork_proc::ExitStatus::Exited(3)
    );
    assert!(prefork::selfpipe::FORBIDDEN.contains(&libc::SIGKILL));
}

#[test]
fn the_job_layer_and_the_broker_trait_are_reachable() {
    let mut jobs = prefork::Registry::new();
    jobs.register("x", |_: &mut prefork::JobContext<'_>, ()| {
        Ok::<(), prefork::JobError>(())
    });
    let same: &prefork_jobs::Registry = &jobs;
    let via_module: &prefork::jobs::Registry = same;
    let payload = prefork::jobs::Envelope::new("q", "x", serde_json::Value::Null).to_bytes();
    assert_eq!(
        via_module.run(&payload, 1, 0.0),
        prefork_jobs::Outcome::Done
    );
    let _: fn(prefork::RetryPolicy) -> prefork_jobs::RetryPolicy = |p| p;
    let _: fn(prefork::DispatchWorker) -> prefork::jobs::DispatchWorker = |w| w;
    let _: fn(prefork::Settle) -> prefork_master::Settle = |s| s;
    let _: fn(prefork::master::Job) -> prefork_master::Job = |j| j;
    let kind: prefork::broker::ErrorKind = prefork_broker::ErrorKind::LeaseLost;
    assert_eq!(kind, prefork::broker::ErrorKind::LeaseLost);
    fn takes_feeder<F: prefork::Feeder>(_: Option<F>) {}
    takes_feeder::<prefork::DispatchFeeder>(None);
    fn takes_connect(_: Option<&dyn prefork::broker::Connect>) {}
    takes_connect(None);
}

#[test]
fn the_adapters_are_reachable_by_module_and_by_url() {
    fn takes_connect(_: &dyn prefork::broker::Connect) {}
    #[cfg(feature = "spool")]
    {
        let s: prefork_spool::Spool = prefork::spool::Spool::from_url("spool:///tmp/q").unwrap();
        assert_eq!(s.root(), std::path::Path::new("/tmp/q"));
        let url: prefork::BrokerUrl = prefork::broker_url("spool:///tmp/q").unwrap();
        assert_eq!(url.spool().map(prefork::spool::Spool::root), Some(s.root()));
        takes_connect(&url);
    }
    #[cfg(feature = "redis")]
    {
        let r: prefork_redis::Redis = prefork::redis::Redis::new("redis://127.0.0.1/").unwrap();
        takes_connect(&r);
        assert_eq!(
            prefork::redis::redact_url("redis://:pw@h/0"),
            prefork_redis::redact_url("redis://:pw@h/0")
        );
        assert_eq!(
            prefork::broker_url("redis://127.0.0.1/")
                .unwrap()
                .broker_name(),
            "redis"
        );
    }
    #[cfg(feature = "beanstalkd")]
    {
        let c: prefork_beanstalkd::Config =
            prefork::beanstalkd::Config::from_url("beanstalk://127.0.0.1").unwrap();
        takes_connect(&c);
        let url = prefork::broker_url("beanstalk://127.0.0.1").unwrap();
        assert_eq!(url.to_string(), format!("beanstalk://{}", c.address()));
    }
}
