//! `longpoll shard`: the contract's placement, as an operator or a producer checks it.
//!
//! - `--user ID` (repeatable): each user's slot and broker, by the deployment's table
//!   (`AMQP_URLS` and `AMQP_SLOTS`, or `--brokers N` for the default table of N).
//! - `--table`: the table, as `AMQP_SLOTS` writes it, with each broker's share.
//! - `--add-broker`: the table with one more broker, which takes an equal share from
//!   each, and how many slots it moves.

use std::fmt::Write;

use clap::Args;
use longpoll::{
    config::redact_url,
    shard::{SLOTS, SlotTable, slot_of},
    topology::UserId,
};

use crate::BrokerArgs;

#[derive(Args)]
pub struct ShardArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Place over this many brokers, by the default table (or `--slots`), instead of the
    /// configured ones (to check a producer's placement without the deployment's URLs).
    #[arg(long)]
    brokers: Option<usize>,
    /// A user to place (repeat for several).
    #[arg(long = "user")]
    users: Vec<u64>,
    /// Print the slot table and each broker's share of the slots.
    #[arg(long)]
    table: bool,
    /// Print the table with one more broker, for AMQP_SLOTS when one is added.
    #[arg(long)]
    add_broker: bool,
}

/// What the command prints.
pub fn report(args: &ShardArgs) -> Result<String, String> {
    let (table, urls) = match args.brokers {
        Some(brokers) => {
            let table = match &args.broker.slots {
                Some(text) => SlotTable::parse(text, brokers),
                None => SlotTable::even(brokers),
            }
            .map_err(|error| format!("--slots: {error}"))?;
            (table, None)
        }
        None => {
            let config = args.broker.config()?;
            (config.slots.clone(), Some(config.amqp_urls))
        }
    };
    if args.users.is_empty() && !args.table && !args.add_broker {
        return Err("give --user ID, --table or --add-broker".to_owned());
    }
    let mut out = String::new();
    for user in &args.users {
        let user = UserId(*user);
        let broker = table.broker_of(user);
        let slot = slot_of(user);
        let url = urls
            .as_ref()
            .map(|urls| format!(" {}", redact_url(&urls[broker])))
            .unwrap_or_default();
        writeln!(out, "user {user}: slot {slot}, broker {broker}{url}").unwrap();
    }
    if args.table {
        write_table(&mut out, "slot table", &table);
    }
    if args.add_broker {
        let grown = table
            .with_one_more_broker()
            .map_err(|error| format!("--add-broker: {error}"))?;
        let moved = (0..SLOTS)
            .filter(|slot| table.broker_of_slot(*slot) != grown.broker_of_slot(*slot))
            .count();
        write_table(&mut out, "with one more broker", &grown);
        writeln!(
            out,
            "moves {moved} of {SLOTS} slots ({:.1} %), all to broker {}; their users' queued \
             events stay on the old broker (see docs/operations.md)",
            100.0 * moved as f64 / f64::from(SLOTS),
            table.brokers()
        )
        .unwrap();
    }
    Ok(out)
}

fn write_table(out: &mut String, title: &str, table: &SlotTable) {
    writeln!(out, "{title}: AMQP_SLOTS={}", table.to_setting()).unwrap();
    for broker in 0..table.brokers() {
        let slots: usize = table
            .ranges_of(broker)
            .iter()
            .map(|range| range.len())
            .sum();
        writeln!(
            out,
            "  broker {broker}: {slots} slots ({:.1} %)",
            100.0 * slots as f64 / f64::from(SLOTS)
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        shard: ShardArgs,
    }

    fn run(args: &[&str]) -> Result<String, String> {
        let cli = Cli::try_parse_from(std::iter::once("shard").chain(args.iter().copied()))
            .map_err(|error| error.to_string())?;
        report(&cli.shard)
    }

    #[test]
    fn users_are_placed_by_the_contract() {
        // Redis Cluster's CRC-16 check value: "123456789" is 0x31C3, slot 12739.
        let out = run(&["--brokers", "3", "--user", "123456789"]).unwrap();
        assert_eq!(out, "user 123456789: slot 12739, broker 2\n");
        let urls = "amqp://u:secret@h1:5672/%2f,amqp://u:secret@h2:5672/%2f";
        let out = run(&["--urls", urls, "--user", "123456789"]).unwrap();
        assert_eq!(
            out,
            "user 123456789: slot 12739, broker 1 amqp://u:***@h2:5672/%2f\n"
        );
    }

    #[test]
    fn the_table_and_one_more_broker() {
        let out = run(&["--brokers", "2", "--table", "--add-broker"]).unwrap();
        assert!(
            out.contains("slot table: AMQP_SLOTS=0-8191:0,8192-16383:1"),
            "{out}"
        );
        assert!(out.contains("broker 2: 5460 slots (33.3 %)"), "{out}");
        assert!(
            out.contains("moves 5460 of 16384 slots (33.3 %), all to broker 2"),
            "{out}"
        );
        let error = run(&["--brokers", "2", "--slots", "0-5:0", "--table"]).unwrap_err();
        assert!(error.contains("slot 6 has no broker"), "{error}");
    }
}
