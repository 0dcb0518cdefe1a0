//! The supervisor's state machine: which container runs, which waits for a restart
//! and until when, and how long the next wait is. No I/O and no clock of its own:
//! the event loop passes the time in, so every decision is unit-tested.

use std::fmt;
use std::time::{Duration, Instant};

use berth_format::{ContainerConfig, RestartPolicy};

/// First delay before restarting a container that stopped.
pub const INITIAL_DELAY: Duration = Duration::from_millis(500);
/// The delay doubles after each quick failure up to this cap.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A container that ran at least this long before stopping starts over at
/// [`INITIAL_DELAY`].
pub const RESET_AFTER: Duration = Duration::from_secs(10);
/// A container counts as up once its current run lasted this long without
/// exiting: past its restart backoff, the point where the supervisor itself
/// takes a run for a success. A container that crashes sooner, however often it
/// is restarted, never counts as up (the boot assessment waits for every
/// container to be up).
pub const UP_AFTER: Duration = RESET_AFTER;

/// Exponential restart backoff: 0.5 s, 1 s, 2 s, … 30 s, back to 0.5 s after a run
/// of 10 s or more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: INITIAL_DELAY,
        }
    }
}

impl Backoff {
    /// The delay before restarting a container that ran for `ran`; doubles the
    /// following one.
    pub fn delay_after(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.next = INITIAL_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }
}

/// How a container's runtime process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    /// The end of `container NAME …`: `exited with status 3`, `killed by signal SIGKILL`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exited with status {code}"),
            ExitStatus::Signal(number) => match nix::sys::signal::Signal::try_from(number) {
                Ok(signal) => write!(f, "killed by signal {}", signal.as_str()),
                Err(_) => write!(f, "killed by signal {number}"),
            },
        }
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started yet: due at once.
    Pending,
    /// Its runtime process `pid` runs since `since`; `order` counts starts across
    /// all containers, so shutdown can go in reverse start order.
    Running {
        pid: i32,
        since: Instant,
        order: u64,
    },
    /// Stopped, to be started again at `until`.
    Waiting { until: Instant },
    /// Stopped for good (restart policy, or shutdown).
    Stopped,
}

/// What follows a container's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Start it again after this delay.
    Restart(Duration),
    /// Leave it stopped.
    Stay,
}

/// One supervised container.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub policy: RestartPolicy,
    pub state: State,
    /// Its runtime process was started at least once.
    pub ever_started: bool,
    /// How its last run ended (`None`: it has not ended a run yet).
    pub last_exit: Option<ExitStatus>,
    /// Its health check failed: the next exit restarts it whatever the policy.
    restart_next_exit: bool,
    backoff: Backoff,
}

impl Container {
    pub fn new(name: &str, policy: RestartPolicy) -> Container {
        Container {
            name: name.to_string(),
            policy,
            state: State::Pending,
            ever_started: false,
            last_exit: None,
            restart_next_exit: false,
            backoff: Backoff::default(),
        }
    }

    /// Whether it is to be started now.
    pub fn is_due(&self, now: Instant) -> bool {
        match self.state {
            State::Pending => true,
            State::Waiting { until } => until <= now,
            State::Running { .. } | State::Stopped => false,
        }
    }

    /// The pid of its runtime process, while it runs.
    pub fn pid(&self) -> Option<i32> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Which start of all the supervisor's starts its current run was (0 when it
    /// does not run): tells a health check's result for an earlier run apart.
    pub fn run(&self) -> u64 {
        match self.state {
            State::Running { order, .. } => order,
            _ => 0,
        }
    }

    /// Since when it runs.
    pub fn running_since(&self) -> Option<Instant> {
        match self.state {
            State::Running { since, pid, .. } if pid != 0 => Some(since),
            _ => None,
        }
    }

    /// Whether it is up at `now`, and if not, why (a line for the console):
    /// running for [`UP_AFTER`] without exiting, or stopped for good after a
    /// successful exit its restart policy does not restart (a one-shot job that
    /// finished). Not up: not started yet, waiting for a restart (it exited or
    /// crashed), running for less than [`UP_AFTER`], or stopped after a failure.
    pub fn up(&self, now: Instant) -> Result<(), String> {
        let name = &self.name;
        match (self.state, self.last_exit) {
            (State::Running { since, pid, .. }, _) if pid != 0 => {
                let ran = now.saturating_duration_since(since);
                if ran >= UP_AFTER {
                    return Ok(());
                }
                Err(match self.last_exit {
                    Some(status) => format!(
                        "container {name} has not run for {} s since it {status}",
                        UP_AFTER.as_secs()
                    ),
                    None => format!(
                        "container {name} has not run for {} s yet",
                        UP_AFTER.as_secs()
                    ),
                })
            }
            (State::Stopped, Some(status)) if status.success() && !self.policy.restarts(true) => {
                Ok(())
            }
            (State::Stopped, Some(status)) => Err(format!("container {name} {status}")),
            (State::Waiting { .. }, Some(status)) => {
                Err(format!("container {name} {status} and is restarting"))
            }
            _ => Err(format!("container {name} has not started")),
        }
    }
}

/// All containers of the image, in start order.
#[derive(Debug, Clone)]
pub struct Supervisor {
    containers: Vec<Container>,
    starts: u64,
    stopping: bool,
}

impl Supervisor {
    pub fn new(configs: &[ContainerConfig]) -> Supervisor {
        Supervisor {
            containers: configs
                .iter()
                .map(|config| Container::new(&config.name, config.restart))
                .collect(),
            starts: 0,
            stopping: false,
        }
    }

    pub fn containers(&self) -> &[Container] {
        &self.containers
    }

    pub fn container(&self, index: usize) -> Option<&Container> {
        self.containers.get(index)
    }

    /// Indexes of the containers to start now, in configuration order. Nothing is
    /// due once shutdown began.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        if self.stopping {
            return Vec::new();
        }
        (0..self.containers.len())
            .filter(|&index| self.containers[index].is_due(now))
            .collect()
    }

    /// When the next waiting container is due, for the event loop's poll timeout.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.stopping {
            return None;
        }
        self.containers
            .iter()
            .filter_map(|container| match container.state {
                State::Waiting { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Records that container `index` was started as process `pid` at `now`.
    pub fn started(&mut self, index: usize, pid: i32, now: Instant) {
        self.starts += 1;
        let order = self.starts;
        if let Some(container) = self.containers.get_mut(index) {
            container.state = State::Running {
                pid,
                since: now,
                order,
            };
            container.ever_started = true;
        }
    }

    /// Container `index` failed its health check and is being killed: its exit
    /// restarts it (with the usual backoff) whatever its restart policy.
    pub fn restart_on_exit(&mut self, index: usize) {
        if let Some(container) = self.containers.get_mut(index) {
            container.restart_next_exit = true;
        }
    }

    /// The container whose runtime process is `pid`.
    pub fn find_pid(&self, pid: i32) -> Option<usize> {
        self.containers
            .iter()
            .position(|container| container.pid() == Some(pid))
    }

    /// Records that container `index` stopped with `status` at `now`, and decides
    /// what follows from its restart policy and its backoff.
    pub fn exited(&mut self, index: usize, status: ExitStatus, now: Instant) -> AfterExit {
        let stopping = self.stopping;
        let Some(container) = self.containers.get_mut(index) else {
            return AfterExit::Stay;
        };
        let ran = match container.state {
            State::Running { since, .. } => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        };
        container.last_exit = Some(status);
        let forced = std::mem::take(&mut container.restart_next_exit);
        if stopping || !(forced || container.policy.restarts(status.success())) {
            container.state = State::Stopped;
            return AfterExit::Stay;
        }
        let delay = container.backoff.delay_after(ran);
        container.state = State::Waiting { until: now + delay };
        AfterExit::Restart(delay)
    }

    /// Records that container `index` could not even be started: a failure after
    /// no run time.
    pub fn start_failed(&mut self, index: usize, now: Instant) -> AfterExit {
        if let Some(container) = self.containers.get_mut(index) {
            container.state = State::Running {
                pid: 0,
                since: now,
                order: 0,
            };
        }
        self.exited(index, ExitStatus::Code(127), now)
    }

    /// Begins shutdown: pending restarts are dropped. Returns the running
    /// containers in reverse start order, the order to stop them in.
    pub fn stop_all(&mut self) -> Vec<usize> {
        self.stopping = true;
        let mut running: Vec<(u64, usize)> = Vec::new();
        for (index, container) in self.containers.iter_mut().enumerate() {
            match container.state {
                State::Running { order, .. } => running.push((order, index)),
                State::Pending | State::Waiting { .. } => container.state = State::Stopped,
                State::Stopped => {}
            }
        }
        running.sort_unstable_by_key(|&(order, _)| std::cmp::Reverse(order));
        running.into_iter().map(|(_, index)| index).collect()
    }

    /// Indexes of the containers still running.
    pub fn running(&self) -> Vec<usize> {
        (0..self.containers.len())
            .filter(|&index| self.containers[index].pid().is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn supervisor(policies: &[RestartPolicy]) -> Supervisor {
        let configs: Vec<ContainerConfig> = policies
            .iter()
            .enumerate()
            .map(|(i, policy)| ContainerConfig {
                name: format!("c{i}"),
                restart: *policy,
                critical: false,
                health: None,
                volumes: Vec::new(),
                writable: false,
            })
            .collect();
        Supervisor::new(&configs)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..9)
            .map(|_| u64::try_from(backoff.delay_after(ms(100)).as_millis()).unwrap())
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn backoff_resets_after_a_long_run() {
        let mut backoff = Backoff::default();
        backoff.delay_after(ms(0));
        backoff.delay_after(ms(0));
        assert_eq!(backoff.delay_after(ms(9_999)), ms(2000));
        assert_eq!(backoff.delay_after(RESET_AFTER), ms(500));
        assert_eq!(backoff.delay_after(ms(1)), ms(1000));
    }

    #[test]
    fn everything_is_due_at_first_in_order() {
        let t0 = Instant::now();
        let sup = supervisor(&[RestartPolicy::Never, RestartPolicy::Always]);
        assert_eq!(sup.due(t0), [0, 1]);
        assert_eq!(sup.next_wakeup(), None);
    }

    #[test]
    fn always_restarts_with_growing_delays_on_injected_time() {
        let t0 = Instant::now();
        let mut sup = supervisor(&[RestartPolicy::Always]);
        sup.started(0, 42, t0);
        assert!(sup.due(t0).is_empty());
        assert_eq!(sup.find_pid(42), Some(0));

        let t1 = t0 + ms(200);
        assert_eq!(
            sup.exited(0, ExitStatus::Code(0), t1),
            AfterExit::Restart(ms(500))
        );
        assert_eq!(sup.find_pid(42), None);
        assert_eq!(sup.next_wakeup(), Some(t1 + ms(500)));
        assert!(sup.due(t1 + ms(499)).is_empty());
        assert_eq!(sup.due(t1 + ms(500)), [0]);

        let t2 = t1 + ms(500);
        sup.started(0, 43, t2);
        assert_eq!(
            sup.exited(0, ExitStatus::Signal(9), t2 + ms(10)),
            AfterExit::Restart(ms(1000))
        );

        // A long run resets the delay.
        let t3 = t2 + ms(2000);
        sup.started(0, 44, t3);
        assert_eq!(
            sup.exited(0, ExitStatus::Code(1), t3 + Duration::from_secs(11)),
            AfterExit::Restart(ms(500))
        );
    }

    #[test]
    fn on_failure_and_never() {
        let t0 = Instant::now();
        let mut sup = supervisor(&[RestartPolicy::OnFailure, RestartPolicy::Never]);
        sup.started(0, 10, t0);
        sup.started(1, 11, t0);
        assert_eq!(sup.exited(0, ExitStatus::Code(0), t0), AfterExit::Stay);
        assert_eq!(sup.exited(1, ExitStatus::Code(1), t0), AfterExit::Stay);
        assert_eq!(sup.container(0).unwrap().state, State::Stopped);
        assert!(sup.due(t0 + Duration::from_secs(100)).is_empty());

        let mut sup = supervisor(&[RestartPolicy::OnFailure]);
        sup.started(0, 10, t0);
        assert_eq!(
            sup.exited(0, ExitStatus::Code(3), t0),
            AfterExit::Restart(ms(500))
        );
        sup.started(0, 12, t0 + ms(500));
        assert_eq!(
            sup.exited(0, ExitStatus::Signal(15), t0 + ms(600)),
            AfterExit::Restart(ms(1000))
        );
    }

    #[test]
    fn a_failed_start_counts_as_a_failure() {
        let t0 = Instant::now();
        let mut sup = supervisor(&[RestartPolicy::OnFailure, RestartPolicy::Never]);
        assert_eq!(sup.start_failed(0, t0), AfterExit::Restart(ms(500)));
        assert_eq!(
            sup.start_failed(0, t0 + ms(500)),
            AfterExit::Restart(ms(1000))
        );
        assert_eq!(sup.start_failed(1, t0), AfterExit::Stay);
        assert!(sup.running().is_empty());
    }

    #[test]
    fn shutdown_stops_in_reverse_start_order_and_drops_restarts() {
        let t0 = Instant::now();
        let mut sup = supervisor(&[
            RestartPolicy::Always,
            RestartPolicy::Always,
            RestartPolicy::Always,
            RestartPolicy::Always,
        ]);
        sup.started(0, 100, t0);
        sup.started(1, 101, t0);
        sup.started(2, 102, t0);
        // c0 restarts after c2 started: it is now the newest.
        sup.exited(0, ExitStatus::Code(1), t0 + ms(1));
        sup.started(0, 103, t0 + ms(501));
        // c3 is waiting for a restart.
        sup.started(3, 104, t0);
        sup.exited(3, ExitStatus::Code(1), t0 + ms(600));

        assert_eq!(sup.stop_all(), [0, 2, 1]);
        assert_eq!(sup.container(3).unwrap().state, State::Stopped);
        assert_eq!(sup.next_wakeup(), None);
        assert!(sup.due(t0 + Duration::from_secs(60)).is_empty());
        // Exits during shutdown are final, whatever the policy.
        assert_eq!(
            sup.exited(2, ExitStatus::Signal(15), t0 + ms(700)),
            AfterExit::Stay
        );
        assert_eq!(sup.running(), [0, 1]);
    }

    #[test]
    fn an_unhealthy_container_restarts_whatever_its_policy() {
        let t0 = Instant::now();
        let mut sup = supervisor(&[RestartPolicy::Never]);
        assert!(!sup.container(0).unwrap().ever_started);
        sup.started(0, 10, t0);
        assert!(sup.container(0).unwrap().ever_started);
        assert_eq!(sup.container(0).unwrap().run(), 1);
        sup.restart_on_exit(0);
        assert_eq!(
            sup.exited(0, ExitStatus::Signal(9), t0 + ms(100)),
            AfterExit::Restart(ms(500))
        );
        assert_eq!(sup.container(0).unwrap().run(), 0);
        sup.started(0, 11, t0 + ms(600));
        assert_eq!(sup.container(0).unwrap().run(), 2);
        // Only once: the next exit follows the policy again.
        assert_eq!(
            sup.exited(0, ExitStatus::Code(1), t0 + ms(700)),
            AfterExit::Stay
        );
    }

    #[test]
    fn up_only_past_the_restart_backoff() {
        let t0 = Instant::now();
        let up = |sup: &Supervisor, now| sup.container(0).unwrap().up(now);
        let mut sup = supervisor(&[RestartPolicy::Always]);
        assert_eq!(up(&sup, t0).unwrap_err(), "container c0 has not started");
        sup.started(0, 10, t0);
        assert_eq!(
            up(&sup, t0 + ms(9_999)).unwrap_err(),
            "container c0 has not run for 10 s yet"
        );
        assert_eq!(up(&sup, t0 + UP_AFTER), Ok(()));
        // A crash loop is never up: waiting for its restart, then running again
        // for less than the backoff's reset time.
        let mut t = t0;
        for _ in 0..20 {
            t += ms(3_000);
            let AfterExit::Restart(delay) = sup.exited(0, ExitStatus::Code(1), t) else {
                panic!("always restarts");
            };
            assert_eq!(
                up(&sup, t).unwrap_err(),
                "container c0 exited with status 1 and is restarting"
            );
            t += delay;
            sup.started(0, 11, t);
            assert_eq!(
                up(&sup, t + ms(2_999)).unwrap_err(),
                "container c0 has not run for 10 s since it exited with status 1"
            );
        }
        // Once a run lasts, it is up.
        assert_eq!(up(&sup, t + UP_AFTER), Ok(()));
    }

    #[test]
    fn a_finished_one_shot_job_is_up_a_failed_one_is_not() {
        let t0 = Instant::now();
        let mut sup = supervisor(&[
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
            RestartPolicy::Always,
        ]);
        for index in 0..4 {
            sup.started(index, 10, t0);
        }
        sup.exited(0, ExitStatus::Code(0), t0 + ms(10));
        sup.exited(1, ExitStatus::Code(0), t0 + ms(10));
        sup.exited(2, ExitStatus::Signal(11), t0 + ms(10));
        sup.exited(3, ExitStatus::Code(0), t0 + ms(10));
        let now = t0 + Duration::from_secs(60);
        assert_eq!(sup.container(0).unwrap().up(now), Ok(()));
        assert_eq!(sup.container(1).unwrap().up(now), Ok(()));
        assert_eq!(
            sup.container(2).unwrap().up(now).unwrap_err(),
            "container c2 killed by signal SIGSEGV"
        );
        // Exit 0 under `always` is restarted: not finished, not up.
        assert!(sup.container(3).unwrap().up(now).is_err());
        // A start that failed is a failure.
        let mut sup = supervisor(&[RestartPolicy::Never]);
        sup.start_failed(0, t0);
        assert_eq!(
            sup.container(0).unwrap().up(now).unwrap_err(),
            "container c0 exited with status 127"
        );
    }

    #[test]
    fn exit_status_lines() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exited with status 3");
        assert_eq!(
            ExitStatus::Signal(9).to_string(),
            "killed by signal SIGKILL"
        );
        assert_eq!(ExitStatus::Signal(99).to_string(), "killed by signal 99");
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Signal(15).success());
    }
}
