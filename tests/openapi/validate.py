#!/usr/bin/env python3
"""Check answers of a provider stand-in against the provider's published response schemas.

Reads, on stdin, a JSON list of `{"call": "GET /orgs/{org}/repos 200", "body": ...}`; prints one
line per body that does not validate (the schema's first errors) and exits 1 if any, 0 if all
do. The schemas come from `PROVIDER.json` here: `github.json` is made by extract.py from GitHub's
OpenAPI description (npm @octokit/openapi); `gitea.json` and `gitlab.json` are committed, taken
from Gitea's and GitLab's Swagger 2.0 descriptions (their `source` says which file at which
commit), with every `$ref` inlined.

    .venv/bin/python tests/openapi/validate.py [github|gitea|gitlab] < answers.json
"""
import json
import os
import sys

from openapi_schema_validator import OAS30Validator

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    provider = sys.argv[1] if len(sys.argv) > 1 else "github"
    with open(os.path.join(HERE, f"{provider}.json")) as f:
        responses = json.load(f)["responses"]
    answers = json.load(sys.stdin)
    failed = 0
    for answer in answers:
        schema = responses.get(answer["call"])
        if schema is None:
            print(f"{answer['call']}: no schema for this call")
            failed += 1
            continue
        errors = sorted(OAS30Validator(schema).iter_errors(answer["body"]), key=lambda e: list(e.path))
        if errors:
            failed += 1
            shown = "; ".join(f"{'/'.join(map(str, e.path)) or '(body)'}: {e.message[:120]}" for e in errors[:5])
            print(f"{answer['call']}: {len(errors)} error(s): {shown}")
    print(f"{len(answers) - failed} of {len(answers)} answers valid")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
