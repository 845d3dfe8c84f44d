from django.urls import path

from registry import apis

urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="api-models"),
    path("models/<int:pk>/", apis.ModelDetailApi.as_view(), name="api-model-detail"),
    path("models/<int:pk>/activate/", apis.ModelActivateApi.as_view(), name="api-model-activate"),
]
