"""jobs.services.study_files: NVFlare-style example files parse, every loader error case is refused
with a message naming the study/dataset, and dump -> parse round-trips."""

from __future__ import annotations

import json
import shutil

import pytest

from jobs.models import Study
from jobs.services import study_files
from jobs.services.study_files import StudyFileError

pytestmark = pytest.mark.embedded

# As in NVFlare's docs/tests: study -> dataset -> {source, mode}.
NVFLARE_V1 = """\
# local/study_data.yaml
cancer-research:
  training:
    source: /data/cancer/train
    mode: ro
  output:
    source: /data/cancer/out
    mode: rw
default:
  shared:
    source: shared-pvc
    mode: ro
"""


def test_nvflare_example_v1_parses():
    assert study_files.study_data_parse(NVFLARE_V1) == {
        "cancer-research": {"training": {"source": "/data/cancer/train", "mode": "ro"},
                            "output": {"source": "/data/cancer/out", "mode": "rw"}},
        "default": {"shared": {"source": "shared-pvc", "mode": "ro"}},
    }
    assert study_files.study_data_parse("") == {} and study_files.study_data_parse("# only a comment\n") == {}


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "does not contain a dictionary"),
    ("just text\n", "does not contain a dictionary"),
    ("s1:\n  - d1\n", "study -> dataset"),
    ("s1: 3\n", "entry for study 's1' must be a dictionary"),
    ("s1:\n  d1: /data/x\n", "dataset entry 's1/d1' must be a dictionary with source and mode"),
    ("s1:\n  d1: {mode: ro}\n", "dataset entry 's1/d1' must define a non-empty source"),
    ("s1:\n  d1: {source: '', mode: ro}\n", "must define a non-empty source"),
    ("s1:\n  d1: {source: 5, mode: ro}\n", "must define a non-empty source"),
    ("s1:\n  d1: {source: /x}\n", "dataset entry 's1/d1' must set mode to 'ro' or 'rw'"),
    ("s1:\n  d1: {source: /x, mode: RW}\n", "must set mode to 'ro' or 'rw'"),
    ("Study1:\n  d1: {source: /x, mode: ro}\n", "study name 'Study1'"),
    ("-s1:\n  d1: {source: /x, mode: ro}\n", "study name '-s1'"),
    ("s1:\n  d_: {source: /x, mode: ro}\n", "dataset name 'd_'"),
    ("s1:\n  " + "d" * 64 + ": {source: /x, mode: ro}\n", "dataset name"),
    ("1:\n  d1: {source: /x, mode: ro}\n", "study name 1"),
    ("s1:\n  d1: {source: /x, mode: ro, extra: 1}\n", "unknown key(s) ['extra']"),
    ("s1: {d1: {source: /x, mode: ro}\n", "could not parse study_data.yaml"),
    ("s1:\n\td1: 1\n", "could not parse study_data.yaml"),
])
def test_v1_loader_error_cases(text, message):
    with pytest.raises(StudyFileError) as info:
        study_files.study_data_parse(text)
    assert message in str(info.value)


NVFLARE_V2 = """\
format_version: 2
studies:
  cancer-research:
    container:
      image: registry.example.org/nvflare/pt:2.7
    datasets:
      training:
        source: /data/cancer/train
        mode: ro
      output:
        type: mount
        source: /data/cancer/out
        mode: rw
    env:
      LOG_LEVEL: debug
      USE_AMP: true
      WORKERS: 4
  plain: {}
"""


def test_nvflare_example_v2_parses():
    parsed = study_files.study_runtime_parse(NVFLARE_V2)
    study = parsed["cancer-research"]
    assert study["image"] == "registry.example.org/nvflare/pt:2.7"
    assert study["env"] == {"LOG_LEVEL": "debug", "USE_AMP": "true", "WORKERS": "4"}
    assert study["datasets"]["output"] == {"source": "/data/cancer/out", "mode": "rw"}
    assert parsed["plain"]["datasets"] == {} and parsed["plain"]["image"] == ""
    assert study_files.study_runtime_parse("format_version: 2\n") == {}


@pytest.mark.parametrize("text, message", [
    ("- 1\n", "file content must be a mapping"),
    ("studies: {}\n", "format_version must be 2, got None"),
    ("format_version: '2'\n", "format_version must be 2, got '2'"),
    ("format_version: 2.0\n", "format_version must be 2, got 2.0"),
    ("format_version: true\n", "format_version must be 2, got True"),
    ("format_version: 1\n", "format_version must be 2, got 1"),
    ("format_version: 2\nextra: 1\n", "top level has unknown key(s) ['extra']"),
    ("format_version: 2\nstudies: []\n", "studies must be a mapping"),
    ("format_version: 2\nstudies: {Bad: {}}\n", "study name 'Bad' is not a valid name"),
    ("format_version: 2\nstudies: {s1: 1}\n", "studies.s1 must be a mapping"),
    ("format_version: 2\nstudies: {s1: {volumes: {}}}\n", "studies.s1 has unknown key(s) ['volumes']"),
    ("format_version: 2\nstudies: {s1: {container: {image: ''}}}\n", "studies.s1.container.image must be a non-empty string"),
    ("format_version: 2\nstudies: {s1: {container: {image: x, tag: y}}}\n", "studies.s1.container has unknown key(s) ['tag']"),
    ("format_version: 2\nstudies: {s1: {datasets: {d1: {type: databricks}}}}\n", "studies.s1.datasets.d1 type 'databricks' is not yet supported"),
    ("format_version: 2\nstudies: {s1: {datasets: {d1: {type: s3, source: x, mode: ro}}}}\n", "studies.s1.datasets.d1 has unknown type 's3'"),
    ("format_version: 2\nstudies: {s1: {datasets: {d1: {source: x, mode: ro, size: 1}}}}\n", "studies.s1.datasets.d1 has unknown key(s) ['size']"),
    ("format_version: 2\nstudies: {s1: {datasets: {d1: {mode: ro}}}}\n", "studies.s1.datasets.d1.source must be a non-empty string"),
    ("format_version: 2\nstudies: {s1: {datasets: {d1: {source: x, mode: rx}}}}\n", "studies.s1.datasets.d1.mode must be 'ro' or 'rw'"),
    ("format_version: 2\nstudies: {s1: {datasets: {D1: {source: x, mode: ro}}}}\n", "is not a valid name"),
    ("format_version: 2\nstudies: {s1: {env: {A: null}}}\n", "studies.s1.env.A must be a scalar value"),
    ("format_version: 2\nstudies: {s1: {env: {A: [1]}}}\n", "studies.s1.env.A must be a scalar value"),
    ("format_version: 2\nstudies: {s1: {env: {A: ''}}}\n", "studies.s1.env.A must not be empty"),
    ("format_version: 2\nstudies: {s1: {env: {PYTHONPATH: /x}}}\n", "studies.s1.env.PYTHONPATH is launcher-owned"),
    ("format_version: 2\nstudies: {s1: {env: {NVFLARE_JOB_AUTH_TOKEN: x}}}\n", "is launcher-owned"),
    ("format_version: 2\nstudies: {s1: {secret_env: [1]}}\n", "studies.s1.secret_env must be a mapping"),
    ("format_version: 2\nstudies: {s1: {secret_env: {T: {source: s}}}}\n", "studies.s1.secret_env.T.key must be a non-empty string"),
    ("format_version: 2\nstudies: {s1: {secret_env: {T: {source: '', key: k}}}}\n", "studies.s1.secret_env.T.source must be a non-empty string"),
    ("format_version: 2\nstudies: {s1: {secret_env: {T: {source: s, key: k, x: 1}}}}\n", "studies.s1.secret_env.T has unknown key(s) ['x']"),
    ("format_version: 2\nstudies: {s1: {secret_env: {PYTHONPATH: {source: s, key: k}}}}\n", "variable name 'PYTHONPATH' is launcher-owned"),
    ("format_version: 2\nstudies: {s1: {env: {T: x}, secret_env: {T: {source: s, key: k}}}}\n", "studies.s1 defines ['T'] in both env and secret_env"),
    ("format_version: 2\nstudies: {s1: {secret_mounts: {Bad: {source: s, mount_path: /m}}}}\n", "mount name 'Bad' is not a valid name"),
    ("format_version: 2\nstudies: {s1: {secret_mounts: {m: {source: s, mount_path: /m, mode: rw}}}}\n", "studies.s1.secret_mounts.m.mode must be 'ro'; secret mounts are always read-only"),
    ("format_version: 2\nstudies: {s1: {secret_mounts: {m: {source: s, mount_path: m}}}}\n", "studies.s1.secret_mounts.m.mount_path must be an absolute path"),
    ("format_version: 2\nstudies: {s1: {secret_mounts: {m: {source: s, mount_path: /m, items: {}}}}}\n", "studies.s1.secret_mounts.m.items must not be empty"),
    ("format_version: 2\nstudies: {s1: {secret_mounts: {m: {mount_path: /m}}}}\n", "studies.s1.secret_mounts.m.source must be a non-empty string"),
    ("format_version: 2\nstudies: {s1: {secret_mounts: {m: {source: s, mount_path: /m, size: 1}}}}\n", "studies.s1.secret_mounts.m has unknown key(s) ['size']"),
    ("format_version: 2\nstudies: {s1: {slurm: {}}}\n", "studies.s1.slurm: slurm is Slurm-only and is not supported by this launcher"),
    ("format_version: 2\nstudies: {s1: {slurm: {partition: gpu, sandbox: pyxis}}}\n", "slurm is Slurm-only and is not supported by this launcher"),
    ("format_version: 2\nstudies: {s1: {slurm: {sandbox: docker}}}\n", "studies.s1.slurm.sandbox must be one of ['apptainer', 'none', 'pyxis']"),
    ("format_version: 2\nstudies: {s1: {slurm: {nodes: 2}}}\n", "studies.s1.slurm has unknown key(s) ['nodes']"),
    ("format_version: 2\nstudies: {s1: {slurm: {python_path: bin/python}}}\n", "studies.s1.slurm.python_path must be an absolute path"),
    ("format_version: 2\nstudies: {s1: {slurm: {partition: a b}}}\n", "studies.s1.slurm.partition must not contain whitespace"),
    ("format_version: 2\nstudies: {s1: {pod_template: templates/pod.yaml}}\n", "must be an inline mapping"),
    ("format_version: 2\nstudies: {s1: {pod_template: {kind: Deployment}}}\n", "must define kind: Pod"),
    ("format_version: 2\nstudies: {s1: {docker_kwargs: [1]}}\n", "studies.s1.docker_kwargs must be a mapping"),
    ("format_version: 2\nstudies: {s1: {\n", "could not parse study_runtime.yaml"),
])
def test_v2_loader_error_cases(text, message):
    with pytest.raises(StudyFileError) as info:
        study_files.study_runtime_parse(text)
    assert message in str(info.value)


@pytest.mark.django_db
def test_replace_then_dump_round_trips_and_a_failure_changes_nothing(process_site, data_root):
    text = f"cohort:\n  ct:\n    source: {data_root}/cohort-a\n    mode: ro\n"
    study_files.study_data_replace(process_site, text)
    assert study_files.study_data_parse(study_files.study_data_dump(process_site)) == study_files.study_data_parse(text)
    v2 = study_files.study_runtime_dump(process_site)
    assert study_files.study_runtime_parse(v2)["cohort"]["datasets"]["ct"]["source"] == f"{data_root}/cohort-a"
    with pytest.raises(Exception):
        study_files.study_data_replace(process_site, text + "other:\n  x:\n    source: /etc\n    mode: ro\n")
    assert list(Study.objects.values_list("name", flat=True)) == ["cohort"]
    study_files.study_runtime_replace(process_site, "format_version: 2\nstudies: {}\n")
    assert Study.objects.get().datasets.count() == 0


SECRETS_V2 = """\
format_version: 2
studies:
  s1:
    env: {PLAIN: "1"}
    secret_env:
      DB_PASSWORD: {source: hospital-db, key: password}
    secret_mounts:
      tls: {source: hospital-tls, mount_path: /run/secrets/tls, items: {tls.crt: cert.pem}}
      ca: {source: hospital-ca, mount_path: /run/secrets/ca, mode: ro}
"""


def test_secret_env_and_secret_mounts_parse_as_nvflare_does():
    parsed = study_files.study_runtime_parse(SECRETS_V2, backend="kubernetes")["s1"]
    assert parsed["secret_env"] == {"DB_PASSWORD": {"source": "hospital-db", "key": "password"}}
    assert parsed["secret_mounts"] == {
        "tls": {"source": "hospital-tls", "mount_path": "/run/secrets/tls", "mode": "ro", "items": {"tls.crt": "cert.pem"}},
        "ca": {"source": "hospital-ca", "mount_path": "/run/secrets/ca", "mode": "ro"},
    }
    # a study without them keeps the shape existing callers know
    assert set(study_files.study_runtime_parse("format_version: 2\nstudies: {s2: {}}\n")["s2"]) == {
        "image", "env", "docker_kwargs", "pod_template", "datasets"}


def test_secret_mount_items_are_kubernetes_only_for_a_docker_site():
    with pytest.raises(StudyFileError) as info:
        study_files.study_runtime_parse(SECRETS_V2, backend="docker")
    assert "studies.s1.secret_mounts.tls.items is Kubernetes-only and is not supported by this launcher" in str(info.value)


@pytest.fixture
def hosts(tmp_path):
    paths = {name: tmp_path / name for name in ("ws", "ws/startup", "ws/local", "data/tls", "outside")}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    shutil.chown(paths["ws"], 1000, 1000)  # the job user (its owner) is not root: a site save checks it
    return paths


@pytest.fixture
def docker_site(db, users, hosts):
    from backends import config_class
    from jobs.models import Role, Site, SiteMembership

    site = Site.objects.create(name="site-d", backend="docker", allowed_data_roots=[str(hosts["data/tls"].parent)],
                               docker=config_class("docker").from_dict({"workspace": str(hosts["ws"])}).to_dict())
    SiteMembership.objects.create(site=site, user=users["owner"], role=Role.ADMIN)
    return site


def docker_secrets(source: str, mount: str) -> str:
    return (f"format_version: 2\nstudies:\n  s1:\n    secret_env:\n      T: {{source: {source}, key: unused}}\n"
            f"    secret_mounts:\n      tls: {{source: '{mount}', mount_path: /run/secrets/tls}}\n")


@pytest.mark.django_db
@pytest.mark.parametrize("source", ["SECRET_KEY", "DATABASE_URL", "REDIS_URL", "LAUNCHER_ADMIN_PASSWORD", "HOME"])
def test_a_site_admin_cannot_hand_the_launchers_own_env_to_a_docker_job(source, docker_site, hosts, as_user):
    # secret_env on Docker reads the *launcher's* environment: without a staff-set allowlist entry a
    # site admin could copy SECRET_KEY or DATABASE_URL into a job and print it
    response = as_user("owner").put("/api/v1/sites/site-d/study-runtime/", docker_secrets(source, hosts["data/tls"]),
                                    content_type="application/yaml")
    assert response.status_code == 400, response.content
    assert "docker.secret_env_sources" in json.dumps(response.json())
    assert not Study.objects.filter(name="s1").exists()


@pytest.mark.django_db
def test_staff_list_the_env_vars_a_docker_site_may_hand_out_and_site_admins_use_them(docker_site, hosts, as_user):
    staff, owner = as_user("staff"), as_user("owner")
    docker = {**docker_site.docker, "secret_env_sources": ["HOSPITAL_DB_PASSWORD"]}
    assert owner.patch("/api/v1/sites/site-d/", {"docker": docker}, format="json").status_code == 403
    assert staff.patch("/api/v1/sites/site-d/", {"docker": docker}, format="json").status_code == 200
    bad = staff.patch("/api/v1/sites/site-d/", {"docker": {**docker, "secret_env_sources": ["SECRET_KEY"]}}, format="json")
    assert bad.status_code == 400 and "docker.secret_env_sources" in bad.json()
    text = docker_secrets("HOSPITAL_DB_PASSWORD", hosts["data/tls"])
    response = owner.put("/api/v1/sites/site-d/study-runtime/", text, content_type="application/yaml")
    assert response.status_code == 200, response.content
    study = Study.objects.get(name="s1")
    assert study.secret_env == {"T": {"source": "HOSPITAL_DB_PASSWORD", "key": "unused"}}
    assert study.secret_mounts == {"tls": {"source": str(hosts["data/tls"]), "mount_path": "/run/secrets/tls", "mode": "ro"}}
    exported = study_files.study_runtime_parse(study_files.study_runtime_dump(docker_site), backend="docker")["s1"]
    assert exported["secret_env"] == study.secret_env and exported["secret_mounts"] == study.secret_mounts
    # a listed study without them loses them (the file is the whole truth)
    owner.put("/api/v1/sites/site-d/study-runtime/", "format_version: 2\nstudies: {s1: {}}\n",
              content_type="application/yaml")
    study.refresh_from_db()
    assert study.secret_env == {} and study.secret_mounts == {}


@pytest.mark.django_db
@pytest.mark.parametrize("mount", ["outside", "ws", "ws/local"])
def test_docker_secret_mount_sources_are_confined_like_datasets(mount, docker_site, hosts, as_user):
    docker_site.docker = {**docker_site.docker, "secret_env_sources": ["X_SECRET"]}
    docker_site.save()
    response = as_user("staff").put("/api/v1/sites/site-d/study-runtime/", docker_secrets("X_SECRET", hosts[mount]),
                                    content_type="application/yaml")
    assert response.status_code == 400, response.content
    assert any("secret_mounts" in key for key in response.json()), response.json()


@pytest.mark.django_db
def test_process_sites_refuse_secrets_and_kubernetes_sites_never_name_a_job_credential_secret(process_site, users):
    from backends import config_class
    from jobs.models import Site

    with pytest.raises(Exception) as info:
        study_files.study_runtime_replace(process_site, docker_secrets("X", "/srv"))
    assert "Docker and Kubernetes sites only" in str(info.value)
    k8s = Site.objects.create(name="site-k", backend="kubernetes", kubernetes=config_class("kubernetes").from_dict({}).to_dict())
    stolen = "format_version: 2\nstudies:\n  s1:\n    secret_env: {T: {source: nvflare-cred-site-1-abc, key: NVFLARE_JOB_AUTH_TOKEN}}\n"
    with pytest.raises(Exception) as info:
        study_files.study_runtime_replace(k8s, stolen)
    assert "nvflare-cred-" in str(info.value)
    startup_kit = ("format_version: 2\nstudies:\n  s1:\n    secret_mounts:\n      kit: {source: nvflare-startup-other-1a2b3c4d, "
                   "mount_path: /kit, mode: ro}\n")  # another site's startup kit holds its private key
    with pytest.raises(Exception) as info:
        study_files.study_runtime_replace(k8s, startup_kit)
    assert "nvflare-startup-" in str(info.value) and not Study.objects.filter(site=k8s).exists()
    study_files.study_runtime_replace(k8s, SECRETS_V2)
    assert Study.objects.get(site=k8s).secret_mounts["tls"]["items"] == {"tls.crt": "cert.pem"}


@pytest.mark.django_db
def test_on_kubernetes_only_staff_name_secrets(users, as_user):
    # any Secret of the namespace could be a service account's token or the startup kit
    from backends import config_class
    from jobs.models import Role, Site, SiteMembership

    k8s = Site.objects.create(name="site-k", backend="kubernetes", kubernetes=config_class("kubernetes").from_dict({}).to_dict())
    SiteMembership.objects.create(site=k8s, user=users["owner"], role=Role.ADMIN)
    url = "/api/v1/sites/site-k/study-runtime/"
    refused = as_user("owner").put(url, SECRETS_V2, content_type="application/yaml")
    assert refused.status_code in (400, 403) and "s1.secret_env" in json.dumps(refused.json()), refused.content
    assert not Study.objects.filter(site=k8s).exists()
    assert as_user("owner").put(url, "format_version: 2\nstudies: {s1: {env: {A: b}}}\n",
                                content_type="application/yaml").status_code == 200
    assert as_user("staff").put(url, SECRETS_V2, content_type="application/yaml").status_code == 200
    assert Study.objects.get(site=k8s).secret_env == {"DB_PASSWORD": {"source": "hospital-db", "key": "password"}}
