"""The tenant service documents every route, its error shape and its bearer security."""

from __future__ import annotations

from tests.integration.tenant.conftest import Api
from tests.integration.tenant.test_isolation import BODIES


async def test_the_openapi_document_lists_every_route_with_bearer_security(api: Api) -> None:
    response = await api.call("GET", "/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    paths = document["paths"]
    for method, template in BODIES:
        path = template.replace(":uuid", "")
        assert method.lower() in paths[path], (method, path)
    for path in [
        "/v1/auth/sign-in",
        "/v1/auth/oidc",
        "/v1/auth/refresh",
        "/v1/auth/logout",
        "/v1/invitations/accept",
        "/v1/me",
        "/v1/users",
        "/v1/providers",
        "/v1/providers/{credential_id}/test",
        "/v1/catalog/models",
        "/v1/catalog/models/{name}",
        "/v1/catalog/routes",
        "/v1/audit-events",
    ]:
        assert path in paths, path
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{"bearer": []}]
    # Signing in needs no token.
    assert paths["/v1/auth/sign-in"]["post"]["security"] == [{}]
    create_key = paths["/v1/tenants/{tenant_id}/api-keys"]["post"]
    schema_ref = create_key["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref.endswith("ApiKeyCreate")
