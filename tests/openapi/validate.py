#!/usr/bin/env python3
"""Check answers of the GitHub stand-in against GitHub's published response schemas.

Reads, on stdin, a JSON list of `{"call": "GET /orgs/{org}/repos 200", "body": ...}`; prints one
line per body that does not validate (the schema's first errors) and exits 1 if any, 0 if all
do. The schemas come from `github.json`, made by extract.py.

    .venv/bin/python tests/openapi/validate.py < answers.json
"""
import json
import os
import sys

from openapi_schema_validator import OAS30Validator

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    with open(os.path.join(HERE, "github.json")) as f:
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
