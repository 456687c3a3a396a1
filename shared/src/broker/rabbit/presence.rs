//! Presence on RabbitMQ: a user is online while their presence queue exists (declared
//! by each poll with a TTL, deleted by disconnect); a lookup probes for those queues.

use async_trait::async_trait;
use lapin::{
    BasicProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use tokio::time::Instant;

use super::{
    RabbitBroker,
    codec::field_table,
    publish::{DEFAULT_EXCHANGE, Outgoing},
    session::OwnLane,
};
use crate::{
    broker::{BrokerError, Presence},
    budget::PollBudget,
    topology::{
        CollegeId, UserId, college_presence_key, presence_queue_arguments, presence_queue_name,
    },
};

#[async_trait]
impl Presence for RabbitBroker {
    async fn mark_online(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        budget: &PollBudget,
    ) -> Result<(), BrokerError> {
        let queue = presence_queue_name(user);
        let presence_exchange = self.connector.presence_exchange();
        // A poll's presence waits its turn within the poll's set-up (a herd of new users
        // queues here instead of failing).
        let deadline = budget.set_up_until();
        // On a channel of its own: a refused declare (a queue limit) closes it, and must
        // not end the polls held on a shared lane.
        self.run_on("presence", deadline, |lane: OwnLane| {
            let queue = queue.clone();
            async move {
                let options = QueueDeclareOptions {
                    durable: true,
                    auto_delete: true,
                    nowait: college.is_some(),
                    ..Default::default()
                };
                let arguments = field_table(presence_queue_arguments(self.presence_ttl));
                lane.channel
                    .queue_declare(queue.as_str().into(), options, arguments)
                    .await?;
                // A member of a college is also found by the college's lookups: the
                // binding's reply vouches for the declare before it.
                if let Some(college) = college {
                    lane.channel
                        .queue_bind(
                            queue.as_str().into(),
                            presence_exchange.into(),
                            college_presence_key(college, user).into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                }
                lane.finished();
                Ok(())
            }
        })
        .await
    }

    async fn mark_offline(&self, user: UserId) -> Result<(), BrokerError> {
        let queue = presence_queue_name(user);
        let deadline = Instant::now() + self.connector.op_timeout;
        self.run_on("presence", deadline, |lane: OwnLane| {
            let queue = queue.clone();
            // Deleting a queue that does not exist is not an error in RabbitMQ.
            async move {
                lane.channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await?;
                lane.finished();
                Ok(())
            }
        })
        .await
    }

    async fn is_online(
        &self,
        users: &[UserId],
        within: Option<CollegeId>,
    ) -> Result<Vec<bool>, BrokerError> {
        if users.is_empty() {
            // Still connects: the local server's banner uses this to check the broker.
            let deadline = Instant::now() + self.connector.op_timeout;
            return self.connector.session(deadline).await.map(|_| Vec::new());
        }
        // A passive declare of a missing queue is answered with a channel close (404),
        // and lapin never frees the id of a channel the broker closed: 2,047 offline
        // users would use up the connection. Instead, one mandatory probe per user to
        // the default exchange, which routes by queue name: a probe that comes back
        // (`basic.return`) found no presence queue. The probes expire at once
        // (`expiration` 0), so presence queues stay empty, and publishing does not count
        // as using a queue, so it does not extend the presence TTL. One round trip for
        // the whole lookup, and no channel is ever closed by the broker. Scoped to a
        // college, the probes go to the presence exchange instead, where a member's
        // presence queue is bound under the college and user (see `mark_online`).
        let (exchange, key): (&str, &dyn Fn(UserId) -> String) = match within {
            None => (DEFAULT_EXCHANGE, &presence_queue_name),
            Some(college) => (self.connector.presence_exchange(), &move |user| {
                college_presence_key(college, user)
            }),
        };
        let ids: Vec<String> = (0..users.len())
            .map(|index| format!("presence-{index}"))
            .collect();
        let probes: Vec<Outgoing> = users
            .iter()
            .zip(&ids)
            .map(|(user, id)| Outgoing {
                routing_key: key(*user),
                id,
                body: b"",
                properties: BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_expiration("0".into()),
            })
            .collect();
        self.publish_mandatory("presence lookup", exchange, &probes)
            .await
    }
}
