from django.urls import path

from learning import views

urlpatterns = [
    path("models/drift/", views.drift_page, name="drift"),
    path("models/drift/<int:version_id>.png", views.drift_picture, name="drift-png"),
]
