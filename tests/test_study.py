"""The study store on file:// and on a real S3 endpoint (moto on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmmo.errors import LeaseHeldError, StorageUnavailableError, StudyError
from mmmo.spec import SearchSpec, parse_spec
from mmmo.study import Proposal, ProposedTrial, StudyStore, TrialRecord


def _spec(**changes: object) -> SearchSpec:
    data = {
        "name": "s",
        "base": {"path": "fixture:models/base"},
        "sources": [{"path": "fixture:models/a"}, {"path": "fixture:models/b"}],
        "objectives": {"tasks": [{"task": "fixture:tasks/a.yaml"}]},
    }
    data.update(changes)
    return parse_spec(data)


def _trial(n: int, status: str = "complete") -> TrialRecord:
    return TrialRecord(number=n, iteration=0, recipe_id=f"r{n}", x=[0.1 * n, 0.5],
                       recipe={"method": "dare_ties"}, status=status,
                       objectives={"a": 0.5, "sparsity": 10.0}, values=[0.5, -10.0],
                       stderrs=[0.01, 0.0])


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StudyStore:
    if request.param == "file":
        return StudyStore(str(tmp_path / "studies"), "demo")
    bucket = request.getfixturevalue("s3_bucket")
    return StudyStore(f"{bucket}/prefix", "demo")


def test_create_and_read_back(store: StudyStore) -> None:
    spec = _spec()
    assert not store.exists()
    assert store.open_or_create(spec, dimension_names=["a.weight"]) is False
    assert store.open_or_create(spec, dimension_names=["a.weight"]) is True
    assert store.load_spec() == spec
    assert store.metadata()["objectives"] == ["a", "sparsity"]


def test_resume_refuses_a_different_search(store: StudyStore) -> None:
    store.open_or_create(_spec(), dimension_names=[])
    other = _spec(merge={"method": "ties"})
    with pytest.raises(StudyError, match="different merge; fix: resume it with its own spec"):
        store.open_or_create(other, dimension_names=[])
    # runtime-only fields may change
    store.open_or_create(_spec(compute={"device": "cpu"}), dimension_names=[])


def test_trials_and_pending(store: StudyStore) -> None:
    store.open_or_create(_spec(), dimension_names=[])
    store.write_proposal(Proposal(iteration=0, strategy="random", trials=[
        ProposedTrial(number=i, x=[0.1 * i], recipe_id=f"r{i}", recipe={}) for i in range(3)]))
    first = _trial(0)
    store.write_trial(first)
    store.write_trial(_trial(2, "failed"))
    assert [t.number for t in store.trials()] == [0, 2]
    assert [t.number for t in store.pending()] == [1]
    assert store.trials()[1].status == "failed"
    assert store.trials()[0] == first


def test_no_partial_records_left(store: StudyStore) -> None:
    store.write_trial(_trial(5))
    names = store.fs.ls(store.path("trials"), detail=False)
    assert [n.rsplit("/", 1)[-1] for n in names] == ["0005.json"]


def test_lease_refuses_second_run_and_takes_over_stale(store: StudyStore) -> None:
    store.open_or_create(_spec(), dimension_names=[])
    lease = store.acquire_lease(ttl=60, holder="other-host:1:abc")
    with pytest.raises(LeaseHeldError) as info:
        store.acquire_lease(ttl=60)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("study 'demo' is held by a running search "
                                      "(other-host:1:abc, lease valid until ")
    store.renew_lease(lease, ttl=-1)  # expired: the holder stopped renewing it
    mine = store.acquire_lease(ttl=60)
    assert mine.holder != lease.holder
    store.release_lease(mine)
    assert store.read_lease() is None


def test_lease_of_dead_local_process_is_stale(tmp_path: Path) -> None:
    store = StudyStore(str(tmp_path), "demo")
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(proc.stdout)
    import socket

    store.acquire_lease(ttl=600, holder=f"{socket.gethostname()}:{dead_pid}:x")
    lease = store.read_lease()
    assert lease is not None
    object.__setattr__(lease, "pid", dead_pid)
    store.write_json("lease.json", lease.__dict__)
    assert store.read_lease().is_stale()
    assert store.acquire_lease(ttl=60).pid == os.getpid()


def test_leased_context_heartbeats_and_releases(tmp_path: Path) -> None:
    store = StudyStore(str(tmp_path), "demo")
    with store.leased(ttl=1.0, heartbeat=0.2) as lease:
        time.sleep(1.5)
        current = store.read_lease()
        assert current is not None and current.holder == lease.holder
        assert not current.is_stale()
    assert store.read_lease() is None


def test_a_failing_block_releases_the_lease_and_keeps_its_own_error(
        store: StudyStore, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The block's error is the one raised; the lease is given back in one try, and a store
    that cannot take it back (it may be why the block failed) is logged, not raised."""
    with pytest.raises(RuntimeError, match="the block failed"), store.leased():
        raise RuntimeError("the block failed")
    assert store.read_lease() is None

    def refused(*_a: object, **_k: object) -> None:
        calls.append(1)
        raise ConnectionRefusedError("the store went away")

    calls: list[int] = []
    monkeypatch.setattr(StudyStore, "retry_seconds", 60.0)  # would wait, were it retried
    with pytest.raises(RuntimeError, match="the block failed"), store.leased():
        monkeypatch.setattr(store.fs, "rm_file", refused)
        raise RuntimeError("the block failed")
    assert calls == [1]
    assert "the lease could not be released" in caplog.text
    assert store.read_lease() is not None  # left behind: it expires, or its dead holder is seen


def test_store_that_stays_away_fails_in_one_line_naming_the_fix(
        s3_bucket: str, free_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its retry window (``MMMO_STORE_RETRY_SECONDS``, 300 s by default) a remote store
    that does not answer is one StorageUnavailableError naming the store, the operation and how
    to resume."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port}")
    monkeypatch.setenv("MMMO_STORE_RETRY_SECONDS", "1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        store = StudyStore(f"{s3_bucket}/studies", "demo")
        with pytest.raises(StorageUnavailableError) as info:
            store.write_json("trials/0000.json", {"n": 0})
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"study store {s3_bucket}/studies/demo did not answer for ")
    assert "(writing trials/0000.json: EndpointConnectionError" in line
    assert line.endswith(f"fix: bring the store back, then `mmmo resume demo --storage "
                         f"{s3_bucket}/studies`: every trial recorded so far is kept")


def test_missing_study_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="study 'nope' does not exist at .* start it with `mmmo run"):
        StudyStore(str(tmp_path), "nope").load_spec()
