"""Creates the three secrets a deployed function reads, in a Secrets Manager at
AWS_ENDPOINT_URL (moto's server in tests/secrets.rs), and prints their ARNs as JSON.

    python seed_secrets.py NAME_PREFIX BROKER_SECRET JWT_SECRET PUBLISH_KEY
"""

import json
import os
import sys

import boto3

prefix, broker_secret, jwt_secret, publish_key = sys.argv[1:5]
# Endpoint and keys from the environment; botocore reads AWS_DEFAULT_REGION, not AWS_REGION.
client = boto3.client("secretsmanager", region_name=os.environ["AWS_REGION"])
broker = client.create_secret(Name=f"{prefix}/amqp", SecretString=broker_secret)
jwt = client.create_secret(Name=f"{prefix}/jwt", SecretString=jwt_secret)
publish = client.create_secret(Name=f"{prefix}/publish-key", SecretString=publish_key)
print(json.dumps({"amqp": broker["ARN"], "jwt": jwt["ARN"], "publish": publish["ARN"]}))
