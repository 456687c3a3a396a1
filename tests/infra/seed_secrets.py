"""Creates secrets in a Secrets Manager at AWS_ENDPOINT_URL (moto's server in
tests/secrets.rs), one per NAME=VALUE, and prints their ARNs as JSON by NAME.

    python seed_secrets.py NAME_PREFIX NAME=VALUE...
"""

import json
import os
import sys

import boto3

prefix, pairs = sys.argv[1], sys.argv[2:]
# Endpoint and keys from the environment; botocore reads AWS_DEFAULT_REGION, not AWS_REGION.
client = boto3.client("secretsmanager", region_name=os.environ["AWS_REGION"])
arns = {}
for pair in pairs:
    name, value = pair.split("=", 1)
    arns[name] = client.create_secret(Name=f"{prefix}/{name}", SecretString=value)["ARN"]
print(json.dumps(arns))
