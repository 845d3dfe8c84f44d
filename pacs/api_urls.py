from django.urls import path

from pacs import apis

urlpatterns = [
    path("predictions/<int:pk>/fhir", apis.PredictionFhirApi.as_view(), name="api-prediction-fhir"),
]
