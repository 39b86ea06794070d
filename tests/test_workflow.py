"""The GitHub Actions workflow (.github/workflows/ci.yml): actionlint passes, every `run:` step is one
`make <target>` of the Makefile, every action is pinned to a commit SHA, and the two jobs do what the
README says (`make test`; `make verify` with its report uploaded)."""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
MAKEFILE = ROOT / "Makefile"
# requirements.txt installs it next to the interpreter running the tests (.venv/bin).
ACTIONLINT = Path(sys.executable).parent / "actionlint"
SHA_PIN = re.compile(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$")
VERSION_COMMENT = re.compile(r"\s+# v\d+(\.\d+)*$")


def load(text: str) -> dict:
    doc = yaml.safe_load(text)
    if True in doc:  # YAML 1.1 reads the key `on` as a boolean
        doc["on"] = doc.pop(True)
    return doc


def makefile_targets() -> set[str]:
    targets = set()
    for line in MAKEFILE.read_text().splitlines():
        head = re.match(r"^([A-Za-z][\w.-]*(?:\s+[A-Za-z][\w.-]*)*)\s*:(?![:=])", line)
        if head:
            targets.update(head.group(1).split())
    return targets


def steps(doc: dict, job: str) -> list[dict]:
    return doc["jobs"][job]["steps"]


def run_steps(doc: dict, job: str) -> list[str]:
    return [step["run"].strip() for step in steps(doc, job) if "run" in step]


def step_problems(doc: dict, targets: set[str]) -> list[str]:
    """Each step either uses an action or runs exactly `make <target>` with a target the Makefile defines."""
    problems = []
    for job_name, job in doc["jobs"].items():
        for i, step in enumerate(job["steps"]):
            where = f"{job_name} step {i}"
            if ("run" in step) == ("uses" in step):
                problems.append(f"{where}: needs exactly one of run/uses: {step}")
            elif "run" in step:
                match = re.fullmatch(r"make ([\w.-]+)", step["run"].strip())
                if not match:
                    problems.append(f"{where}: not a single `make <target>`: {step['run']!r}")
                elif match.group(1) not in targets:
                    problems.append(f"{where}: `make {match.group(1)}`: no such Makefile target")
    return problems


def pin_problems(doc: dict, text: str) -> list[str]:
    """Every `uses:` is owner/repo@<40-hex SHA> with the version as a trailing `# vX.Y.Z` comment."""
    problems = []
    uses = [step["uses"] for job in doc["jobs"].values() for step in job["steps"] if "uses" in step]
    for ref in uses:
        if not SHA_PIN.fullmatch(ref):
            problems.append(f"not pinned to a full commit SHA: {ref}")
    lines = [m for m in map(USES_LINE.match, text.splitlines()) if m]
    if sorted(m.group(1) for m in lines) != sorted(uses):
        problems.append(f"`uses:` lines {[m.group(1) for m in lines]} differ from the parsed steps {uses}")
    for m in lines:
        if not VERSION_COMMENT.fullmatch(m.group(2)):
            problems.append(f"no trailing `# vX.Y.Z` comment: {m.group(0).strip()}")
    return problems


def actionlint(path: Path) -> subprocess.CompletedProcess:
    if not ACTIONLINT.exists():
        message = f"actionlint is not installed at {ACTIONLINT} (requirements.txt installs it: make venv)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Only actionlint's own checks: every run step is a plain `make <target>`, so shellcheck and pyflakes
    # (used when on PATH) would add nothing but a dependence on the machine.
    return subprocess.run(
        [str(ACTIONLINT), "-no-color", "-oneline", "-shellcheck=", "-pyflakes=", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def text() -> str:
    return WORKFLOW.read_text()


@pytest.fixture(scope="module")
def doc(text) -> dict:
    return load(text)


def test_actionlint_passes():
    result = actionlint(WORKFLOW)
    assert result.returncode == 0, f"actionlint {WORKFLOW.relative_to(ROOT)}:\n{result.stdout}{result.stderr}"


def test_actionlint_rejects_a_broken_workflow(tmp_path, doc):
    # The workflow with a misspelt job key and a misspelt context added to its first job (whatever the file
    # says today): actionlint must report both.
    broken = copy.deepcopy(doc)
    job = next(iter(broken["jobs"].values()))
    job["timeout-minute"] = 5
    job["steps"].append({"if": "github.event_nam == 'push'", "run": "make test"})
    path = tmp_path / ".github" / "workflows" / "ci.yml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    result = actionlint(path)
    assert result.returncode != 0
    assert "timeout-minute" in result.stdout and "event_nam" in result.stdout, result.stdout + result.stderr


def test_triggers_runner_and_timeouts(doc):
    assert set(doc["on"]) >= {"push", "pull_request", "workflow_dispatch"}
    assert set(doc["jobs"]) == {"test", "reproduce"}
    for name, job in doc["jobs"].items():
        assert re.fullmatch(r"ubuntu-\d\d\.04", job["runs-on"]), f"{name}: pin the runner image, not {job['runs-on']}"
        assert isinstance(job.get("timeout-minutes"), int) and job["timeout-minutes"] > 0, name


def test_every_run_step_is_one_make_target(doc):
    targets = makefile_targets()
    assert {"test", "test-fast", "repro", "venv"} <= targets, targets  # the parser reads the Makefile
    assert "PYTHON" not in targets and "export" not in targets
    assert step_problems(doc, targets) == []


def test_every_action_is_pinned_to_a_commit_sha(doc, text):
    assert pin_problems(doc, text) == []
    used = {step["uses"].split("@")[0] for job in doc["jobs"].values() for step in job["steps"] if "uses" in step}
    assert used == {"actions/checkout", "actions/setup-python", "actions/upload-artifact"}


def test_the_checks_catch_a_broken_workflow(doc, text):
    targets = makefile_targets()
    broken = copy.deepcopy(doc)
    broken["jobs"]["test"]["steps"] += [
        {"run": "make test && echo done"},
        {"run": "make no-such-target"},
        {"run": "pip install -r requirements.txt\nmake test"},
    ]
    assert len(step_problems(broken, targets)) == 3
    unpinned = re.sub(r"@[0-9a-f]{40} # v[\d.]+", "@v7", text, count=1)
    assert unpinned != text
    problems = pin_problems(load(unpinned), unpinned)
    assert any("full commit SHA" in p for p in problems) and any("trailing" in p for p in problems), problems
    uncommented = re.sub(r"(@[0-9a-f]{40}) # v[\d.]+", r"\1", text, count=1)
    assert uncommented != text
    assert [p for p in pin_problems(load(uncommented), uncommented) if "trailing" in p], "a pin without its version"


def test_the_jobs_run_the_readme_commands(doc):
    assert run_steps(doc, "test") == ["make test", "make soak"]
    assert run_steps(doc, "reproduce") == ["make verify"]
    for job in ("test", "reproduce"):
        setup = next(s for s in steps(doc, job) if s.get("uses", "").startswith("actions/setup-python@"))
        assert str(setup["with"]["python-version"]) == "3.11", job
    setup = next(s for s in steps(doc, "test") if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["cache"] == "pip" and setup["with"]["cache-dependency-path"] == "requirements.txt"


def test_reproduce_has_history_and_uploads_its_report(doc):
    job = steps(doc, "reproduce")
    checkout = next(s for s in job if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0  # make verify compares against the previous commit
    uploads = [s for s in job if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert len(uploads) == 1
    upload = uploads[0]
    assert upload.get("if") == "always()"  # the report matters most when the outputs differ
    assert set(upload["with"]["path"].split()) == {"reports/verify.md", "reports/verify/"}
    verify = next(i for i, s in enumerate(job) if s.get("run", "").strip() == "make verify")
    assert job.index(upload) > verify


def test_env_matches_the_makefile_exports(doc):
    exports = dict(re.findall(r"^export (\w+) := (\S+)$", MAKEFILE.read_text(), re.M))
    assert {"DVC_NO_ANALYTICS", "MLFLOW_DISABLE_TELEMETRY"} <= set(exports) & set(doc["env"])
    assert {k: str(v) for k, v in doc["env"].items()} == {k: exports.get(k) for k in doc["env"]}
