//! A shard's record of itself on its broker ([`ShardRecord`]): written by the first
//! process to reach the broker, compared by RabbitMQ on every later declare.

use lapin::{
    ExchangeKind,
    options::ExchangeDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use tokio::time::Instant;

use super::{RabbitBroker, lanes::Lane};
use crate::{
    broker::BrokerError,
    shard::{SHARD_RECORD_EXCHANGE, ShardRecord},
};

impl RabbitBroker {
    /// Declares the record exchange with `record` as its `alternate-exchange`: the
    /// broker keeps the first record it is given and refuses (406 `inequivalent arg
    /// 'alternate-exchange'`, a [`BrokerError::Refused`] naming both records) any other.
    /// On a channel of its own, since a refusal closes the channel.
    pub(crate) async fn record_shard(&self, record: &ShardRecord) -> Result<(), BrokerError> {
        let deadline = Instant::now() + self.connector.op_timeout;
        let argument = record.as_argument();
        self.run_on("shard record", deadline, |lane: Lane| {
            let argument = argument.clone();
            async move {
                let channel = lane.connection.create_channel().await?;
                let mut arguments = FieldTable::default();
                arguments.insert(
                    "alternate-exchange".into(),
                    AMQPValue::LongString(argument.into()),
                );
                let durable = ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                channel
                    .exchange_declare(
                        SHARD_RECORD_EXCHANGE.into(),
                        ExchangeKind::Fanout,
                        durable,
                        arguments,
                    )
                    .await?;
                channel.close(200, "shard recorded".into()).await
            }
        })
        .await
    }
}
