//! `longpoll tail`: a live copy of some routing keys' events, for debugging.

use futures_lite::StreamExt;
use lapin::{
    Channel,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio::time::Instant;

use super::{RabbitBroker, codec::decode, lanes::Lane, runner::failed};
use crate::{broker::BrokerError, event::Event};

impl RabbitBroker {
    /// Follows the events of `routing_keys` live without taking them from anyone: an
    /// exclusive, server-named queue bound to the same keys receives a copy of each and
    /// disappears with the tail (`longpoll tail`, for debugging).
    pub async fn tail(&self, routing_keys: &[String]) -> Result<Tail, BrokerError> {
        let deadline = Instant::now() + self.connector.op_timeout;
        self.run_on("tail set-up", deadline, |lane: Lane| async move {
            let channel = lane.connection.create_channel().await?;
            let options = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            };
            let queue = channel
                .queue_declare("".into(), options, FieldTable::default())
                .await?;
            for key in routing_keys {
                channel
                    .queue_bind(
                        queue.name().clone(),
                        self.exchange().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            let no_ack = BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            };
            let consumer = channel
                .basic_consume(
                    queue.name().clone(),
                    "".into(),
                    no_ack,
                    FieldTable::default(),
                )
                .await?;
            Ok(Tail {
                queue: queue.name().to_string(),
                consumer,
                _channel: channel,
            })
        })
        .await
    }
}

/// A live copy of some routing keys' events; see [`RabbitBroker::tail`].
pub struct Tail {
    queue: String,
    consumer: lapin::Consumer,
    /// Keeps the channel (and so the exclusive queue) open while the tail lives.
    _channel: Channel,
}

impl Tail {
    /// The next event; `None` once the broker ends the tail.
    pub async fn next(&mut self) -> Option<Result<Event, BrokerError>> {
        loop {
            return match self.consumer.next().await? {
                Ok(delivery) => match decode(&self.queue, &delivery) {
                    Some(event) => Some(Ok(event)),
                    None => continue,
                },
                Err(error) => Some(Err(failed("tail", error))),
            };
        }
    }
}
