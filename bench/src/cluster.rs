//! `scripts/bench cluster`: the cluster fire drill. Users poll in cursor mode while a
//! backend publishes to them, retrying a failed publish with the same event, first on a
//! single private node (classic queues, the single-instance model) and on a 3-node
//! cluster behind HAProxy (quorum queues) with no faults: delivery latency side by
//! side. Then on the cluster, a rolling restart of all three nodes (`stop_app`, each
//! down for a while in turn) and a `kill -9` of one: what the users and the backend
//! saw, through the product as users run it (two local servers over HTTP; the
//! functions on a Lambda Runtime API), on the user's own queue and on `device=`
//! queues, and through the library alone. For contrast, classic queues on the cluster
//! and the guide's mode.

use std::{sync::Arc, time::Duration};

use longpoll::topology::QueueType;
use longpoll_testkit::{
    cluster::PrivateCluster,
    drill::{
        self, Devices, Load, Marks, Product, Report, functions::Functions, library::Library,
        servers::Servers,
    },
    private_node,
};
use tokio::time::sleep;

use crate::stats::{ms, percentile_ms};

/// The cluster's HAProxy port (the nodes on the next three), clear of the tests' one.
const BENCH_CLUSTER_PORT: u16 = 5760;
/// How long after publishing stops every routed event may take to arrive.
const DRAIN: Duration = Duration::from_secs(60);
/// The time between two faults, and before the first.
const SETTLE: Duration = Duration::from_secs(15);

#[derive(clap::Args, Clone)]
pub struct Options {
    #[arg(long, default_value_t = 400)]
    pub users: usize,
    /// Broker connections the library's users poll through, as that many Lambda
    /// instances.
    #[arg(long, default_value_t = 20)]
    pub instances: usize,
    /// Events per second the backend publishes.
    #[arg(long, default_value_t = 40)]
    pub rate: u64,
    /// Seconds of the fault-free runs.
    #[arg(long, default_value_t = 30)]
    pub steady: u64,
    /// Seconds each node stays down.
    #[arg(long, default_value_t = 20)]
    pub down: u64,
    /// Seconds the last fault's node hangs before it stops (below the nodes' 60 s
    /// net_ticktime, past which the others would take it for a partition).
    #[arg(long, default_value_t = 30)]
    pub hang: u64,
    /// The single node to compare with (`rabbitmqctl -n`), at AMQP_URL.
    #[arg(long)]
    pub node: String,
    /// The drills to run, of single, quorum, servers-faults, servers-devices-faults,
    /// functions-faults, functions-devices-faults, library-faults,
    /// library-devices-faults, classic-faults and quorum-guide-faults.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "single,quorum,servers-faults,servers-devices-faults,functions-faults,functions-devices-faults,library-faults"
    )]
    pub cases: Vec<String>,
}

/// How a drill's users and backend reach the broker.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Through {
    Library,
    Servers,
    Functions,
}

impl Through {
    fn as_str(self) -> &'static str {
        match self {
            Through::Library => "library",
            Through::Servers => "2 local servers, HTTP",
            Through::Functions => "functions, Runtime API",
        }
    }
}

/// One drill: its name for `--cases`, and what it runs.
struct Case {
    name: &'static str,
    through: Through,
    /// On the cluster (else the single node).
    cluster: bool,
    queues: QueueType,
    cursor: bool,
    devices: Devices,
    faults: bool,
}

const fn case(
    name: &'static str,
    through: Through,
    queues: QueueType,
    devices: Devices,
    faults: bool,
) -> Case {
    Case {
        name,
        through,
        cluster: true,
        queues,
        cursor: true,
        devices,
        faults,
    }
}

/// Every drill the bench knows, in the order they run.
const CASES: [Case; 10] = [
    Case {
        cluster: false,
        ..case(
            "single",
            Through::Library,
            QueueType::Classic,
            Devices::None,
            false,
        )
    },
    case(
        "quorum",
        Through::Library,
        QueueType::Quorum,
        Devices::None,
        false,
    ),
    case(
        "servers-faults",
        Through::Servers,
        QueueType::Quorum,
        Devices::None,
        true,
    ),
    case(
        "servers-devices-faults",
        Through::Servers,
        QueueType::Quorum,
        Devices::All,
        true,
    ),
    case(
        "functions-faults",
        Through::Functions,
        QueueType::Quorum,
        Devices::None,
        true,
    ),
    case(
        "functions-devices-faults",
        Through::Functions,
        QueueType::Quorum,
        Devices::All,
        true,
    ),
    case(
        "library-faults",
        Through::Library,
        QueueType::Quorum,
        Devices::None,
        true,
    ),
    case(
        "library-devices-faults",
        Through::Library,
        QueueType::Quorum,
        Devices::All,
        true,
    ),
    case(
        "classic-faults",
        Through::Library,
        QueueType::Classic,
        Devices::None,
        true,
    ),
    Case {
        cursor: false,
        ..case(
            "quorum-guide-faults",
            Through::Library,
            QueueType::Quorum,
            Devices::None,
            true,
        )
    },
];

/// One drill's line in the table.
struct Row {
    case: &'static Case,
    report: Report,
    /// Broker memory (all nodes) the drill's users added, per user, in KiB.
    memory_per_user: f64,
}

pub async fn run(options: &Options) {
    let single_url =
        std::env::var("AMQP_URL").unwrap_or_else(|_| longpoll::config::DEFAULT_AMQP_URL.to_owned());
    let single_url = single_url.as_str();
    for wanted in &options.cases {
        assert!(
            CASES.iter().any(|case| case.name == wanted),
            "unknown case {wanted}"
        );
    }
    let mut rows = Vec::new();
    for case in CASES
        .iter()
        .filter(|case| options.cases.iter().any(|c| c == case.name))
    {
        let load = Load {
            users: options.users,
            rate: options.rate,
            hold: Duration::from_millis(5500),
            retry: Duration::from_secs(2),
            cursor: case.cursor,
            devices: case.devices,
        };
        // A fresh cluster each time: no queues or leaders left by the previous drill.
        let cluster = case
            .cluster
            .then(|| PrivateCluster::start_on(BENCH_CLUSTER_PORT));
        let (url, nodes) = match &cluster {
            Some(cluster) => (
                cluster.url(),
                (1..=3).map(|n| cluster.node_name(n)).collect(),
            ),
            None => (single_url.to_owned(), vec![options.node.clone()]),
        };
        let faults = |marks: Marks| async {
            match (&cluster, case.faults) {
                (Some(cluster), true) => {
                    let (down, hang) = (options.down, options.hang);
                    let (down, hang) = (Duration::from_secs(down), Duration::from_secs(hang));
                    maintenance_window_and_crash(cluster, marks, down, hang).await
                }
                _ => sleep(Duration::from_secs(options.steady)).await,
            }
        };
        let before = memory_kib(&nodes);
        let report = match case.through {
            Through::Library => {
                let library = Arc::new(Library::new(&url, options.instances, case.queues));
                let report = drill_on(library.clone(), &load, faults).await;
                library.close().await;
                report
            }
            Through::Servers => {
                let servers = Servers::start(2, &url, case.queues, load.hold, &[]).await;
                drill_on(Arc::new(servers), &load, faults).await
            }
            Through::Functions => {
                let functions = Functions::start(load.users, &url, case.queues, load.hold).await;
                drill_on(Arc::new(functions), &load, faults).await
            }
        };
        // The users' queues outlive the drill (they expire after 30 minutes).
        let memory_per_user = (memory_kib(&nodes) - before) / options.users.max(1) as f64;
        eprintln!("{}: {report}", case.name);
        rows.push(Row {
            case,
            report,
            memory_per_user,
        });
    }
    print(options, &rows);
}

async fn drill_on<P: Product, Fut: Future<Output = ()>>(
    product: Arc<P>,
    load: &Load,
    faults: impl FnOnce(Marks) -> Fut,
) -> Report {
    drill::run(product, load, DRAIN, faults).await
}

/// Each node in turn leaves for `down` and comes back; node 2 crashes and is back after
/// `down`; node 3 hangs for `hang` (a stop that takes minutes looks so to its clients),
/// then stops for `down` and comes back. Each fault marked when it starts.
async fn maintenance_window_and_crash(
    cluster: &PrivateCluster,
    marks: Marks,
    down: Duration,
    hang: Duration,
) {
    let settle = SETTLE;
    sleep(settle).await;
    for node in 1..=3 {
        marks.mark();
        let stopping = std::time::Instant::now();
        tokio::task::block_in_place(|| cluster.stop_node(node));
        eprintln!(
            "stop_app of node {node} took {:.1} s",
            stopping.elapsed().as_secs_f64()
        );
        sleep(down).await;
        tokio::task::block_in_place(|| cluster.start_node(node));
        sleep(settle).await;
    }
    marks.mark();
    tokio::task::block_in_place(|| cluster.kill_node(2));
    sleep(down).await;
    tokio::task::block_in_place(|| cluster.start_node(2));
    sleep(settle).await;
    marks.mark();
    tokio::task::block_in_place(|| cluster.freeze_node(3));
    sleep(hang).await;
    tokio::task::block_in_place(|| {
        cluster.thaw_node(3);
        cluster.stop_node(3);
    });
    sleep(down).await;
    tokio::task::block_in_place(|| cluster.start_node(3));
    sleep(settle).await;
}

/// The total memory of `nodes`' Erlang VMs, in KiB.
fn memory_kib(nodes: &[String]) -> f64 {
    nodes
        .iter()
        .map(|node| {
            let bytes = private_node::ctl(node, &["eval", "erlang:memory(total)."]);
            bytes.trim().parse::<f64>().unwrap_or(f64::NAN) / 1024.0
        })
        .sum()
}

fn print(options: &Options, rows: &[Row]) {
    println!(
        "### A node restart under load\n\n{} users polling (in cursor mode unless the row says the guide's; 5.5 s holds): through two local servers over HTTP (each user polling one, a browser's patience of the hold plus 4.5 s), through the functions on a Lambda Runtime API (two processes of each), or through the library over {} connections, as {} Lambda instances would. A backend publishing {} events/s to them in turn (through the servers in turn, or `publish-event`), retrying a failed publish with the same event after the 503's `Retry-After` (2 s). The cluster: three private nodes joined, HAProxy (TCP, round-robin, health-checked every second) in front, as Amazon MQ's `CLUSTER_MULTI_AZ` endpoint. Faults: each node stopped (`stop_app`) for {} s in turn, {} s apart, then one node killed (`kill -9`) and back after {} s, then one node hung (its VM stopped with `SIGSTOP`: it takes connections and answers nothing, as a node stuck in a long `stop_app` does) for {} s before it stops for {} s. Lost: answered `routed: true`, never received ({} s drain).\n",
        options.users,
        options.instances,
        options.instances,
        options.rate,
        options.down,
        SETTLE.as_secs(),
        options.down,
        options.hang,
        options.down,
        DRAIN.as_secs()
    );
    println!(
        "| Through | Broker | User queues | Queue per | Mode | Faults | Routed | Lost | Redelivered | Wrongly `routed: false` | Publishes retried | Polls failed (unanswered) | Early empty answers | Longest gap | p50 ms | p99 ms | Recovery per fault | Queues declared in | Broker KiB/user |"
    );
    println!(
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    );
    for row in rows {
        let (case, report) = (row.case, &row.report);
        let recoveries: Vec<String> = report
            .recoveries
            .iter()
            .map(|recovery| format!("{:.1} s", recovery.as_secs_f64()))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} of {} ({}) | {} | {:.1} s | {} | {} | {} | {:.1} s | {:.1} |",
            case.through.as_str(),
            if case.cluster {
                "3-node cluster"
            } else {
                "single node"
            },
            case.queues.as_str(),
            match case.devices {
                Devices::None => "user",
                Devices::Half => "user or tab",
                Devices::All => "tab (`device=`)",
            },
            if case.cursor { "cursor" } else { "guide" },
            if case.faults {
                "rolling restart, kill -9, a hung node"
            } else {
                "none"
            },
            report.routed,
            report.missing,
            report.redelivered,
            report.wrongly_unrouted,
            report.retried_publishes,
            report.failed_polls,
            report.failed_polls + report.answered_polls,
            report.unanswered_polls,
            report.early_empty_polls,
            report.longest_gap.as_secs_f64(),
            ms(percentile_ms(&report.latencies, 0.5)),
            ms(percentile_ms(&report.latencies, 0.99)),
            if recoveries.is_empty() {
                "–".to_owned()
            } else {
                recoveries.join(", ")
            },
            report.declared_in.as_secs_f64(),
            row.memory_per_user,
        );
    }
    println!(
        "\nRedelivered: events a user received again after having them (cursor mode hands back what the next poll has not acknowledged yet, and a client drops it by id; in the guide's mode an ack lost with its node's connection puts the event back in the queue). In the guide's mode a poll acknowledges what it returns before answering, so an answer lost on its way to the browser loses its events by design; no answer was lost on its way in these runs (none unanswered), so its Lost column counts what the broker and the servers lost. Early empty answers: polls answered with no event before half their hold, which a browser follows with another poll at once. Longest gap: the longest any user went between two answered polls. Recovery per fault: from the fault until every user whose polls failed before the next fault had one answered again (the reconnect herd), for the three restarts, the crash and the hung node in turn. Queues declared in: every user's first poll (which declares the queue, then holds), 100 at a time, retried after 2 s on a 503 (before the drill's clock starts). Broker KiB/user: the nodes' memory after the drill less before it, over the users."
    );
}
