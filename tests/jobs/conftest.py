"""Fixtures of the batch-job tests: jobs run in the test process (Celery's eager mode) unless a
test starts real workers, and real NIH PNGs."""

import pytest

from tests.conftest import shared_data_path


@pytest.fixture
def nih_pngs():
    """nih_pngs(n) -> the first n NIH ChestX-ray14 PNGs as [(name, bytes)]."""
    folder = shared_data_path("nih_reproduce_chexnet", "images")

    def take(n: int) -> list[tuple[str, bytes]]:
        paths = sorted(folder.glob("*.png"))[:n]
        return [(p.name, p.read_bytes()) for p in paths]

    return take
