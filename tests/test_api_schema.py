"""The service's API contract, tested from its own OpenAPI schema with schemathesis.

A real ``serve`` (uvicorn on 127.0.0.1, the tiny retrieval index of ``test_index``) answers
inputs generated from ``/openapi.json`` for every route, a bounded number of examples each:
no answer may be a 5xx, every status code must be one the route declares, and every JSON
body must match the schema declared for its status.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from serve_helpers import uvicorn_server
from test_index import retrieval_world

#: examples per route: the whole run stays well under a minute on 2 shared cores
EXAMPLES = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with uvicorn_server(retrieval_world(tmp_path_factory)["index"], max_upload_mb=1, max_wait_ms=5) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def test_the_schema_lists_every_route(api_schema):
    paths = set(api_schema.raw_schema["paths"])
    for p in (
        "/v1/search",
        "/v1/products",
        "/v1/products/{asin}",
        "/v1/products/{asin}/similar",
        "/v1/categories",
        "/healthz",
        "/readyz",
    ):
        assert p in paths, sorted(paths)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_keeps_its_contract(case, server):
    case.call_and_validate(base_url=server, checks=CHECKS)
