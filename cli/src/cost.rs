//! `longpoll cost`: what a month of long polling costs, and how big a broker it needs, on
//! standard Lambda, on Lambda Managed Instances, and as the local server in containers;
//! and from how many online users each one is the cheaper.
//!
//! The model, per online user: one poll is always held (a poll every `hold` seconds,
//! plus one more for each event, which ends a poll early), so each online user is one
//! request every 5.5 s by default, to the front door (API Gateway's HTTP API, billed per
//! request, or an Application Load Balancer, billed by the hour and by capacity unit)
//! and to Lambda. On standard Lambda each held poll is one execution (billed
//! for its whole hold) and one AMQP connection. On managed instances a process holds
//! `polls_per_environment` polls on one connection, and instances are billed by the hour
//! (plus Lambda's management fee and request charge). In containers one local-server
//! process holds `polls_per_task` polls behind a load balancer. Every poll writes
//! `log_bytes_per_poll` of logs. The functions' metrics are log lines too (embedded
//! metric format): `metric_bytes_per_poll` a poll on standard Lambda, one flush of
//! `metric_bytes_per_flush` a second per execution environment on managed instances,
//! plus CloudWatch's monthly price of each custom metric; in containers Prometheus
//! scrapes them for nothing. Each online user has three queues on the broker (their
//! queue, its binding record, presence). Prices are list prices in us-east-1 at the time
//! of writing; every one is a flag.

use clap::{Args, ValueEnum};

/// What the browsers' and backends' requests arrive through (`FrontDoor`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontDoor {
    /// API Gateway's HTTP API: a price per request.
    HttpApi,
    /// An Application Load Balancer: an hourly price and capacity units.
    Alb,
}

/// The longest hold the template allows (`PollHoldSeconds`): API Gateway's HTTP API
/// stops an integration at 30 s, and a poll needs 1.5 s past its hold.
const LONGEST_HOLD_SECONDS: f64 = 25.0;

/// The load, the deployment's settings, and the prices.
#[derive(Args, Clone, Debug)]
pub struct CostArgs {
    /// Users online at once, at the daily peak.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Hours a day they are online.
    #[arg(long, default_value_t = 8.0)]
    pub hours_per_day: f64,
    /// Events each online user receives an hour.
    #[arg(long, default_value_t = 60.0)]
    pub events_per_user_hour: f64,
    /// Days in the month.
    #[arg(long, default_value_t = 30.0)]
    pub days: f64,
    /// How long a poll is held with nothing to return, seconds (`PollHoldSeconds`, at
    /// most 25).
    #[arg(long, default_value_t = 5.5)]
    pub hold_seconds: f64,
    /// Lambda's front door (`FrontDoor`): http-api or alb.
    #[arg(long, value_enum, default_value_t = FrontDoor::HttpApi)]
    pub front_door: FrontDoor,
    /// Bytes a poll moves through a load balancer, request and answer (its capacity
    /// units count processed bytes).
    #[arg(long, default_value_t = 1500.0)]
    pub bytes_per_poll: f64,
    /// Log bytes per poll (about 1,300 at INFO; prod logs at WARN, nearly nothing).
    #[arg(long, default_value_t = 1300.0)]
    pub log_bytes_per_poll: f64,
    /// Standard Lambda: metric bytes a poll writes to the log (embedded metric format;
    /// longpoll::lambda::emf::EMF_BYTES_PER_POLL, checked by poll-events' tests/metrics.rs).
    #[arg(long, default_value_t = longpoll::lambda::emf::EMF_BYTES_PER_POLL as f64)]
    pub metric_bytes_per_poll: f64,
    /// Managed instances: metric bytes one execution environment writes a second, at most
    /// (longpoll::lambda::emf::EMF_BYTES_PER_FLUSH).
    #[arg(long, default_value_t = longpoll::lambda::emf::EMF_BYTES_PER_FLUSH as f64)]
    pub metric_bytes_per_flush: f64,
    /// CloudWatch custom metrics the functions emit (each name with each set of label
    /// values: outcomes, error codes, broker operations and causes, caps).
    #[arg(long, default_value_t = 40)]
    pub custom_metrics: u64,
    /// CloudWatch: $ per custom metric a month (the first 10,000).
    #[arg(long, default_value_t = 0.30)]
    pub metric_month: f64,
    /// Standard Lambda: the poll function's memory, GB.
    #[arg(long, default_value_t = 0.125)]
    pub lambda_memory_gb: f64,
    /// Standard Lambda: $ per GB-second (arm64).
    #[arg(long, default_value_t = 0.000_013_333_4)]
    pub lambda_gb_second: f64,
    /// Lambda: $ per million requests (standard and managed instances).
    #[arg(long, default_value_t = 0.20)]
    pub lambda_per_million: f64,
    /// API Gateway HTTP API: $ per million requests.
    #[arg(long, default_value_t = 1.00)]
    pub http_api_per_million: f64,
    /// CloudWatch Logs: $ per GB ingested.
    #[arg(long, default_value_t = 0.50)]
    pub log_per_gb: f64,
    /// Managed instances: polls one process holds (measured: 1,000; bench/RESULTS.md).
    #[arg(long, default_value_t = 1000)]
    pub polls_per_environment: u64,
    /// Managed instances: vCPUs per execution environment (2 GB each).
    #[arg(long, default_value_t = 1)]
    pub vcpus_per_environment: u64,
    /// Managed instances: the instance type's vCPUs (c7g.large: 2).
    #[arg(long, default_value_t = 2)]
    pub vcpus_per_instance: u64,
    /// Managed instances: $ an instance-hour (c7g.large on demand).
    #[arg(long, default_value_t = 0.0725)]
    pub instance_hour: f64,
    /// Managed instances: Lambda's management fee, a fraction of the instance price.
    #[arg(long, default_value_t = 0.15)]
    pub management_fee: f64,
    /// Managed instances: instances kept running off-peak (spread over zones).
    #[arg(long, default_value_t = 3)]
    pub min_instances: u64,
    /// Containers: polls one local-server process holds (measured: 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub polls_per_task: u64,
    /// Containers: tasks kept running off-peak.
    #[arg(long, default_value_t = 2)]
    pub min_tasks: u64,
    /// Containers: $ a task-hour (Fargate arm64, 1 vCPU and 2 GB).
    #[arg(long, default_value_t = 0.039_5)]
    pub task_hour: f64,
    /// ALB (containers, or `--front-door alb`): $ a load-balancer hour.
    #[arg(long, default_value_t = 0.0225)]
    pub load_balancer_hour: f64,
    /// ALB: $ per load-balancer capacity unit hour (an LCU: 3,000 open connections, 25
    /// new a second, or 1 GB an hour processed, 0.4 GB for Lambda targets).
    #[arg(long, default_value_t = 0.008)]
    pub lcu_hour: f64,
    /// Amazon MQ: $ an hour for each single-instance broker size, smallest first, as
    /// NAME=PRICE; the sizes' connection and queue limits are built in.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mq.t3.micro=0.0312,mq.m5.large=0.288,mq.m5.xlarge=0.576,mq.m5.2xlarge=1.152,mq.m5.4xlarge=2.304"
    )]
    pub broker_prices: Vec<String>,
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

/// One way of running it, for one month.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub name: &'static str,
    pub compute: f64,
    pub requests: f64,
    /// API Gateway, or the load balancer.
    pub front: f64,
    pub logs: f64,
    /// The functions' metrics: their log bytes and CloudWatch's price per metric.
    pub metrics: f64,
    pub broker_size: String,
    pub broker: f64,
    pub connections: u64,
    pub queues: u64,
}

impl Estimate {
    pub fn total(&self) -> f64 {
        self.compute + self.requests + self.front + self.logs + self.metrics + self.broker
    }
}

/// An Application Load Balancer for a month: its hours, and the capacity units of the
/// busiest dimension while users are online (each browser keeps one connection open,
/// so new connections stay few).
fn load_balancer(args: &CostArgs, polls_per_hour: f64, lambda_targets: bool) -> f64 {
    let online_hours = args.hours_per_day * args.days;
    let gb_per_lcu_hour = if lambda_targets { 0.4 } else { 1.0 };
    let lcus = (args.users as f64 / 3000.0)
        .max(polls_per_hour * args.bytes_per_poll / 1e9 / gb_per_lcu_hour)
        .max(1.0);
    args.load_balancer_hour * 24.0 * args.days + lcus * args.lcu_hour * online_hours
}

/// The three ways, at `args.users`.
pub fn estimate(args: &CostArgs) -> Result<[Estimate; 3], String> {
    if !(args.hold_seconds > 0.0 && args.hold_seconds <= LONGEST_HOLD_SECONDS) {
        return Err(format!(
            "--hold-seconds must be above 0 and at most {LONGEST_HOLD_SECONDS} (the HTTP API stops an integration at 30 s)"
        ));
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
    let broker = |connections: u64| -> Result<(String, f64), String> {
        let (name, price) = broker_size(&args.broker_prices, connections, queues)?;
        Ok((name, price * month_hours))
    };

    // Standard: every online user holds one execution all the time they are online.
    let gb_seconds = users * online_hours * 3600.0 * args.lambda_memory_gb;
    let standard_connections = args.users;
    let (size, broker_cost) = broker(standard_connections)?;
    let standard = Estimate {
        name: "standard Lambda",
        compute: gb_seconds * args.lambda_gb_second,
        requests: lambda_requests,
        front: lambda_front,
        logs,
        metrics: standard_metrics,
        broker_size: size,
        broker: broker_cost,
        connections: standard_connections,
        queues,
    };

    // Managed instances: environments for the peak, instances for their vCPUs.
    let environments = args.users.div_ceil(args.polls_per_environment.max(1));
    let peak_instances = (environments * args.vcpus_per_environment)
        .div_ceil(args.vcpus_per_instance.max(1))
        .max(args.min_instances);
    let instance_hours = peak_instances as f64 * online_hours
        + args.min_instances as f64 * (month_hours - online_hours);
    let (size, broker_cost) = broker(environments)?;
    // Every environment flushes once a second while it runs: the peak's while users are
    // online, one per instance kept off-peak.
    let environment_seconds = 3600.0
        * (environments as f64 * online_hours
            + args.min_instances as f64 * (month_hours - online_hours));
    let managed_metrics =
        environment_seconds * args.metric_bytes_per_flush / 1e9 * args.log_per_gb + metric_series;
    let managed = Estimate {
        name: "Lambda Managed Instances",
        compute: instance_hours * args.instance_hour * (1.0 + args.management_fee),
        requests: lambda_requests,
        front: lambda_front,
        logs,
        metrics: managed_metrics,
        broker_size: size,
        broker: broker_cost,
        connections: environments,
        queues,
    };

    // Containers: local-server tasks behind a load balancer.
    let tasks = args
        .users
        .div_ceil(args.polls_per_task.max(1))
        .max(args.min_tasks);
    let task_hours =
        tasks as f64 * online_hours + args.min_tasks as f64 * (month_hours - online_hours);
    let (size, broker_cost) = broker(tasks)?;
    let containers = Estimate {
        name: "local server in containers",
        compute: task_hours * args.task_hour,
        requests: 0.0,
        front: load_balancer(args, users * polls_per_user_hour, false),
        logs,
        // Prometheus scrapes the local server's /metrics: nothing to ingest or buy.
        metrics: 0.0,
        broker_size: size,
        broker: broker_cost,
        connections: tasks,
        queues,
    };
    Ok([standard, managed, containers])
}

/// The smallest broker size whose limits fit `connections` and `queues`, and its price.
fn broker_size(prices: &[String], connections: u64, queues: u64) -> Result<(String, f64), String> {
    for (name, max_connections, max_queues) in BROKER_SIZES {
        if connections > max_connections || queues > max_queues {
            continue;
        }
        let price = prices
            .iter()
            .find_map(|entry| entry.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("--broker-prices has no price for {name}"))?
            .parse::<f64>()
            .map_err(|_| format!("--broker-prices: the price of {name} is not a number"))?;
        return Ok((name.to_owned(), price));
    }
    Err(format!(
        "{connections} connections and {queues} queues are more than one broker holds (mq.m5.4xlarge: 40,000 and 240,000); split the users over several"
    ))
}

/// The fewest online users (from 100 up to 100,000) at which `cheaper` costs less than
/// `than` a month, every other setting as given.
pub fn crossover(args: &CostArgs, cheaper: usize, than: usize) -> Option<u64> {
    let mut users = 100;
    while users <= 100_000 {
        let at = CostArgs {
            users,
            ..args.clone()
        };
        if let Ok(estimates) = estimate(&at)
            && estimates[cheaper].total() < estimates[than].total()
        {
            return Some(users);
        }
        users += if users < 1_000 { 100 } else { 500 };
    }
    None
}

/// The report `longpoll cost` prints: a Markdown table and the crossover points.
pub fn report(args: &CostArgs) -> Result<String, String> {
    let estimates = estimate(args)?;
    let money = |value: f64| format!("${}", thousands(value.round() as u64));
    let row = |label: &str, value: &dyn Fn(&Estimate) -> String| {
        let cells: Vec<String> = estimates.iter().map(value).collect();
        format!("| {label} | {} |\n", cells.join(" | "))
    };
    let mut out = format!(
        "A month for {} users online at once, {} h a day, {} events per user-hour, {} days; polls held {} s, Lambda behind {}, {} log bytes a poll:\n\n",
        thousands(args.users),
        args.hours_per_day,
        args.events_per_user_hour,
        args.days,
        args.hold_seconds,
        match args.front_door {
            FrontDoor::HttpApi => "API Gateway's HTTP API",
            FrontDoor::Alb => "an Application Load Balancer",
        },
        thousands(args.log_bytes_per_poll.round() as u64),
    );
    out += &format!(
        "| | {} |\n|---|---|---|---|\n",
        estimates
            .iter()
            .map(|estimate| estimate.name)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    out += &row("compute", &|e| money(e.compute));
    out += &row("Lambda requests", &|e| money(e.requests));
    out += &row("API Gateway, or load balancer", &|e| money(e.front));
    out += &row("logs", &|e| money(e.logs));
    out += &row("metrics (CloudWatch; Prometheus in containers)", &|e| {
        money(e.metrics)
    });
    out += &row("broker (Amazon MQ, single instance)", &|e| {
        format!("{} {}", e.broker_size, money(e.broker))
    });
    out += &row("**total**", &|e| format!("**{}**", money(e.total())));
    out += &row("per online user", &|e| {
        format!("${:.3}", e.total() / args.users as f64)
    });
    out += &row("AMQP connections at the peak", &|e| {
        thousands(e.connections)
    });
    out += &row("broker queues", &|e| thousands(e.queues));
    out += "\n";
    let from = |users: Option<u64>| match users {
        Some(users) => format!("from {} online users", thousands(users)),
        None => "at no size up to 100,000 online users".to_owned(),
    };
    out += &format!(
        "Managed instances cost less than standard Lambda {}; containers cost less than standard Lambda {}, and less than managed instances {}.\n",
        from(crossover(args, 1, 0)),
        from(crossover(args, 2, 0)),
        from(crossover(args, 2, 1)),
    );
    Ok(out)
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: CostArgs,
    }

    fn args(extra: &[&str]) -> CostArgs {
        let mut argv = vec!["cost"];
        argv.extend_from_slice(extra);
        Wrapper::parse_from(argv).args
    }

    #[test]
    fn standard_lambda_costs_what_one_execution_per_online_user_costs() {
        // One user, 8 h a day for 30 days, no events, no logs: 240 h of 128 MB, and a
        // request every 5.5 s to Lambda and to the HTTP API.
        let one = args(&[
            "--users",
            "1",
            "--events-per-user-hour",
            "0",
            "--log-bytes-per-poll",
            "0",
        ]);
        let [standard, _, _] = estimate(&one).unwrap();
        let polls = 240.0 * 3600.0 / 5.5;
        assert!((standard.compute - 240.0 * 3600.0 * 0.125 * 0.000_013_333_4).abs() < 1e-9);
        assert!((standard.requests - polls / 1e6 * 0.2).abs() < 1e-9);
        assert!((standard.front - polls / 1e6).abs() < 1e-9);
        assert_eq!(standard.connections, 1);
        assert_eq!(standard.queues, 3);
    }

    #[test]
    fn managed_instances_cost_at_most_a_quarter_per_user_at_ten_thousand() {
        let [standard, managed, _] = estimate(&args(&[])).unwrap();
        assert!(
            managed.total() * 4.0 <= standard.total(),
            "{managed:?} vs {standard:?}"
        );
        // Online users / 500 connections at most.
        assert!(managed.connections <= 10_000 / 500);
    }

    #[test]
    fn the_broker_is_the_smallest_that_holds_the_connections_and_queues() {
        let [standard, managed, containers] = estimate(&args(&["--users", "2000"])).unwrap();
        assert_eq!(standard.broker_size, "mq.m5.large");
        assert_eq!(managed.broker_size, "mq.m5.large"); // 6,000 queues
        assert_eq!(containers.broker_size, "mq.m5.large");
        let small = estimate(&args(&["--users", "100"])).unwrap();
        assert_eq!(small[0].broker_size, "mq.t3.micro");
        assert!(estimate(&args(&["--users", "100000"])).is_err());
    }

    #[test]
    fn an_alb_bills_hours_and_capacity_units_not_requests() {
        // 10,000 users, 5.5 s holds and 60 events an hour: 714.5 polls a user-hour of
        // 1,500 bytes each, 10.7 GB an hour through the ALB, 26.8 LCUs for Lambda targets.
        let alb = args(&["--front-door", "alb"]);
        let [standard, managed, containers] = estimate(&alb).unwrap();
        let polls_per_hour = 10_000.0 * (3600.0 / 5.5 + 60.0);
        let lcus = polls_per_hour * 1500.0 / 1e9 / 0.4;
        let expected = 0.0225 * 720.0 + lcus * 0.008 * 240.0;
        assert!((managed.front - expected).abs() < 1e-6, "{}", managed.front);
        assert_eq!(standard.front, managed.front);
        // Containers' targets are not Lambda: 1 GB an LCU-hour.
        let containers_lcus = polls_per_hour * 1500.0 / 1e9;
        assert!(
            (containers.front - (0.0225 * 720.0 + containers_lcus * 0.008 * 240.0)).abs() < 1e-6
        );
        let [_, http_api, _] = estimate(&args(&[])).unwrap();
        assert!(managed.front * 10.0 < http_api.front);
    }

    #[test]
    fn a_longer_hold_means_fewer_requests() {
        let [_, short, _] = estimate(&args(&[])).unwrap();
        let [_, long, _] = estimate(&args(&["--hold-seconds", "25"])).unwrap();
        // 714.5 polls a user-hour against 204.
        assert!((long.requests / short.requests - 204.0 / (3600.0 / 5.5 + 60.0)).abs() < 1e-9);
        assert!(estimate(&args(&["--hold-seconds", "26"])).is_err());
        assert!(estimate(&args(&["--hold-seconds", "0"])).is_err());
    }

    /// The goal: 10,000 online users on managed instances at no more than $0.10
    /// per online user-month, with the cheapest configuration (25 s holds, an ALB, logs
    /// at WARN).
    #[test]
    fn the_cheapest_configuration_costs_at_most_ten_cents_per_user() {
        let cheapest = args(&[
            "--hold-seconds",
            "25",
            "--front-door",
            "alb",
            "--log-bytes-per-poll",
            "0",
        ]);
        let [_, managed, _] = estimate(&cheapest).unwrap();
        assert!(managed.total() / 10_000.0 <= 0.10, "{managed:?}");
    }

    #[test]
    fn crossovers_are_where_the_totals_cross() {
        let base = args(&[]);
        let users = crossover(&base, 1, 0).expect("managed wins at some size");
        let at = |users: u64| {
            estimate(&CostArgs {
                users,
                ..base.clone()
            })
            .unwrap()
        };
        assert!(at(users)[1].total() < at(users)[0].total());
        if users > 100 {
            let below = at(users - if users <= 1_000 { 100 } else { 500 });
            assert!(below[1].total() >= below[0].total());
        }
    }
}
