"""audit.services helpers that name and record things: heatmap cache names, upload file names."""

from audit.models import Prediction
from audit.services import file_name_recorded, heatmap_name


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
