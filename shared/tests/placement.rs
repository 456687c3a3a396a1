//! The contract's placement test vectors (docs/contract.md, "Placement over several
//! brokers") against the crate's placement: what a producer in any language checks
//! itself against is what the servers do.

use std::fs;

use longpoll::{
    shard::{SlotTable, slot_of},
    topology::UserId,
};

#[test]
fn the_contract_vectors_are_the_placement() {
    let contract = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/contract.md"))
        .expect("docs/contract.md");
    let section = contract
        .split("## Placement over several brokers")
        .nth(1)
        .expect("the contract's placement section");
    let rows: Vec<Vec<u64>> = section
        .lines()
        .filter(|line| {
            line.starts_with("| ") && line.chars().nth(2).is_some_and(|c| c.is_ascii_digit())
        })
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().parse().expect("a number"))
                .collect()
        })
        .collect();
    assert!(rows.len() >= 5, "the vectors table: {rows:?}");
    for row in rows {
        let [user, slot, of_2, of_3, of_4] = row[..] else {
            panic!("a row of five numbers: {row:?}");
        };
        let user = UserId(user);
        assert_eq!(u64::from(slot_of(user)), slot, "slot of {user}");
        for (brokers, broker) in [(2, of_2), (3, of_3), (4, of_4)] {
            let table = SlotTable::even(brokers).unwrap();
            assert_eq!(table.broker_of(user) as u64, broker, "{user} of {brokers}");
        }
    }
}
