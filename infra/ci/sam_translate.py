"""Expand template.yaml with the SAM translator, offline, so cfn-lint can check the resources
CloudFormation will actually create.

cfn-lint 1.58 validates SAM resources against SAM's own schemas but no longer runs the SAM
transform, so properties SAM passes through to AWS::Lambda::Function (Timeout, MemorySize,
EphemeralStorage...), the generated IAM roles, event source permissions and the HTTP API stage
are not checked by `cfn-lint template.yaml` alone. This script runs the same translator the
`AWS::Serverless-2016-10-31` transform uses (aws-sam-translator, pinned in the Makefile) and
writes plain CloudFormation JSON:

    python infra/ci/sam_translate.py template.yaml target/template.transformed.json
    cfn-lint target/template.transformed.json

No AWS access is needed: CodeUri gets a placeholder S3 location (what `sam package` would put
there), the region defaults to us-east-1, and the two managed policies SAM may attach are given
by name instead of being looked up.
"""

import json
import os
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

MANAGED_POLICIES = {
    "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "AWSLambdaSQSQueueExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole",
}


class ManagedPolicies:
    def load(self):
        return MANAGED_POLICIES


def main(src, dest):
    if not os.environ.get("AWS_DEFAULT_REGION") and not os.environ.get("AWS_REGION"):
        os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    with open(src, encoding="utf-8") as f:
        template = yaml_parse(f.read())
    placeholder = "s3://sam-package-placeholder/code.zip"
    template.get("Globals", {}).get("Function", {}).pop("CodeUri", None)
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource.setdefault("Properties", {})["CodeUri"] = placeholder
    out = transform(template, {}, ManagedPolicies())
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    with open(dest, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    print(f"{src}: SAM transform OK, {len(out['Resources'])} resources -> {dest}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: sam_translate.py TEMPLATE OUT.json")
    try:
        main(sys.argv[1], sys.argv[2])
    except Exception as e:  # the translator reports every document error in one exception
        sys.exit(f"{sys.argv[1]}: SAM transform failed: {e}")
