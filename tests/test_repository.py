"""Repository hygiene: no tracked file names a folder of one particular machine.

A user's machine has none of the folders the developers' machines have (their hosts, mirrors, home
and scratch folders, local package indexes): paths in code and docs are relative to the checkout,
chosen by the user (flags, environment variables such as ``$COMFYUI_DIR``) or placeholders such as
``$HOSTS/...``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# An absolute path that starts at one of these, not inside a URL, a relative path or after ~ / $VAR.
MACHINE_PATH = re.compile(
    r"(?<![\w.~$/}\-])("
    r"/work/"                       # the developers' shared work folder (checkouts, hosts, mirrors)
    r"|/root/"                      # root's home
    r"|/home/[A-Za-z0-9_.-]+/"      # a user's home on Linux
    r"|/Users/[A-Za-z0-9_.-]+/"     # ... on macOS
    r"|[A-Za-z]:\\Users\\"          # ... on Windows
    r"|/tmp/hy"                     # scratch folders named after a task
    r"|/opt/(?:pypi|wheels)"        # this machine's local package index and wheel folder
    r")"
)

# Files allowed to spell such a path, and why.
ALLOWED = {
    # This test: its patterns and examples are the list of what must not appear anywhere else.
    "tests/test_repository.py",
}

SKIP_DIRS = {".git", "__pycache__", "node_modules"}


def _tracked_files() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60).stdout
        return [name for name in listed.decode("utf-8").split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        # Not a git checkout (an archive, a host's copy): every file but caches and venvs.
        return [
            path.relative_to(REPO).as_posix()
            for path in REPO.rglob("*")
            if path.is_file() and not any(part in SKIP_DIRS or part.startswith(".venv") for part in path.relative_to(REPO).parts)
        ]


def machine_paths(text: str) -> list[str]:
    """Each line of ``text`` that names a machine's absolute path, as ``line N: …``."""
    return [f"line {number}: {line.strip()}" for number, line in enumerate(text.splitlines(), 1) if MACHINE_PATH.search(line)]


def test_the_pattern_finds_machine_paths_and_leaves_placeholders_alone():
    found = [
        "COMFYUI_DIR=/work/hosts/ComfyUI pytest", "default=Path('/work/.mirror/x/repo')", "see /root/.insightface",
        "cd /home/alice/ComfyUI", "open /Users/bob/x", r"C:\Users\carol\ComfyUI", "cp x /tmp/hyphen-task/",
        "--find-links /opt/wheels",
    ]
    left = [
        "COMFYUI_DIR=$HOSTS/ComfyUI", "~/.cache/lora-likeness", "url + '/workflow_templates'", "https://example.com/work/x",
        "../shared/faces", "${HOME}/work/x", "tests/work/x", "/tmp/comfy-reqs.txt",
    ]
    assert [text for text in found if not machine_paths(text)] == []
    assert [text for text in left if machine_paths(text)] == []


def test_no_tracked_file_names_a_path_of_one_machine():
    offenders = {}
    for name in _tracked_files():
        if name in ALLOWED:
            continue
        try:
            data = (REPO / name).read_bytes()
        except OSError:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")  # images too: a PNG's text chunks (A1111's infotext) can hold paths
        lines = machine_paths(text)
        if lines:
            offenders[name] = lines[:5]
    assert offenders == {}, (
        "paths of one particular machine in the repository (use checkout-relative paths, flags, environment "
        f"variables such as $COMFYUI_DIR, or placeholders such as $HOSTS/...): {offenders}"
    )


def test_every_tracked_python_file_compiles():
    """bench/, docs/ and .ci/ scripts are not imported by any test: a syntax error there would go unnoticed."""
    problems = {}
    for name in _tracked_files():
        if name.endswith(".py"):
            try:
                compile((REPO / name).read_text(encoding="utf-8"), name, "exec")
            except SyntaxError as exc:
                problems[name] = f"line {exc.lineno}: {exc.msg}"
    assert problems == {}
