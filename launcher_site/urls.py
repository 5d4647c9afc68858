from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import JsonResponse
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from jobs.health import healthz
from jobs.metrics import metrics_view
from launcher_site.login_throttle import (ThrottledAdminAuthenticationForm, ThrottledAuthenticationForm,
                                          answer_429_when_throttled)

# Both sign-in pages count failures and lock out (launcher_site.login_throttle).
admin.site.login_form = ThrottledAdminAuthenticationForm


@csrf_exempt  # it changes nothing; a POST/PATCH/DELETE to a path the API does not have is a JSON 404 too
def api_not_found(request, *args, **kwargs):
    return JsonResponse({"detail": "Not found."}, status=404)


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/login/", answer_429_when_throttled(admin.site.login)),  # before the admin's own, same view
    path("admin/", admin.site.urls),
    path("accounts/login/", answer_429_when_throttled(
        auth_views.LoginView.as_view(authentication_form=ThrottledAuthenticationForm)), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # Namespaced: the API's route names (`job-detail`, `study-detail`) are also the dashboard's.
    path("api/v1/", include(("jobs.api.urls", "api"))),
    # Anything else under /api/ answers in the API's one JSON error shape, not an HTML page.
    re_path(r"^api/", api_not_found),
    path("", include("jobs.urls")),
]
