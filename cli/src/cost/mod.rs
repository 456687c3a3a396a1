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
//!
//! Managed instances and containers run as many processes as the held polls need, or
//! as their CPU needs if that is more: CPU per idle poll and per event, measured by
//! `scripts/bench` (`measured` names the runs), with at most `--cpu-target` of each
//! vCPU busy at the peak.
//!
//! Layout: `measured` (the CPU figures and the bench runs they came from), `args` (the
//! flags, read into plain inputs), `model` (inputs in, an estimate per `Mode` out),
//! `report` (the table).

mod args;
mod measured;
mod model;
mod report;

pub use self::args::CostArgs;

/// The report for the flags `args`.
pub fn report(args: &CostArgs) -> Result<String, String> {
    report::report(&args.inputs())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{
        args::CostArgs,
        measured::{CpuCost, FUNCTION, LOCAL_SERVER},
        model::{Estimate, Inputs, Mode, crossover, estimate},
    };

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: CostArgs,
    }

    fn args(extra: &[&str]) -> Inputs {
        let mut argv = vec!["cost"];
        argv.extend_from_slice(extra);
        Wrapper::parse_from(argv).args.inputs()
    }

    /// The three estimates, in [`Mode::ALL`]'s order.
    fn three(args: &Inputs) -> Result<[Estimate; 3], String> {
        let estimates = estimate(args)?;
        Ok(Mode::ALL.map(|mode| estimates.of(mode).clone()))
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
        let [standard, _, _] = three(&one).unwrap();
        let polls = 240.0 * 3600.0 / 5.5;
        assert!((standard.compute - 240.0 * 3600.0 * 0.125 * 0.000_013_333_4).abs() < 1e-9);
        assert!((standard.requests - polls / 1e6 * 0.2).abs() < 1e-9);
        assert!((standard.front - polls / 1e6).abs() < 1e-9);
        assert_eq!(standard.connections, 1);
        assert_eq!(standard.queues, 3);
    }

    #[test]
    fn managed_instances_cost_at_most_a_quarter_per_user_at_ten_thousand() {
        let [standard, managed, _] = three(&args(&[])).unwrap();
        assert!(
            managed.total() * 4.0 <= standard.total(),
            "{managed:?} vs {standard:?}"
        );
        // Online users / 500 connections at most.
        assert!(managed.connections <= 10_000 / 500);
    }

    #[test]
    fn the_broker_is_the_smallest_that_holds_the_connections_and_queues() {
        let size = |estimate: &Estimate| estimate.brokers.as_ref().unwrap().describe();
        let [standard, managed, containers] = three(&args(&["--users", "2000"])).unwrap();
        assert_eq!(size(&standard), "mq.m5.large");
        assert_eq!(size(&managed), "mq.m5.large"); // 6,000 queues
        assert_eq!(size(&containers), "mq.m5.large");
        let small = three(&args(&["--users", "100"])).unwrap();
        assert_eq!(size(&small[0]), "mq.t3.micro");
    }

    #[test]
    fn past_one_broker_the_users_are_split_over_the_cheapest_brokers() {
        let size = |estimate: &Estimate| estimate.brokers.as_ref().unwrap().describe();
        // 300,000 queues: more than any one size holds. Five mq.m5.xlarge (60,000
        // queues each) cost what ten mq.m5.large do; the fewer win.
        let [standard, managed, _] = three(&args(&["--users", "100000"])).unwrap();
        assert_eq!(size(&managed), "5 × mq.m5.xlarge");
        let month = managed.brokers.as_ref().unwrap().month;
        assert!((month - 5.0 * 0.576 * 720.0).abs() < 1e-6, "{month}");
        // Every standard execution environment connects to every broker: 100,000
        // connections fit no broker, however many there are.
        let why = standard.brokers.clone().unwrap_err();
        assert!(why.contains("100000 connections"), "{why}");
        assert!(standard.total().is_infinite());
        // Clusters hold at most 5,000 quorum queues each, and cost three nodes.
        let clusters = args(&["--users", "100000", "--broker-cluster"]);
        let [_, managed, _] = three(&clusters).unwrap();
        let brokers = managed.brokers.unwrap();
        assert_eq!(brokers.describe(), "20 × mq.m5.large");
        assert!((brokers.month - 20.0 * 3.0 * 0.288 * 720.0).abs() < 1e-6);
        // A million users need more clusters than a deployment lists.
        let million = args(&["--users", "1000000", "--broker-cluster"]);
        assert!(three(&million).unwrap()[1].brokers.is_err());
    }

    #[test]
    fn an_alb_bills_hours_and_capacity_units_not_requests() {
        // 10,000 users, 5.5 s holds and 60 events an hour: 714.5 polls a user-hour of
        // 1,500 bytes each, 10.7 GB an hour through the ALB, 26.8 LCUs for Lambda targets.
        let alb = args(&["--front-door", "alb"]);
        let [standard, managed, containers] = three(&alb).unwrap();
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
        let [_, http_api, _] = three(&args(&[])).unwrap();
        assert!(managed.front * 10.0 < http_api.front);
    }

    #[test]
    fn a_longer_hold_means_fewer_requests() {
        let [_, short, _] = three(&args(&[])).unwrap();
        let [_, long, _] = three(&args(&["--hold-seconds", "25"])).unwrap();
        // 714.5 polls a user-hour against 204.
        assert!((long.requests / short.requests - 204.0 / (3600.0 / 5.5 + 60.0)).abs() < 1e-9);
        assert!(three(&args(&["--hold-seconds", "26"])).is_err());
        assert!(three(&args(&["--hold-seconds", "0"])).is_err());
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
        let [_, managed, _] = three(&cheapest).unwrap();
        assert!(managed.total() / 10_000.0 <= 0.10, "{managed:?}");
    }

    #[test]
    fn crossovers_are_where_the_totals_cross() {
        let base = args(&[]);
        let users =
            crossover(&base, Mode::Managed, Mode::Standard).expect("managed wins at some size");
        let at = |users: u64| {
            three(&Inputs {
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

    /// Part of the goal: the compute lines follow the measured CPU once it needs
    /// more processes than the held polls do.
    #[test]
    fn compute_follows_the_measured_cpu_when_it_needs_more_processes() {
        // Ten events a second to each of 10,000 users: CPU, not held polls, sizes both.
        let busy = args(&["--events-per-user-hour", "36000"]);
        let [_, managed, containers] = three(&busy).unwrap();
        let online_hours = 8.0 * 30.0;
        let off_peak = 720.0 - online_hours;
        let needed = |cpu: CpuCost| (cpu.vcpus(10_000.0, 5.5, 36_000.0) / 0.5).ceil() as u64;

        let tasks = needed(LOCAL_SERVER.cpu);
        assert!(tasks > 2, "more tasks than the held polls need: {tasks}");
        assert_eq!(containers.processes.unwrap().count, tasks);
        let task_hours = tasks as f64 * online_hours + 2.0 * off_peak;
        assert!((containers.compute - task_hours * 0.0395).abs() < 1e-6);

        let environments = needed(FUNCTION.cpu);
        assert!(
            environments > 10,
            "more environments than 1,000 polls each: {environments}"
        );
        assert_eq!(managed.processes.unwrap().count, environments);
        // One vCPU per environment, two per instance.
        let instance_hours = environments.div_ceil(2).max(3) as f64 * online_hours + 3.0 * off_peak;
        assert!((managed.compute - instance_hours * 0.0725 * 1.15).abs() < 1e-6);

        // At the defaults (60 events an hour) the held polls decide: 10 environments of
        // 1,000 polls, and the CPU alone needs fewer.
        let [_, managed, _] = three(&args(&[])).unwrap();
        let processes = managed.processes.unwrap();
        assert_eq!(processes.count, 10);
        assert!(processes.for_cpu < 10, "{processes:?}");
        // Doubling the CPU per event doubles what the CPU alone needs, within a process.
        let heavier = args(&[
            "--events-per-user-hour",
            "36000",
            "--function-event-us",
            &(2.0 * FUNCTION.cpu.event_us).to_string(),
        ]);
        let [_, heavier, _] = three(&heavier).unwrap();
        assert!(heavier.processes.unwrap().count >= 2 * environments - 1);
        assert!(three(&args(&["--cpu-target", "0"])).is_err());
    }

    #[test]
    fn a_broker_price_is_read_with_its_flag() {
        let parse = |price: &str| Wrapper::try_parse_from(["cost", "--broker-prices", price]);
        assert!(parse("mq.m5.large").is_err(), "no price");
        assert!(parse("mq.m5.large=cheap").is_err(), "not a number");
        let read = parse("mq.t3.micro=0.5").unwrap().args.inputs();
        assert_eq!(read.broker_prices[0].name, "mq.t3.micro");
        assert_eq!(read.broker_prices[0].hour, 0.5);
        // A size the load needs with no price is the model's error.
        let estimates = estimate(&Inputs {
            users: 2000,
            ..read
        })
        .unwrap();
        let why = estimates.of(Mode::Managed).brokers.clone().unwrap_err();
        assert!(why.contains("none for mq.m5.large"), "{why}");
    }
}
