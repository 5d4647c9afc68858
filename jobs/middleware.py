"""Content-Security-Policy without 'unsafe-inline': pages load only our own scripts and styles."""

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        # The API docs page (Swagger UI) needs its own CDN-free assets; it is the one exception.
        if not request.path.startswith("/api/docs/"):
            response.headers.setdefault("Content-Security-Policy", CSP)
        return response
