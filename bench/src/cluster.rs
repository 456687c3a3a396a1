//! `scripts/bench cluster`: the cluster fire drill at production scale. Users poll in
//! cursor mode over many connections (as that many Lambda instances would) while a
//! backend publishes to them, first on a single private node (classic queues, the
//! single-instance model) and on a 3-node cluster behind HAProxy (quorum queues), with
//! no faults: delivery latency side by side. Then on the cluster, a rolling restart of
//! all three nodes (`stop_app`, each down for a while in turn) and a `kill -9` of one:
//! what the users and the backend saw, with quorum queues and, for contrast, with the
//! classic queues a cluster deployment ran before them.

use std::time::Duration;

use longpoll::topology::QueueType;
use longpoll_testkit::{
    cluster::PrivateCluster,
    drill::{self, Load, Marks, Report},
    private_node,
};
use tokio::time::sleep;

use crate::stats::{ms, percentile_ms};

/// The cluster's HAProxy port (the nodes on the next three), clear of the tests' one.
const BENCH_CLUSTER_PORT: u16 = 5760;
/// How long after publishing stops every routed event may take to arrive.
const DRAIN: Duration = Duration::from_secs(30);

#[derive(clap::Args, Clone)]
pub struct Options {
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    /// Broker connections the users poll through, as that many Lambda instances.
    #[arg(long, default_value_t = 20)]
    pub instances: usize,
    /// Events per second the backend publishes.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds of the fault-free runs.
    #[arg(long, default_value_t = 30)]
    pub steady: u64,
    /// Seconds each node stays down.
    #[arg(long, default_value_t = 20)]
    pub down: u64,
    /// The single node to compare with (`rabbitmqctl -n`), at AMQP_URL.
    #[arg(long)]
    pub node: String,
    /// The drills to run, of single, quorum, quorum-faults, classic-faults and
    /// quorum-guide-faults (the users in the guide's mode).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "single,quorum,quorum-faults,classic-faults"
    )]
    pub cases: Vec<String>,
}

/// One drill's line in the table.
struct Row {
    broker: &'static str,
    queues: QueueType,
    cursor: bool,
    faults: &'static str,
    report: Report,
    /// Broker memory (all nodes) the drill's users added, per user, in KiB.
    memory_per_user: f64,
}

pub async fn run(single_url: &str, options: &Options) {
    let load = |queue_type, cursor| Load {
        users: options.users,
        instances: options.instances,
        rate: options.rate,
        hold: Duration::from_millis(5500),
        retry: Duration::from_secs(2),
        queue_type,
        cursor,
    };
    let steady = Duration::from_secs(options.steady);
    let mut rows = Vec::new();

    let wanted = |case: &str| options.cases.iter().any(|wanted| wanted == case);
    let single = [options.node.clone()];
    if wanted("single") {
        let (report, memory_per_user) = measured(
            &single,
            options.users,
            drill::run(single_url, &load(QueueType::Classic, true), DRAIN, |_| {
                sleep(steady)
            }),
        )
        .await;
        rows.push(Row {
            broker: "single node",
            queues: QueueType::Classic,
            cursor: true,
            faults: "none",
            report,
            memory_per_user,
        });
    }

    for (case, queues, faults, cursor) in [
        ("quorum", QueueType::Quorum, false, true),
        ("quorum-faults", QueueType::Quorum, true, true),
        ("classic-faults", QueueType::Classic, true, true),
        ("quorum-guide-faults", QueueType::Quorum, true, false),
    ] {
        if !wanted(case) {
            continue;
        }
        // A fresh cluster each time: no queues or leaders left by the previous drill.
        let cluster = PrivateCluster::start_on(BENCH_CLUSTER_PORT);
        let nodes: Vec<String> = (1..=3).map(|n| cluster.node_name(n)).collect();
        let (down, cluster) = (Duration::from_secs(options.down), &cluster);
        let (report, memory_per_user) = measured(
            &nodes,
            options.users,
            drill::run(
                &cluster.url(),
                &load(queues, cursor),
                DRAIN,
                |marks| async move {
                    if faults {
                        maintenance_window_and_crash(cluster, marks, down).await
                    } else {
                        sleep(steady).await
                    }
                },
            ),
        )
        .await;
        rows.push(Row {
            broker: "3-node cluster",
            queues,
            cursor,
            faults: if faults {
                "rolling restart, kill -9"
            } else {
                "none"
            },
            report,
            memory_per_user,
        });
    }
    print(options, &rows);
}

/// Each node in turn leaves for `down` and comes back, then node 2 crashes and is back
/// after `down`; each fault marked when it starts.
async fn maintenance_window_and_crash(cluster: &PrivateCluster, marks: Marks, down: Duration) {
    let settle = Duration::from_secs(10);
    sleep(settle).await;
    for node in 1..=3 {
        marks.mark();
        tokio::task::block_in_place(|| cluster.stop_node(node));
        sleep(down).await;
        tokio::task::block_in_place(|| cluster.start_node(node));
        sleep(settle).await;
    }
    marks.mark();
    tokio::task::block_in_place(|| cluster.kill_node(2));
    sleep(down).await;
    tokio::task::block_in_place(|| cluster.start_node(2));
    sleep(settle).await;
}

/// Runs `drill`, and the broker memory (summed over `nodes`) it leaves behind per user:
/// the users' queues outlive the drill (they expire after 30 minutes).
async fn measured(
    nodes: &[String],
    users: usize,
    drill: impl Future<Output = Report>,
) -> (Report, f64) {
    let before = memory_kib(nodes);
    let report = drill.await;
    let after = memory_kib(nodes);
    (report, (after - before) / users.max(1) as f64)
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
        "### A node restart under load\n\n{} users polling (in cursor mode unless the row says the guide's; 5.5 s holds) over {} connections, as {} Lambda instances would; a backend publishing {} events/s to them in turn, retrying a failed publish with the same event after the 503's `Retry-After` (2 s). The cluster: three private nodes joined, HAProxy (TCP, round-robin, health-checked every second) in front, as Amazon MQ's `CLUSTER_MULTI_AZ` endpoint. Faults: each node stopped (`stop_app`) for {} s in turn, 10 s apart, then one node killed (`kill -9`) and back after {} s. Lost: answered `routed: true`, never received ({} s drain).\n",
        options.users,
        options.instances,
        options.instances,
        options.rate,
        options.down,
        options.down,
        DRAIN.as_secs()
    );
    println!(
        "| Broker | User queues | Mode | Faults | Routed | Lost | Redelivered | Wrongly `routed: false` | Publishes retried | Polls failed | Early empty answers | Longest gap | p50 ms | p99 ms | Recovery per fault | Queues declared in | Broker KiB/user |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    for row in rows {
        let report = &row.report;
        let recoveries: Vec<String> = report
            .recoveries
            .iter()
            .map(|recovery| format!("{:.1} s", recovery.as_secs_f64()))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} of {} | {} | {:.1} s | {} | {} | {} | {:.1} s | {:.1} |",
            row.broker,
            row.queues.as_str(),
            if row.cursor { "cursor" } else { "guide" },
            row.faults,
            report.routed,
            report.missing,
            report.redelivered,
            report.wrongly_unrouted,
            report.retried_publishes,
            report.failed_polls,
            report.failed_polls + report.answered_polls,
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
        "\nRedelivered: events a user received again after having them (cursor mode hands back what the next poll has not acknowledged yet, and a client drops it by id; in the guide's mode an ack lost with its node's connection puts the event back in the queue). In the guide's mode a poll acknowledges what it returns before answering, so an answer lost on its way to the browser loses its events by design; the drill's users never lose an answer, so its Lost column counts what the broker itself lost. Early empty answers: polls answered with no event before half their hold, which a browser follows with another poll at once. Longest gap: the longest any user went between two answered polls. Recovery per fault: from the fault until every user whose polls failed after it had one answered again (the reconnect herd), for the three restarts and the crash in turn. Queues declared in: every user's first poll, 100 at a time, retried after 2 s on a 503 (before the drill's clock starts). Broker KiB/user: the nodes' memory after the drill less before it, over the users."
    );
}
