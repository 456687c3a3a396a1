//! Placement: which broker holds a user's queues when a deployment lists several
//! (`AMQP_URLS`). The function is the contract's ("Placement", with test vectors), so
//! every process and every producer, in any language, puts a user in the same place:
//!
//! 1. the user's **slot** is CRC-16/XMODEM of the user id written in decimal ASCII,
//!    modulo 16,384 (Redis Cluster's key-slot function, applied to `"789"`);
//! 2. the **slot table** names the broker of each slot: by default even, contiguous
//!    ranges in the order the brokers are listed (`AMQP_SLOTS` overrides it).
//!
//! A table rather than a hash straight onto the brokers, so that one range can move at a
//! time and any broker, not only the last, can be retired (decision 0005, with the
//! figures). A broker records which part of which table it serves ([`ShardRecord`]); a
//! process whose table disagrees refuses it rather than misroute events.

use std::{fmt, ops::RangeInclusive};

use sha2::{Digest, Sha256};

use crate::topology::UserId;

/// How many slots users hash to: Redis Cluster's number, fine enough that 3,000 users
/// spread within 1 % of even over three brokers, small enough to write as ranges.
pub const SLOTS: u16 = 16_384;

/// Most brokers a deployment may list: each process keeps a connection to every one, and
/// each broker's record names its number.
pub const MAX_BROKERS: usize = 64;

/// The CRC-16 Redis Cluster uses for key slots (XMODEM: polynomial 0x1021, initial 0).
const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// The slot of `user`: CRC-16/XMODEM of the decimal id, modulo [`SLOTS`].
pub fn slot_of(user: UserId) -> u16 {
    slot_of_key(user.0.to_string().as_bytes())
}

/// The slot of any key, as Redis Cluster computes it (without its `{hash tag}` rule):
/// what the contract's test vectors check.
pub fn slot_of_key(key: &[u8]) -> u16 {
    CRC16.checksum(key) % SLOTS
}

/// A slot table that cannot be used. The message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("no brokers: list at least one")]
    NoBrokers,
    #[error("{0} brokers: at most {MAX_BROKERS}")]
    TooManyBrokers(usize),
    #[error("{0:?} is not `first-last:broker` or `slot:broker`")]
    Malformed(String),
    #[error("slot {slot} is past the last slot ({})", SLOTS - 1)]
    SlotOutOfRange { slot: u32 },
    #[error("slot {slot} is given twice (to brokers {first} and {second})")]
    SlotTwice {
        slot: u16,
        first: usize,
        second: usize,
    },
    #[error("slot {slot} has no broker: every slot from 0 to {} needs one", SLOTS - 1)]
    SlotWithoutBroker { slot: u16 },
    #[error("broker {broker} is not listed: there are {brokers} (numbered from 0)")]
    NoSuchBroker { broker: usize, brokers: usize },
    #[error("broker {broker} holds no slot: remove it from the list, or give it slots")]
    IdleBroker { broker: usize },
}

/// Which broker serves each slot.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotTable {
    /// The broker of each slot, indexed by slot.
    owners: Vec<u16>,
    brokers: usize,
}

impl SlotTable {
    /// The default table of `brokers` brokers: even, contiguous ranges, in list order.
    pub fn even(brokers: usize) -> Result<Self, TableError> {
        check_count(brokers)?;
        let slots = usize::from(SLOTS);
        let owners = (0..slots)
            .map(|slot| (slot * brokers / slots) as u16)
            .collect();
        Ok(Self { owners, brokers })
    }

    /// A table as `AMQP_SLOTS` writes it: comma-separated `first-last:broker` (or
    /// `slot:broker`) entries, ranges inclusive, brokers numbered from 0 in the order of
    /// `AMQP_URLS`. Every slot must have exactly one broker, and every broker a slot.
    pub fn parse(text: &str, brokers: usize) -> Result<Self, TableError> {
        check_count(brokers)?;
        let mut owners: Vec<Option<u16>> = vec![None; usize::from(SLOTS)];
        for entry in text
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let malformed = || TableError::Malformed(entry.to_owned());
            let (range, broker) = entry.split_once(':').ok_or_else(malformed)?;
            let broker: usize = broker.trim().parse().map_err(|_| malformed())?;
            if broker >= brokers {
                return Err(TableError::NoSuchBroker { broker, brokers });
            }
            let (first, last) = match range.split_once('-') {
                Some((first, last)) => (first, last),
                None => (range, range),
            };
            let slot = |text: &str| -> Result<u16, TableError> {
                let slot: u32 = text.trim().parse().map_err(|_| malformed())?;
                if slot >= u32::from(SLOTS) {
                    return Err(TableError::SlotOutOfRange { slot });
                }
                Ok(slot as u16)
            };
            let (first, last) = (slot(first)?, slot(last)?);
            if first > last {
                return Err(malformed());
            }
            for slot in first..=last {
                let owner = &mut owners[usize::from(slot)];
                if let Some(first) = *owner {
                    return Err(TableError::SlotTwice {
                        slot,
                        first: usize::from(first),
                        second: broker,
                    });
                }
                *owner = Some(broker as u16);
            }
        }
        let owners = owners
            .into_iter()
            .enumerate()
            .map(|(slot, owner)| owner.ok_or(TableError::SlotWithoutBroker { slot: slot as u16 }))
            .collect::<Result<Vec<_>, _>>()?;
        let table = Self { owners, brokers };
        if let Some(broker) = (0..brokers).find(|broker| table.ranges_of(*broker).is_empty()) {
            return Err(TableError::IdleBroker { broker });
        }
        Ok(table)
    }

    /// How many brokers the table spreads over.
    pub fn brokers(&self) -> usize {
        self.brokers
    }

    /// The broker of `slot`.
    pub fn broker_of_slot(&self, slot: u16) -> usize {
        usize::from(self.owners[usize::from(slot)])
    }

    /// The broker of `user`.
    pub fn broker_of(&self, user: UserId) -> usize {
        self.broker_of_slot(slot_of(user))
    }

    /// The slot ranges `broker` serves, in slot order.
    pub fn ranges_of(&self, broker: usize) -> Vec<RangeInclusive<u16>> {
        let mut ranges: Vec<RangeInclusive<u16>> = Vec::new();
        for slot in (0..SLOTS).filter(|slot| self.broker_of_slot(*slot) == broker) {
            match ranges.last_mut() {
                Some(range) if *range.end() + 1 == slot => *range = *range.start()..=slot,
                _ => ranges.push(slot..=slot),
            }
        }
        ranges
    }

    /// The table as `AMQP_SLOTS` writes it, ranges in slot order: what
    /// [`SlotTable::parse`] reads back.
    pub fn to_setting(&self) -> String {
        let mut entries: Vec<(RangeInclusive<u16>, usize)> = (0..self.brokers)
            .flat_map(|broker| {
                self.ranges_of(broker)
                    .into_iter()
                    .map(move |range| (range, broker))
            })
            .collect();
        entries.sort_by_key(|(range, _)| *range.start());
        entries
            .iter()
            .map(|(range, broker)| match range.start() == range.end() {
                true => format!("{}:{broker}", range.start()),
                false => format!("{}-{}:{broker}", range.start(), range.end()),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A table for one more broker that takes the same share from each broker (the last
    /// slots of each), so the brokers stay even and only the users bound for the new one
    /// move: about 1/(n+1) of them, the least any placement moves.
    pub fn with_one_more_broker(&self) -> Result<Self, TableError> {
        let next = self.brokers + 1;
        check_count(next)?;
        let mut owners = self.owners.clone();
        for broker in 0..self.brokers {
            let slots: Vec<usize> = (0..owners.len())
                .filter(|slot| usize::from(owners[*slot]) == broker)
                .collect();
            let give = slots.len() / next;
            for slot in &slots[slots.len() - give..] {
                owners[*slot] = self.brokers as u16;
            }
        }
        Ok(Self {
            owners,
            brokers: next,
        })
    }

    /// Short fingerprint of the whole table: two processes with the same fingerprint
    /// place every user alike.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.to_setting().as_bytes());
        digest[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

fn check_count(brokers: usize) -> Result<(), TableError> {
    match brokers {
        0 => Err(TableError::NoBrokers),
        1..=MAX_BROKERS => Ok(()),
        _ => Err(TableError::TooManyBrokers(brokers)),
    }
}

impl fmt::Debug for SlotTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotTable({})", self.to_setting())
    }
}

/// What a broker records about itself: which of how many brokers it is, under which
/// table. Written once, by the first process that reaches the broker, as the
/// `alternate-exchange` argument of the durable exchange [`SHARD_RECORD_EXCHANGE`]:
/// RabbitMQ compares that argument on every later declare, so a process with another
/// table is told so by the broker (406 `inequivalent arg`) and no two processes can race
/// two records in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRecord {
    pub broker: usize,
    pub brokers: usize,
    pub fingerprint: String,
}

/// The exchange whose arguments hold a broker's [`ShardRecord`]. Nothing is published to
/// it.
pub const SHARD_RECORD_EXCHANGE: &str = "longpoll.shard";

impl ShardRecord {
    /// The record `broker` of `table` should carry.
    pub fn of(table: &SlotTable, broker: usize) -> Self {
        Self {
            broker,
            brokers: table.brokers(),
            fingerprint: table.fingerprint(),
        }
    }

    /// The record as stored: `longpoll.shard.broker-1-of-3-table-<fingerprint>`,
    /// readable in the management UI. It names an exchange (the alternate one, never
    /// declared), so a broker user scoped to the project's names is given write on
    /// `longpoll.shard.*` for it: RabbitMQ asks for that on the alternate exchange.
    pub fn as_argument(&self) -> String {
        format!(
            "{SHARD_RECORD_EXCHANGE}.broker-{}-of-{}-table-{}",
            self.broker, self.brokers, self.fingerprint
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_cluster_key_slots() {
        // The Redis Cluster specification's own check value for its CRC-16.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
        assert_eq!(slot_of_key(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot_of(UserId(123_456_789)), slot_of_key(b"123456789"));
    }

    #[test]
    fn the_even_table_is_contiguous_and_balanced() {
        let table = SlotTable::even(3).unwrap();
        assert_eq!(table.to_setting(), "0-5461:0,5462-10922:1,10923-16383:2");
        let one = SlotTable::even(1).unwrap();
        assert_eq!(one.to_setting(), "0-16383:0");
        assert_eq!(SlotTable::even(0), Err(TableError::NoBrokers));
        assert_eq!(SlotTable::even(65), Err(TableError::TooManyBrokers(65)));
    }

    #[test]
    fn a_written_table_reads_back() {
        let text = "0-99:1,100-16383:0";
        let table = SlotTable::parse(text, 2).unwrap();
        assert_eq!(table.to_setting(), text);
        assert_eq!(table.broker_of_slot(99), 1);
        assert_eq!(table.broker_of_slot(100), 0);
        let single = SlotTable::parse("0-16382:0, 16383:1", 2).unwrap();
        assert_eq!(single.broker_of_slot(16383), 1);
    }

    #[test]
    fn a_bad_table_says_what_is_wrong() {
        let cases = [
            ("0-16383", TableError::Malformed("0-16383".into())),
            ("0-16383:x", TableError::Malformed("0-16383:x".into())),
            ("5-1:0", TableError::Malformed("5-1:0".into())),
            ("0-16384:0", TableError::SlotOutOfRange { slot: 16384 }),
            (
                "0-10:0,10-16383:1",
                TableError::SlotTwice {
                    slot: 10,
                    first: 0,
                    second: 1,
                },
            ),
            ("0-16382:0", TableError::SlotWithoutBroker { slot: 16383 }),
            (
                "0-16383:2",
                TableError::NoSuchBroker {
                    broker: 2,
                    brokers: 2,
                },
            ),
            ("0-16383:0", TableError::IdleBroker { broker: 1 }),
        ];
        for (text, error) in cases {
            assert_eq!(SlotTable::parse(text, 2), Err(error), "{text}");
        }
    }

    #[test]
    fn one_more_broker_moves_only_its_share() {
        let three = SlotTable::even(3).unwrap();
        let four = three.with_one_more_broker().unwrap();
        let moved = (0..SLOTS)
            .filter(|slot| three.broker_of_slot(*slot) != four.broker_of_slot(*slot))
            .count();
        assert!(
            (0..SLOTS)
                .filter(|slot| three.broker_of_slot(*slot) != four.broker_of_slot(*slot))
                .all(|slot| four.broker_of_slot(slot) == 3)
        );
        assert_eq!(moved, 3 * (5461 / 4));
        for broker in 0..4 {
            let owned = (0..SLOTS)
                .filter(|slot| four.broker_of_slot(*slot) == broker)
                .count();
            assert!((4090..=4100).contains(&owned), "broker {broker}: {owned}");
        }
        assert_eq!(SlotTable::parse(&four.to_setting(), 4).unwrap(), four);
    }

    #[test]
    fn the_record_names_broker_count_and_table() {
        let table = SlotTable::even(3).unwrap();
        let record = ShardRecord::of(&table, 1).as_argument();
        assert_eq!(
            record,
            format!("longpoll.shard.broker-1-of-3-table-{}", table.fingerprint())
        );
        assert_eq!(table.fingerprint().len(), 12);
        assert_ne!(
            table.fingerprint(),
            table.with_one_more_broker().unwrap().fingerprint()
        );
    }
}
