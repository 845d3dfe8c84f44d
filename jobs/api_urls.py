from django.urls import path

from jobs import apis

urlpatterns = [
    path("jobs/", apis.JobListCreateApi.as_view(), name="api-jobs"),
    path("jobs/<int:pk>/", apis.JobDetailApi.as_view(), name="api-job-detail"),
    path("jobs/<int:pk>/results.csv", apis.JobResultsCsvApi.as_view(), name="api-job-results"),
    path("jobs/<int:pk>/cancel/", apis.JobCancelApi.as_view(), name="api-job-cancel"),
]
