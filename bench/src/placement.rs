//! `longpoll-bench placement`: the two candidate placements of users over brokers, side
//! by side (decision 0005). No broker is involved: placement is a pure function.
//!
//! - **slots**: the contract's, Redis Cluster's key slot of the decimal id (CRC-16/XMODEM
//!   mod 16,384), then a slot table (even, contiguous ranges by default);
//! - **jump**: Centrifugo's, FNV-1a 64 of the decimal id, then jump consistent hash
//!   straight onto the brokers.
//!
//! For each: how even 3,000 and 100,000 users spread over three brokers (sequential ids,
//! as a Django app's are, and random ones), what share of users moves when a fourth broker
//! is added and when the second of three is retired, and the time one placement takes.

use std::{hint::black_box, time::Instant};

use longpoll::{
    shard::{SLOTS, SlotTable},
    topology::UserId,
};

#[derive(clap::Args)]
pub struct Options {}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Jump consistent hash (Lamping and Veach, 2014): the bucket of `key` among `buckets`.
fn jump(mut key: u64, buckets: usize) -> usize {
    let (mut bucket, mut next) = (-1_i64, 0_i64);
    while next < buckets as i64 {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1_u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as usize
}

fn jump_broker(user: UserId, brokers: usize) -> usize {
    jump(fnv1a(user.0.to_string().as_bytes()), brokers)
}

/// Users with ids 1..=n, and n pseudo-random ids (a fixed sequence, so runs agree).
fn populations(n: u64) -> [(&'static str, Vec<UserId>); 2] {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let random = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            UserId(state % 9_000_000_000_000 + 1)
        })
        .collect();
    [
        ("sequential", (1..=n).map(UserId).collect()),
        ("random", random),
    ]
}

/// The largest departure from an even share, in per cent.
fn worst_spread(
    users: &[UserId],
    brokers: usize,
    place: impl Fn(UserId) -> usize,
) -> (Vec<usize>, f64) {
    let mut counts = vec![0; brokers];
    for user in users {
        counts[place(*user)] += 1;
    }
    let even = users.len() as f64 / brokers as f64;
    let worst = counts
        .iter()
        .map(|count| (*count as f64 - even).abs() / even * 100.0)
        .fold(0.0, f64::max);
    (counts, worst)
}

fn moved(
    users: &[UserId],
    before: impl Fn(UserId) -> usize,
    after: impl Fn(UserId) -> usize,
) -> f64 {
    let moved = users
        .iter()
        .filter(|user| before(**user) != after(**user))
        .count();
    moved as f64 / users.len() as f64 * 100.0
}

/// Nanoseconds per placement, over `users`.
fn nanos(users: &[UserId], place: impl Fn(UserId) -> usize) -> f64 {
    let started = Instant::now();
    for user in users {
        black_box(place(black_box(*user)));
    }
    started.elapsed().as_nanos() as f64 / users.len() as f64
}

pub fn run(_: &Options) {
    let three = SlotTable::even(3).expect("three brokers");
    let slots = |user| three.broker_of(user);
    let jumped = |user| jump_broker(user, 3);

    println!("### Spread over three brokers\n");
    println!("| users | ids | slots: per broker | worst | jump: per broker | worst |");
    println!("|---:|---|---|---:|---|---:|");
    for n in [3_000, 100_000] {
        for (kind, users) in populations(n) {
            let (slot_counts, slot_worst) = worst_spread(&users, 3, slots);
            let (jump_counts, jump_worst) = worst_spread(&users, 3, jumped);
            println!(
                "| {n} | {kind} | {slot_counts:?} | {slot_worst:.1} % | {jump_counts:?} | {jump_worst:.1} % |"
            );
        }
    }

    let [_, (_, users)] = populations(100_000);
    let four_even = SlotTable::even(4).expect("four brokers");
    let four_grown = three.with_one_more_broker().expect("four brokers");
    // Retiring broker 1 of 3: the slot table hands its ranges to the other two, half
    // each; jump hash can only drop its last bucket, so brokers 0 and 2 become buckets
    // 0 and 1 of two.
    let retired = {
        let setting: String = (0..SLOTS)
            .map(|slot| match three.broker_of_slot(slot) {
                1 => format!("{slot}:{}", if slot % 2 == 0 { 0 } else { 1 }),
                0 => format!("{slot}:0"),
                _ => format!("{slot}:1"),
            })
            .collect::<Vec<_>>()
            .join(",");
        SlotTable::parse(&setting, 2).expect("a table of two")
    };
    // Broker numbers after the retirement, in the old numbering: 0 stays 0, 2 was 1.
    let old_number = |broker: usize| if broker == 0 { 0 } else { 2 };
    println!("\n### Users moved (100,000 random ids)\n");
    println!("| change | slots | jump |");
    println!("|---|---:|---:|");
    println!(
        "| a fourth broker, default table | {:.1} % | {:.1} % |",
        moved(&users, slots, |user| four_even.broker_of(user)),
        moved(&users, jumped, |user| jump_broker(user, 4)),
    );
    println!(
        "| a fourth broker, `longpoll shard --add-broker` | {:.1} % | – |",
        moved(&users, slots, |user| four_grown.broker_of(user)),
    );
    println!(
        "| retire broker 1 of 3 | {:.1} % | {:.1} % |",
        moved(&users, slots, |user| old_number(retired.broker_of(user))),
        moved(&users, jumped, |user| old_number(jump_broker(user, 2))),
    );
    let (_, spread) = worst_spread(&users, 4, |user| four_grown.broker_of(user));
    println!("\nAfter `--add-broker`, the four brokers' worst departure from even: {spread:.1} %.");

    println!("\n### Time per placement (100,000 random ids)\n");
    println!(
        "slots {:.0} ns, jump {:.0} ns.",
        nanos(&users, slots),
        nanos(&users, jumped)
    );
}
