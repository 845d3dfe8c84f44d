from django.urls import path

from web import views

urlpatterns = [
    path("", views.upload, name="upload"),
    path("predictions/<int:pk>/", views.prediction_detail, name="prediction-detail"),
    path("predictions/<int:pk>/pixels", views.prediction_pixels, name="prediction-pixels"),
]
