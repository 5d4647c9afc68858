"""The token page after a site token is created (issue #17): a copy button (hidden without
JavaScript, the token stays selectable), the `FLARE_LAUNCHER_TOKEN=...` hint and a ready
local/flare_launcher__p_resources.json for this launcher and site that names the variable and never
holds the token (README "Using it from NVFlare"). Tokens have no expiry, and the page says so."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.urls import reverse

from jobs.models import ApiToken

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def created_page(client, users):
    client.force_login(users["owner"])
    response = client.post(reverse("site-tokens", args=["site-1"]), {"name": "fl-server"})
    assert response.status_code == 200
    return response, response.content.decode()


def test_site_token_snippet_matches_the_readme_and_never_holds_the_token(client, users, process_site):
    response, body = created_page(client, users)
    secret = response.context["secret"]
    assert secret.startswith("flr_") and ApiToken.objects.filter(site=process_site, prefix=secret[:12]).exists()
    snippet = re.search(r'<pre class="mono" id="resources-snippet">(.*?)</pre>', body, re.S)
    assert snippet, "no resources snippet"
    text = html.unescape(snippet.group(1))
    assert secret not in text and "flr_" not in text
    assert json.loads(text) == {"format_version": 2, "components": [{
        "id": "flare_launcher", "path": "flare_launcher_client.FlareLauncherJobLauncher",
        "args": {"url": "http://testserver", "site": "site-1", "token_env": "FLARE_LAUNCHER_TOKEN", "timeout": 120},
    }]}
    assert "local/flare_launcher__p_resources.json" in body
    hint = re.search(r'<pre class="mono" id="token-env-hint">(.*?)</pre>', body, re.S).group(1)
    assert html.unescape(hint) == f"FLARE_LAUNCHER_TOKEN={secret} ./startup/start.sh"


def test_readme_shows_the_same_component(client, users, process_site, settings):
    """The page's snippet keeps the README's keys, so a reader of either gets the same file."""
    readme = (settings.BASE_DIR / "README.md").read_text()
    block = re.search(r"### Using it from NVFlare.*?```json\n(.*?)```", readme, re.S).group(1)
    documented = json.loads(block)
    _, body = created_page(client, users)
    shown = json.loads(html.unescape(re.search(r'id="resources-snippet">(.*?)</pre>', body, re.S).group(1)))
    assert shown["components"][0].keys() == documented["components"][0].keys()
    assert shown["components"][0]["args"].keys() == documented["components"][0]["args"].keys()
    assert {k: v for k, v in shown["components"][0].items() if k != "args"} == \
        {k: v for k, v in documented["components"][0].items() if k != "args"}
    assert shown["components"][0]["args"]["token_env"] == documented["components"][0]["args"]["token_env"]


def test_copy_buttons_work_without_javascript(client, users, process_site):
    _, body = created_page(client, users)
    assert 'id="secret-value" class="mono" value="flr_' in body and "readonly" in body
    for target in ("secret-value", "token-env-hint", "resources-snippet"):
        assert f'data-copy="{target}" hidden' in body  # shown by copy.js only
    assert "js/copy.js" in body
    script = client.get("/static/js/copy.js")
    assert script.status_code == 200 and b"data-copy" in b"".join(script.streaming_content)


def test_page_says_tokens_do_not_expire(client, users, process_site):
    assert not any(f.name.startswith("expire") for f in ApiToken._meta.get_fields())
    client.force_login(users["owner"])
    body = client.get(reverse("site-tokens", args=["site-1"])).content.decode()
    assert "Tokens do not expire" in body
    assert "resources-snippet" not in body and "js/copy.js" not in body  # nothing to copy before creating


def test_user_token_gets_no_site_snippet(client, users, process_site):
    client.force_login(users["owner"])
    response = client.post(reverse("user-tokens"), {"name": "script"})
    body = response.content.decode()
    assert response.context["secret"] and 'id="resources-snippet"' not in body
    assert 'data-copy="secret-value"' in body


def test_viewer_gets_no_token_and_no_snippet(client, users, process_site):
    client.force_login(users["viewer"])
    response = client.post(reverse("site-tokens", args=["site-1"]), {"name": "x"})
    assert response.status_code == 403
    assert not ApiToken.objects.filter(site=process_site).exists()
