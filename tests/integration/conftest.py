import pytest


@pytest.fixture(autouse=True)
def _start_clean(clean_state: None) -> None:
    """Integration tests each start from an empty database and Redis."""
