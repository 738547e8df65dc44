"""Schemathesis against the relay's own OpenAPI schema, on a real server: no 5xx, and the schema tells the truth.

The provider is scripted and instant, so every stream is finite (schemathesis
reads whole bodies).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from streamchat import ScriptedProvider
from streamchat.relay import ClientKey, Limits, RelayConfig, UsageLog, create_app
from streamchat.relay.testing import ServedRelay

KEY = "schema-test-key-0123456789"
EXAMPLES = 100
CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
    response_schema_conformance, negative_data_rejection, positive_data_acceptance, ignored_auth,
    unsupported_method, missing_required_header,
]


@pytest.fixture(scope="module")
def usage() -> io.StringIO:
    return io.StringIO()


@pytest.fixture(scope="module")
def relay(usage: io.StringIO) -> Iterator[ServedRelay]:
    provider = ScriptedProvider("A short answer.", ttft=0, tokens_per_s=0, reasoning="Hmm.")
    limits = Limits(requests_per_minute=None, tokens_per_minute=None, streams_per_key=None, streams_total=None,
                    max_body_bytes=64 * 1024, max_messages=8, max_tokens=64)
    config = RelayConfig(keys=(ClientKey("fuzz", KEY),), limits=limits)
    with ServedRelay(create_app(provider, config, usage_log=UsageLog(usage))) as served:
        yield served


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_responses_match_the_schema(relay: ServedRelay, usage: io.StringIO, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(relay.url + "/openapi.json")
    calls: list[int] = []

    @given(case=schema.as_strategy(mode))
    # derandomize: CI runs the same examples every time, so a failure is reproducible, never flaky
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call_and_validate(
            base_url=relay.url, headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS, timeout=10
        )
        calls.append(response.status_code)

    check()
    assert len(calls) >= EXAMPLES, "schemathesis generated too few requests to mean anything"
    assert not [s for s in calls if s >= 500]
    if mode is GenerationMode.POSITIVE:
        assert calls.count(200) > len(calls) // 2, f"valid requests were refused: {sorted(set(calls))}"
    else:
        assert sum(400 <= s < 500 for s in calls) > len(calls) // 4, f"invalid requests were accepted: {sorted(set(calls))}"
    lines = [json.loads(line) for line in usage.getvalue().splitlines()]
    assert lines and all(line["status"] < 500 for line in lines)
