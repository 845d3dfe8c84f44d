from django.contrib.auth.decorators import login_required
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.renderers import JSONRenderer

from lungsite.views import api_index, api_not_found


class SchemaApi(SpectacularAPIView):
    """The OpenAPI document (YAML, or JSON with ?format=json); its errors are JSON like the API's."""

    # Anonymous users reach no API but /healthz (README: roles): the schema needs a token or a session.
    permission_classes = [IsAuthenticated]

    def finalize_response(self, request, response, *args, **kwargs):
        if response.status_code >= 400:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)


urlpatterns = [
    path("", api_index, name="api-index"),
    path("schema/", SchemaApi.as_view(), name="api-schema"),
    # Swagger UI, its assets from drf-spectacular-sidecar (no CDN); a browser without a session goes
    # to the login page first.
    path(
        "docs/",
        login_required(SpectacularSwaggerView.as_view(url_name="api-schema", permission_classes=[AllowAny])),
        name="api-docs",
    ),
    path("", include("web.api_urls")),
    path("", include("registry.api_urls")),
    path("", include("jobs.api_urls")),
    path("", include("audit.api_urls")),
    path("", include("pacs.api_urls")),
    path("", include("learning.api_urls")),
    # Last: any other path under /api/v1/ is a JSON 404, also with DEBUG on (Django's debug 404 page
    # is HTML).
    re_path(r"^(?P<path>.*)$", api_not_found),
]
