from django.urls import path

from audit import views

urlpatterns = [
    path("history/", views.history, name="history"),
    path("audit/", views.audit_log, name="audit"),
    path("predictions/<int:pk>/thumbnail.jpg", views.thumbnail, name="prediction-thumbnail"),
]
