"""Publish an event with bare pika, no code of ours: proof that the contract's AMQP
topology (docs/contract.md, "Publishing over AMQP") needs nothing but a stock client.

Run by tests/interop.rs:  python producer.py AMQP_URL ROUTING_KEY '{"event": ..., "data": ...}'
It prints the message id it set.
"""
import json
import sys
import time
import uuid

import pika


def publish_event(channel, routing_key, event, data, exchange="longpoll.events"):
    """Publish one event, persistent and confirmed; returns its id, or None if no
    queue took it (nobody of that audience is polling)."""
    message_id = str(uuid.uuid4())
    properties = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message_id,
        timestamp=int(time.time()),
        # A typing indicator delivered late is wrong: let the broker drop it after 10 s.
        expiration="10000" if event == "typing" else None,
    )
    body = json.dumps({"event": event, "data": data})
    try:
        channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
    except pika.exceptions.UnroutableError:
        return None
    return message_id


if __name__ == "__main__":
    url, routing_key, body = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()  # publisher confirms: basic_publish waits for the ack
    print(publish_event(channel, routing_key, body["event"], body["data"]))
    connection.close()
