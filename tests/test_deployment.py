"""The production layout files say what the README promises, and `check --deploy` is clean."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_mounts_the_docker_socket_only_into_worker_and_watcher():
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert {"postgres", "redis", "web", "worker", "beat", "watcher"} <= set(services)
    with_socket = {name for name, svc in services.items()
                   if any("docker.sock" in str(v) for v in svc.get("volumes", []))}
    assert with_socket == {"worker", "watcher"}
    assert "SECRET_KEY" not in services["web"].get("environment", {})  # only SECRET_KEY_FILE


def test_compose_databases_require_passwords_read_from_secret_files():
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    postgres, redis = services["postgres"], services["redis"]
    assert "POSTGRES_HOST_AUTH_METHOD" not in postgres["environment"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    assert "--requirepass" in " ".join(redis["command"])
    for name in ("web", "worker", "beat", "watcher", "migrate"):
        env = services[name]["environment"]
        assert "DATABASE_URL" not in env and "REDIS_URL" not in env  # URLs hold the passwords
        assert env["DATABASE_URL_FILE"].startswith("/run/secrets/") and env["REDIS_URL_FILE"].startswith("/run/secrets/")


def test_compose_secrets_script_makes_private_files_whose_urls_carry_the_passwords(tmp_path):
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "compose-secrets.sh"
    script.write_text((ROOT / "scripts" / "compose-secrets.sh").read_text())
    subprocess.run(["bash", str(script)], check=True, capture_output=True, timeout=30)
    secrets_dir = tmp_path / "secrets"
    password = (secrets_dir / "redis_password").read_text().strip()
    assert len(password) >= 32
    assert f":{password}@redis:6379" in (secrets_dir / "redis_url").read_text()
    assert (secrets_dir / "postgres_password").read_text().strip() in (secrets_dir / "database_url").read_text()
    for path in secrets_dir.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    # Compose bind-mounts them as they are: the app's run as the image's uid 10001, the passwords as root.
    owners = {path.name: path.stat().st_uid for path in secrets_dir.iterdir()}
    if os.geteuid() == 0:
        assert owners == {"django_secret_key": 10001, "database_url": 10001, "redis_url": 10001,
                          "postgres_password": 0, "redis_password": 0}


def test_kubernetes_manifests_have_probes_rbac_and_websocket_ingress():
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/flare-launcher.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert {"ServiceAccount", "Role", "RoleBinding", "Service", "Ingress"} <= set(kinds)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    web = deployments["flare-launcher-web"]["spec"]["template"]["spec"]
    assert web["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["automountServiceAccountToken"] is False
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["containers"][0]["resources"]["requests"]
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


def test_dockerfile_runs_as_non_root_and_bakes_no_secret():
    text = (ROOT / "Dockerfile").read_text()
    user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines and user_lines[-1].split()[1] not in ("0", "root")
    assert "ENV SECRET_KEY" not in text


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    env.update(SECRET_KEY=secrets.token_urlsafe(60), LAUNCHER_HTTPS="true", ALLOWED_HOSTS="launcher.example.org",
               LAUNCHER_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="launcher_site.settings")
    out = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no issues" in out.stdout
