from django.urls import path

from learning import apis

urlpatterns = [
    path("drift/", apis.DriftApi.as_view(), name="api-drift"),
    path("models/shadow/", apis.ShadowComparisonApi.as_view(), name="api-shadow"),
    path("evaluations/<int:pk>/", apis.EvaluationDetailApi.as_view(), name="api-evaluation-detail"),
]
