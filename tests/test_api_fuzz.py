"""Property-based fuzzing of the whole API with schemathesis (issue 5B): every operation in the
OpenAPI document — whichever routers are installed when this runs — gets generated requests that
fit the schema and requests that do not, and no answer may be a server error. The base has a few
rows in every layer, so requests reach real queries rather than stopping at "no such feature".

Why a loop over ``schema.get_all_operations()`` and not ``@schema.parametrize()``: the app needs
this module's database, so the schema can only be loaded inside a fixture, and schemathesis 4's
fixture-based (lazy) parametrisation breaks on pytest 9 (it touches a removed ``_nodeid``).
Each operation still gets its own Hypothesis run, and every failing operation is reported.

Besides "no server error", every answer must be what the document says (issue 16, item 10): a
documented status, a documented content type, a body that fits the documented schema. Requests
carry a reader key (write routes must then answer 403) or, anchored on existing things, a loader
key, so that the write route runs too; it is fuzzed last, as its loads change the base.
"""
from __future__ import annotations

import re

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import strategies as st
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)
from schemathesis.generation import GenerationMode

from api.app import create_app
from cim.apikeys import create_key
from cim.registry import load_layers
from tests.spatial_data import build_features, build_hierarchy

EXAMPLES_PER_OPERATION = 30  # per mode; bounded so the whole run stays within a few minutes
#: the write route runs a real load per example: fewer, so the run stays within its budget
EXAMPLES_FOR_WRITES = 10
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: values that exist in the fixture's base, so that fuzzing also reaches the queries behind a
#: valid layer, feature or device and not only the "no such thing" answers
TILE_MATRIX_SET = "WebMercatorQuad"


@pytest.fixture(scope="module")
def fuzz_target(engine):
    with engine.begin() as conn:
        city = build_hierarchy(conn)
        build_features(conn, city)
        _, key = create_key(conn, "reader", "fuzz")
        _, loader_key = create_key(conn, "loader", "fuzz loads")
        layers = load_layers(conn)
        feature_ids = {name: conn.execute(sa.text(
            f'SELECT feature_id::text FROM "{layer.table}" WHERE valid_to IS NULL LIMIT 1')).scalar()
            for name, layer in layers.items()}
    anchors = {"lon_lat": city.lonlat(200, 150), "feature_ids": feature_ids, "loader_key": loader_key}
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(engine)), key, anchors


def _anchored(operation, mode: GenerationMode, key: str, anchors: dict) -> st.SearchStrategy:
    """Cases whose layer/collection/feature/device parameters name things that exist."""
    names = set(re.findall(r"{(\w+)}", operation.path))

    def for_layer(layer: str) -> st.SearchStrategy:
        known = {"collectionId": layer, "layer": layer, "featureId": anchors["feature_ids"][layer],
                 "device_id": "dev-1", "tileMatrixSetId": TILE_MATRIX_SET}
        path = {k: v for k, v in known.items() if k in names}
        query = {"layer": layer} if "layer" in operation.query else {}
        if {"lon", "lat"} <= {p.name for p in operation.query}:
            query.update(zip(("lon", "lat"), anchors["lon_lat"]))
        return operation.as_strategy(mode, headers={"X-API-Key": anchors["loader_key"]}, path_parameters=path,
                                     query=query)

    return st.sampled_from(sorted(anchors["feature_ids"])).flatmap(for_layer)


def _fuzz(operation, mode: GenerationMode, key: str, anchors: dict) -> None:
    # a reader key: read routes accept it, write routes must answer 403 to it, never 500
    free = operation.as_strategy(mode, headers={"X-API-Key": key})
    examples = EXAMPLES_FOR_WRITES if operation.method.upper() != "GET" and "ingest" in operation.path \
        else EXAMPLES_PER_OPERATION

    @given(case=st.one_of(free, _anchored(operation, mode, key, anchors)))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=(Phase.explicit, Phase.generate, Phase.shrink),
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call()
        case.validate_response(response, checks=CHECKS)

    run()


def test_every_operation_answers_as_documented_and_never_with_a_server_error(fuzz_target):
    schema, key, anchors = fuzz_target
    # the write route last: its loads (a replace, say) change the rows the other operations are anchored on
    operations = sorted((result.ok() for result in schema.get_all_operations()),
                        key=lambda op: op.path.startswith("/ingest/"))
    labels = {op.label for op in operations}
    assert {"GET /grid/lookup", "POST /grid/lookup", "GET /nearby", "POST /ingest/{layer}",
            "GET /iot/devices/{device_id}/readings", "GET /healthz", "POST /geocode/batch",
            "GET /collections/{collectionId}/items", "GET /collections/{collectionId}/queryables"} <= labels
    assert len(labels) == sum(len(methods) for methods in schema.raw_schema["paths"].values())  # every one
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, key, anchors)
            except Unsatisfiable:
                pass  # nothing in this operation can be made invalid (e.g. only free-text parameters)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect every operation's
                # failure, then report (schemathesis raises its findings as a BaseExceptionGroup)
                found = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
                failures.append(f"{operation.label} ({mode.value}): " + "\n".join(map(str, found)))
    assert not failures, "\n\n".join(failures)
