"""Runs infra/broker-user/index.py as CloudFormation would, for tests/infra.rs.

    broker_user.py REQUEST_TYPE MANAGEMENT_URL EXCHANGE ADMIN_JSON USER_JSON

Puts the two credentials in Secrets Manager (AWS_ENDPOINT_URL: moto's server), sends the
handler a custom resource event whose ResponseURL is a server on loopback, and prints
the response the handler PUT there (JSON).
"""

import http.server
import json
import os
import sys
import threading
import uuid

import boto3

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "infra", "broker-user"))
import index  # noqa: E402

request_type, management_url, exchange, admin, user = sys.argv[1:6]
# Lambda sets both; botocore reads AWS_DEFAULT_REGION, not AWS_REGION.
os.environ.setdefault("AWS_DEFAULT_REGION", os.environ["AWS_REGION"])
secrets = boto3.client("secretsmanager")
arn = lambda value: secrets.create_secret(Name=f"broker-user-{uuid.uuid4()}", SecretString=value)["ARN"]

responses = []


class ResponseUrl(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        responses.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), ResponseUrl)
threading.Thread(target=server.serve_forever, daemon=True).start()
index.handler({
    "RequestType": request_type,
    "ResponseURL": f"http://127.0.0.1:{server.server_port}/response",
    "StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/longpoll-test/1",
    "RequestId": str(uuid.uuid4()),
    "LogicalResourceId": "FunctionBrokerUser",
    "PhysicalResourceId": "longpoll-functions",
    "ResourceProperties": {
        "ManagementUrl": management_url,
        "AdminSecretArn": arn(admin),
        "UserSecretArn": arn(user),
        "Vhost": "/",
        "Exchange": exchange,
    },
}, None)
server.shutdown()
print(json.dumps(responses[0]))
