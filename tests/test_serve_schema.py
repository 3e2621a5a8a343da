"""schemathesis against the web app's own OpenAPI schema, in process: every generated request, valid or
not, gets a documented status and a response matching the schema (no 500s), with schemathesis' default
checks.

One setting: no JSON schema can say "a string that decodes to an image of a digit", so a schema-valid
request whose image does not decode is answered 400 (documented), which the positive-data check is told.
"""

import warnings

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig

from mnistlab.deploy import serve


@pytest.fixture(scope="module")
def api_schema(trained_run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = SchemathesisConfig.from_str(
            '[checks.positive_data_acceptance]\nexpected-statuses = ["2xx", "400", "413"]\n'
        )
        return schemathesis.openapi.from_asgi("/openapi.json", serve.create_app(trained_run), config=config)


def test_api_conforms_to_its_openapi_schema(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} == {"/api/predict", "/api/health"}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate()

        check()
