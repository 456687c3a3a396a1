//! The drill's users and backend on the queue crate itself: `RabbitBroker`s driven
//! directly, the users spread over a few connections as that many Lambda instances
//! would be. What the library guarantees, without HTTP or a handler in between.

use std::{sync::Arc, time::Duration};

use longpoll::{
    Broker, Config, RabbitBroker,
    broker::{Poll, Publication, Publish},
    event::OutgoingEvent,
    topology::{Audience, QueueType},
};
use tokio::time::Instant;

use super::{Attempt, Failure, Product, User};
use crate::{JWT_SECRET, PollBudget, unique_name};

/// Brokers standing for Lambda instances, and one for the backend.
pub struct Library {
    instances: Vec<Arc<RabbitBroker>>,
    backend: RabbitBroker,
}

impl Library {
    /// `instances` connections to the broker at `url` for the users, one for the
    /// backend, with `queue_type` user queues.
    pub fn new(url: &str, instances: usize, queue_type: QueueType) -> Self {
        let broker = |name: &str| {
            let config = Config {
                queue_type,
                ..Config::new(url, Some(JWT_SECRET), &unique_name(name))
            };
            RabbitBroker::new(&config)
        };
        Self {
            instances: (0..instances.max(1))
                .map(|_| Arc::new(broker("drill")))
                .collect(),
            backend: broker("drill-backend"),
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        for instance in &self.instances {
            instance.close().await;
        }
        self.backend.close().await;
    }
}

impl Product for Library {
    async fn poll(
        &self,
        user: &User,
        cursor: Option<&str>,
        hold: Duration,
    ) -> Attempt<Vec<String>> {
        let instance = user.index % self.instances.len();
        let broker = &self.instances[instance];
        let budget = PollBudget::until(Instant::now() + hold);
        let answer = match cursor {
            Some(cursor) => {
                broker
                    .wait_with_cursor(&user.subscriber, cursor, &budget)
                    .await
            }
            None => broker.wait_for_events(&user.subscriber, &budget).await,
        };
        Attempt {
            via: format!("connection {instance}"),
            outcome: answer
                .map(|events| events.into_iter().map(|event| event.id).collect())
                .map_err(|error| Failure::Error(error.to_string())),
        }
    }

    async fn publish(&self, user: &User, event: &OutgoingEvent, _attempt: usize) -> Attempt<bool> {
        let publication = Publication {
            audience: Audience::User(user.subscriber.user_id),
            event: event.clone(),
        };
        let answer = self
            .backend
            .publish(std::slice::from_ref(&publication))
            .await;
        Attempt {
            via: "backend connection".to_owned(),
            outcome: answer
                .map(|receipts| receipts.iter().all(|receipt| receipt.routed))
                .map_err(|error| Failure::Error(error.to_string())),
        }
    }
}
