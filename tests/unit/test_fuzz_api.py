"""The API fuzzed against its own OpenAPI schema: every route the app has when the test runs, with and without a
valid key, with data that fits the schema and data that does not. The real app, dispatcher, relay, ledger and
placement answer (the model network, scripted hosts, on a real socket); nothing may answer 5xx, break the schema,
or answer an error that is not ``{"error": {"message", "code"}}``.

Streams are bounded: a response is read for at most ``READ_S`` seconds, then dropped (what arrived is checked)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from model_network import ModelNetwork, a_model_network, serve
from schemathesis import GenerationMode
from schemathesis.core import NotSet
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from archipelag.errors import Unauthorized

pytestmark = pytest.mark.slow

# Examples per operation, per key (with and without) and per mode (fitting the schema, and not). Every operation is
# fuzzed in both modes, with and without a key: the default of 6 (and 4 that do not fit) makes ~630 requests over
# the 47 operations, ~35 CPU-seconds; ARCHIPELAG_TEST_FUZZ_EXAMPLES=18 searches three times deeper.
_POSITIVE = int(os.environ.get("ARCHIPELAG_TEST_FUZZ_EXAMPLES", "6"))
EXAMPLES = {GenerationMode.POSITIVE: _POSITIVE, GenerationMode.NEGATIVE: max(2, _POSITIVE * 2 // 3)}
READ_S = 3.0  # the longest a response (an SSE stream above all) is read
FAILURES_KEPT = 3  # per operation and check: enough to see the pattern
# Not schemathesis' not_a_server_error: a 503 (no capacity, DESIGN §8) is an answer, checked by `server_error`.
SCHEMA_CHECKS = [status_code_conformance, content_type_conformance,
                 response_headers_conformance, response_schema_conformance]


@dataclass
class Fuzzed:
    base_url: str
    net: ModelNetwork
    key: str
    cases: int = 0
    failures: dict[str, list[str]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)

    def valid_key(self) -> str:
        """The account's key; a new one when a fuzzed DELETE /api-keys/{id} revoked it (so the rest still runs
        authenticated)."""
        try:
            self.net.ledger.authenticate(self.key)
        except Unauthorized:
            _, self.key = self.net.ledger.create_api_key(self.net.account_id, "fuzz", ("keys", "read", "write"))
        return self.key

    def fail(self, where: str, what: str) -> None:
        kept = self.failures.setdefault(where, [])
        if len(kept) < FAILURES_KEPT:
            kept.append(what)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ModelNetwork]]:
    # Limits out of reach: a 429 would answer in place of the route and hide it from the fuzzer.
    net = a_model_network(tmp_path_factory.mktemp("fuzz"), credits_micro=10**12, queue_timeout_s=1.0,
                          rate_limit_per_min=10**9, auth_failures_per_min=10**9)
    with serve(net.app) as base_url:
        yield base_url, net


def bounded_call(case: schemathesis.Case, base_url: str, headers: dict[str, str],
                 session: requests.Session) -> requests.Response:
    """The request, read for at most ``READ_S``: an endless stream is cut off, not waited for."""
    kwargs = case.as_transport_kwargs(base_url=base_url, headers=headers)
    try:
        response = session.request(**kwargs, stream=True, timeout=(5, READ_S), allow_redirects=False)
    except requests.exceptions.ConnectionError:  # a kept-alive connection the server closed (after a 500)
        session.close()
        response = session.request(**kwargs, stream=True, timeout=(5, READ_S), allow_redirects=False)
    deadline = time.monotonic() + READ_S
    body = bytearray()
    try:
        for chunk in response.iter_content(4096):
            body += chunk
            if time.monotonic() > deadline:
                break
    except requests.exceptions.ConnectionError:  # the read timed out: a quiet stream, kept open
        pass
    finally:
        response.close()
    response._content = bytes(body)  # what arrived is what the checks see
    response._content_consumed = True
    return response


def server_error(response: requests.Response) -> str | None:
    if response.status_code >= 500 and response.status_code != 503:
        return f"{response.status_code}: a server error"
    return None


def error_shape(response: requests.Response) -> str | None:
    """What is wrong with an error response, by DESIGN §8: JSON ``{"error": {"message", "code"}}``."""
    if response.status_code < 400:
        return None
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return f"an error that is not JSON {{'error': …}}: {response.content[:200]!r}"
    if not (isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]
            and isinstance(error.get("code"), str) and error["code"]):
        return f"an error without a message and a code: {error!r}"
    return None


def fuzz_operation(fuzzed: Fuzzed, operation: Any, mode: GenerationMode, with_key: bool,
                   session: requests.Session) -> None:
    checks = [*SCHEMA_CHECKS, *([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])]
    where = f"{operation.label} [{mode.value}, {'key' if with_key else 'no key'}]"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES[mode], deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        headers = {"Authorization": f"Bearer {fuzzed.valid_key()}"} if with_key else {}
        if not with_key:
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        fuzzed.cases += 1
        response = bounded_call(case, fuzzed.base_url, headers, session)
        fuzzed.statuses[response.status_code] += 1
        body = "" if isinstance(case.body, NotSet) else f" body={case.body!r}"
        sent = f"{case.method} {response.request.url}{body}"[:600]
        for check in (server_error, error_shape):
            problem = check(response)
            if problem:
                fuzzed.fail(f"{where}: {check.__name__}", f"{problem} {response.content[:300]!r} <- {sent}")
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (Failure, FailureGroup) as found:
            for failure in found.exceptions if isinstance(found, FailureGroup) else [found]:
                fuzzed.fail(f"{where}: {failure.code} {failure.title}",
                            f"{response.status_code} {response.content[:300]!r} <- {sent}")

    try:
        run()
    except Unsatisfiable:  # nothing to break in an operation without parameters or body (GET /health)
        if mode is not GenerationMode.NEGATIVE:
            raise


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_no_route_answers_5xx_or_breaks_its_schema(api: tuple[str, ModelNetwork], with_key: bool) -> None:
    base_url, net = api
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 10, "the schema lists the app's routes"
    fuzzed = Fuzzed(base_url, net, net.key)
    started = time.monotonic()
    with requests.Session() as session:
        for operation in operations:
            for mode in EXAMPLES:
                fuzz_operation(fuzzed, operation, mode, with_key, session)
    print(f"\nfuzz ({'with' if with_key else 'without'} a key): {fuzzed.cases} cases over {len(operations)} "
          f"operations in {time.monotonic() - started:.0f} s; statuses {dict(sorted(fuzzed.statuses.items()))}; "
          f"{len(fuzzed.failures)} kinds of failure")
    report = "\n".join(f"- {where}\n" + "\n".join(f"    {case}" for case in cases)
                       for where, cases in sorted(fuzzed.failures.items()))
    assert not fuzzed.failures, f"the fuzzer found:\n{report}"
