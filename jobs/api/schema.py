"""drf-spectacular extensions: how the schema describes our token authentication."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "jobs.api.auth.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <secret>`: a site token (the FL server: its own site's jobs only) or a user token "
                           "(acts as that user). Create one with `manage.py api_token --site NAME | --user NAME`.",
        }
