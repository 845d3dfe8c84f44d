"""Fixtures of the batch-job tests: jobs run in the test process (Celery's eager mode) unless a
test starts real workers, and real NIH PNGs."""

import pytest

from tests.conftest import shared_data_path


@pytest.fixture
def eager_jobs(django_capture_on_commit_callbacks):
    """`with eager_jobs(): ...` runs the tasks queued inside the block in the test process when the
    block ends. The queueing waits for the commit as in production; the test's transaction never
    commits, so the callbacks captured in the block are run at its end."""
    from lungsite.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield lambda: django_capture_on_commit_callbacks(execute=True)
    app.conf.task_always_eager = previous


@pytest.fixture
def nih_pngs():
    """nih_pngs(n) -> the first n NIH ChestX-ray14 PNGs as [(name, bytes)]."""
    folder = shared_data_path("nih_reproduce_chexnet", "images")

    def take(n: int) -> list[tuple[str, bytes]]:
        paths = sorted(folder.glob("*.png"))[:n]
        return [(p.name, p.read_bytes()) for p in paths]

    return take
