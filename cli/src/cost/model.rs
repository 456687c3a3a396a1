//! The cost model: plain inputs in, an estimate per [`Mode`] out; see the module above
//! for what it counts.

use super::measured::CpuCost;

/// What the browsers' and backends' requests arrive through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontDoor {
    /// API Gateway's HTTP API: a price per request.
    HttpApi,
    /// An Application Load Balancer: an hourly price and capacity units.
    Alb,
}

/// How each broker is deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deployment {
    /// A single-instance broker: one node, classic queues.
    Single,
    /// A three-node cluster (Amazon MQ's `CLUSTER_MULTI_AZ`), billed per node, with
    /// quorum user queues.
    Cluster,
}

impl Deployment {
    /// Nodes billed per broker.
    fn nodes(self) -> u64 {
        match self {
            Deployment::Single => 1,
            Deployment::Cluster => 3,
        }
    }
}

/// A single-instance Amazon MQ broker size's price, $ an hour.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerPrice {
    pub name: String,
    pub hour: f64,
}

/// The ways of running it that the model compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Standard,
    Managed,
    Containers,
}

impl Mode {
    /// Every mode, in the order the report shows them.
    pub const ALL: [Mode; 3] = [Mode::Standard, Mode::Managed, Mode::Containers];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Standard => "standard Lambda",
            Mode::Managed => "Lambda Managed Instances",
            Mode::Containers => "local server in containers",
        }
    }
}

/// The longest hold the template allows (`PollHoldSeconds`): API Gateway's HTTP API
/// stops an integration at 30 s, and a poll needs 1.5 s past its hold.
pub const LONGEST_HOLD_SECONDS: f64 = 25.0;

/// What the model is given: the load, the deployment's settings and the prices (each a
/// flag of `longpoll cost`, see `args`).
#[derive(Clone, Debug)]
pub struct Inputs {
    pub users: u64,
    pub hours_per_day: f64,
    pub events_per_user_hour: f64,
    pub days: f64,
    pub hold_seconds: f64,
    pub front_door: FrontDoor,
    pub bytes_per_poll: f64,
    pub log_bytes_per_poll: f64,
    pub metric_bytes_per_poll: f64,
    pub metric_bytes_per_flush: f64,
    pub custom_metrics: u64,
    pub metric_month: f64,
    pub lambda_memory_gb: f64,
    pub lambda_gb_second: f64,
    pub lambda_per_million: f64,
    pub http_api_per_million: f64,
    pub log_per_gb: f64,
    pub polls_per_environment: u64,
    pub vcpus_per_environment: u64,
    pub vcpus_per_instance: u64,
    pub instance_hour: f64,
    pub management_fee: f64,
    pub min_instances: u64,
    pub polls_per_task: u64,
    pub min_tasks: u64,
    pub vcpus_per_task: u64,
    pub task_hour: f64,
    /// CPU per poll and per event of a `poll-events` process (managed instances) and of
    /// a local server (containers).
    pub function_cpu: CpuCost,
    pub server_cpu: CpuCost,
    /// The share of each vCPU that may be busy at the peak (the rest is headroom).
    pub cpu_target: f64,
    pub load_balancer_hour: f64,
    pub lcu_hour: f64,
    pub broker_prices: Vec<BrokerPrice>,
    pub deployment: Deployment,
}

/// Amazon MQ for RabbitMQ sizes: name, connections, queues (AWS's sizing guidelines for
/// single-instance brokers; docs/operations.md).
const BROKER_SIZES: [(&str, u64, u64); 5] = [
    ("mq.t3.micro", 500, 2_500),
    ("mq.m5.large", 5_000, 30_000),
    ("mq.m5.xlarge", 10_000, 60_000),
    ("mq.m5.2xlarge", 20_000, 120_000),
    ("mq.m5.4xlarge", 40_000, 240_000),
];

/// Queues per online user: their queue, its binding record, their presence queue.
const QUEUES_PER_USER: u64 = 3;

/// The size AWS offers for evaluation only: priced as a lone broker, never as a shard.
const EVALUATION_SIZE: &str = "mq.t3.micro";

/// Quorum queues (one per user) a cluster holds before RabbitMQ's quorum-queue guide
/// asks for a design review; restarts grow with their number.
const QUORUM_QUEUES_PER_CLUSTER: u64 = 5_000;

/// Most brokers a deployment lists (`AMQP_URLS`).
pub const MAX_BROKERS: u64 = longpoll::shard::MAX_BROKERS as u64;

/// The brokers a deployment needs: how many, of which size.
#[derive(Debug, Clone, PartialEq)]
pub struct Brokers {
    pub count: u64,
    pub size: String,
    /// $ a month, for all of them.
    pub month: f64,
}

impl Brokers {
    /// `mq.m5.large`, or `3 × mq.m5.large`.
    pub fn describe(&self) -> String {
        match self.count {
            1 => self.size.clone(),
            count => format!("{count} × {}", self.size),
        }
    }
}

/// One way of running it, for one month.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub mode: Mode,
    pub compute: f64,
    pub requests: f64,
    /// API Gateway, or the load balancer.
    pub front: f64,
    pub logs: f64,
    /// The functions' metrics: their log bytes and CloudWatch's price per metric.
    pub metrics: f64,
    /// The brokers, or why no number of them holds the load.
    pub brokers: Result<Brokers, String>,
    /// AMQP connections each broker holds at the peak: every process keeps one to each
    /// broker it has served a user of, so in time to all of them.
    pub connections: u64,
    pub queues: u64,
    /// Managed instances and containers: the processes running at the peak.
    pub processes: Option<Processes>,
}

/// Processes (execution environments, or tasks) at the peak, and what sized them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Processes {
    pub count: u64,
    /// How many the CPU alone needs, at the CPU target.
    pub for_cpu: u64,
}

impl Processes {
    /// Enough processes of `vcpus` each for the held polls (`polls_per_process` each)
    /// and for the CPU that `cpu` says the users need, at most `target` of each vCPU
    /// busy; at least `min`.
    fn sized(args: &Inputs, polls_per_process: u64, cpu: &CpuCost, vcpus: u64, min: u64) -> Self {
        let for_polls = args.users.div_ceil(polls_per_process.max(1));
        let busy_vcpus = cpu.vcpus(
            args.users as f64,
            args.hold_seconds,
            args.events_per_user_hour,
        );
        let for_cpu = (busy_vcpus / args.cpu_target / vcpus.max(1) as f64).ceil() as u64;
        Self {
            count: for_polls.max(for_cpu).max(min),
            for_cpu,
        }
    }
}

impl Estimate {
    /// The month's total; infinite when no brokers hold the load.
    pub fn total(&self) -> f64 {
        let broker = self
            .brokers
            .as_ref()
            .map_or(f64::INFINITY, |brokers| brokers.month);
        self.compute + self.requests + self.front + self.logs + self.metrics + broker
    }
}

/// An Application Load Balancer for a month: its hours, and the capacity units of the
/// busiest dimension while users are online (each browser keeps one connection open,
/// so new connections stay few).
fn load_balancer(args: &Inputs, polls_per_hour: f64, lambda_targets: bool) -> f64 {
    let online_hours = args.hours_per_day * args.days;
    let gb_per_lcu_hour = if lambda_targets { 0.4 } else { 1.0 };
    let lcus = (args.users as f64 / 3000.0)
        .max(polls_per_hour * args.bytes_per_poll / 1e9 / gb_per_lcu_hour)
        .max(1.0);
    args.load_balancer_hour * 24.0 * args.days + lcus * args.lcu_hour * online_hours
}

/// Every mode's estimate, at `args.users`.
pub struct Estimates([Estimate; 3]);

impl Estimates {
    /// The estimate of `mode`.
    pub fn of(&self, mode: Mode) -> &Estimate {
        &self.0[Mode::ALL
            .iter()
            .position(|m| *m == mode)
            .expect("every mode")]
    }

    /// Each mode's estimate, in [`Mode::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = &Estimate> {
        self.0.iter()
    }
}

/// The estimates at `args.users`.
pub fn estimate(args: &Inputs) -> Result<Estimates, String> {
    if !(args.hold_seconds > 0.0 && args.hold_seconds <= LONGEST_HOLD_SECONDS) {
        return Err(format!(
            "--hold-seconds must be above 0 and at most {LONGEST_HOLD_SECONDS} (the HTTP API stops an integration at 30 s)"
        ));
    }
    if !(args.cpu_target > 0.0 && args.cpu_target <= 1.0) {
        return Err("--cpu-target must be above 0 and at most 1".to_owned());
    }
    let users = args.users as f64;
    let online_hours = args.hours_per_day * args.days;
    let month_hours = 24.0 * args.days;
    let polls_per_user_hour = 3600.0 / args.hold_seconds + args.events_per_user_hour;
    let polls = users * online_hours * polls_per_user_hour;
    let logs = polls * args.log_bytes_per_poll / 1e9 * args.log_per_gb;
    let lambda_front = match args.front_door {
        FrontDoor::HttpApi => polls / 1e6 * args.http_api_per_million,
        FrontDoor::Alb => load_balancer(args, users * polls_per_user_hour, true),
    };
    let lambda_requests = polls / 1e6 * args.lambda_per_million;
    let metric_series = args.custom_metrics as f64 * args.metric_month;
    let standard_metrics =
        polls * args.metric_bytes_per_poll / 1e9 * args.log_per_gb + metric_series;
    let queues = args.users * QUEUES_PER_USER;
    let broker = |connections: u64| brokers(args, connections, month_hours);

    // Standard: every online user holds one execution all the time they are online.
    let gb_seconds = users * online_hours * 3600.0 * args.lambda_memory_gb;
    let standard_connections = args.users;
    let standard = Estimate {
        mode: Mode::Standard,
        compute: gb_seconds * args.lambda_gb_second,
        requests: lambda_requests,
        front: lambda_front,
        logs,
        metrics: standard_metrics,
        brokers: broker(standard_connections),
        connections: standard_connections,
        queues,
        processes: None,
    };

    // Managed instances: environments for the peak (for its held polls, or for its CPU
    // if that needs more), instances for their vCPUs.
    let managed_processes = Processes::sized(
        args,
        args.polls_per_environment,
        &args.function_cpu,
        args.vcpus_per_environment,
        0,
    );
    let environments = managed_processes.count;
    let peak_instances = (environments * args.vcpus_per_environment)
        .div_ceil(args.vcpus_per_instance.max(1))
        .max(args.min_instances);
    let instance_hours = peak_instances as f64 * online_hours
        + args.min_instances as f64 * (month_hours - online_hours);
    // Every environment flushes once a second while it runs: the peak's while users are
    // online, one per instance kept off-peak.
    let environment_seconds = 3600.0
        * (environments as f64 * online_hours
            + args.min_instances as f64 * (month_hours - online_hours));
    let managed_metrics =
        environment_seconds * args.metric_bytes_per_flush / 1e9 * args.log_per_gb + metric_series;
    let managed = Estimate {
        mode: Mode::Managed,
        compute: instance_hours * args.instance_hour * (1.0 + args.management_fee),
        requests: lambda_requests,
        front: lambda_front,
        logs,
        metrics: managed_metrics,
        brokers: broker(environments),
        connections: environments,
        queues,
        processes: Some(managed_processes),
    };

    // Containers: local-server tasks behind a load balancer, for the held polls or for
    // their CPU.
    let task_processes = Processes::sized(
        args,
        args.polls_per_task,
        &args.server_cpu,
        args.vcpus_per_task,
        args.min_tasks,
    );
    let tasks = task_processes.count;
    let task_hours =
        tasks as f64 * online_hours + args.min_tasks as f64 * (month_hours - online_hours);
    let containers = Estimate {
        mode: Mode::Containers,
        compute: task_hours * args.task_hour,
        requests: 0.0,
        front: load_balancer(args, users * polls_per_user_hour, false),
        logs,
        // Prometheus scrapes the local server's /metrics: nothing to ingest or buy.
        metrics: 0.0,
        brokers: broker(tasks),
        connections: tasks,
        queues,
        processes: Some(task_processes),
    };
    Ok(Estimates([standard, managed, containers]))
}

/// The cheapest brokers that hold the users when every process keeps `connections` to
/// each: for each number of brokers up to [`MAX_BROKERS`], the users split evenly (the
/// slot table's default), the smallest size whose limits fit one broker's share (never
/// [`EVALUATION_SIZE`] for more than one), and for a cluster no more quorum queues than
/// [`QUORUM_QUEUES_PER_CLUSTER`]. Fewer brokers win a tie.
fn brokers(args: &Inputs, connections: u64, month_hours: f64) -> Result<Brokers, String> {
    let mut cheapest: Option<Brokers> = None;
    for count in 1..=MAX_BROKERS {
        let users = args.users.div_ceil(count);
        if args.deployment == Deployment::Cluster && users > QUORUM_QUEUES_PER_CLUSTER {
            continue;
        }
        let queues = users * QUEUES_PER_USER;
        let Some((size, hour)) = broker_size(&args.broker_prices, connections, queues, count == 1)?
        else {
            continue;
        };
        let month = count as f64 * args.deployment.nodes() as f64 * hour * month_hours;
        if cheapest.as_ref().is_none_or(|best| month < best.month) {
            cheapest = Some(Brokers { count, size, month });
        }
    }
    cheapest.ok_or_else(|| {
        let (largest, max_connections, _) = BROKER_SIZES[BROKER_SIZES.len() - 1];
        if connections > max_connections {
            format!(
                "none: {connections} connections to each broker (every process connects to every broker) exceed {largest}'s {max_connections}"
            )
        } else {
            format!("none: {MAX_BROKERS} brokers do not hold {} users", args.users)
        }
    })
}

/// The smallest broker size whose limits fit `connections` and `queues`, and its price
/// an hour; `None` when none does. `lone`: the deployment's only broker, which may be
/// the evaluation size.
fn broker_size(
    prices: &[BrokerPrice],
    connections: u64,
    queues: u64,
    lone: bool,
) -> Result<Option<(String, f64)>, String> {
    for (name, max_connections, max_queues) in BROKER_SIZES {
        if connections > max_connections
            || queues > max_queues
            || (name == EVALUATION_SIZE && !lone)
        {
            continue;
        }
        let price = prices
            .iter()
            .find(|price| price.name == name)
            .ok_or_else(|| format!("the broker prices have none for {name}"))?;
        return Ok(Some((name.to_owned(), price.hour)));
    }
    Ok(None)
}

/// The fewest online users (from 100 up to 100,000) at which `cheaper` costs less than
/// `than` a month, every other setting as given.
pub fn crossover(args: &Inputs, cheaper: Mode, than: Mode) -> Option<u64> {
    let mut users = 100;
    while users <= 100_000 {
        let at = Inputs {
            users,
            ..args.clone()
        };
        if let Ok(estimates) = estimate(&at)
            && estimates.of(cheaper).total() < estimates.of(than).total()
        {
            return Some(users);
        }
        users += if users < 1_000 { 100 } else { 500 };
    }
    None
}
