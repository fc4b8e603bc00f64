"""The image's build steps (docker/build-image.sh) run on the host, and the Docker files agree with them.

No Docker engine runs here, so the script that the Dockerfile runs is run with --check: the installs are verified
against what is installed, and the base preparation (into a temporary cache) and the bundle check run for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "build-image.sh"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def untrained_bundle(tiny_base, tmp_path_factory) -> Path:
    """A bundle of untrained tiny classifiers: enough to check that a bundle loads and answers, in seconds."""
    from reviewlens.bundle import ModelBundle
    from reviewlens.modeling import MULTI_LABEL, SINGLE_LABEL, build_classifier, save_classifier
    from reviewlens.schema import LabelSchema

    schema = LabelSchema(["배송", "디자인", "가격"], levels=[-1, 0, 1])
    kw_model, kw_tok = build_classifier(str(tiny_base), 3, MULTI_LABEL, pooling="mean", labels=schema.keywords)
    st_model, st_tok = build_classifier(str(tiny_base), 3, SINGLE_LABEL, pooling="mean",
                                        labels=schema.level_names())
    bundle = ModelBundle(schema=schema, thresholds={k: 0.0 for k in schema.keywords}, base_model=str(tiny_base))
    out = tmp_path_factory.mktemp("docker-bundle") / "default"
    bundle.save(out, {"keyword": lambda d: save_classifier(kw_model, kw_tok, d),
                      "sentiment": lambda d: save_classifier(st_model, st_tok, d)})
    return out


def test_build_script_steps_run_on_the_host(untrained_bundle, tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is missing")
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHON": sys.executable, "MODEL": str(untrained_bundle), "REVIEWLENS_CACHE": str(cache)}
    # generous bounds: about 30 s on an idle machine, minutes on a shared, loaded one
    done = subprocess.run(["bash", str(SCRIPT), "--check"], env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for n in range(1, 6):
        assert f"==> {n}/5" in output, output
    assert "(CPU build): ok" in output and "serving extras are installed: ok" in output
    base = cache / "bases" / "multilingual-e5-small"
    assert (base / "reviewlens-base.json").is_file(), output  # the offline base was really built, in tmp
    assert (base / "config.json").is_file()
    assert "API: ok" in output
    assert oct(base.stat().st_mode & 0o005) == oct(0o005)  # readable and listable by others (the image's user)


def test_build_script_stops_on_a_missing_bundle(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "MODEL": str(tmp_path / "nothing"), "BASE": "",
           "REVIEWLENS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(SCRIPT), "--check"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "reviewlens.json is missing" in done.stderr and "train_default.py" in done.stderr


def test_build_script_refuses_unknown_arguments():
    done = subprocess.run(["bash", str(SCRIPT), "--dry"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "unknown argument" in done.stderr


def test_dockerfile_runs_the_script_as_root_and_serves_as_a_user():
    steps = _instructions(ROOT / "Dockerfile")
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM"
    run_script = [i for i, (k, a) in enumerate(steps) if k == "RUN" and "docker/build-image.sh" in a]
    user = [i for i, (k, _) in enumerate(steps) if k == "USER"]
    assert run_script and user and run_script[0] < user[-1], "the build steps run before the switch to the user"
    assert steps[user[-1]][1] not in ("root", "0")
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    script = SCRIPT.read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pin = re.search(r"TORCH_SPEC \?= (\S+)", makefile).group(1)
    assert args["TORCH_SPEC"] == pin and f'TORCH_SPEC:-{pin}' in script  # one torch pin everywhere
    assert "cpu" in args["TORCH_INDEX_URL"]
    assert any(k == "HEALTHCHECK" and "/healthz" in a for k, a in steps)
    assert any(k == "EXPOSE" and "8000" in a.split() for k, a in steps)
    cmd = next(a for k, a in reversed(steps) if k == "CMD")
    assert '"reviewlens", "serve"' in cmd and '"0.0.0.0"' in cmd
    assert "models/default" in cmd  # the baked-in bundle, by path (DEFAULT_BUNDLE is checkout-relative)


def test_dockerignore_sends_what_the_build_needs_and_nothing_else():
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines() if r.strip() and r[0] != "#"]
    assert rules[0] == "*"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert {"pyproject.toml", "README.md", "src", "docker", "models/default"} <= allowed
    assert not any(a.startswith((".venv", ".git", "runs", "tests")) for a in allowed)
    for path in ("pyproject.toml", "README.md", "src/reviewlens/serve/api.py", "docker/build-image.sh"):
        assert (ROOT / path).exists(), path


def test_compose_runs_the_api_and_the_demo_from_the_image():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    api, demo = compose["services"]["api"], compose["services"]["demo"]
    assert api["command"][:2] == ["reviewlens", "serve"] and "8000:8000" in api["ports"]
    assert demo["command"][:3] == ["reviewlens", "demo", "--ui"] and "8501:8501" in demo["ports"]
    assert api["image"] == demo["image"]
    assert "/_stcore/health" in " ".join(demo["healthcheck"]["test"])  # not the API's /healthz
    for service in (api, demo):
        assert service["command"][service["command"].index("--host") + 1] == "0.0.0.0"
        model = service["command"][service["command"].index("--model") + 1]
        assert model.endswith("models/default")
