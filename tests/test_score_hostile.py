"""``likeness score`` against hostile input: links, unwritable outputs, its own outputs as input,
two runs at once, Ctrl-C, huge images, CJK names. Each ends in a clear message and exit code or a
warning, and nothing the user had is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from likeness_assets import FACES, PACK_DIR, PEOPLE
from lora_likeness import cli, fonts, outputs
from lora_likeness import report as report_module
from lora_likeness.faces import FaceEngine

OBAMA = sorted((PEOPLE / "obama").iterdir())
BUSH = sorted((PEOPLE / "lfw_george_w_bush").iterdir())


@pytest.fixture()
def folders(tmp_path):
    """refs/ (3 Obama photos) and images/ (an Obama photo and two of Bush)."""
    refs, images = tmp_path / "refs", tmp_path / "images"
    refs.mkdir()
    images.mkdir()
    for photo in OBAMA[:3]:
        shutil.copy(photo, refs / photo.name)
    shutil.copy(OBAMA[3], images / "obama.jpg")
    shutil.copy(BUSH[0], images / "bush_1.jpg")
    shutil.copy(BUSH[1], images / "bush_2.jpg")
    return tmp_path


WIDE = "100000"  # COLUMNS: rich wraps nothing, so a message is one line whatever the temporary path's length


def score(folders, capsys, *extra, images=None):
    """Run ``likeness score`` in this process; returns ``(exit code, stdout, stderr)``."""
    args = ["score", "--refs", folders / "refs", "--images", images or folders / "images", "--pack", PACK_DIR,
            "--cache-dir", folders / "cache", "--quiet", *extra]
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDE
    try:
        code = cli.main([str(a) for a in args])
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def no_engine(monkeypatch):
    """Fails the test if the face models are loaded: for checks that must come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("the face models were loaded before the output check")

    monkeypatch.setattr(FaceEngine, "load", classmethod(refuse))


# --------------------------------------------------------------------------------------------
# 1. Links under --images
# --------------------------------------------------------------------------------------------


def test_links_under_images_are_scored_under_their_own_names(folders, capsys):
    images, elsewhere = folders / "images", folders / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(FACES / "others" / "biden_01.jpg", elsewhere / "biden.jpg")
    (images / "inside.jpg").symlink_to("obama.jpg")
    (images / "outside.jpg").symlink_to(elsewhere / "biden.jpg")
    (images / "gone.jpg").symlink_to("missing_target.jpg")
    (images / "gone_far.jpg").symlink_to(folders / "nowhere" / "x.jpg")
    (images / "loop_a.jpg").symlink_to("loop_b.jpg")
    (images / "loop_b.jpg").symlink_to("loop_a.jpg")
    (images / "sub").mkdir()
    (images / "sub" / "up").symlink_to("..")  # a folder loop: sub/up/sub/up/…
    out = folders / "report"
    code, stdout, err = score(folders, capsys, "--out", out, "--group-by", "none")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    by_path = {i["path"]: i for i in report["images"]}
    assert sorted(by_path) == ["bush_1.jpg", "bush_2.jpg", "gone.jpg", "gone_far.jpg", "inside.jpg", "loop_a.jpg",
                               "loop_b.jpg", "obama.jpg", "outside.jpg"]
    assert "broken link to missing_target.jpg" in by_path["gone.jpg"]["error"]
    assert "broken link to" in by_path["gone_far.jpg"]["error"]
    assert "symlink loop" in by_path["loop_a.jpg"]["error"] and "symlink loop" in by_path["loop_b.jpg"]["error"]
    assert by_path["inside.jpg"]["score_max"] == by_path["obama.jpg"]["score_max"] > 0.5
    assert by_path["outside.jpg"]["error"] is None and by_path["outside.jpg"]["face_found"]
    assert any(w.startswith("sub/up:") and "already scanned" in w for w in report["warnings"])
    assert (out / "contact_sheet.png").is_file()


def test_linked_reference_photos_keep_their_own_names(folders, capsys):
    elsewhere = folders / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(OBAMA[3], elsewhere / "far.jpg")
    (folders / "refs" / "linked.jpg").symlink_to(elsewhere / "far.jpg")
    code, stdout, err = score(folders, capsys, "--json", folders / "r.json")
    assert code == 0, err
    names = [p["path"] for p in json.loads((folders / "r.json").read_text())["references"]["files"]]
    assert "linked.jpg" in names


# --------------------------------------------------------------------------------------------
# 2. Outputs that cannot be written: said before any work, exit 2
# --------------------------------------------------------------------------------------------


def test_out_that_is_a_file_or_under_a_file_is_refused_before_any_work(folders, capsys, no_engine):
    afile = folders / "afile"
    afile.write_text("mine")
    for out, words in ((afile, "is a file, not a folder"), (afile / "sub", "is a file, not a folder")):
        code, _, err = score(folders, capsys, "--out", out)
        assert code == 2 and str(out) in err and words in err and "Traceback" not in err
    assert afile.read_text() == "mine"


def test_json_that_is_a_folder_is_refused_and_the_folder_is_not_renamed(folders, capsys, no_engine):
    code, _, err = score(folders, capsys, "--json", folders / "images")
    assert code == 2 and "is a folder" in err
    assert sorted(p.name for p in (folders / "images").iterdir()) == ["bush_1.jpg", "bush_2.jpg", "obama.jpg"]
    assert [p.name for p in folders.iterdir() if p.name.startswith("images.")] == []


def test_unwritable_outputs_are_refused_before_any_work(folders, capsys, no_engine, monkeypatch):
    # Tests run as root, whom modes do not stop: os.access is made to answer as for a normal user.
    locked = folders / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked else real_access(path, mode, **kw))
    for option, target in (("--out", locked), ("--out", locked / "new" / "report"), ("--json", locked / "r.json")):
        code, _, err = score(folders, capsys, option, target)
        assert code == 2, (option, target)
        assert f"{option} {target}" in err and "not writable" in err and str(locked) in err
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("setpriv")),
                    reason="needs root and setpriv to run the CLI as the unprivileged user 'nobody'")
def test_read_only_folders_refuse_a_normal_user_for_real():
    """The same as a real unprivileged user (``nobody`` via setpriv), with no patching."""
    scratch = Path(tempfile.mkdtemp(prefix="likeness-nobody-"))
    try:
        os.chmod(scratch, 0o777)
        read_only = scratch / "read_only"
        read_only.mkdir()
        os.chmod(read_only, 0o555)
        env = dict(os.environ, HOME=str(scratch), MPLCONFIGDIR=str(scratch / "mpl"), LIKENESS_CACHE_DIR=str(scratch / "cache"), COLUMNS=WIDE)
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable]
        if subprocess.run(as_nobody + ["-c", "import lora_likeness.cli"], capture_output=True, env=env, timeout=120).returncode:
            pytest.skip("'nobody' cannot read this checkout or its venv (a folder above it is private, e.g. mktemp -d's 0700)")
        base = [*as_nobody, "-m", "lora_likeness.cli",
                "score", "--refs", str(PEOPLE / "obama"), "--images", str(PEOPLE / "lfw_george_w_bush"),
                "--pack", str(PACK_DIR), "--quiet", "--no-cache"]
        for option, target in (("--out", read_only), ("--out", read_only / "sub"), ("--json", read_only / "r.json")):
            done = subprocess.run(base + [option, str(target)], capture_output=True, text=True, env=env, timeout=120)
            err = done.stderr
            assert done.returncode == 2, err
            assert f"{option} {target}" in err and "not writable" in err and "Traceback" not in err
    finally:
        os.chmod(scratch / "read_only", 0o755)
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# 3. Our own outputs are never inputs
# --------------------------------------------------------------------------------------------


def test_report_written_into_the_image_folder_is_not_scored_by_the_next_run(folders, capsys):
    images = folders / "images"
    counts = []
    for _ in range(3):
        code, _, err = score(folders, capsys, "--out", images, "--json", folders / "r.json")
        assert code == 0, err
        report = json.loads((folders / "r.json").read_text())
        counts.append(sum(g["n_images"] for g in report["groups"]))
    assert counts == [3, 3, 3]
    own = [w for w in report["warnings"] if "this tool's own output" in w]
    assert len(own) == 1 and own[0].startswith("not scored, being this tool's own output: contact_sheet.png, previous/, scores.png")
    assert len(list((images / "previous").iterdir())) == 2


# --------------------------------------------------------------------------------------------
# 4. One run at a time per output folder
# --------------------------------------------------------------------------------------------


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from lora_likeness.outputs import FolderLock
    lock = FolderLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def _hold(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_into_the_same_folder_is_refused_and_a_dead_holder_is_taken_over(folders, capsys, monkeypatch):
    out = folders / "report"
    out.mkdir()
    holder = _hold(out)
    try:
        loads = []
        original = FaceEngine.load.__func__
        monkeypatch.setattr(FaceEngine, "load", classmethod(lambda cls, *a, **k: loads.append(1) or original(cls, *a, **k)))
        code, _, err = score(folders, capsys, "--out", out)
        assert code == 2 and f"another likeness run (pid {holder.pid}) is writing to {out}" in err
        assert loads == []  # refused before the analysis, not after it
    finally:
        holder.kill()  # killed: it leaves its lock file, with its pid, behind
        holder.wait()
    assert outputs.lock_holder(out) == holder.pid
    code, _, err = score(folders, capsys, "--out", out)
    assert code == 0, err
    assert (out / "report.json").is_file() and not (out / outputs.LOCK_NAME).exists()


# --------------------------------------------------------------------------------------------
# 5. Ctrl-C
# --------------------------------------------------------------------------------------------


def test_ctrl_c_while_the_report_is_written_keeps_the_earlier_report(folders, capsys, monkeypatch):
    out = folders / "report"
    assert score(folders, capsys, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(run, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "contact_sheet", interrupted)
    code, stdout, err = score(folders, capsys, "--out", out)
    assert code == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "cancelled" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no previous/, no staging, no lock left


def test_ctrl_c_anywhere_ends_with_one_line_and_130(folders, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(FaceEngine, "load", classmethod(interrupted))
    code, _, err = score(folders, capsys, "--out", folders / "report")
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (folders / "report").exists()  # the folder this run made is gone again

    monkeypatch.setattr(cli, "build_parser", interrupted)  # while the command modules are imported
    code, _, err = score(folders, capsys, "--out", folders / "report")
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT to itself")
def test_ctrl_c_during_the_swap_waits_for_the_swap_to_finish(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    folder = outputs.ReportFolder(tmp_path, ("a.txt", "b.txt"))
    real_replace = os.replace
    sent = []

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        with folder:
            folder.path("a.txt").write_text("new a")
            folder.path("b.txt").write_text("new b")
            monkeypatch.setattr(outputs.os, "replace", replace_then_interrupt)
            folder.commit()
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"
    moved = next((tmp_path / "previous").iterdir())
    assert (moved / "a.txt").read_text() == "old a" and (moved / "b.txt").read_text() == "old b"


def test_an_interrupted_sweep_report_keeps_the_earlier_one(tmp_path, monkeypatch):
    from lora_likeness.recommend import recommend
    from lora_likeness.sweep import report as sweep_report

    first = sweep_report.write_sweep_report(tmp_path, [], recommend([]), {})
    before = {name: path.read_bytes() for name, path in first.items()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_report, "report_html", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep_report.write_sweep_report(tmp_path, [], recommend([]), {})
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


# --------------------------------------------------------------------------------------------
# 6. Huge images
# --------------------------------------------------------------------------------------------


def test_a_100_megapixel_image_gets_our_warning_not_pillows(folders, capsys):
    huge = folders / "images" / "huge.png"
    Image.new("1", (10_000, 10_050)).save(huge)  # 100.5 megapixels, a few kB as PNG
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a raw Pillow warning fails the test
        code, stdout, err = score(folders, capsys, "--json", folders / "r.json")
    assert code == 0, err
    assert "DecompressionBomb" not in stdout + err
    report = json.loads((folders / "r.json").read_text())
    assert any(w.startswith("huge.png:") and "10000x10050" in w and "megapixels" in w for w in report["warnings"])
    assert {i["path"]: i["error"] for i in report["images"]}["huge.png"] is None


# --------------------------------------------------------------------------------------------
# 7-8. Names in the pictures: CJK without boxes or warnings, file names on the tiles, whole errors
# --------------------------------------------------------------------------------------------


def _drawn_texts(monkeypatch) -> list[tuple[str, object]]:
    """Record every text Pillow draws, with the font it is drawn in."""
    drawn: list[tuple[str, object]] = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, value, fill=None, font=None, *args, **kwargs):
        drawn.append((value, font))
        return original(self, xy, value, fill, font, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    return drawn


def _cjk_run(folders, capsys, no_cjk_font: bool, monkeypatch):
    if no_cjk_font:
        monkeypatch.setattr(fonts, "cjk_font_file", lambda: None)
    cjk = folders / "images" / "张三"
    cjk.mkdir()
    shutil.copy(OBAMA[3], cjk / "写真_01.jpg")
    drawn = _drawn_texts(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Glyph")  # matplotlib's "Glyph … missing from font(s)" fails the test
        code, stdout, err = score(folders, capsys, "--out", folders / "report")
    assert code == 0, err
    assert "Glyph" not in err and "missing from font" not in err
    for value, font in drawn:  # every character Pillow drew has a glyph in the font it was drawn with
        charset = fonts._charset(font.path) if hasattr(font, "path") else frozenset(range(0x20, 0x100))
        assert all(c.isspace() or ord(c) in charset for c in value), value
    return [value for value, _ in drawn]


def test_cjk_names_without_a_cjk_font_are_escaped_not_boxes(folders, capsys, monkeypatch):
    texts = _cjk_run(folders, capsys, True, monkeypatch)
    assert any(t.startswith("\\u5f20\\u4e09") for t in texts)  # 张三, the group header
    assert any(t.startswith("\\u5199\\u771f") for t in texts)  # 写真_01.jpg on its tile


@pytest.mark.skipif(fonts.cjk_font_file() is None, reason="no CJK font installed (e.g. fonts-noto-cjk or fonts-wqy-microhei)")
def test_cjk_names_are_drawn_in_an_installed_cjk_font(folders, capsys, monkeypatch):
    texts = _cjk_run(folders, capsys, False, monkeypatch)
    assert any(t.startswith("张三") for t in texts) and "写真_01.jpg" in texts


def test_tiles_name_their_file_and_show_the_whole_error(folders, capsys, monkeypatch):
    images = folders / "images"
    long_name = "epoch_000010_a_very_long_descriptive_file_name_seed_1234.jpg"
    shutil.copy(BUSH[2], images / long_name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    drawn = _drawn_texts(monkeypatch)
    code, _, err = score(folders, capsys, "--out", folders / "report")
    assert code == 0, err
    texts = [value for value, _ in drawn]
    assert "obama.jpg" in texts and "broken.jpg" in texts
    shortened = [t for t in texts if "…" in t and t.startswith("epoch")]
    assert shortened and shortened[0].endswith("seed_1234.jpg")  # the end, which tells files apart, stays
    sheet = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    report = json.loads((folders / "report" / "report.json").read_text())
    error = next(i["error"] for i in report["images"] if i["path"] == "broken.jpg")
    reason = error.split("broken.jpg: ", 1)[1]
    start = texts.index("unreadable") + 1
    lines = texts[start:start + 12]
    lines = lines[: next((i for i, t in enumerate(lines) if t.endswith(".jpg") or t == "unreadable"), len(lines))]
    assert "".join(lines).replace(" ", "") == reason.replace(" ", "")  # all of the reason, in order, nothing clipped
    font, _ = fonts.draw_font(reason, 10)
    for line in lines:
        left, _, right, _ = sheet.textbbox((0, 0), line, font=font)
        assert right - left <= 160 - 8, line


# --------------------------------------------------------------------------------------------
# 9. Permissions of what we write
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_report_files_get_the_mode_the_umask_gives(folders, capsys):
    before = os.umask(0o022)
    try:
        code, _, err = score(folders, capsys, "--out", folders / "report", "--json", folders / "r.json")
    finally:
        os.umask(before)
    assert code == 0, err
    written = list((folders / "report").iterdir()) + [folders / "r.json"]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: 0o644 for p in written}


@pytest.mark.skipif(os.name != "posix", reason="flock is POSIX")
def test_a_file_system_without_locks_runs_unlocked(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with outputs.ReportFolder(tmp_path / "out", ("a.txt",)) as folder:
        folder.path("a.txt").write_text("new")
        folder.commit()
    assert (tmp_path / "out" / "a.txt").read_text() == "new" and not (tmp_path / "out" / outputs.LOCK_NAME).exists()
