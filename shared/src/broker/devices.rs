//! The cap on one user's device queues (`?device=`), applied the same way by both
//! brokers: past it, the queue of the user's least recently polled device is deleted to
//! make room for the new one. A live tab polls every few seconds, so what goes first is a
//! tab closed long ago whose queue would otherwise wait 30 minutes to expire, taking a
//! copy of every college notice meanwhile. A user with more live devices than the cap
//! makes them take turns (an evicted device's next poll evicts another), so the cap
//! is only ever felt by the user who exceeds it.
//!
//! The register is per process: exact for the local server and one process serving many
//! users (managed instances); on standard Lambda each warm instance keeps its own, and
//! a device queue nobody polls still expires after 30 minutes.

use std::{collections::HashMap, sync::Mutex};

use tokio::time::Instant;

use crate::topology::{DeviceId, Subscriber, USER_QUEUE_EXPIRES, UserId};

/// Users kept before the register drops those whose devices all expired.
const SWEEP_ABOVE: usize = 100_000;

/// The devices each user polled from, with when.
pub(crate) struct Devices {
    max_per_user: usize,
    by_user: Mutex<HashMap<UserId, Vec<(DeviceId, Instant)>>>,
}

impl Devices {
    pub fn new(max_per_user: usize) -> Self {
        Self {
            max_per_user: max_per_user.max(1),
            by_user: Mutex::default(),
        }
    }

    /// Notes a poll by `subscriber`; the subscriber (device) whose queue must be deleted
    /// to make room for it, if any. The shared queue (no device) is not counted.
    pub fn admit(&self, subscriber: &Subscriber) -> Option<Subscriber> {
        let device = subscriber.device.as_ref()?;
        let now = Instant::now();
        let mut by_user = self
            .by_user
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if by_user.len() >= SWEEP_ABOVE {
            by_user.retain(|_, devices| {
                devices.retain(|(_, polled)| now.duration_since(*polled) < USER_QUEUE_EXPIRES);
                !devices.is_empty()
            });
        }
        let devices = by_user.entry(subscriber.user_id).or_default();
        // A device unpolled for the queue's expiry has no queue left to count.
        devices.retain(|(_, polled)| now.duration_since(*polled) < USER_QUEUE_EXPIRES);
        if let Some((_, polled)) = devices.iter_mut().find(|(known, _)| known == device) {
            *polled = now;
            return None;
        }
        let evicted = (devices.len() >= self.max_per_user).then(|| {
            let oldest = (0..devices.len())
                .min_by_key(|index| devices[*index].1)
                .expect("a full register is not empty");
            crate::metrics::cap_hit(crate::metrics::Cap::DevicesPerUser);
            devices.remove(oldest).0
        });
        devices.push((device.clone(), now));
        evicted.map(|device| Subscriber {
            device: Some(device),
            ..subscriber.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tab(user: u64, device: &str) -> Subscriber {
        Subscriber {
            user_id: UserId(user),
            college_id: None,
            device: DeviceId::parse(device),
        }
    }

    #[test]
    fn past_the_cap_the_least_recently_polled_device_goes() {
        let devices = Devices::new(2);
        assert_eq!(devices.admit(&tab(1, "a")), None);
        assert_eq!(devices.admit(&tab(1, "b")), None);
        assert_eq!(
            devices.admit(&tab(1, "a")),
            None,
            "a known device is not new"
        );
        assert_eq!(devices.admit(&tab(1, "c")), Some(tab(1, "b")));
        assert_eq!(
            devices.admit(&tab(2, "x")),
            None,
            "other users are counted apart"
        );
        let shared = Subscriber {
            device: None,
            ..tab(1, "a")
        };
        assert_eq!(
            devices.admit(&shared),
            None,
            "the shared queue is not a device"
        );
    }
}
