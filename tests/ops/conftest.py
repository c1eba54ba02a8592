import pytest

from tests.ops.exported_metrics import Exported, collect_exported


@pytest.fixture(scope="session")
def exported(database_url: str, redis_url: str) -> Exported:
    """What Tally's services export (names and labels), gathered once per session."""
    return collect_exported(database_url, redis_url)
