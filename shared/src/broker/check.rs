//! `check-rabbitmq`: can this broker serve the project? The guide's Django management
//! command, for operators.
//!
//! Each step is timed and reported; a failure comes with a hint that names the likely
//! cause (nothing listening, bad credentials, missing vhost, TLS).

use std::{
    io::{Read, Write},
    time::Duration,
};

use amq_protocol::{
    frame::{AMQPFrame, parse_frame},
    protocol::{AMQPClass, connection::AMQPMethod},
    types::AMQPValue,
};
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicGetOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    tcp::{AMQPUriTcpExt, HandshakeError},
    types::FieldTable,
    uri::AMQPUri,
};
use tokio::time::{Instant, timeout};

/// One step of the check.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    /// What was found (`RabbitMQ 3.10.8`, `0.21 ms`) or what went wrong.
    pub detail: String,
    /// What to do about a failure.
    pub hint: Option<String>,
}

/// Every step, in order; the check passed when all are ok.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: Vec<Step>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|step| step.ok)
    }

    fn ok(&mut self, name: &'static str, detail: impl Into<String>) {
        self.steps.push(Step {
            name,
            ok: true,
            detail: detail.into(),
            hint: None,
        });
    }

    fn fail(&mut self, name: &'static str, detail: impl Into<String>, hint: impl Into<String>) {
        self.steps.push(Step {
            name,
            ok: false,
            detail: detail.into(),
            hint: Some(hint.into()),
        });
    }
}

/// Checks the broker at `url`: identity, connection, round trip, the events exchange,
/// and a probe queue declared, published to (with a confirm), consumed and deleted.
/// `declare_exchange` creates a missing exchange instead of failing.
pub async fn check_rabbitmq(
    url: &str,
    exchange: &str,
    declare_exchange: bool,
    limit: Duration,
) -> Report {
    let mut report = Report::default();
    let redacted = crate::config::redact_url(url);

    match server_identity(url, limit).await {
        Ok(identity) => report.ok("server", identity),
        Err(error) => {
            let hint = hint_for(&error);
            report.fail("server", format!("{redacted}: {error}"), hint);
            return report;
        }
    }

    let started = Instant::now();
    let connection = match timeout(
        limit,
        Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name("longpoll check-rabbitmq".into()),
        ),
    )
    .await
    {
        Ok(Ok(connection)) => {
            report.ok(
                "connect",
                format!(
                    "{redacted} in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                ),
            );
            connection
        }
        Ok(Err(error)) => {
            let error = error.to_string();
            report.fail("connect", error.clone(), hint_for(&error));
            return report;
        }
        Err(_) => {
            report.fail("connect", format!("no answer within {limit:?}"), "the broker accepted TCP but did not complete the AMQP handshake: check the port (5672 for amqp://, 5671 for amqps://) and TLS");
            return report;
        }
    };
    let outcome = timeout(
        limit * 4,
        probe(&connection, exchange, declare_exchange, &mut report),
    )
    .await;
    if outcome.is_err() {
        report.fail(
            "probe",
            format!("no answer within {:?}", limit * 4),
            "the broker is overloaded or the network drops frames",
        );
    }
    let _ = connection.close(200, "check done".into()).await;
    report
}

async fn probe(
    connection: &Connection,
    exchange: &str,
    declare_exchange: bool,
    report: &mut Report,
) {
    let step =
        async |report: &mut Report, name: &'static str, result: lapin::Result<String>| match result
        {
            Ok(detail) => {
                report.ok(name, detail);
                true
            }
            Err(error) => {
                let error = error.to_string();
                report.fail(name, error.clone(), hint_for(&error));
                false
            }
        };

    let channel = match connection.create_channel().await {
        Ok(channel) => channel,
        Err(error) => {
            step(report, "channel", Err(error)).await;
            return;
        }
    };
    // Round trip: the median of a few cheap synchronous methods.
    let mut samples = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        if let Err(error) = channel.basic_qos(1, BasicQosOptions::default()).await {
            step(report, "round trip", Err(error)).await;
            return;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    report.ok(
        "round trip",
        format!("{:.2} ms (median of 5)", samples[2].as_secs_f64() * 1000.0),
    );

    // The exchange, on a channel of its own: a passive declare of a missing one closes it.
    let exchange_channel = match connection.create_channel().await {
        Ok(channel) => channel,
        Err(error) => {
            step(report, "exchange", Err(error)).await;
            return;
        }
    };
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match exchange_channel.exchange_declare(exchange.into(), ExchangeKind::Topic, passive, FieldTable::default()).await {
        Ok(()) => report.ok("exchange", format!("{exchange} exists")),
        Err(_) if declare_exchange => {
            let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
            let declared = channel.exchange_declare(exchange.into(), ExchangeKind::Topic, durable, FieldTable::default()).await;
            step(report, "exchange", declared.map(|()| format!("{exchange} declared (durable topic)"))).await;
        }
        Err(error) => report.fail(
            "exchange",
            format!("{exchange}: {error}"),
            "the functions declare it on their first connection; or run again with --declare-exchange",
        ),
    }

    // A probe queue: declared, published to with a confirm, consumed, deleted.
    let queue = format!("longpoll.check.{}", uuid::Uuid::new_v4().simple());
    let body = b"{\"event\":\"notification\",\"data\":{\"title\":\"check\",\"message\":\"probe\"}}";
    let probe = async {
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(60_000));
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), options, arguments)
            .await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let confirmation = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default(),
            )
            .await?
            .await?;
        let consumed = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?;
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        Ok((
            confirmation.is_ack() && confirmation.take_message().is_none(),
            consumed.is_some_and(|message| message.delivery.data == body),
        ))
    };
    match probe.await {
        Ok((true, true)) => report.ok("probe queue", "declared, published (confirmed), consumed and deleted"),
        Ok((confirmed, consumed)) => report.fail(
            "probe queue",
            format!("publish confirmed: {confirmed}, message consumed back: {consumed}"),
            "the broker accepted the queue but lost the message: check its logs and resource alarms (disk, memory)",
        ),
        Err(error) => {
            step(report, "probe queue", Err(error)).await;
        }
    }
    let _ = channel.close(200, "check done".into()).await;
}

/// `RabbitMQ 3.10.8 (Erlang/OTP 25)`: what the broker says it is in `connection.start`,
/// read from a bare protocol handshake (lapin does not expose it).
async fn server_identity(url: &str, limit: Duration) -> Result<String, String> {
    let uri: AMQPUri = url
        .parse()
        .map_err(|error: String| format!("not an AMQP URL: {error}"))?;
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut stream = match uri.connect() {
            Ok(stream) => stream,
            Err(HandshakeError::Failure(error)) => return Err(error),
            Err(HandshakeError::WouldBlock(mut mid)) => loop {
                match mid.handshake() {
                    Ok(stream) => break stream,
                    Err(HandshakeError::WouldBlock(again)) => mid = again,
                    Err(HandshakeError::Failure(error)) => return Err(error),
                }
            },
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(limit))?;
        stream.write_all(b"AMQP\x00\x00\x09\x01")?;
        // A frame: type (1), channel (2), size (4), payload (size), end marker (1).
        let mut frame = vec![0u8; 7];
        stream.read_exact(&mut frame)?;
        let size = u32::from_be_bytes([frame[3], frame[4], frame[5], frame[6]]) as usize;
        frame.resize(7 + size + 1, 0);
        stream.read_exact(&mut frame[7..])?;
        let start = match parse_frame(frame.as_slice()) {
            Ok((_, AMQPFrame::Method(0, AMQPClass::Connection(AMQPMethod::Start(start))))) => start,
            _ => {
                return Err(std::io::Error::other(
                    "the server did not answer with AMQP 0-9-1 connection.start",
                ));
            }
        };
        let property = |name: &str| match start.server_properties.inner().get(name) {
            Some(AMQPValue::LongString(text)) => text.to_string(),
            _ => "?".to_owned(),
        };
        Ok(format!(
            "{} {} ({})",
            property("product"),
            property("version"),
            property("platform")
        ))
    });
    match timeout(limit, read).await {
        Ok(Ok(Ok(identity))) => Ok(identity),
        Ok(Ok(Err(error))) => Err(error.to_string()),
        Ok(Err(join)) => Err(join.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// The likely cause of a failure, from the error text.
fn hint_for(error: &str) -> String {
    let lower = error.to_lowercase();
    let hint = if lower.contains("access_refused")
        || lower.contains("access-refused")
        || lower.contains("login was refused")
    {
        "bad credentials: check the user and password in AMQP_URL (guest may only log in from localhost)"
    } else if lower.contains("connection refused") {
        "nothing listens there: is RabbitMQ running, and are host and port right (5672 amqp, 5671 amqps)?"
    } else if lower.contains("vhost") || lower.contains("not_allowed") {
        "the virtual host does not exist or the user has no access to it: check the path of AMQP_URL (%2f is /)"
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("corrupt message")
        || lower.contains("handshake")
        || lower.contains("invalid peer")
    {
        "TLS failed: amqps:// needs port 5671 and a certificate the client trusts; amqp:// must not point at a TLS port"
    } else if lower.contains("resolve")
        || lower.contains("lookup")
        || lower.contains("name or service")
    {
        "the host name does not resolve: check the host in AMQP_URL"
    } else if lower.contains("reset")
        || lower.contains("broken pipe")
        || lower.contains("eof")
        || lower.contains("unexpected end")
    {
        "the connection was dropped: wrong protocol on that port (TLS vs plain), or the broker refused the client"
    } else {
        "see the broker's log for the reason"
    };
    hint.to_owned()
}

#[cfg(test)]
mod tests {
    use super::hint_for;

    #[test]
    fn hints_name_the_likely_cause() {
        let refused = hint_for("Connection refused (os error 111)");
        assert!(refused.starts_with("nothing listens"));
        let login = hint_for(
            "ACCESS-REFUSED: ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
        );
        assert!(login.starts_with("bad credentials"));
        let vhost = hint_for("NOT-ALLOWED: NOT_ALLOWED - vhost nosuch not found");
        assert!(vhost.starts_with("the virtual host"));
        let tls = hint_for("received corrupt message of type InvalidContentType");
        assert!(tls.starts_with("TLS failed"));
    }
}
