"""API input and output shapes. JobSerializer is also the websocket payload (jobs.events)."""

from __future__ import annotations

from rest_framework import serializers

from jobs.models import Job


class JobSerializer(serializers.ModelSerializer):
    site = serializers.SlugRelatedField(slug_field="name", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id", "site", "job_id", "role", "study", "backend", "image", "handle", "state",
            "return_code", "exit_code", "reason", "detail", "created_at", "started_at",
            "finished_at", "url",
        ]
        read_only_fields = fields

    def get_url(self, job: Job) -> str:
        return f"/api/v1/jobs/{job.pk}/"
