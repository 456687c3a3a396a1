"""The broker user of the longpoll functions, as a CloudFormation custom resource.

Amazon MQ creates one RabbitMQ user, an administrator, with the broker; any other user
is made through RabbitMQ's management API (https on the broker's host). This function,
run by the template's `FunctionBrokerUser` resource, signs in as that administrator and
gives the functions' user only what they use, in one vhost:

- configure (declare, delete): the per-user event queues, their binding records, the
  presence queues, the two exchanges the functions declare, and `longpoll.shard`, where a
  broker that is one of several records its place (docs/contract.md, "Placement over
  several brokers");
- write (publish, bind a queue): the same, plus the default exchange (binding records
  and presence lookups are published to it) and the shard record's names
  (`longpoll.shard.*`: RabbitMQ asks for write on an alternate exchange);
- read (consume, get, purge, bind from an exchange): the same as configure.

Nothing else: no other queue or exchange, no management tags. `tests/infra.rs` runs this
file against a real node and then the functions as that user.

Create and Update put the user and its permissions (idempotent); Delete removes the user.
Properties: ManagementUrl, AdminSecretArn, UserSecretArn (each {"username",
"password"}), Vhost, Exchange.
"""

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request

import boto3

# The queue name prefixes of the functions (longpoll::topology).
QUEUE_PREFIXES = ("event_queue:user:", "bindings:event_queue:user:", "online_status:user:")
TIMEOUT_SECONDS = 20
# The exchange whose argument records a broker's place among several (longpoll::shard).
SHARD_RECORD = "longpoll.shard"


def permissions(exchange):
    """The configure, write and read patterns for the functions of `exchange`."""
    queues = [re.escape(prefix) + ".+" for prefix in QUEUE_PREFIXES]
    exchanges = [re.escape(exchange), re.escape(exchange + ".presence"), re.escape(SHARD_RECORD)]
    anchored = lambda names: "^(" + "|".join(names) + ")$"
    return {
        "configure": anchored(queues + exchanges),
        "write": anchored(queues + exchanges + [re.escape("amq.default"), re.escape(SHARD_RECORD + ".") + ".+"]),
        "read": anchored(queues + exchanges),
    }


def secret(arn):
    value = boto3.client("secretsmanager").get_secret_value(SecretId=arn)
    return json.loads(value["SecretString"])


def management(base_url, admin, method, path, body=None):
    """One management API request as `admin`; a 404 on DELETE counts as done."""
    credentials = f"{admin['username']}:{admin['password']}".encode()
    request = urllib.request.Request(
        base_url.rstrip("/") + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(credentials).decode(),
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS):
            pass
    except urllib.error.HTTPError as error:
        if not (method == "DELETE" and error.code == 404):
            detail = error.read().decode(errors="replace")[:300]
            raise RuntimeError(f"{method} {path}: HTTP {error.code} {detail}") from None


def apply(request_type, props):
    """Does what `request_type` asks; returns the user's name."""
    base_url = props["ManagementUrl"]
    admin = secret(props["AdminSecretArn"])
    user = secret(props["UserSecretArn"])
    name = urllib.parse.quote(user["username"], safe="")
    vhost = urllib.parse.quote(props.get("Vhost", "/"), safe="")
    if request_type == "Delete":
        management(base_url, admin, "DELETE", f"/api/users/{name}")
        return user["username"]
    management(base_url, admin, "PUT", f"/api/users/{name}",
               {"password": user["password"], "tags": ""})
    management(base_url, admin, "PUT", f"/api/permissions/{vhost}/{name}",
               permissions(props["Exchange"]))
    return user["username"]


def respond(event, status, reason, physical_id):
    """Tells CloudFormation the outcome (a PUT to the pre-signed ResponseURL)."""
    body = json.dumps({
        "Status": status,
        "Reason": reason[:1000],
        "PhysicalResourceId": physical_id,
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
        "Data": {"Username": physical_id, "SecretArn": event["ResourceProperties"]["UserSecretArn"]},
    }).encode()
    request = urllib.request.Request(
        event["ResponseURL"], data=body, method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS):
        pass


def handler(event, context):
    props = event["ResourceProperties"]
    physical_id = event.get("PhysicalResourceId", "broker-user")
    try:
        physical_id = apply(event["RequestType"], props)
        respond(event, "SUCCESS", "", physical_id)
    except Exception as error:  # every failure must reach CloudFormation, or it waits an hour
        print(f"broker user: {event['RequestType']} failed: {error}")
        # A user left behind must not block deleting the stack (or rolling back a
        # create that failed): a Delete always succeeds, and says so in the log.
        status = "SUCCESS" if event["RequestType"] == "Delete" else "FAILED"
        respond(event, status, str(error), physical_id)
