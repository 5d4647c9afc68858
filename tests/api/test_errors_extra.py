"""Unknown API paths answer in the API's JSON error shape."""

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


@pytest.mark.parametrize("path", ["/api/v1/nothing-here/", "/api/v2/jobs/", "/api/v1/jobs/123/unknown-action/"])
def test_unknown_api_paths_get_a_json_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"detail": "Not found."}
