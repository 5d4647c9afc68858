from django.urls import path

from jobs import consumers

websocket_urlpatterns = [
    path("ws/sites/<str:site>/jobs/", consumers.SiteJobsConsumer.as_asgi()),
    path("ws/jobs/<int:job_pk>/", consumers.JobConsumer.as_asgi()),
]
