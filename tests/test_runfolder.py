"""Run folders: refuse what sbnkit did not create, keep finished work, remove only own files."""

import json

import pytest

from sbnkit import UserError
from sbnkit.runfolder import RunFolder, check_folder, read_record


def _fail(folder, **kwargs):
    """Open a run in ``folder``, let ``body(rf)`` write, then fail; returns the report lines."""
    lines = []
    body = kwargs.pop("body")
    with pytest.raises(RuntimeError), RunFolder(folder, "job", report=lines.append, **kwargs) as rf:
        body(rf)
        raise RuntimeError("boom")
    return lines


def test_a_finished_run_records_its_files_and_state(tmp_path):
    out = tmp_path / "a" / "b"
    with RunFolder(out, "job", provenance={"k": 1}) as rf:
        rf.write_text("x.txt", "x")
        rf.append_line("log.jsonl", "1", progress="one")
        rf.append_line("log.jsonl", "2")
        assert read_record(out)["state"] == "running"
    record = read_record(out)
    assert record["state"] == "complete" and record["files"] == ["log.jsonl", "x.txt"]
    assert record["provenance"] == {"k": 1} and record["progress"] == "one"
    assert (out / "log.jsonl").read_text() == "1\n2\n"
    assert sorted(p.name for p in out.iterdir()) == [".lock", "log.jsonl", "run.json", "x.txt"]


def test_append_row_writes_the_header_once_and_is_kept(tmp_path):
    out = tmp_path / "run"

    def body(rf):
        rf.append_row("log.csv", {"epoch": 1, "loss": 0.5})
        rf.append_row("log.csv", {"epoch": 2, "loss": 0.25, "acc": 0.75}, progress="2 epochs")

    assert _fail(out, body=body) == [
        f"sbnkit: kept log.csv in {out} (2 epochs); the run did not finish"
    ]
    assert (out / "log.csv").read_text() == "epoch,loss,acc\n1,0.5,\n2,0.25,0.75\n"


def test_a_failure_without_finished_work_removes_what_it_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "run"
    lines = _fail(out, body=lambda rf: rf.write_text("x.txt", "x", keep=True))
    assert not (tmp_path / "new").exists() and lines == []
    empty = tmp_path / "empty"
    empty.mkdir()
    _fail(empty, body=lambda rf: rf.write_text("x.txt", "x"))
    assert empty.is_dir() and not list(empty.iterdir())  # it existed before: it stays


def test_a_failure_keeps_the_finished_work_and_says_so(tmp_path):
    out = tmp_path / "run"

    def body(rf):
        rf.write_text("config.toml", "c", keep=True)
        rf.write_text("model.pt", "m")
        rf.append_line("log.jsonl", "{}", progress="1 finished epoch")

    lines = _fail(out, body=body)
    assert lines == [
        f"sbnkit: kept config.toml, log.jsonl in {out} (1 finished epoch); the run did not finish"
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",
        "config.toml",
        "log.jsonl",
        "run.json",
    ]
    record = read_record(out)
    assert record["state"] == "interrupted" and record["files"] == ["config.toml", "log.jsonl"]


def test_a_writers_sub_folder_is_kept_moved_aside_and_removed_as_a_whole(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out, "job") as rf:
        (rf.folder("events", keep=True) / "e.1").write_text("old")
        with pytest.raises(ValueError, match="not a folder name"):
            rf.folder(".hidden")
    assert read_record(out)["files"] == ["events"]

    def fail_early(rf):  # nothing finished: the new events go, the earlier run's come back
        assert not (out / "events").exists()
        (rf.folder("events", keep=True) / "e.2").write_text("new")

    _fail(out, overwrite=True, body=fail_early)
    assert [p.name for p in (out / "events").iterdir()] == ["e.1"]

    def fail_later(rf):  # finished work: the events stay
        (rf.folder("events", keep=True) / "e.3").write_text("new")
        rf.set_progress("1 finished epoch")

    _fail(out, overwrite=True, body=fail_later)
    assert [p.name for p in (out / "events").iterdir()] == ["e.3"]
    with RunFolder(out, "job", resume=True) as rf:  # resuming reuses the folder
        assert sorted(p.name for p in rf.folder("events").iterdir()) == ["e.3"]
        rf.remove("events")
    assert not (out / "events").exists() and read_record(out)["files"] == []
    (out / "mine").mkdir()
    with RunFolder(out, "job", overwrite=True) as rf, pytest.raises(UserError, match="move it"):
        rf.folder("mine")
    assert (out / "mine").is_dir()


def test_folders_it_did_not_create_are_refused_and_untouched(tmp_path):
    mine = tmp_path / "project"
    (mine / "src").mkdir(parents=True)
    (mine / "run.json").write_text(json.dumps({"format": "other"}))
    for overwrite in (False, True):
        with pytest.raises(UserError, match="sbnkit did not create"):
            RunFolder(mine, "job", overwrite=overwrite)
    (tmp_path / "file").write_text("f")
    with pytest.raises(UserError, match="is not a folder"):
        check_folder(tmp_path / "file", "job")
    for empty in ("", "  ", None):
        with pytest.raises(UserError, match="--out is empty"):
            check_folder(empty, "job")
    assert sorted(p.name for p in mine.iterdir()) == ["run.json", "src"]


def test_another_command_or_a_finished_run_needs_consent(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out, "job") as rf:
        rf.write_text("a.txt", "old")
    with pytest.raises(UserError, match="not a `other` run"):
        check_folder(out, "other", overwrite=True)
    with pytest.raises(UserError, match="run that is complete.*--overwrite"):
        check_folder(out, "job")
    assert check_folder(out, "job", overwrite=True) == out


def test_overwrite_replaces_the_run_and_restores_it_after_an_early_failure(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out, "job") as rf:
        rf.write_text("a.txt", "old a")
        rf.write_text("b.txt", "old b")
    (out / "mine.txt").write_text("user's")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}

    def body(rf):
        assert (rf.previous / "a.txt").read_text() == "old a"
        assert not (out / "a.txt").exists()
        rf.write_text("a.txt", "new a")

    lines = _fail(out, body=body, overwrite=True)
    assert lines == [f"sbnkit: nothing was finished; the earlier run in {out} is back"]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before
    with RunFolder(out, "job", overwrite=True) as rf:
        rf.write_text("a.txt", "new a")
    assert sorted(p.name for p in out.iterdir()) == [".lock", "a.txt", "mine.txt", "run.json"]
    assert (out / "a.txt").read_text() == "new a" and read_record(out)["files"] == ["a.txt"]


def test_one_writer_at_a_time(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out, "job") as rf:
        rf.write_text("a.txt", "a")
        for overwrite in (False, True):
            with pytest.raises(UserError, match="in use by another sbnkit process"):
                RunFolder(out, "job", overwrite=overwrite)
    with RunFolder(out, "job", overwrite=True):
        pass


def test_writes_are_atomic_and_names_are_checked(tmp_path):
    with RunFolder(tmp_path / "run", "job") as rf:
        rf.write_text("a.txt", "old")
        with pytest.raises(OSError), rf.target("a.txt") as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
        assert (rf.path / "a.txt").read_text() == "old"
        assert sorted(p.name for p in rf.path.iterdir()) == [".lock", "a.txt", "run.json"]
        for name in ("run.json", ".lock", "sub/x", ".hidden"):
            with pytest.raises(ValueError, match="not a file name"):
                rf.write_text(name, "x")
