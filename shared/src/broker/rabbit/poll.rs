//! [`Poll`] for the RabbitMQ broker: the guide's mode (the batch acked as it is
//! answered) and cursor mode (the acknowledged prefix removed, the rest kept), each a
//! [`take`](RabbitBroker::take) then a [`settle`](RabbitBroker::settle).

use async_trait::async_trait;
use tracing::warn;

use super::RabbitBroker;
use crate::{
    broker::{BrokerError, Poll},
    budget::PollBudget,
    event::Event,
    topology::{MAX_BATCH, MAX_QUEUE_LENGTH, Subscriber},
};

#[async_trait]
impl Poll for RabbitBroker {
    async fn wait_for_events(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        let poll = self.poll_events(subscriber, budget);
        self.presence_refreshes
            .answering(subscriber.user_id, poll)
            .await
    }

    async fn wait_with_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        let poll = self.poll_after_cursor(subscriber, acked, budget);
        self.presence_refreshes
            .answering(subscriber.user_id, poll)
            .await
    }
}

impl RabbitBroker {
    /// A guide-mode poll: a consumer for the hold, then the batch acked.
    async fn poll_events(
        &self,
        subscriber: &Subscriber,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        self.make_room(subscriber).await?;
        let taken = self.take(subscriber, budget, MAX_BATCH).await?;
        // A failed settle may still have removed some of the batch (acks have no
        // reply): answer with all of it, since what stayed queued comes again under
        // the same ids, rather than answer 503 and lose the rest.
        if let Err(error) = self.settle(&taken, |_| true).await {
            warn!(%error, "acks failed; answering with the batch, the unacked part will come again");
        }
        // A message that is not an event was acked too: left in the queue it would
        // block every later poll.
        Ok(taken.events().flatten().collect())
    }

    /// A cursor-mode poll: the acknowledged prefix removed, the rest answered and kept.
    async fn poll_after_cursor(
        &self,
        subscriber: &Subscriber,
        acked: &str,
        budget: &PollBudget,
    ) -> Result<Vec<Event>, BrokerError> {
        self.make_room(subscriber).await?;
        let mut acked = Some(acked);
        loop {
            // The whole queue (it keeps at most 100) plus what arrives while we read it.
            let taken = self
                .take(subscriber, budget, MAX_QUEUE_LENGTH + MAX_BATCH)
                .await?;
            let events: Vec<Option<Event>> = taken.events().collect();
            // The acknowledged prefix goes; on later rounds nothing is acknowledged.
            let acked_through = acked.take().and_then(|acked| {
                events
                    .iter()
                    .position(|event| event.as_ref().is_some_and(|event| event.id == acked))
            });
            let prefix = acked_through.map_or(0, |position| position + 1);
            // The client can only have received a message that was delivered before:
            // one in the prefix that never was (`redelivered` false) overtook the
            // requeue of earlier ones (a reject travels on another channel than this
            // consume, and the queue may see them in either order), so it stays.
            let acked = |index: usize| {
                index < prefix
                    && (taken.deliveries[index].redelivered || Some(index) == acked_through)
            };
            // A message that is not an event goes wherever it is: requeued, it would
            // come back on every poll.
            self.settle(&taken, |index| acked(index) || events[index].is_none())
                .await?;
            let kept: Vec<Event> = events
                .into_iter()
                .enumerate()
                .filter(|(index, _)| !acked(*index))
                .filter_map(|(_, event)| event)
                .collect();
            if !kept.is_empty() || budget.hold_over() {
                return Ok(kept.into_iter().take(MAX_BATCH).collect());
            }
        }
    }
}
