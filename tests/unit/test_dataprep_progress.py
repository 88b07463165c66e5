"""Progress lines of a long data prep (counts kept by the Beam workers, added up by the step) and
the memory tuning its worker processes start with."""

from __future__ import annotations

import os
import re
import time

import pytest

from tlp.components.lib.dataprep import prepare, progress

LINE = re.compile(r"^  data prep: ([\d,]+) of ([\d,]+) images read \((\d+)%\), (\d+) s(, about \d+ s left)?$")


def _progress_lines(output: str) -> list[tuple[int, int]]:
    found = []
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            found.append((int(match[1].replace(",", "")), int(match[2].replace(",", ""))))
    return found


def test_the_count_grows_to_the_listing_total_in_this_process(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "PROGRESS_EVERY_SECONDS", 0.01)
    monkeypatch.setattr(progress, "WRITE_EVERY_SECONDS", 0.0)  # every unit (16 photos) is written
    folders: set[str] = set()
    read = progress.photos_read
    monkeypatch.setattr(progress, "photos_read", lambda folder: folders.add(folder) or read(folder))
    prepare.prepare_dataset("sample:40", str(tmp_path / "data"), image_size=32, seed=3, processes=0)
    lines = _progress_lines(capsys.readouterr().out)
    assert lines, "no progress line"
    assert {total for _, total in lines} == {80}  # of what the listing holds
    counts = [done for done, _ in lines]
    assert counts == sorted(counts) and all(0 < done <= 80 for done in counts)
    assert len(folders) == 1 and not os.path.exists(folders.pop())  # the counts' folder is removed


@pytest.mark.slow  # Beam's worker processes start in about 10 s
def test_worker_processes_counts_reach_the_step(tmp_path, capsys, monkeypatch):
    """With 2 worker processes the step's own process reads no photo: every count it prints was
    written by a worker (they rewrite theirs at most once a second)."""
    monkeypatch.setattr(progress, "PROGRESS_EVERY_SECONDS", 0.05)
    prepare.prepare_dataset("sample:24", str(tmp_path / "data"), image_size=32, seed=3, processes=2)
    lines = _progress_lines(capsys.readouterr().out)
    assert lines and all(0 < done <= 48 and total == 48 for done, total in lines), lines


def test_a_short_data_prep_prints_no_progress(tmp_path, capsys):
    prepare.prepare_dataset("sample:20", str(tmp_path / "data"), image_size=32, seed=3, processes=0)
    output = capsys.readouterr().out
    assert "data prep: images per split" in output
    assert _progress_lines(output) == []


def _wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the reporter printed nothing"
        time.sleep(0.005)


def test_the_reporter_estimates_the_time_left_and_stops_at_the_total():
    lines: list[str] = []
    with progress.Reporter(100, every=0.01, emit=lines.append) as reporter:
        with open(os.path.join(reporter.folder, "1"), "w") as handle:
            handle.write("25")
        _wait_for(lambda: len(lines) >= 1)
        with open(os.path.join(reporter.folder, "2"), "w") as handle:
            handle.write("75")
        _wait_for(lambda: len(lines) >= 2)
    assert lines[0].startswith("  data prep: 25 of 100 images read (25%), ") and "s left" in lines[0]
    assert lines[1].startswith("  data prep: 100 of 100 images read (100%), ") and "left" not in lines[1]
    assert not os.path.exists(reporter.folder)


def test_the_workers_get_glibcs_memory_tuning_unless_the_user_set_their_own(monkeypatch):
    """Beam's worker processes inherit the environment: inside, the tuning is there for them; after,
    the environment is as it was; a value the user chose stays theirs."""
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    with prepare.malloc_tuned() as added:
        assert os.environ["MALLOC_ARENA_MAX"] == prepare.MALLOC_TUNING["MALLOC_ARENA_MAX"]
        assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "65536" and added == {"MALLOC_ARENA_MAX": "2"}
    assert "MALLOC_ARENA_MAX" not in os.environ and os.environ["MALLOC_MMAP_THRESHOLD_"] == "65536"
