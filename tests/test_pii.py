"""Personal data: which columns hold it (offline checks), masks, and the suite's leak guards."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common import SHARED_DATA
from poisonguard.config import load_config
from poisonguard.errors import ConfigError
from poisonguard.initialize import init_dataset
from poisonguard.pii import PII_KINDS, classify, find_pii, mask
from poisonguard.pipeline import process_landing
from poisonguard.validation import load_suite, validate

# Valid by their checksums (Luhn, ISO 13616, the SSA's rules, phonenumbers' metadata).
CARDS = ["4111 1111 1111 1111", "5500-0000-0000-0004", "340000000000009", "6011000000000004"]
IBANS = ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606"]
PHONES = ["+1 415 555 2671", "+44 20 7946 0958", "+49 30 901820", "+33 1 42 68 53 00"]
SSNS = ["536-22-8726", "212-67-8934", "401-32-1145", "623-44-7781"]


def people(n: int, seed: int = 0) -> pd.DataFrame:
    """A customer table: personal columns of every kind beside ordinary ones."""
    rng = np.random.default_rng(seed)
    first = np.array(["Ana", "Ben", "Chloé", "David", "Emma", "Farid", "Grace", "Hugo"])
    last = np.array(["Silva", "Okafor", "Martin", "Nguyen", "O'Brien", "Kowalski"])
    pick = lambda values: np.asarray(values)[rng.integers(0, len(values), n)]  # noqa: E731
    days = rng.integers(0, 20_000, n)
    return pd.DataFrame(
        {
            "customer_id": np.arange(1000, 1000 + n),
            "full_name": [f"{a} {b}" for a, b in zip(pick(first), pick(last), strict=True)],
            "email": [f"user{i}@mail{i % 7}.example.org" for i in range(n)],
            "phone": pick(PHONES),
            "card": pick(CARDS),
            "card_number": pick([int(c.replace(" ", "").replace("-", "")) for c in CARDS]),
            "iban": pick(IBANS),
            "ssn": pick(SSNS),
            "ip": [f"10.{i % 256}.{(i * 7) % 256}.{(i * 13) % 256}" for i in range(n)],
            "dob": pd.Timestamp("1950-01-01") + pd.to_timedelta(days, unit="D"),
            "age": rng.integers(18, 90, n),
            "balance": rng.normal(2000.0, 500.0, n).round(2),
            "plan": pick(["basic", "plus", "pro"]),
            "region": pick(["north", "south", "east", "west"]),
            "churned": pick(["yes", "no"]),
        }
    )


PERSONAL = {
    "full_name": "name",
    "email": "email",
    "phone": "phone",
    "card": "card",
    "card_number": "card",
    "iban": "iban",
    "ssn": "national_id",
    "ip": "ip",
    "dob": "date_of_birth",
}


def test_every_personal_kind_is_found_and_no_ordinary_column_is():
    assert find_pii(people(200), skip=["churned"]) == PERSONAL
    assert set(PERSONAL.values()) <= set(PII_KINDS)


def test_kinds_need_most_values_to_pass_their_check():
    """One card-shaped value among 50 ordinary ones does not make a column personal."""
    notes = pd.Series(["renewal"] * 49 + ["4111111111111111"])
    assert classify("notes", notes) is None
    assert classify("notes", pd.Series(["4111111111111111"] * 45 + ["renewal"] * 5)) == "card"


def test_ambiguous_kinds_are_read_off_the_column_name_too():
    """Names, dates of birth, national ids and national-format phones need a name that says
    so; a team's or an airport's name is not a person's; a date is not a phone number."""
    names = pd.Series(["Ana Silva", "Ben Okafor", "Grace Martin"] * 10)
    assert classify("customer_name", names) == "name"
    assert classify("team_name", names) is None
    assert classify("title", names) is None
    dates = pd.Series(["1990-04-01", "1985-12-24", "2001-07-15"] * 10)
    assert classify("date_of_birth", dates) == "date_of_birth"
    assert classify("signup", dates) is None
    assert classify("birth_month", pd.Series(["January", "March"] * 10)) is None
    national = pd.Series(["(415) 555-2671", "(212) 555-0100", "(646) 555-3890"] * 10)
    assert classify("mobile", national) == "phone"
    assert classify("reference", national) is None
    ssn = pd.Series(SSNS * 10)
    assert classify("ssn", ssn) == "national_id"
    assert classify("code", ssn) is None


@pytest.mark.parametrize(
    "path", sorted((SHARED_DATA / "tables").glob("*.parquet")), ids=lambda p: p.stem
)
def test_no_column_of_the_shared_tables_is_personal(path: Path):
    assert find_pii(pd.read_parquet(path)) == {}


def test_no_column_of_scikit_learns_tables_is_personal():
    from sklearn import datasets

    for load in (datasets.load_digits, datasets.load_breast_cancer, datasets.load_wine):
        assert find_pii(load(as_frame=True).frame) == {}, load.__name__


@pytest.mark.parametrize(
    ("value", "kind", "shown"),
    [
        ("jane.doe@example.com", "email", "j***@e***.com"),
        ("4111 1111 1111 1111", "card", "************1111"),
        ("DE89370400440532013000", "iban", "******************3000"),
        ("+1 415 555 2671", "phone", "*******2671"),
        ("Ana Silva", "name", "A. S."),
        ("192.168.1.20", "ip", "192.*.*.*"),
        (pd.Timestamp("1980-02-03"), "date_of_birth", "****"),
    ],
)
def test_masks_keep_only_what_identifies_no_one(value, kind, shown):
    assert mask(value, kind) == shown
    assert str(value) not in mask(value, kind)


# ----------------------------------------------------------------------------- init and guards


@pytest.fixture
def project(tmp_path: Path) -> Path:
    sample = tmp_path / "customers.csv"
    people(300).to_csv(sample, index=False)
    init_dataset(sample, label="churned", id_column="customer_id", directory=tmp_path)
    return tmp_path


def test_init_writes_each_personal_column_with_its_kind(project: Path):
    config = load_config(project / "poisonguard.toml")
    assert dict(config.pii) == PERSONAL
    text = (project / "poisonguard.toml").read_text()
    assert re.search(r'"email" = \{ kind = "\w+", pii = "email" \}', text)
    # The config is the one place the kinds live: a person may edit them.
    edited = text.replace('pii = "email"', 'pii = "mail"')
    (project / "poisonguard.toml").write_text(edited)
    with pytest.raises(ConfigError, match=r"dataset\.columns\.email\.pii must be one of"):
        load_config(project / "poisonguard.toml")


def test_init_guards_only_the_columns_not_declared_personal(project: Path):
    suite = load_suite(project / "expectations" / "customers.json")
    guarded = {
        e["kwargs"]["column"]
        for e in suite["expectations"]
        if "rejects_batch" in e.get("meta", {}).get("poisonguard", {})
    }
    assert guarded == {"age", "balance", "plan", "region", "churned"}


def _land(project: Path, name: str, frame: pd.DataFrame) -> None:
    config = load_config(project / "poisonguard.toml")
    frame.to_csv(Path(config.landing) / name, index=False)


def _settled(project: Path) -> None:
    """Landed files old enough to be taken at once (the landing's settle wait)."""
    config = load_config(project / "poisonguard.toml")
    for path in Path(config.landing).iterdir():
        past = path.stat().st_mtime - 3600
        os.utime(path, (past, past))


def test_a_batch_leaking_card_numbers_into_a_numeric_column_is_rejected_whole(project: Path):
    """An ELT mapping shifted by one column: card numbers land in `balance`. The batch is
    rejected whole with a one-line reason naming the file and the column, and the reason
    and the rejection record do not show the numbers; a clean batch still passes."""
    config = load_config(project / "poisonguard.toml")
    clean = people(40, seed=1)
    clean["customer_id"] += 10_000
    leaked = people(40, seed=2)
    leaked["customer_id"] += 20_000
    leaked.loc[3:5, "balance"] = leaked.loc[3:5, "card_number"].astype(float)
    _land(project, "b1-clean.csv", clean)
    _land(project, "b2-leak.csv", leaked)
    _settled(project)
    records = sorted(process_landing(config).records, key=lambda r: r.batch_id)
    assert [r.status for r in records] == ["committed", "rejected"]
    rejected = records[1]
    assert rejected.batch_id.startswith("b2-leak")
    assert rejected.reason.count("\n") == 0
    assert "b2-leak.csv" in rejected.reason and "balance" in rejected.reason
    assert "card number" in rejected.reason
    for card in leaked.loc[3:5, "card_number"]:
        assert str(card) not in rejected.reason
        assert str(float(card)) not in json.dumps(rejected.as_dict())


def test_an_e_mail_in_a_categorical_column_rejects_the_batch():
    frame = people(120)
    suite_frame = frame.drop(columns=list(PERSONAL))
    from poisonguard.validation import infer_suite

    suite = infer_suite(suite_frame, label="churned", pii={})
    batch = suite_frame.iloc[:20].copy()
    assert not validate(batch, suite, source="ok.csv").rejected
    batch.loc[batch.index[4], "region"] = "someone@example.com"
    report = validate(batch, suite, source="leak.csv")
    assert report.rejected
    assert any("region: 1 rows break" in e and "e-mail" in e for e in report.schema_errors)
    assert not any("someone@example.com" in e for e in report.schema_errors)
    guards = [
        o
        for o, e in zip(report.outcomes, suite["expectations"], strict=True)
        if "rejects_batch" in e.get("meta", {}).get("poisonguard", {})
    ]
    assert guards and {o.level for o in guards} == {"schema"}
    assert [o.unexpected_count for o in guards if not o.success] == [1]


def test_a_guard_the_trusted_sample_breaks_is_not_written():
    """A column that already holds card-sized numbers (ids, millisecond times) gets no guard."""
    from poisonguard.validation import infer_suite

    frame = pd.DataFrame(
        {"t_ms": np.arange(1_700_000_000_000, 1_700_000_000_050), "y": [0, 1] * 25}
    )
    suite = infer_suite(frame, label="y", pii={})
    assert not [
        e
        for e in suite["expectations"]
        if e["kwargs"].get("column") == "t_ms" and "poisonguard" in e.get("meta", {})
    ]


def test_a_malformed_batch_level_note_is_a_config_error():
    suite = {
        "expectations": [
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": "x"},
                "meta": {"poisonguard": {"rejects_batch": 3}},
            }
        ]
    }
    with pytest.raises(ConfigError, match=r"expectation #0: meta\.poisonguard\.rejects_batch"):
        validate(pd.DataFrame({"x": [1.0]}), suite, source="b.csv")


# ----------------------------------------------------------------------------- masking


def _personal_values(frame: pd.DataFrame) -> list[str]:
    """Every personal value of ``frame`` as it could be written (whole numbers as digits)."""
    out = set()
    for column in PERSONAL:
        for value in frame[column].tolist():
            text = str(value)
            if column == "dob":
                text = str(value.date())
            out.add(text)
    return sorted(out)


@pytest.mark.slow
def test_no_personal_value_is_shown_in_reports_artifacts_logs_or_review(project: Path, capsys):
    """A batch whose held rows carry personal values goes through `poisonguard run` (the
    Prefect flow, its own loopback server and database under the store). No personal value
    appears in any file the store or the flow wrote, except the data files that are the
    rows themselves; the held rows' reasons are masked; `review show` masks them, and
    `--unmask` shows them only with a name, which the audit log records."""
    import subprocess
    import sys

    from poisonguard.cli import main
    from poisonguard.store import open_store

    config = load_config(project / "poisonguard.toml")
    batch = people(60, seed=7)
    batch["customer_id"] += 50_000
    batch["email"] = [f"secret.person{i}@private-mail.example" for i in range(60)]
    batch.loc[:4, "age"] = 250  # breaks the age range: held, its row shown in the report
    batch.loc[5:7, "churned"] = batch.loc[5:7, "churned"].map({"yes": "no", "no": "yes"})
    _land(project, "b1.csv", batch)
    _settled(project)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    cli = Path(sys.executable).parent / "poisonguard"
    done = subprocess.run(
        [str(cli), "run", "--config", str(project / "poisonguard.toml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    store = open_store(config)
    (record,) = [r for r in store.batches() if r.batch_id.startswith("b1")]
    assert record.rows_quarantined >= 5

    secrets = _personal_values(batch)
    assert "secret.person3@private-mail.example" in secrets
    data_dirs = {"clean", "quarantine", "rejected", "staging", "reference"}
    checked = 0
    for path in project.rglob("*"):
        if not path.is_file() or path.parent == project / "landing" or path.suffix == ".csv":
            continue
        if data_dirs & set(path.relative_to(project).parts):
            continue
        blob = path.read_bytes()
        checked += 1
        for value in secrets:
            assert value.encode() not in blob, f"{value!r} in {path.relative_to(project)}"
    assert checked >= 5  # ledger, reports, the Prefect database, ...
    assert any(p.suffix == ".db" for p in (store.root / "prefect").iterdir())
    reasons = " ".join(store.quarantine_frame(record.batch_id)["pg_reason"].astype(str))
    assert not [v for v in secrets if v in reasons]
    assert done.stdout and not [v for v in secrets if v in done.stdout + done.stderr]

    capsys.readouterr()
    cfg = ["--config", str(project / "poisonguard.toml")]
    assert main(["review", "show", record.batch_id, *cfg]) == 0
    shown = capsys.readouterr().out
    assert "email = s***@p***.example" in shown
    assert not [v for v in secrets if v in shown]
    assert main(["review", "show", record.batch_id, "--unmask", *cfg]) == 2
    assert "--unmask needs --by" in capsys.readouterr().err
    assert main(["review", "show", record.batch_id, "--unmask", "--by", "ana", *cfg]) == 0
    assert "secret.person" in capsys.readouterr().out
    entry = store.audit_log()[-1]
    assert entry["action"] == "unmask" and entry["actor"] == "ana"
    assert json.loads(entry["detail"])["columns"] == list(PERSONAL)


def test_reasons_mask_personal_values_however_they_were_written():
    """A rule or detector may write a personal value as text, quoted, or as a whole number
    (a card number read as a float): each form of the row's own value becomes its mask."""
    from poisonguard.pii import Masker

    rows = pd.DataFrame(
        {
            "email": ["ana@mail.example", None],
            "card_number": [4111111111111111.0, 5500000000000004.0],
            "plan": ["basic", "pro"],
        }
    )
    masker = Masker({"email": "email", "card_number": "card"})
    reasons = [
        "email = 'ana@mail.example' longer than 12 characters; card_number = 4111111111111111",
        "card_number = 5500000000000004 outside [0, 100]; plan = 'pro' unseen",
    ]
    masked = masker.reasons(rows, reasons)
    assert masked == [
        "email = 'a***@m***.example' longer than 12 characters; card_number = ************1111",
        "card_number = ************0004 outside [0, 100]; plan = 'pro' unseen",
    ]
    assert Masker().reasons(rows, reasons) == reasons
    shown = masker.frame(rows)
    assert shown["email"].tolist() == ["a***@m***.example", ""]
    assert shown["plan"].tolist() == ["basic", "pro"]


def test_reasons_mask_values_as_the_detectors_formatters_write_them():
    """A detector writes a number through ``fmt_number`` (a 15-digit card number with its
    thousands grouped) and a date as its day alone: the masks still replace them."""
    from poisonguard.detectors.base import fmt_number
    from poisonguard.pii import Masker

    rows = pd.DataFrame({"card_number": [340000000000009.0], "dob": [pd.Timestamp("1950-03-04")]})
    masker = Masker({"card_number": "card", "dob": "date_of_birth"})
    reason = f"card_number = {fmt_number(340000000000009.0)}; dob = 1950-03-04 far from the trusted"
    (masked,) = masker.reasons(rows, [reason])
    assert "340,000,000,000,009" in reason and "340,000" not in masked
    assert "1950-03-04" not in masked
