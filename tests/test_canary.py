"""The pre-training canary: a quick model of the training set against one of the reference."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landed import empty as empty_landing
from poisonguard.canary import canary_folds, run_canary, split_canary
from poisonguard.cli import main
from poisonguard.config import load_config
from poisonguard.demo import LABEL, digits_frame
from poisonguard.errors import ConfigError, GateError
from poisonguard.gate import check, gate
from poisonguard.initialize import init_dataset
from poisonguard.pipeline import process_landing
from poisonguard.review import review
from poisonguard.sampling import draw_sample, sample_rule
from poisonguard.sources import source_states
from poisonguard.store import open_store


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _land_and_release(config, name: str, frame: pd.DataFrame) -> None:
    """Land one batch, process it, release every row it held and clear its source's alarm,
    if it raised one (a careless reviewer: the canary is what is left to catch it)."""
    empty_landing(config.landing)
    frame.to_parquet(config.landing / name, index=False)
    (record,) = process_landing(config).records
    store = open_store(config)
    if record.rows_quarantined:
        review(store, record.batch_id, "release", by="ana", note="looks fine")
    if any(s.alarmed for s in source_states(store.source_events(), config.sources).values()):
        store.clear_source("default", actor="ana", note="looks fine")


def _digits_store(project: Path, *, flip_threes: bool):
    """The demo's seed, then every other digit as one batch (each 3 labelled 9 when asked),
    everything held released."""
    config = load_config(project / "poisonguard.toml")
    seed_ids = set(pd.read_parquet(project / "trusted.parquet")["row_id"])
    rows = digits_frame()
    rows = rows[~rows["row_id"].isin(seed_ids)].reset_index(drop=True)
    if flip_threes:
        rows.loc[rows[LABEL] == 3, LABEL] = 9
    _land_and_release(config, "more-digits.parquet", rows)
    return config


def _figures(manifest: dict) -> dict:
    return {k: v for k, v in manifest["canary"].items() if k != "seconds"}


def test_a_clean_training_set_passes_the_canary_with_its_figures_recorded(demo_project, capsys):
    """Clean batches added to the seed: the gate is safe, prints the canary's figures and
    records them (every reference row a canary row once) in its manifest and audit entry;
    the same store gives the same figures again."""
    config = _digits_store(demo_project, flip_threes=False)
    report = check(config)
    assert report.ok, report.reasons
    canary = report.canary
    assert canary is not None and canary.judged and canary.metric == "accuracy"
    reference = open_store(config).reference()
    assert canary.rows == reference.rows
    assert canary.training > 0.9 and canary.training >= canary.reference - 0.02
    assert {c.label for c in canary.classes} == set(range(10))
    assert not any(c.failed for c in canary.classes)
    assert _figures(check(config).manifest) == _figures(report.manifest)

    manifest = demo_project / "m.json"
    code, out, _ = _cli(capsys, "gate", "--config", str(config.path), "--manifest", str(manifest))
    assert code == 0 and out.startswith("safe:")
    assert f"canary: accuracy on {reference.rows} trusted canary rows" in out
    doc = json.loads(manifest.read_text())["predicate"]
    assert doc["canary"]["run"] and doc["canary"]["rows"] == reference.rows
    entry = open_store(config).audit_log()[-1]
    assert entry["action"] == "gate" and json.loads(entry["detail"])["canary"]["run"]


def test_a_drop_that_chance_explains_does_not_fail_the_canary(demo_project):
    """With no margin at all, a clean training set whose models get a row or two of some
    class wrong that the reference's got right still passes: the paired test says chance."""
    config = _digits_store(demo_project, flip_threes=False)
    text = config.path.read_text()
    config.path.write_text(text.replace("canary_class_margin = 0.1", "canary_class_margin = 0"))
    report = check(load_config(config.path))
    assert report.ok, report.reasons
    worse = [c for c in report.canary.classes if c.drop > 0]
    assert worse and all(c.p_value > report.canary.level for c in worse)


def test_released_label_flips_fail_the_canary_with_a_per_class_reason(demo_project, capsys):
    """Every 3 of a batch labelled 9, held by the detectors and released by a reviewer anyway:
    the canary refuses, naming class 3 and both accuracies; gate() raises; --no-canary
    passes, and says so in the manifest."""
    config = _digits_store(demo_project, flip_threes=True)
    report = check(config)
    assert not report.ok
    said = re.compile(
        r"canary: class '3': accuracy on \d+ canary rows 0\.\d+ with the training set "
        r"against 0\.\d+ with the reference \(margin 0\.1, p = "
    )
    assert any(said.match(r) for r in report.reasons), report.reasons
    three = next(c for c in report.canary.classes if c.label == 3)
    assert three.failed and three.drop > 0.5
    assert not any(c.failed for c in report.canary.classes if c.label != 3)
    with pytest.raises(GateError, match=r"canary: class '3'"):
        gate(config)

    code, _, err = _cli(capsys, "gate", "--config", str(config.path))
    assert code == 1 and "not safe: canary: class '3': accuracy on " in err
    manifest = demo_project / "m.json"
    code, out, _ = _cli(
        capsys, "gate", "--config", str(config.path), "--no-canary", "--manifest", str(manifest)
    )
    assert code == 0 and "canary" not in out
    assert json.loads(manifest.read_text())["predicate"]["canary"]["run"] is False
    assert len(gate(config, canary=False)) == sum(f.rows for f in open_store(config).files("clean"))


def test_canary_rows_never_appear_in_either_training_set(demo_run):
    """In every fold, no canary row's hash is among the rows either model trains on; every
    reference row is a canary row exactly once; a row's fold depends on its hash alone."""
    root, _ = demo_run
    store = open_store(load_config(root / "poisonguard.toml"))
    reference = store.reference_frame(store.reference())
    training = store.clean_frame()
    splits = split_canary(reference, training, 5)
    ref_hashes = reference["pg_row_hash"].to_numpy()
    train_hashes = training["pg_row_hash"].to_numpy()
    seen = []
    for split in splits:
        canary = set(ref_hashes[split.canary])
        assert canary and not canary & set(ref_hashes[split.reference])
        assert not canary & set(train_hashes[split.training])
        # Only the canary rows (and their copies) leave the training set.
        assert len(split.training) == int((~np.isin(train_hashes, list(canary))).sum())
        seen += ref_hashes[split.canary].tolist()
    assert sorted(seen) == sorted(ref_hashes.tolist())
    shuffled = ref_hashes[::-1]
    assert (canary_folds(shuffled, 5) == canary_folds(ref_hashes, 5)[::-1]).all()


@pytest.mark.parametrize("poisoned", [False, True])
def test_a_regression_target_is_judged_by_r2(tmp_path, homes, poisoned):
    """A numeric target: clean homes pass with R^2 figures; homes whose prices were
    shuffled among them, released by a reviewer, fail with an R^2 reason."""
    frame = homes(900, 0)
    frame.iloc[:300].to_parquet(tmp_path / "trusted.parquet", index=False)
    init_dataset(
        tmp_path / "trusted.parquet", label="price", id_column="row_id", directory=tmp_path
    )
    config = load_config(tmp_path / "poisonguard.toml")
    batch = frame.iloc[300:].reset_index(drop=True)
    if poisoned:
        batch["price"] = np.random.default_rng(1).permutation(batch["price"].to_numpy())
    _land_and_release(config, "homes.parquet", batch)
    report = check(config)
    canary = report.canary
    assert canary is not None and canary.judged and canary.metric == "r2" and not canary.classes
    assert canary.reference > 0.8
    if poisoned:
        assert not report.ok
        assert any(
            r.startswith("canary: R^2 on 300 trusted canary rows ") and "(margin 0.02, p = " in r
            for r in report.reasons
        ), report.reasons
    else:
        assert report.ok, report.reasons


def _small_store(tmp_path: Path, canary: str | None) -> Path:
    digits = digits_frame()
    digits.iloc[:15].to_parquet(tmp_path / "trusted.parquet", index=False)
    init_dataset(tmp_path / "trusted.parquet", label=LABEL, id_column="row_id", directory=tmp_path)
    path = tmp_path / "poisonguard.toml"
    if canary is not None:
        path.write_text(path.read_text().replace("[gate]", f"[gate]\ncanary = {canary}", 1))
    return path


@pytest.mark.parametrize("setting", [None, "true", "false"])
def test_a_reference_too_small_for_the_canary_is_noted_unless_the_canary_is_required(
    tmp_path, setting
):
    """15 trusted rows cannot train and judge a model: left out, the gate notes it and passes;
    ``canary = true`` makes it a reason; ``canary = false`` does not run it."""
    report = check(load_config(_small_store(tmp_path, setting)))
    if setting == "false":
        assert report.ok and report.canary is None and report.manifest["canary"]["run"] is False
        return
    assert report.canary is not None and report.canary.unable is not None
    assert "the reference has 15 labelled rows; it needs at least 20" in report.canary.unable
    assert report.manifest["canary"] == {
        "run": False,
        "unable": report.canary.unable,
        "reasons": [],
    }
    if setting is None:
        assert report.ok
    else:
        assert report.reasons == (
            "canary: cannot judge the training set: the reference has 15 labelled rows; "
            "it needs at least 20",
        )


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "canary_folds = 1",
            r"pg\.toml: gate\.canary_folds must be an int in \[2, 100\]\. Got 1 instead\.",
        ),
        (
            "canary_folds = 2.5",
            r"pg\.toml: gate\.canary_folds must be of type int\. Got 2\.5 instead\.",
        ),
        (
            "canary_margin = 1.5",
            r"pg\.toml: gate\.canary_margin must be in \[0, 1\)\. Got 1\.5 instead\.",
        ),
        (
            "canary_class_margin = -0.1",
            r"pg\.toml: gate\.canary_class_margin must be in \[0, 1\)\. Got -0\.1 instead\.",
        ),
        (
            "canary_r2_margin = 1",
            r"pg\.toml: gate\.canary_r2_margin must be in \[0, 1\)\. Got 1\.0 instead\.",
        ),
        (
            "canary_level = 0",
            r"pg\.toml: gate\.canary_level must be in \(0, 1\)\. Got 0\.0 instead\.",
        ),
        ('canary = "yes"', r"pg\.toml: gate\.canary must be of type bool\. Got 'yes' instead\."),
        ("canary_share = 0.2", r"pg\.toml: unknown key gate\.canary_share; expected one of"),
    ],
)
def test_bad_canary_settings_fail_at_load_in_one_line(tmp_path, body, match):
    (tmp_path / "suite.json").write_text('{"name": "s", "expectations": []}')
    path = tmp_path / "pg.toml"
    path.write_text(f'[dataset]\nlabel = "y"\nexpectations = "suite.json"\n[gate]\n{body}\n')
    with pytest.raises(ConfigError, match=match) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_a_required_canary_needs_a_label(tmp_path):
    """``canary = true`` on a dataset without a label fails at load, naming the key."""
    (tmp_path / "suite.json").write_text('{"name": "s", "expectations": []}')
    path = tmp_path / "pg.toml"
    path.write_text('[dataset]\nexpectations = "suite.json"\n[gate]\ncanary = true\n')
    with pytest.raises(ConfigError, match=r"pg\.toml: gate\.canary = true needs dataset\.label"):
        load_config(path)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_labels_no_model_can_learn_leave_the_canary_unable_to_judge(tmp_path, task):
    """Labels drawn apart from every feature: the reference's own models do no better than
    the commonest class (or the mean target), so the canary does not judge, whatever fold
    each row falls in, where a model of noise would fail a clean batch by chance; the same
    features with a label they decide are judged and pass."""
    rng = np.random.default_rng(5)
    n = 400
    frame = pd.DataFrame(
        {
            "row_id": np.arange(n),
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "plan": rng.choice(["basic", "plus", "pro"], n),
        }
    )
    noise = (
        rng.choice(["yes", "no"], n, p=[0.6, 0.4])
        if task == "classification"
        else (rng.normal(size=n))
    )
    learnt = (
        np.where(frame["a"] > 0, "yes", "no")
        if task == "classification"
        else (3 * frame["a"] + rng.normal(scale=0.1, size=n))
    )
    for target, judged in ((noise, False), (learnt, True)):
        table = frame.assign(target=target)
        project = tmp_path / str(judged)
        project.mkdir()
        table.iloc[:300].to_parquet(project / "trusted.parquet", index=False)
        init_dataset(
            project / "trusted.parquet", label="target", id_column="row_id", directory=project
        )
        config = load_config(project / "poisonguard.toml")
        for key in range(3):  # other row hashes, so other folds
            reference = table.iloc[:300].assign(pg_row_hash=[f"{key}-{i}" for i in range(300)])
            batch = table.iloc[300:].assign(pg_row_hash=[f"{key}-{i}" for i in range(300, n)])
            result = run_canary(reference, pd.concat([reference, batch]), config)
            assert result.judged is judged, result.unable
            assert not result.reasons
            if not judged:
                assert "own models predict its " in str(result.unable)


@pytest.mark.parametrize("flip_threes", [False, True])
def test_past_canary_rows_the_training_set_is_a_keyed_sample(demo_project, flip_threes):
    """``canary_rows`` below the training set's size: its models train on a sample of at most
    that many rows, the one ``draw_sample`` takes of every row at once under the store's key
    (folded file by file), the same on every run; the manifest records how many rows the
    training set holds; a clean store passes and flipped 3s still fail class 3."""
    config = _digits_store(demo_project, flip_threes=flip_threes)
    text = config.path.read_text()
    assert "canary_rows = 100000" in text
    config.path.write_text(text.replace("canary_rows = 100000", "canary_rows = 600", 1))
    config = load_config(config.path)
    store = open_store(config)
    files = tuple(store.files("clean"))
    total = sum(f.rows for f in files)
    assert len(files) > 1 and total > 1500
    rule = sample_rule(600, LABEL, "classification")
    sample, read = store.training_sample(files, rule)
    every = pd.concat([store.read_verified(f) for f in files], ignore_index=True)
    whole = draw_sample(every, rule, store.sample_key())
    assert read == total and len(sample) == len(whole) <= 600
    assert sample["pg_row_hash"].tolist() == whole["pg_row_hash"].tolist()
    shares = sample[LABEL].value_counts(normalize=True)
    assert (abs(shares - every[LABEL].value_counts(normalize=True)) < 0.05).all()

    report = check(config)
    record = report.manifest["canary"]
    assert record["run"] and record["training_set_rows"] == total
    # Each fold's training set: the sample less that fold's canary rows.
    assert 400 < record["training_rows"] < 600
    assert _figures(check(config).manifest) == _figures(report.manifest)
    if flip_threes:
        assert any(r.startswith("canary: class '3': accuracy on ") for r in report.reasons)
    else:
        assert report.ok, report.reasons


def test_the_training_sample_reads_only_files_with_the_ledgers_bytes(demo_project):
    """A clean file whose bytes changed after it was listed stops the sample in one line
    naming it, before any of its rows are used."""
    config = _digits_store(demo_project, flip_threes=False)
    store = open_store(config)
    files = tuple(store.files("clean"))
    path = Path(store.data.where(files[-1].path))
    path.write_bytes(path.read_bytes()[:-8] + b"tampered")
    rule = sample_rule(600, LABEL, "classification")
    with pytest.raises(GateError, match=rf"{files[-1].path}: changed while the training set"):
        store.training_sample(files, rule)
    report = check(config)
    assert not report.ok and any(files[-1].path in r for r in report.reasons)
