"""The parameter types the tenant service's routes share, in Litestar's explicit style."""

from __future__ import annotations

from typing import Annotated

from litestar.di import NamedDependency
from litestar.params import QueryParameter

from tally.auth import Principal
from tenant.pagination import MAX_LIMIT
from tenant.runtime import Runtime

# The verified caller (401 without a valid access token) and the service's runtime.
Caller = NamedDependency[Principal]
Services = NamedDependency[Runtime]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, QueryParameter(max_length=500)]
Search = Annotated[str | None, QueryParameter(max_length=200)]
