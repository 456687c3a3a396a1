//! A taken batch settled: each delivery acked or given back, in queue order, within the
//! poll's clean-up.

use lapin::options::{BasicAckOptions, BasicQosOptions, BasicRejectOptions};
use tokio::time::timeout_at;

use super::{
    RabbitBroker,
    consume::{PollLane, Taken},
    lanes::{PREFETCH, REPLY_SUCCESS, poison},
    runner::failed,
};
use crate::broker::BrokerError;

impl RabbitBroker {
    /// Acks (removes) each delivery of `taken` for which `remove` says so and requeues
    /// the others, which go back to their places at the head of the queue.
    pub(super) async fn settle(
        &self,
        taken: &Taken,
        remove: impl Fn(usize) -> bool,
    ) -> Result<(), BrokerError> {
        let lane = match &taken.lane {
            PollLane::Shared(lane) => lane,
            PollLane::Own(lane) => {
                // A quorum queue: ack what goes, then close the channel, which gives back
                // the rest (and any delivery that came after we stopped reading) in queue
                // order. Neither a cancel nor rejects, see [`PollLane::Own`].
                //
                // The removed prefix (all of a guide-mode batch; the acknowledged part
                // of a cursor one) goes in one `multiple` ack, safe on a channel of the
                // poll's own. An ack per event was lost now and then: the channel passes
                // each on to the queue as a command of its own and, past a few dozen in
                // flight, keeps the rest back until the queue has applied the earlier
                // ones; the close that follows dropped what it kept, and those events
                // came back (tests/conformance.rs, 3.10, 101 events: from the 35th on).
                let settle = async {
                    let prefix = (0..taken.deliveries.len())
                        .take_while(|index| remove(*index))
                        .count();
                    let mut acked = prefix > 0;
                    if let Some(last) = prefix.checked_sub(1) {
                        let through = BasicAckOptions { multiple: true };
                        taken.deliveries[last].acker.ack(through).await?;
                    }
                    // Anything else that goes (a message that is not an event, after
                    // the prefix) is rare: one ack each.
                    for (index, delivery) in taken.deliveries.iter().enumerate().skip(prefix) {
                        if remove(index) {
                            delivery.acker.ack(BasicAckOptions::default()).await?;
                            acked = true;
                        }
                    }
                    // Acks have no reply, and a close right behind them gave acked
                    // events back to the queue now and then (a later poll saw them
                    // again; tests/conformance.rs, 3.10). A `basic.qos` that changes
                    // nothing is answered only after the acks before it.
                    if acked {
                        let unchanged = BasicQosOptions { global: false };
                        lane.channel.basic_qos(PREFETCH, unchanged).await?;
                    }
                    lane.channel
                        .close(REPLY_SUCCESS, "poll answered".into())
                        .await
                };
                return match timeout_at(taken.clean_up_until, settle).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(failed("poll", error)),
                    // The lane closes its channel as it drops.
                    Err(_) => Err(BrokerError::Timeout("poll clean-up")),
                };
            }
        };
        // One settlement each: delivery tags are per channel and lanes are shared, so a
        // `multiple` ack could take other polls' deliveries with it.
        let settle = async {
            let mut requeued = false;
            for (index, delivery) in taken.deliveries.iter().enumerate() {
                if remove(index) {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                } else {
                    let requeue = BasicRejectOptions { requeue: true };
                    delivery.acker.reject(requeue).await?;
                    requeued = true;
                }
            }
            // Rejects have no reply. Answering before the broker has taken them back
            // would let the client's next poll, served on another connection (another
            // instance), see newer events ahead of them. A `basic.qos` that changes
            // nothing (the lanes' per-consumer prefetch) is answered on this channel
            // only after the rejects before it: one round trip, for cursor polls that
            // return events.
            if requeued {
                let unchanged = BasicQosOptions { global: false };
                lane.channel.basic_qos(PREFETCH, unchanged).await?;
            }
            Ok(())
        };
        match timeout_at(taken.clean_up_until, settle).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(failed("poll", error)),
            Err(_) => {
                // Closing the channel requeues whatever is still unacked.
                poison(lane.channel.clone());
                Err(BrokerError::Timeout("poll clean-up"))
            }
        }
    }
}
