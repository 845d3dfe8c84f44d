from django.urls import path

from audit import label_views, views

urlpatterns = [
    path("history/", views.history, name="history"),
    path("audit/", views.audit_log, name="audit"),
    path("predictions/<int:pk>/thumbnail.jpg", views.thumbnail, name="prediction-thumbnail"),
    path("predictions/<int:pk>/labels/", label_views.prediction_labels_post, name="prediction-labels"),
]
