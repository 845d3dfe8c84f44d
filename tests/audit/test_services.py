"""audit.services helpers that name and record things: heatmap cache names, upload file names;
what a failed image write leaves behind."""

import logging

import numpy as np
import pytest
from django.core.files.storage import FileSystemStorage

from audit.models import Prediction
from audit.services import StorageUnavailable, file_name_recorded, heatmap_name, image_store


def test_it_gives_names_that_slug_alike_their_own_heatmap_file():
    prediction = Prediction(pk=7)
    spaced = heatmap_name(prediction=prediction, name="Mass Lesion")
    underscored = heatmap_name(prediction=prediction, name="Mass_Lesion")
    assert spaced != underscored
    assert spaced.startswith("heatmaps/7/Mass_Lesion-") and spaced.endswith(".png")
    assert heatmap_name(prediction=prediction, name="Mass Lesion") == spaced  # stable: a cache


def test_it_records_only_the_base_name_of_an_upload_truncated():
    assert file_name_recorded("C:\\Patients\\Doe Jane\\chest.dcm") == "chest.dcm"
    assert file_name_recorded("/home/u/Smith/img 1.png") == "img 1.png"
    assert file_name_recorded(None) == ""
    assert len(file_name_recorded("a" * 400 + ".png")) == 255


class _DownStorage(FileSystemStorage):
    """A real storage whose backend refuses every write, as a remote store does in an outage;
    it records the calls made to it after a write failed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failed = False
        self.calls_after_failure: list[str] = []

    def _save(self, name, content):
        self.failed = True
        raise ConnectionError("upstream 503")

    def exists(self, name):
        if self.failed:
            self.calls_after_failure.append("exists")
        return super().exists(name)

    def delete(self, name):
        if self.failed:
            self.calls_after_failure.append("delete")
        return super().delete(name)


def test_it_touches_nothing_more_and_logs_one_line_when_the_image_write_fails(tmp_path, monkeypatch, caplog):
    down = _DownStorage(location=tmp_path)
    monkeypatch.setattr("audit.services.images_storage", lambda: down)
    image = np.zeros((64, 64), dtype=np.uint8)

    with caplog.at_level(logging.ERROR, logger="audit.services"), pytest.raises(StorageUnavailable):
        image_store(data=b"", image=image)

    assert down.failed and down.calls_after_failure == []
    assert list(tmp_path.rglob("*.png")) == []
    errors = [r for r in caplog.records if r.name == "audit.services" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "ConnectionError: upstream 503" in errors[0].getMessage()
