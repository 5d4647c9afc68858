"""jobs.services.study_files: NVFlare-style example files parse, every loader error case is refused
with a message naming the study/dataset, and dump -> parse round-trips."""

from __future__ import annotations

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
    ("format_version: 2\nstudies: {s1: {secret_env: {T: {source: s, key: k}}}}\n", "studies.s1.secret_env is not supported by FLARE Launcher yet"),
    ("format_version: 2\nstudies: {s1: {secret_mounts: {}}}\n", "studies.s1.secret_mounts is not supported by FLARE Launcher yet"),
    ("format_version: 2\nstudies: {s1: {slurm: {}}}\n", "studies.s1.slurm is not supported by FLARE Launcher yet"),
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
