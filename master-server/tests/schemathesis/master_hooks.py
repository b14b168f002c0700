"""Schemathesis hooks for the master server's OpenAPI fuzz run (`tests/openapi_fuzz.rs`).

1. Real owner tokens: every `201` of `POST /v1/sessions` seen is remembered (id and
   token, bounded), and operations on `/v1/sessions/{id}...` get the token of their id
   (the stateful phase follows links to rows it created). A well-formed UUID the generator
   made up is replaced by the id of a session an auth provider creates on the server
   under test (`MASTER_FUZZ_BASE`) every few seconds, so positive cases reach a live row
   with its own token while negative cases keep their malformed ids.
2. Rules the document states in prose because JSON Schema cannot express them (applied
   before every call, in every phase):
   integers are written without a fraction (`4`, not `4.0`); `players` is at most
   `max_players` (a patch that sets one of them sets both, as the row's other value is
   unknown to the generator); `connect` is at most 2048 bytes of JSON as sent (a larger
   object is replaced by `{}`). Only schema-valid values are changed, so a negative case
   stays negative.
"""

import json
import os
import re
import urllib.request

import schemathesis

BASE = os.environ["MASTER_FUZZ_BASE"]
INTEGER_FIELDS = ("max_players", "players", "timeout_secs")
MAX_CONNECT_BYTES = 2048
MAX_PLAYERS = 65535
MAX_TOKENS = 100_000
TOKENS = {}
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@schemathesis.auth(refresh_interval=3, retry_on=[]).apply_to(path_regex=r"\{id\}")
class OwnerToken:
    """A fresh session and its owner token."""

    def get(self, case, context):
        body = json.dumps(
            {"game": "fuzz", "name": "fuzz target", "max_players": MAX_PLAYERS}
        ).encode()
        request = urllib.request.Request(
            f"{BASE}/v1/sessions",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def set(self, case, data, context):
        case.headers = case.headers or {}
        id_ = (case.path_parameters or {}).get("id")
        token = TOKENS.get(id_) if isinstance(id_, str) else None
        if token is None and isinstance(id_, str) and UUID.match(id_):
            case.path_parameters["id"], token = data["id"], data["token"]
        case.headers["Authorization"] = f"Bearer {token or data['token']}"


@schemathesis.hook
def after_call(context, case, response):
    if (
        case.operation.path == "/v1/sessions"
        and case.method.upper() == "POST"
        and response.status_code == 201
        and len(TOKENS) < MAX_TOKENS
    ):
        created = response.json()
        TOKENS[created["id"]] = created["token"]


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PLAYERS


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if not isinstance(body, dict):
        return
    for field in INTEGER_FIELDS:
        value = body.get(field)
        if isinstance(value, float) and value.is_integer():
            body[field] = int(value)
    if case.method.upper() == "PATCH":
        # `null` keeps the row's value, like an absent field.
        if _count(body.get("players")) and body.get("max_players") is None:
            body["max_players"] = MAX_PLAYERS
        if _count(body.get("max_players")) and body["max_players"] >= 1 and body.get("players") is None:
            body["players"] = 0
    # The request is sent as `json.dumps` writes it (ASCII, default separators).
    connect = body.get("connect")
    if isinstance(connect, dict) and len(json.dumps(connect)) > MAX_CONNECT_BYTES:
        body["connect"] = {}
    players, max_players = body.get("players"), body.get("max_players")
    if _count(players) and _count(max_players) and players > max_players:
        body["players"] = max_players
