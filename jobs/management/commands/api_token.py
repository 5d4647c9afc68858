"""`manage.py api_token --site NAME | --user NAME`: print a new API token (shown once)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from jobs.models import Site
from jobs.services.tokens import token_create


class Command(BaseCommand):
    help = "Create an API token for a site (the FL server) or a user and print its secret once."

    def add_arguments(self, parser):
        owner = parser.add_mutually_exclusive_group(required=True)
        owner.add_argument("--site", help="NVFlare site name")
        owner.add_argument("--user", help="username")
        parser.add_argument("--name", default="", help="a label to recognise the token by")

    def handle(self, *args, site=None, user=None, name="", **options):
        if site:
            owner = Site.objects.filter(name=site).first()
            if owner is None:
                raise CommandError(f"no site named {site!r}")
            _, secret = token_create(site=owner, name=name)
        else:
            owner = get_user_model().objects.filter(username=user).first()
            if owner is None:
                raise CommandError(f"no user named {user!r}")
            _, secret = token_create(user=owner, name=name)
        self.stdout.write(secret)
