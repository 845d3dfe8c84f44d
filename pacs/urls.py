from django.urls import path, re_path

from pacs import apis, views

urlpatterns = [
    # With or without the trailing slash: DICOMweb clients join base URLs both ways, and a redirect
    # would lose a POST body.
    re_path(r"^dicom-web/studies/?$", apis.StudiesStoreApi.as_view(), name="stow-studies"),
    re_path(
        r"^dicom-web/studies/(?P<study_uid>[0-9.]{1,64})/?$",
        apis.StudiesStoreApi.as_view(),
        name="stow-study",
    ),
    path("worklist/", views.worklist, name="worklist"),
]
