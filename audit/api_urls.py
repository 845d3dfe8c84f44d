from django.urls import path

from audit import label_apis

urlpatterns = [
    path(
        "predictions/<int:pk>/labels/", label_apis.PredictionLabelsApi.as_view(), name="api-prediction-labels"
    ),
]
