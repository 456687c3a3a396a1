//! What `longpoll cost` prints: a Markdown table of every mode's month, and the
//! crossover points.

use super::model::{Estimate, FrontDoor, Inputs, Mode, crossover, estimate};

/// The report `longpoll cost` prints: a Markdown table and the crossover points.
pub fn report(args: &Inputs) -> Result<String, String> {
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
        from(crossover(args, Mode::Managed, Mode::Standard)),
        from(crossover(args, Mode::Containers, Mode::Standard)),
        from(crossover(args, Mode::Containers, Mode::Managed)),
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
