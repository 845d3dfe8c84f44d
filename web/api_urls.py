from django.urls import path

from web import apis

urlpatterns = [
    path("predictions/", apis.PredictionListCreateApi.as_view(), name="api-predictions"),
    path("predictions/<int:pk>/", apis.PredictionDetailApi.as_view(), name="api-prediction-detail"),
    path(
        "predictions/<int:pk>/heatmaps/<str:name>.png",
        apis.PredictionHeatmapApi.as_view(),
        name="api-prediction-heatmap",
    ),
    path("predictions/<int:pk>/image", apis.PredictionImageApi.as_view(), name="api-prediction-image"),
]
