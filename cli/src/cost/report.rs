//! What `longpoll cost` prints: a Markdown table of every mode's month, and the
//! crossover points.

use super::{
    measured::{FUNCTION, LOCAL_SERVER},
    model::{Deployment, Estimate, Estimates, FrontDoor, Inputs, Mode, crossover, estimate},
};

/// The report `longpoll cost` prints: a Markdown table and the crossover points.
pub fn report(args: &Inputs) -> Result<String, String> {
    let estimates = estimate(args)?;
    let money = |value: f64| match value.is_finite() {
        true => format!("${}", thousands(value.round() as u64)),
        false => "–".to_owned(),
    };
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
            .map(|estimate| estimate.mode.name())
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
    let brokers = match args.deployment {
        Deployment::Single => "brokers (Amazon MQ, single instances)",
        Deployment::Cluster => "brokers (Amazon MQ, three-node clusters)",
    };
    out += &row(brokers, &|e| match &e.brokers {
        Ok(brokers) => format!("{} {}", brokers.describe(), money(brokers.month)),
        Err(why) => why.clone(),
    });
    out += &row("**total**", &|e| format!("**{}**", money(e.total())));
    out += &row("per online user", &|e| match e.total().is_finite() {
        true => format!("${:.3}", e.total() / args.users as f64),
        false => "–".to_owned(),
    });
    out += &row("AMQP connections per broker at the peak", &|e| {
        thousands(e.connections)
    });
    out += &row("broker queues in all", &|e| thousands(e.queues));
    out += "\n";
    out += &compute_sizing(args, &estimates);
    let from = |users: Option<u64>| match users {
        Some(users) => format!("from {} online users", thousands(users)),
        None => "at no size up to 100,000 online users".to_owned(),
    };
    out += &format!(
        "Managed instances cost less than standard Lambda {}; containers cost less than standard Lambda {}, and less than managed instances {}.\n",
        from(crossover(args, Mode::Managed, Mode::Standard)),
        from(crossover(args, Mode::Containers, Mode::Standard)),
        from(crossover(args, Mode::Containers, Mode::Managed)),
    );
    Ok(out)
}

/// How the managed instances' and containers' processes were sized: the CPU figures
/// (and the bench run they came from, when they are the measured defaults), and how many
/// processes the CPU alone would need.
fn compute_sizing(args: &Inputs, estimates: &Estimates) -> String {
    let sized = [
        (
            Mode::Managed,
            "poll-events",
            &args.function_cpu,
            &FUNCTION,
            "environments",
        ),
        (
            Mode::Containers,
            "the local server",
            &args.server_cpu,
            &LOCAL_SERVER,
            "tasks",
        ),
    ];
    let parts: Vec<String> = sized
        .into_iter()
        .filter_map(|(mode, process, cpu, measured, unit)| {
            let processes = estimates.of(mode).processes?;
            let source = match *cpu == measured.cpu {
                true => measured.run,
                false => "as given",
            };
            Some(format!(
                "{process} {:.0} µs an idle poll, {:.0} µs an event ({source}): {} {unit} (CPU alone: {})",
                cpu.idle_poll_us,
                cpu.event_us,
                thousands(processes.count),
                thousands(processes.for_cpu),
            ))
        })
        .collect();
    format!(
        "Compute is sized by the held polls or by CPU, whichever needs more, with at most {:.0} % of a vCPU busy: {}.\n\n",
        args.cpu_target * 100.0,
        parts.join("; ")
    )
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
