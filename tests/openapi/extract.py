#!/usr/bin/env python3
"""Take from GitHub's published REST API description what the account tests need.

The description is the npm package @octokit/openapi (generated from github/rest-api-description;
version pinned in package.json), installed here by `make deps`. Out of its 73 MB dereferenced
document this writes `github.json` (not committed; `make deps` makes it):

* `responses`: for each call the GitHub stand-in (tests/src/forge.rs) answers, the schema of each
  status it answers with — what tests/openapi/validate.py checks the stand-in's bodies against;
* `templates`: a smallest valid instance of the repository objects (every required property,
  typed as the schema says), which the stand-in fills in with its own values — so its answers
  carry every field GitHub's do, not only the ones gitferry reads.

It also copies two recorded real GitHub API sessions of the npm package @octokit/fixtures
(scenarios `get-repository` and `rename-repository`, their `normalized-fixture.json`) into
`recordings/`, which tests/tests/accounts.rs replays to gitferry's GitHub client.

    python3 tests/openapi/extract.py [DESCRIPTION.json] [OUT.json]
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_IN = os.path.join(HERE, "node_modules/@octokit/openapi/generated/api.github.com.deref.json")

# (method, path, status): the calls of tests/src/forge.rs for Kind::Github.
CALLS = [
    ("get", "/orgs/{org}/repos", "200"),
    ("get", "/users/{username}/repos", "200"),
    ("post", "/orgs/{org}/repos", "201"),
    ("post", "/orgs/{org}/repos", "422"),
    ("get", "/repos/{owner}/{repo}", "200"),
    ("get", "/repos/{owner}/{repo}", "404"),
    ("patch", "/repos/{owner}/{repo}", "200"),
]


def schema_of(doc, method, path, status):
    response = doc["paths"][path][method]["responses"][status]
    return response["content"]["application/json"]["schema"]


def instance(schema):
    """A smallest instance valid against `schema` (OpenAPI 3.0: `nullable`, no `$ref` left)."""
    if "allOf" in schema:
        merged = {}
        for part in schema["allOf"]:
            value = instance(part)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return instance(schema[key][0])
    if schema.get("nullable"):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: instance(props.get(name, {})) for name in schema.get("required", [])}
    if kind == "array":
        return []
    if kind == "boolean":
        return False
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2026-01-01T00:00:00Z"
        if fmt == "uri":
            return "https://api.github.com/"
        if fmt == "email":
            return "noreply@example.invalid"
        return ""
    return None


RECORDINGS = ["get-repository", "rename-repository"]


def copy_recordings():
    scenarios = os.path.join(HERE, "node_modules/@octokit/fixtures/scenarios/api.github.com")
    out = os.path.join(HERE, "recordings")
    os.makedirs(out, exist_ok=True)
    for name in RECORDINGS:
        with open(os.path.join(scenarios, name, "normalized-fixture.json")) as f:
            exchanges = json.load(f)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(exchanges, f)
    print(f"copied {len(RECORDINGS)} recorded sessions into {out}")


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_IN
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "github.json")
    with open(source) as f:
        doc = json.load(f)
    responses = {f"{m.upper()} {p} {s}": schema_of(doc, m, p, s) for m, p, s in CALLS}
    listing = responses["GET /orgs/{org}/repos 200"]["items"]
    templates = {
        "minimal-repository": instance(listing),
        "full-repository": instance(responses["GET /repos/{owner}/{repo} 200"]),
        "validation-error": instance(responses["POST /orgs/{org}/repos 422"]),
        "basic-error": instance(responses["GET /repos/{owner}/{repo} 404"]),
    }
    package = os.path.join(os.path.dirname(os.path.dirname(source)), "package.json")
    version = json.load(open(package))["version"] if os.path.exists(package) else "?"
    with open(out, "w") as f:
        json.dump({"source": f"@octokit/openapi {version}, {os.path.basename(source)}",
                   "responses": responses, "templates": templates}, f)
    print(f"wrote {out}: {len(responses)} responses, {len(templates)} templates")
    if len(sys.argv) <= 1:
        copy_recordings()


if __name__ == "__main__":
    main()
