from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from lungsite import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    # The login page then says that the session ended and the browser's copies were cleared.
    path("logout/", auth_views.LogoutView.as_view(next_page="/login/?logged_out=1"), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("web.urls")),
    path("", include("audit.urls")),
    path("", include("pacs.urls")),
    path("", include("jobs.urls")),
    path("", include("learning.urls")),
    path("api/v1/", include("lungsite.api_urls")),
]

# JSON error bodies under /api/, Django's pages elsewhere (common/api_errors.py).
handler400 = "common.api_errors.handler400"
handler403 = "common.api_errors.handler403"
handler404 = "common.api_errors.handler404"
handler500 = "common.api_errors.handler500"
