//! The supervisor driven by a simulated clock and simulated processes.

use super::*;
use prefork_heartbeat::Stats;
use proptest::prelude::*;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn settings(workers: usize) -> Settings {
    Settings {
        workers,
        timeout: 10 * SEC,
        heartbeat_interval: 2 * SEC,
        graceful_timeout: 5 * SEC,
        kill_grace: SEC,
        backoff_initial: 100 * MS,
        backoff_max: 2 * SEC,
        healthy_after: 3 * SEC,
        crash_limit: 3,
        ..Settings::default()
    }
}

fn is_stop(a: &Action) -> bool {
    matches!(a, Action::Send(_, Message::Control(Control::Stop)))
}

/// A `Stats` message with this PSS and iteration count.
fn stats(pss_bytes: u64, iterations: u64) -> Message {
    Message::Stats(Stats {
        pss_bytes,
        iterations,
        ..Stats::default()
    })
}

/// A supervisor and the processes it believes it has, run by hand.
struct Sim {
    sup: Supervisor,
    now: Instant,
    next_pid: i32,
    /// Every action seen, in order.
    log: Vec<Action>,
    /// Signals "delivered": (pid, signal).
    kills: Vec<(i32, c_int)>,
    /// Pending spawn failures to inject.
    fail_spawns: usize,
}

impl Sim {
    fn new(s: Settings) -> Sim {
        let mut sim = Sim {
            sup: Supervisor::new(s, XorShift::new(42)),
            now: Instant::now(),
            next_pid: 1000,
            log: Vec::new(),
            kills: Vec::new(),
            fail_spawns: 0,
        };
        sim.sup.start(sim.now);
        sim.pump();
        sim
    }

    /// Carries out the actions the way the loop does (spawns complete at once).
    fn pump(&mut self) {
        loop {
            let actions = self.sup.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match &a {
                    Action::Spawn { serial, .. } => {
                        if self.fail_spawns > 0 {
                            self.fail_spawns -= 1;
                            self.sup.handle(
                                self.now,
                                Event::Spawned {
                                    serial: *serial,
                                    pid: None,
                                },
                            );
                        } else {
                            self.next_pid += 1;
                            self.sup.handle(
                                self.now,
                                Event::Spawned {
                                    serial: *serial,
                                    pid: Some(self.next_pid),
                                },
                            );
                        }
                    }
                    Action::Kill { pid, signal, .. } => self.kills.push((*pid, *signal)),
                    _ => {}
                }
                self.log.push(a);
            }
        }
    }

    /// `serial` sent `msg` (the actions are left for `pump`).
    fn tell(&mut self, serial: Serial, msg: Message) {
        self.sup.handle(self.now, Event::Message { serial, msg });
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.sup.handle(self.now, Event::Tick);
        self.pump();
    }

    /// Advances to the next deadline (if any, and at most `max` ahead).
    fn step_to_deadline(&mut self, max: Duration) -> bool {
        match self.sup.next_deadline() {
            Some(t) if t <= self.now + max => {
                self.now = self.now.max(t);
                self.sup.handle(self.now, Event::Tick);
                self.pump();
                true
            }
            _ => false,
        }
    }

    fn serials(&self) -> Vec<Serial> {
        self.sup.procs.keys().copied().collect()
    }

    fn live(&self) -> Vec<(Serial, usize)> {
        self.sup
            .procs
            .iter()
            .filter(|(_, p)| p.state == State::Live)
            .map(|(&s, p)| (s, p.role.worker_index().unwrap_or(MAX_WORKERS)))
            .collect()
    }

    fn live_ready(&self) -> usize {
        self.sup
            .procs
            .values()
            .filter(|p| p.state == State::Live && p.ready)
            .count()
    }

    fn pid(&self, serial: Serial) -> i32 {
        self.sup.procs[&serial].pid.unwrap()
    }

    fn ready_all(&mut self) {
        for s in self.serials() {
            if !self.sup.procs[&s].ready {
                self.tell(s, Message::Ready { pid: 0 });
                self.pump();
            }
        }
    }

    fn beat_all(&mut self) {
        for s in self.serials() {
            self.tell(s, Message::Heartbeat(Progress::Idle));
        }
        self.pump();
    }

    fn exit(&mut self, serial: Serial, status: ExitStatus) -> WorkerExit {
        let pid = self.pid(serial);
        self.sup.handle(self.now, Event::Reaped { pid, status });
        self.pump();
        self.log
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Exited(e) if e.pid == pid => Some(e.clone()),
                _ => None,
            })
            .expect("an Exited action")
    }

    /// Every process that got a Stop or a signal exits (as real ones would).
    fn obey(&mut self) {
        let mut to_exit = Vec::new();
        for (&serial, p) in &self.sup.procs {
            let stopped = self.log.contains(&stop(serial));
            let signalled = p
                .pid
                .is_some_and(|pid| self.kills.iter().any(|(k, _)| *k == pid));
            if stopped || signalled {
                to_exit.push(serial);
            }
        }
        for s in to_exit {
            self.exit(s, ExitStatus::Exited(0));
        }
    }

    fn spawns(&self) -> usize {
        self.log
            .iter()
            .filter(|a| matches!(a, Action::Spawn { .. }))
            .count()
    }

    fn phases(&self) -> Vec<Phase> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Phase(p) => Some(*p),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn starts_the_workers_and_runs_once_all_are_ready() {
    let mut sim = Sim::new(settings(3));
    assert_eq!(sim.spawns(), 3);
    let indexes: Vec<usize> = sim.live().iter().map(|(_, i)| *i).collect();
    assert_eq!(indexes, vec![0, 1, 2]);
    assert_eq!(sim.sup.phase(), Phase::Starting);
    sim.ready_all();
    assert_eq!(sim.sup.phase(), Phase::Running);
    assert_eq!(sim.phases(), vec![Phase::Starting, Phase::Running]);
}

#[test]
fn a_silent_worker_is_killed_exactly_at_its_timeout_and_replaced() {
    let mut sim = Sim::new(settings(2));
    sim.ready_all();
    let [a, b] = sim.serials()[..] else { panic!() };
    sim.advance(4 * SEC);
    sim.tell(b, Message::Heartbeat(Progress::Idle)); // b is alive, a is not
    sim.advance(6 * SEC - MS);
    assert!(sim.kills.is_empty(), "killed before its timeout");
    assert_eq!(sim.sup.next_deadline(), Some(sim.now + MS));
    sim.advance(MS);
    assert_eq!(sim.kills, vec![(sim.pid(a), libc::SIGKILL)]);
    let exit = sim.exit(
        a,
        ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        },
    );
    assert_eq!(exit.cause, Cause::Hung);
    assert_eq!(exit.role, Role::Worker(0));
    // It lived 10 s (healthy_after is 3 s): replaced at once.
    assert_eq!(sim.live().len(), 2);
    assert_eq!(sim.spawns(), 3);
}

#[test]
fn a_worker_stuck_while_starting_is_killed_too() {
    let mut sim = Sim::new(settings(1));
    sim.advance(10 * SEC);
    assert_eq!(sim.kills.len(), 1);
}

#[test]
fn quit_stops_gracefully_then_kills_the_slow() {
    let mut sim = Sim::new(settings(2));
    sim.ready_all();
    let [a, b] = sim.serials()[..] else { panic!() };
    sim.sup.handle(sim.now, Event::Signal(libc::SIGQUIT));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Stopping(Shutdown::Graceful));
    assert!(sim.log.contains(&stop(a)) && sim.log.contains(&stop(b)));
    assert!(sim.kills.is_empty(), "graceful means no signal");
    // a finishes its iteration; b does not (but keeps beating).
    sim.exit(a, ExitStatus::Exited(0));
    sim.advance(4 * SEC);
    sim.tell(b, Message::Heartbeat(Progress::Idle));
    sim.advance(SEC);
    assert_eq!(sim.kills, vec![(sim.pid(b), libc::SIGKILL)]);
    let exit = sim.exit(
        b,
        ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        },
    );
    assert_eq!(exit.cause, Cause::TooSlowToStop);
    assert_eq!(sim.sup.phase(), Phase::Stopped);
    let report = sim.sup.report().unwrap();
    assert_eq!(report.shutdown, Shutdown::Graceful);
    assert_eq!(report.signal, Some(libc::SIGQUIT));
    assert!(report.success());
    assert_eq!(sim.spawns(), 2, "nothing is respawned while stopping");
}

#[test]
fn term_is_quick_and_escalates_to_kill() {
    let mut sim = Sim::new(settings(2));
    sim.ready_all();
    let pids: Vec<i32> = sim.serials().iter().map(|s| sim.pid(*s)).collect();
    sim.sup.handle(sim.now, Event::Signal(libc::SIGTERM));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Stopping(Shutdown::Quick));
    assert_eq!(
        sim.kills,
        pids.iter().map(|p| (*p, libc::SIGTERM)).collect::<Vec<_>>()
    );
    assert!(!sim.log.iter().any(is_stop));
    sim.advance(SEC);
    let kills: Vec<_> = sim.kills[2..].to_vec();
    assert_eq!(
        kills,
        pids.iter().map(|p| (*p, libc::SIGKILL)).collect::<Vec<_>>()
    );
}

#[test]
fn term_can_be_made_graceful_and_int_stays_quick() {
    let s = Settings {
        term_is_graceful: true,
        ..settings(1)
    };
    let mut sim = Sim::new(s.clone());
    sim.sup.handle(sim.now, Event::Signal(libc::SIGTERM));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Stopping(Shutdown::Graceful));
    let mut sim = Sim::new(s);
    sim.sup.handle(sim.now, Event::Signal(libc::SIGINT));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Stopping(Shutdown::Quick));
}

#[test]
fn a_quick_stop_overrides_a_graceful_one() {
    let mut sim = Sim::new(settings(1));
    sim.ready_all();
    sim.sup.handle(sim.now, Event::Signal(libc::SIGQUIT));
    sim.sup.handle(sim.now, Event::Signal(libc::SIGINT));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Stopping(Shutdown::Quick));
    assert_eq!(sim.kills.len(), 1);
    assert_eq!(sim.kills[0].1, libc::SIGTERM);
    // And a graceful request after a quick one changes nothing.
    sim.sup.handle(sim.now, Event::Signal(libc::SIGQUIT));
    assert_eq!(sim.sup.phase(), Phase::Stopping(Shutdown::Quick));
}

#[test]
fn ttin_ttou_and_winch_change_the_worker_count() {
    let mut sim = Sim::new(settings(2));
    sim.ready_all();
    sim.sup.handle(sim.now, Event::Signal(libc::SIGTTIN));
    sim.pump();
    assert_eq!(
        sim.live().iter().map(|l| l.1).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    sim.ready_all();
    sim.sup.handle(sim.now, Event::Signal(libc::SIGTTOU));
    sim.sup.handle(sim.now, Event::Signal(libc::SIGTTOU));
    sim.pump();
    assert_eq!(sim.live().iter().map(|l| l.1).collect::<Vec<_>>(), vec![0]);
    assert_eq!(sim.sup.target(), 1);
    sim.obey();
    assert_eq!(sim.sup.process_count(), 1);
    sim.sup.handle(sim.now, Event::Signal(libc::SIGWINCH));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Paused);
    sim.obey();
    assert_eq!(sim.sup.process_count(), 0);
    sim.advance(60 * SEC);
    assert_eq!(sim.sup.process_count(), 0, "paused means no worker");
    // HUP after WINCH brings the configured count back.
    sim.sup.handle(sim.now, Event::Signal(libc::SIGHUP));
    sim.pump();
    assert_eq!(sim.live().len(), 2);
    sim.ready_all();
    assert_eq!(sim.sup.phase(), Phase::Running);
}

#[test]
fn hup_replaces_every_worker_one_at_a_time_never_below_the_target() {
    let n = 4;
    let mut sim = Sim::new(settings(n));
    sim.ready_all();
    let old: Vec<Serial> = sim.serials();
    sim.sup.handle(sim.now, Event::Signal(libc::SIGHUP));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Reloading);
    for _ in 0..n {
        // One replacement forked, nobody asked to stop yet.
        let starting: Vec<Serial> = sim
            .serials()
            .into_iter()
            .filter(|s| !sim.sup.procs[s].ready)
            .collect();
        assert_eq!(starting.len(), 1, "one recycling at a time");
        assert_eq!(sim.live_ready(), n);
        sim.tell(starting[0], Message::Ready { pid: 0 });
        sim.pump();
        assert!(sim.live_ready() >= n);
        sim.obey(); // the old one stops
        assert!(sim.live_ready() >= n);
    }
    assert_eq!(sim.sup.phase(), Phase::Running);
    assert!(sim.serials().iter().all(|s| !old.contains(s)));
    assert_eq!(
        sim.phases(),
        vec![
            Phase::Starting,
            Phase::Running,
            Phase::Reloading,
            Phase::Running
        ]
    );
}

#[test]
fn early_deaths_back_off_exponentially_and_the_master_gives_up() {
    let mut sim = Sim::new(settings(2));
    let mut delays = Vec::new();
    for round in 0..3 {
        // Both workers die at once, right after start.
        for s in sim.serials() {
            sim.exit(s, ExitStatus::Exited(1));
        }
        if round < 2 {
            assert!(sim.live().is_empty(), "respawned without backoff");
            let before = sim.now;
            // Step through the deadlines until both slots are refilled.
            while sim.live().len() < 2 {
                assert!(sim.step_to_deadline(10 * SEC));
            }
            delays.push(sim.now - before);
        }
    }
    assert!(delays[0] >= 50 * MS && delays[0] <= 100 * MS, "{delays:?}");
    assert!(delays[1] >= 100 * MS && delays[1] <= 200 * MS, "{delays:?}");
    assert_eq!(sim.sup.phase(), Phase::Stopped);
    let report = sim.sup.report().unwrap();
    assert_eq!(report.shutdown, Shutdown::CrashLoop);
    assert!(!report.success());
    assert_eq!(report.failures, 6);
}

#[test]
fn one_healthy_slot_keeps_the_master_going() {
    let mut sim = Sim::new(settings(2));
    sim.ready_all();
    sim.advance(5 * SEC);
    sim.beat_all();
    for _ in 0..10 {
        let bad = sim.live().into_iter().find(|(_, i)| *i == 1).map(|l| l.0);
        if let Some(bad) = bad {
            sim.exit(
                bad,
                ExitStatus::Signaled {
                    signal: libc::SIGSEGV,
                    core_dumped: false,
                },
            );
        }
        sim.advance(SEC);
        sim.beat_all();
    }
    assert_eq!(sim.sup.phase(), Phase::Running);
}

#[test]
fn a_worker_alive_past_healthy_after_resets_its_backoff() {
    let mut sim = Sim::new(settings(1));
    for _ in 0..2 {
        let s = sim.serials()[0];
        sim.exit(s, ExitStatus::Exited(1));
        while sim.live().is_empty() {
            assert!(sim.step_to_deadline(10 * SEC));
        }
    }
    assert_eq!(sim.sup.slots[0].failures, 2);
    sim.ready_all();
    sim.advance(3 * SEC);
    assert_eq!(sim.sup.slots[0].failures, 0);
    // The next early death starts again at the first delay.
    let s = sim.serials()[0];
    sim.sup.handle(sim.now, Event::Tick);
    sim.exit(s, ExitStatus::Exited(1));
    assert_eq!(sim.sup.slots[0].failures, 0, "not early: it lived 3 s");
    assert_eq!(sim.live().len(), 1, "replaced at once");
}

#[test]
fn failed_forks_back_off_like_early_deaths() {
    let s = settings(1);
    let mut sim = Sim {
        fail_spawns: 1,
        ..Sim::new(Settings { workers: 1, ..s })
    };
    // The first spawn already succeeded in new(); make the next one fail.
    let first = sim.serials()[0];
    sim.exit(first, ExitStatus::Exited(1));
    assert!(sim.live().is_empty());
    while sim.live().is_empty() {
        assert!(sim.step_to_deadline(10 * SEC));
    }
    assert_eq!(sim.sup.slots[0].failures, 2);
}

#[test]
fn recycling_by_iterations_memory_and_age_waits_for_the_replacement() {
    let s = Settings {
        max_iterations: Some(100),
        max_memory: Some(64 << 20),
        max_age: Some(60 * SEC),
        recycle_jitter: 0.0,
        ..settings(3)
    };
    let mut sim = Sim::new(s);
    let limits: Vec<Option<u64>> = sim
        .log
        .iter()
        .filter_map(|a| match a {
            Action::Spawn {
                iteration_limit, ..
            } => Some(*iteration_limit),
            _ => None,
        })
        .collect();
    assert_eq!(limits, vec![Some(100); 3]);
    sim.ready_all();
    let [a, b, c] = sim.serials()[..] else {
        panic!()
    };
    sim.tell(a, stats(1 << 20, 99));
    sim.pump();
    assert_eq!(sim.spawns(), 3, "below the limit: {:?}", sim.log);
    sim.tell(a, stats(1 << 20, 100));
    sim.tell(b, stats(65 << 20, 5));
    sim.pump();
    assert_eq!(sim.spawns(), 4, "one replacement at a time");
    assert!(
        !sim.log.iter().any(is_stop),
        "old stays until the new is ready"
    );
    let new = *sim.serials().last().unwrap();
    sim.tell(new, Message::Ready { pid: 0 });
    sim.pump();
    assert_eq!(sim.log.iter().filter(|x| is_stop(x)).count(), 1);
    assert!(sim.log.contains(&stop(a)));
    sim.obey();
    assert_eq!(sim.spawns(), 5, "then the next one");
    sim.ready_all();
    sim.obey();
    assert!(!sim.serials().contains(&b));
    // Age: c goes after 60 s.
    for _ in 0..59 {
        sim.advance(SEC);
        sim.beat_all();
    }
    assert!(sim.serials().contains(&c));
    sim.advance(SEC);
    sim.ready_all();
    sim.obey();
    assert!(!sim.serials().contains(&c));
    // The two replacements forked at the start are as old as c was: the
    // next one is already being replaced, one at a time.
    assert_eq!(sim.live().len(), 4);
    assert_eq!(sim.live_ready(), 3);
    assert!(sim.kills.is_empty());
}

#[test]
fn a_replacement_that_dies_leaves_the_old_worker_running() {
    let s = Settings {
        max_iterations: Some(10),
        recycle_jitter: 0.0,
        ..settings(1)
    };
    let mut sim = Sim::new(s);
    sim.ready_all();
    let old = sim.serials()[0];
    sim.tell(old, stats(0, 10));
    sim.pump();
    let new = sim.serials()[1];
    sim.exit(new, ExitStatus::Exited(1));
    assert_eq!(sim.live(), vec![(old, 0)]);
    assert!(!sim.log.contains(&stop(old)));
    // After the backoff, another replacement is tried.
    while sim.serials().len() < 2 {
        assert!(sim.step_to_deadline(10 * SEC));
        sim.beat_all();
    }
}

#[test]
fn garbage_and_closed_channels_get_the_worker_killed() {
    let mut sim = Sim::new(settings(2));
    sim.ready_all();
    let [a, b] = sim.serials()[..] else { panic!() };
    sim.sup.handle(
        sim.now,
        Event::ChannelFailed {
            serial: a,
            protocol: true,
        },
    );
    sim.sup.handle(
        sim.now,
        Event::ChannelFailed {
            serial: b,
            protocol: false,
        },
    );
    sim.pump();
    assert_eq!(sim.kills.len(), 2);
    assert_eq!(
        sim.exit(
            a,
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        )
        .cause,
        Cause::Protocol
    );
    assert_eq!(sim.exit(b, ExitStatus::Exited(0)).cause, Cause::Unexpected);
    assert_eq!(sim.live().len(), 0, "early deaths wait for their backoff");
    while sim.live().len() < 2 {
        assert!(sim.step_to_deadline(SEC));
    }
}

#[test]
fn usr1_reaches_the_master_and_every_worker() {
    let mut sim = Sim::new(settings(2));
    sim.sup.handle(sim.now, Event::Signal(libc::SIGUSR1));
    sim.pump();
    let n = sim
        .log
        .iter()
        .filter(|a| matches!(a, Action::Send(_, Message::Control(Control::ReopenLogs))))
        .count();
    assert_eq!(n, 2);
    assert!(sim.log.contains(&Action::ReopenMasterLogs));
}

#[test]
fn unknown_pids_are_not_ours() {
    let mut sim = Sim::new(settings(1));
    let before = sim.sup.process_count();
    sim.sup.handle(
        sim.now,
        Event::Reaped {
            pid: 1,
            status: ExitStatus::Exited(0),
        },
    );
    sim.pump();
    assert_eq!(sim.sup.process_count(), before);
    assert!(!sim.log.iter().any(|a| matches!(a, Action::Exited(_))));
}

#[derive(Debug, Clone)]
enum Step {
    Signal(c_int),
    ReadyOne(usize),
    BeatAll,
    Die(usize),
    ObeyAll,
    Stats(usize, u64),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        prop::sample::select(vec![
            libc::SIGHUP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGWINCH,
            libc::SIGUSR1,
        ])
        .prop_map(Step::Signal),
        (0usize..8).prop_map(Step::ReadyOne),
        Just(Step::BeatAll),
        (0usize..8).prop_map(Step::Die),
        Just(Step::ObeyAll),
        (0usize..8, 0u64..200).prop_map(|(i, n)| Step::Stats(i, n)),
        (0u64..15_000).prop_map(Step::Advance),
    ]
}

proptest! {
    #[test]
    fn invariants_hold_under_any_sequence(events in prop::collection::vec(step(), 1..80), graceful: bool) {
        let s = Settings { max_iterations: Some(50), ..settings(3) };
        let mut sim = Sim::new(s);
        for ev in events {
            match ev {
                Step::Signal(sig) => { sim.sup.handle(sim.now, Event::Signal(sig)); sim.pump(); }
                Step::ReadyOne(i) => {
                    let ss = sim.serials();
                    if !ss.is_empty() { sim.tell(ss[i % ss.len()], Message::Ready { pid: 0 }); sim.pump(); }
                }
                Step::BeatAll => sim.beat_all(),
                Step::Die(i) => {
                    let ss = sim.serials();
                    if !ss.is_empty() { sim.exit(ss[i % ss.len()], ExitStatus::Exited(1)); }
                }
                Step::ObeyAll => sim.obey(),
                Step::Stats(i, n) => {
                    let ss = sim.serials();
                    if !ss.is_empty() { sim.tell(ss[i % ss.len()], stats(0, n)); sim.pump(); }
                }
                Step::Advance(ms) => sim.advance(Duration::from_millis(ms)),
            }
            // At most one live worker per slot, two while that slot recycles.
            for i in 0..=MAX_WORKERS.min(8) {
                let n = sim.live().iter().filter(|l| l.1 == i).count();
                let recycling_here = sim.sup.recycling.is_some_and(|(o, _)| sim.sup.procs.get(&o).is_some_and(|p| p.role == Role::Worker(i)));
                prop_assert!(n <= if recycling_here { 2 } else { 1 }, "slot {} has {} live workers", i, n);
            }
            // A deadline, when there is one, is never in the past after a tick.
            if let Some(t) = sim.sup.next_deadline() {
                sim.sup.handle(sim.now, Event::Tick);
                sim.pump();
                prop_assert!(sim.sup.next_deadline().is_none_or(|t2| t2 > sim.now || t2 >= t));
            }
            if sim.sup.phase() == Phase::Stopped { break; }
        }
        // Whatever happened, a shutdown ends with every process gone.
        sim.sup.handle(sim.now, Event::Signal(if graceful { libc::SIGQUIT } else { libc::SIGTERM }));
        sim.pump();
        for _ in 0..10 {
            sim.obey();
            if !sim.step_to_deadline(60 * SEC) { break; }
        }
        sim.obey();
        prop_assert_eq!(sim.sup.phase(), Phase::Stopped);
        prop_assert!(sim.sup.report().is_some());
    }
}

fn feeder_of(sim: &Sim) -> Option<Serial> {
    sim.sup
        .procs
        .iter()
        .find(|(_, p)| p.role == Role::Feeder)
        .map(|(&s, _)| s)
}

#[test]
fn dispatch_mode_forks_a_feeder_and_restarts_it_with_backoff() {
    let mut sim = Sim::new(Settings {
        feeder: true,
        ..settings(2)
    });
    let feeder = feeder_of(&sim).expect("a feeder forked at start");
    assert_eq!(sim.live().len(), 3);
    sim.ready_all();
    assert_eq!(sim.sup.phase(), Phase::Running);
    sim.exit(
        feeder,
        ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        },
    );
    // Died at once after start: restarted after the backoff, not before.
    assert!(feeder_of(&sim).is_none());
    sim.advance(2 * SEC);
    let again = feeder_of(&sim).expect("a new feeder");
    assert_ne!(again, feeder);
    // HUP replaces the workers, not the feeder.
    sim.ready_all();
    sim.sup.handle(sim.now, Event::Signal(libc::SIGHUP));
    sim.pump();
    assert!(sim.sup.procs[&again].recycle.is_none());
}

#[test]
fn graceful_shutdown_stops_the_feeder_after_the_last_worker() {
    let mut sim = Sim::new(Settings {
        feeder: true,
        ..settings(2)
    });
    sim.ready_all();
    let feeder = feeder_of(&sim).unwrap();
    sim.sup.handle(sim.now, Event::Signal(libc::SIGQUIT));
    sim.pump();
    assert!(!sim.log.contains(&stop(feeder)));
    let workers: Vec<Serial> = sim.serials().into_iter().filter(|s| *s != feeder).collect();
    sim.exit(workers[0], ExitStatus::Exited(0));
    sim.pump();
    assert!(!sim.log.contains(&stop(feeder)));
    sim.exit(workers[1], ExitStatus::Exited(0));
    sim.pump();
    assert!(sim.log.contains(&stop(feeder)), "the feeder goes last");
    sim.exit(feeder, ExitStatus::Exited(0));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Stopped);
}

#[test]
fn a_job_past_its_hard_limit_kills_its_worker_but_a_cleared_one_does_not() {
    let mut sim = Sim::new(settings(2));
    sim.ready_all();
    let s = sim.serials();
    sim.tell(
        s[0],
        Message::Deadline {
            id: "job-1".into(),
            in_ms: 3_000,
        },
    );
    sim.tell(
        s[1],
        Message::Deadline {
            id: "job-2".into(),
            in_ms: 3_000,
        },
    );
    sim.tell(
        s[1],
        Message::Deadline {
            id: String::new(),
            in_ms: 0,
        },
    );
    assert_eq!(sim.sup.next_deadline(), Some(sim.now + 3 * SEC));
    sim.advance(2 * SEC);
    sim.beat_all(); // heartbeats do not move a hard limit
    assert!(sim.kills.is_empty());
    sim.advance(SEC);
    assert_eq!(sim.kills, vec![(sim.pid(s[0]), libc::SIGKILL)]);
    let exit = sim.exit(
        s[0],
        ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        },
    );
    assert_eq!(exit.cause, Cause::TimeLimit);
}

/// The messages the supervisor decided to send to `serial`, in order.
fn sent_to(sim: &Sim, serial: Serial) -> Vec<Message> {
    sim.log
        .iter()
        .filter_map(|a| match a {
            Action::Send(to, msg) if *to == serial => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn killed() -> ExitStatus {
    ExitStatus::Signaled {
        signal: libc::SIGKILL,
        core_dumped: false,
    }
}

#[test]
fn pull_mode_a_dead_worker_s_claims_go_to_the_next_worker_to_be_ready() {
    let mut sim = Sim::new(settings(2));
    sim.ready_all();
    sim.advance(4 * SEC);
    sim.beat_all(); // healthy: replaced at once
    let [a, b] = sim.serials()[..] else { panic!() };
    let dead = sim.pid(a);
    sim.exit(b, ExitStatus::Exited(0)); // a clean exit leaves no claims
    sim.exit(a, killed());
    let fresh: Vec<Serial> = sim.serials();
    assert_eq!(fresh.len(), 2, "both slots refilled");
    sim.tell(fresh[0], Message::Ready { pid: 0 });
    sim.tell(fresh[1], Message::Ready { pid: 0 });
    sim.pump();
    assert_eq!(
        sent_to(&sim, fresh[0]),
        [Message::Orphaned {
            pid: u32::try_from(dead).unwrap(),
            ids: vec![]
        }],
        "the first worker up takes them over"
    );
    assert_eq!(sent_to(&sim, fresh[1]), [], "once");
}

/// A dispatch pool of one worker with no lookahead, everyone ready, the
/// feeder holding the one credit: (worker, feeder).
fn dispatch_sim(lookahead: Option<usize>, workers: usize) -> (Sim, Serial, Serial) {
    let mut sim = Sim::new(Settings {
        feeder: true,
        dispatch_lookahead: lookahead,
        ..settings(workers)
    });
    sim.ready_all();
    let feeder = feeder_of(&sim).unwrap();
    let worker = sim.live()[0].0;
    assert_ne!(worker, feeder);
    (sim, worker, feeder)
}

fn job_msg(id: &str) -> Message {
    Message::Job {
        id: id.into(),
        payload: b"x".to_vec(),
        attempt: 1,
    }
}

fn finished(id: &str) -> Message {
    Message::Finished {
        id: id.into(),
        report: Vec::new(),
    }
}

#[test]
fn dispatch_mode_a_job_past_its_hard_limit_is_lost_with_the_limit_named() {
    let (mut sim, worker, feeder) = dispatch_sim(Some(0), 1);
    assert_eq!(sent_to(&sim, feeder), [Message::Want { n: 1 }]);
    sim.tell(feeder, job_msg("j1"));
    sim.pump();
    assert_eq!(sent_to(&sim, worker), [job_msg("j1")]);
    sim.tell(
        worker,
        Message::Deadline {
            id: "j1".into(),
            in_ms: 300,
        },
    );
    sim.advance(300 * MS);
    assert_eq!(sim.kills, vec![(sim.pid(worker), libc::SIGKILL)]);
    let pid = sim.pid(worker);
    sim.exit(worker, killed());
    let Some(Message::Lost { id, reason }) = sent_to(&sim, feeder).pop() else {
        panic!("{:?}", sent_to(&sim, feeder));
    };
    assert_eq!(id, "j1");
    assert!(
        reason.starts_with(&format!("worker 0 (pid {pid}) ")),
        "{reason}"
    );
    assert!(
        reason.ends_with("(hard time limit of 300 ms) while running the job"),
        "{reason}"
    );
}

#[test]
fn dispatch_mode_a_report_read_before_the_reap_settles_its_job() {
    let (mut sim, worker, feeder) = dispatch_sim(Some(0), 1);
    sim.tell(feeder, job_msg("j1"));
    // The loop hands in what the channel held, then the death.
    sim.tell(worker, finished("j1"));
    sim.exit(worker, ExitStatus::Exited(1));
    let to_feeder = sent_to(&sim, feeder);
    assert!(to_feeder.contains(&finished("j1")), "{to_feeder:?}");
    assert!(
        !to_feeder.iter().any(|m| matches!(m, Message::Lost { .. })),
        "{to_feeder:?}"
    );
}

#[test]
fn dispatch_mode_the_adaptive_lookahead_learns_the_run_time_on_the_simulated_clock() {
    let (mut sim, worker, feeder) = dispatch_sim(None, 2);
    let lookahead = |sim: &Sim| sim.sup.router.as_ref().unwrap().lookahead();
    assert_eq!(lookahead(&sim), 2, "one per worker to start");
    for n in 0..50 {
        let id = format!("q{n}");
        sim.tell(feeder, job_msg(&id));
        sim.now += Duration::from_micros(100);
        sim.tell(worker, finished(&id));
    }
    assert_eq!(lookahead(&sim), 16, "quick jobs: the cap, 8 per worker");
    for n in 0..50 {
        let id = format!("s{n}");
        sim.tell(feeder, job_msg(&id));
        sim.advance(SEC);
        sim.tell(worker, finished(&id));
        sim.beat_all();
    }
    assert_eq!(
        lookahead(&sim),
        0,
        "slow jobs: fetched only for idle workers"
    );
    sim.pump();
    assert!(sim.kills.is_empty());
}

/// The control socket's commands take the signals' path: a scale is what
/// TTIN/TTOU/WINCH do, a stop what QUIT or INT do, a reload what HUP does,
/// and none but a stop is carried out once the master is stopping.
#[test]
fn commands_do_what_the_signals_do() {
    let mut sim = Sim::new(settings(2));
    sim.ready_all();
    sim.sup.handle(sim.now, Event::Command(Command::Scale(4)));
    sim.pump();
    assert_eq!(
        sim.live().iter().map(|l| l.1).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    sim.ready_all();
    sim.sup.handle(sim.now, Event::Command(Command::Scale(1)));
    sim.pump();
    assert_eq!(sim.live().iter().map(|l| l.1).collect::<Vec<_>>(), vec![0]);
    sim.obey();
    sim.sup
        .handle(sim.now, Event::Command(Command::Scale(MAX_WORKERS + 5)));
    assert_eq!(sim.sup.target(), MAX_WORKERS, "capped as TTIN is");
    sim.sup.handle(sim.now, Event::Command(Command::Scale(0)));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Paused);
    sim.obey();
    // Reload after a pause brings the configured count back, as HUP does.
    sim.sup.handle(sim.now, Event::Command(Command::Reload));
    sim.pump();
    assert_eq!(sim.live().len(), 2);
    sim.ready_all();
    let old = sim.serials();
    sim.sup.handle(sim.now, Event::Command(Command::Reload));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Reloading);
    for _ in 0..old.len() {
        sim.ready_all();
        sim.obey();
    }
    assert!(
        sim.serials().iter().all(|s| !old.contains(s)),
        "every worker replaced"
    );
    assert_eq!(sim.sup.phase(), Phase::Running);
    // A graceful stop sends Stop, no signal; once stopping, only a stop is
    // accepted, and a quick one overrides the graceful one.
    assert!(sim.sup.accepts(Command::Reload));
    sim.sup
        .handle(sim.now, Event::Command(Command::Stop(Shutdown::Graceful)));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Stopping(Shutdown::Graceful));
    assert!(sim.kills.is_empty(), "{:?}", sim.kills);
    assert!(!sim.sup.accepts(Command::Reload));
    assert!(!sim.sup.accepts(Command::Scale(3)));
    assert!(sim.sup.accepts(Command::Stop(Shutdown::Quick)));
    sim.sup
        .handle(sim.now, Event::Command(Command::Stop(Shutdown::Quick)));
    sim.pump();
    assert_eq!(sim.sup.phase(), Phase::Stopping(Shutdown::Quick));
    assert_eq!(sim.kills.len(), 2, "SIGTERM to both: {:?}", sim.kills);
    assert!(sim.kills.iter().all(|(_, s)| *s == libc::SIGTERM));
    sim.obey();
    let report = sim.sup.report().expect("stopped");
    assert_eq!((report.shutdown, report.signal), (Shutdown::Quick, None));
}

/// `status` names every process with its slot, pid and state, the job a
/// dispatch worker holds and for how long, what a busy heartbeat said, and
/// the restarts of a slot whose worker died.
#[test]
fn status_describes_every_process_and_its_job() {
    let (mut sim, worker, feeder) = dispatch_sim(Some(0), 2);
    let other = sim
        .live()
        .iter()
        .map(|l| l.0)
        .find(|s| *s != worker && *s != feeder)
        .unwrap();
    let st = sim.sup.status(sim.now);
    assert_eq!(
        (st.mode.as_str(), st.target, st.phase.as_str()),
        ("dispatch", 2, "running")
    );
    assert_eq!(st.workers.len(), 2);
    assert_eq!(
        st.workers.iter().map(|w| w.slot).collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );
    assert!(
        st.workers
            .iter()
            .all(|w| w.state == "idle" && w.job.is_none())
    );
    let f = st.feeder.as_ref().expect("the feeder");
    assert_eq!((f.slot, f.pid), (None, Some(sim.pid(feeder))));
    sim.tell(feeder, job_msg("17-3"));
    sim.pump();
    sim.advance(250 * MS);
    let st = sim.sup.status(sim.now);
    let busy: Vec<_> = st.workers.iter().filter(|w| w.state == "busy").collect();
    assert_eq!(busy.len(), 1, "{st:?}");
    let job = busy[0].job.as_ref().unwrap();
    assert_eq!(job.id.as_deref(), Some("17-3"));
    assert_eq!(job.for_ms, Some(250));
    assert_eq!(job.activity, None);
    let holder = busy[0].serial;
    assert_eq!(busy[0].pid, Some(sim.pid(holder)));
    // A heartbeat names the job; the other worker's death counts a restart.
    let since_unix_ms = unix_now_ms() - 1000;
    sim.tell(
        holder,
        Message::Heartbeat(Progress::Busy {
            job: "sleep 42".into(),
            since_unix_ms,
        }),
    );
    let idle = if holder == worker { other } else { worker };
    let idle_slot = sim.sup.procs[&idle].role.worker_index();
    sim.exit(
        idle,
        ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        },
    );
    // An early death: replaced after its backoff.
    sim.advance(3 * SEC);
    let st = sim.sup.status(sim.now);
    let w = st.workers.iter().find(|w| w.serial == holder).unwrap();
    assert_eq!(
        w.job.as_ref().unwrap().activity.as_deref(),
        Some("sleep 42")
    );
    let replaced = st.workers.iter().find(|w| w.slot == idle_slot).unwrap();
    assert_eq!(
        (replaced.restarts, replaced.state.as_str()),
        (1, "starting")
    );
    assert_eq!(w.restarts, 0);
    assert_eq!(st.failures, 1);
}

/// In pull mode the job comes from the heartbeat alone.
#[test]
fn status_in_pull_mode_tells_what_the_heartbeat_said() {
    let mut sim = Sim::new(settings(1));
    sim.ready_all();
    let serial = sim.serials()[0];
    let st = sim.sup.status(sim.now);
    assert_eq!(
        (st.mode.as_str(), st.queued, st.feeder.is_none()),
        ("pull", None, true)
    );
    assert_eq!(
        (st.workers[0].state.as_str(), st.workers[0].pss_bytes),
        ("idle", None)
    );
    sim.tell(
        serial,
        Message::Heartbeat(Progress::Busy {
            job: "report 7".into(),
            since_unix_ms: unix_now_ms() - 3000,
        }),
    );
    sim.tell(
        serial,
        Message::Stats(Stats {
            jobs_finished: 12,
            pss_bytes: 5 << 20,
            ..Stats::default()
        }),
    );
    let st = sim.sup.status(sim.now);
    let w = &st.workers[0];
    assert_eq!((w.state.as_str(), w.jobs_finished), ("busy", 12));
    assert_eq!(w.pss_bytes, Some(5 << 20), "as the worker measured it");
    let job = w.job.as_ref().unwrap();
    assert_eq!(
        (job.id.as_deref(), job.activity.as_deref()),
        (None, Some("report 7"))
    );
    assert!((3000..4000).contains(&job.for_ms.unwrap()), "{job:?}");
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
