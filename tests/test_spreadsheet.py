"""CSV cells a spreadsheet would run as formulas (issue 26): text beginning with = + - @ TAB or CR is written
with a leading ' in every CSV iim writes (predictions.csv, results.csv, sweep.csv / the grid's results.csv,
candidates.csv), numbers stay numbers, and iim's own reading back (the grid's sweep.csv) is exact."""
import csv
import io
import itertools

import pytest

from helpers import make_random_cache
from iim.spreadsheet import TRIGGERS, cell, csv_text, plain
from test_negatives import write_vocab
from test_score_cli import run_cli

DANGEROUS = ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx", "=HYPERLINK(\"http://e\")"]


def reference_cell(text):
    """OWASP's advice written out: quote text that starts with a trigger and is not a plain decimal number;
    quote text that starts with ' before such text too (so that reading back is exact)."""
    def number(t):                # [sign] digits with at most one '.', then [e|E [sign] digits]
        i = 1 if t[:1] in "+-" else 0
        mant, exp = t[i:], None
        for e in "eE":
            if e in mant:
                mant, exp = mant.split(e, 1)
                break
        if mant.count(".") > 1 or not mant.replace(".", "") or not mant.replace(".", "").isdigit():
            return False
        if exp is None:
            return True
        exp = exp[1:] if exp[:1] in "+-" else exp
        return exp.isdigit()

    def quoted(t):
        if t[:1] in ("=", "+", "-", "@", "\t", "\r") and t:
            return not number(t)
        return t[:1] == "'" and quoted(t[1:])
    return "'" + text if quoted(text) else text


def test_cell_against_a_reference_and_plain_inverts_it():
    alphabet = ["=", "+", "-", "@", "\t", "\r", "'", "1", ".", "e", "a", " "]
    for n in range(5):
        for chars in itertools.product(alphabet, repeat=n):
            text = "".join(chars)
            assert cell(text) == reference_cell(text), repr(text)
            assert plain(cell(text)) == text, repr(text)
            assert not cell(text).startswith(TRIGGERS) or float(cell(text)) == float(text), repr(text)
    for number in ("-0.25", "+3", "-1e-05", "1E+10", "-.5", "7."):
        assert cell(number) == number
    assert cell(-0.5) == -0.5 and cell(3) == 3 and cell(None) is None
    assert [cell(t) for t in DANGEROUS] == ["'" + t for t in DANGEROUS]
    assert cell("'=x") == "''=x" and plain("''=x") == "'=x" and plain("'plain") == "'plain"


def test_csv_text_reads_back_with_the_csv_module_cell_for_cell():
    rows = [["a", "b", "c"], ["x\ry", "p\nq", 'say "hi", then'], ["=1", "-0.5", "\rz"], [1, 2.5, ""]]
    text = csv_text(rows)
    assert text.endswith("\n") and "\r\n" not in text.replace('"x\ry"', "")
    back = list(csv.reader(io.StringIO(text, newline="")))
    assert back == [[str(plain(c)) if isinstance(c, str) else str(c) for c in r] for r in rows[:2]] + [
        ["'=1", "-0.5", "'\rz"], ["1", "2.5", ""]]
    assert [[plain(c) for c in r] for r in back[2:3]] == [["=1", "-0.5", "\rz"]]


def _cells(path):
    with open(path, newline="") as f:
        return [c for row in csv.reader(f) for c in row]


def _no_formula(path):
    """No cell of the file would run: every trigger-led cell is a plain number."""
    for c in _cells(path):
        if c.startswith(TRIGGERS):
            float(c)


def test_predictions_csv_quotes_class_and_file_names(tmp_path, capsys, monkeypatch):
    from imagegen import make_world
    from iim.extract.run import extract
    w = make_world(tmp_path / "w", classes=("ant", "bee", "cat"), train_per_class=1, test_per_class=2,
                   ood={"noise": 2})
    names = ["=1+1", "@cmd", "-x"]
    toml = w["toml"].read_text().replace('name = "toy"', f'name = "toy"\nclassnames = {names!r}'.replace("'", '"'))
    w["toml"].write_text(toml)
    cache = extract(str(w["toml"]), tmp_path / "cache", batch_size=4, model="iim-test-tiny", pretrained="none",
                    workers=0, progress=False, log=lambda m: None)
    assert cache.classnames == names
    photos = tmp_path / "photos"
    photos.mkdir()
    src = next(w["test"].rglob("*.png")).read_bytes()
    files = ["=2+2.png", "+a.png", "-b.png", "@c.png", "\td.png", "\re.png"]
    for name in files:
        (photos / name).write_bytes(src)
    monkeypatch.chdir(photos)                     # relative paths: the cell starts with the file name
    code, _, err = run_cli(capsys, "predict", "--zero-shot", "--cache", cache.root, "--out", tmp_path / "out",
                           "--no-progress", "--", *files)
    assert code == 0, err
    path = tmp_path / "out" / "predictions.csv"
    _no_formula(path)
    rows = list(csv.DictReader(open(path, newline="")))
    assert sorted(r["path"] for r in rows) == sorted("'" + f for f in files)
    assert {plain(r[k]) for r in rows for k in ("class", "class_2", "class_3")} == set(names)
    assert all(r[k].startswith("'") for r in rows for k in ("class", "class_2", "class_3"))


def test_score_and_grid_csvs_quote_ood_set_names_and_read_back_exactly(tmp_path, capsys, one_thread):
    cache = make_random_cache(tmp_path / "cache", ood={"-far": 20, "near": 20})
    code, _, err = run_cli(capsys, "grid", "--cache", cache.root, "--grid", "n_neg=0", "--grid", "epochs=1",
                           "--grid", "k=4", "--grid", "batch_size=4", "--seed", "1", "--k", "5,20",
                           "--no-progress", "--out", tmp_path / "grid")
    assert code == 0, err
    point = next((tmp_path / "grid" / "points").iterdir())
    for path in (point / "results.csv", point / "sweep.csv", tmp_path / "grid" / "results.csv"):
        _no_formula(path)
        assert "'-far" in _cells(path) and "-far" not in _cells(path), path
    rows = list(csv.DictReader(open(tmp_path / "grid" / "results.csv", newline="")))
    keys = [(r["test_k"], r["alpha"], r["evaluator"], r["ood_set"]) for r in rows]
    assert len(keys) == len(set(keys))            # the sweep.csv rows read back match results.json's
    assert {plain(r["ood_set"]) for r in rows} == {"-far", "near", "average"}


def test_candidates_csv_quotes_words(tmp_path, capsys, tiny_model):
    cache = make_random_cache(tmp_path / "cache")
    vocab = write_vocab(tmp_path / "v", {"noun.x.txt": ["=cmd", "+plus", "tree", "@at"], "adj.y.txt": ["-red", "big"]})
    code, _, err = run_cli(capsys, "negatives", "--cache", cache.root, "--vocab", vocab, "--out", tmp_path / "NEG",
                           "--keep", 0.5)
    assert code == 0, err
    for name in ("candidates.csv", "csp_candidates.csv"):
        path = tmp_path / "NEG" / name
        _no_formula(path)
        words = [r["word"] for r in csv.DictReader(open(path, newline=""))]
        assert {"'=cmd", "'+plus", "'@at", "tree"} <= set(words)
