//! `longpoll cost`'s flags, read into the model's plain [`Inputs`]: every flag has the
//! model's default, and `--broker-prices` is parsed as it is read.

use clap::{Args, ValueEnum};

use super::{
    measured::{CpuCost, FUNCTION, LOCAL_SERVER},
    model::{BrokerPrice, Deployment, FrontDoor, Inputs},
};

/// `--front-door`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontDoorFlag {
    /// API Gateway's HTTP API: a price per request.
    HttpApi,
    /// An Application Load Balancer: an hourly price and capacity units.
    Alb,
}

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
    /// Lambda's front door: http-api or alb.
    #[arg(long, value_enum, default_value_t = FrontDoorFlag::HttpApi)]
    pub front_door: FrontDoorFlag,
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
    /// Containers: vCPUs per task (the task price's size).
    #[arg(long, default_value_t = 1)]
    pub vcpus_per_task: u64,
    /// Managed instances: poll-events' CPU µs per idle poll (measured:
    /// `scripts/bench managed`, bench/RESULTS.md).
    #[arg(long, default_value_t = FUNCTION.cpu.idle_poll_us)]
    pub function_idle_poll_us: f64,
    /// Managed instances: poll-events' CPU µs per delivered event, beyond an idle poll
    /// (measured: `scripts/bench managed`).
    #[arg(long, default_value_t = FUNCTION.cpu.event_us)]
    pub function_event_us: f64,
    /// Containers: the local server's CPU µs per idle poll (measured: `scripts/bench
    /// cpu`, bench/RESULTS.md).
    #[arg(long, default_value_t = LOCAL_SERVER.cpu.idle_poll_us)]
    pub server_idle_poll_us: f64,
    /// Containers: the local server's CPU µs per delivered event (measured: `scripts/bench
    /// cpu`).
    #[arg(long, default_value_t = LOCAL_SERVER.cpu.event_us)]
    pub server_event_us: f64,
    /// Managed instances and containers: the share of each vCPU that may be busy at the
    /// peak; past it, more environments or tasks.
    #[arg(long, default_value_t = 0.5)]
    pub cpu_target: f64,
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
        value_parser = broker_price,
        default_value = "mq.t3.micro=0.0312,mq.m5.large=0.288,mq.m5.xlarge=0.576,mq.m5.2xlarge=1.152,mq.m5.4xlarge=2.304"
    )]
    pub broker_prices: Vec<BrokerPrice>,
    /// Price three-node clusters (quorum queues, at most 5,000 users each) instead of
    /// single-instance brokers.
    #[arg(long)]
    pub broker_cluster: bool,
}

/// One `--broker-prices` entry, `NAME=PRICE` ($ an hour).
fn broker_price(entry: &str) -> Result<BrokerPrice, String> {
    let (name, price) = entry
        .split_once('=')
        .ok_or_else(|| format!("{entry:?}: expected NAME=PRICE, such as mq.m5.large=0.288"))?;
    let hour = price
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("{entry:?}: the price of {name} is not a number"))?;
    Ok(BrokerPrice {
        name: name.trim().to_owned(),
        hour,
    })
}

impl CostArgs {
    /// The model's inputs, as the flags give them.
    pub fn inputs(&self) -> Inputs {
        Inputs {
            users: self.users,
            hours_per_day: self.hours_per_day,
            events_per_user_hour: self.events_per_user_hour,
            days: self.days,
            hold_seconds: self.hold_seconds,
            front_door: match self.front_door {
                FrontDoorFlag::HttpApi => FrontDoor::HttpApi,
                FrontDoorFlag::Alb => FrontDoor::Alb,
            },
            bytes_per_poll: self.bytes_per_poll,
            log_bytes_per_poll: self.log_bytes_per_poll,
            metric_bytes_per_poll: self.metric_bytes_per_poll,
            metric_bytes_per_flush: self.metric_bytes_per_flush,
            custom_metrics: self.custom_metrics,
            metric_month: self.metric_month,
            lambda_memory_gb: self.lambda_memory_gb,
            lambda_gb_second: self.lambda_gb_second,
            lambda_per_million: self.lambda_per_million,
            http_api_per_million: self.http_api_per_million,
            log_per_gb: self.log_per_gb,
            polls_per_environment: self.polls_per_environment,
            vcpus_per_environment: self.vcpus_per_environment,
            vcpus_per_instance: self.vcpus_per_instance,
            instance_hour: self.instance_hour,
            management_fee: self.management_fee,
            min_instances: self.min_instances,
            polls_per_task: self.polls_per_task,
            min_tasks: self.min_tasks,
            vcpus_per_task: self.vcpus_per_task,
            task_hour: self.task_hour,
            function_cpu: CpuCost {
                idle_poll_us: self.function_idle_poll_us,
                event_us: self.function_event_us,
            },
            server_cpu: CpuCost {
                idle_poll_us: self.server_idle_poll_us,
                event_us: self.server_event_us,
            },
            cpu_target: self.cpu_target,
            load_balancer_hour: self.load_balancer_hour,
            lcu_hour: self.lcu_hour,
            broker_prices: self.broker_prices.clone(),
            deployment: match self.broker_cluster {
                true => Deployment::Cluster,
                false => Deployment::Single,
            },
        }
    }
}
