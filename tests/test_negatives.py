"""`iim negatives`: vocabulary reading, the packed encoding of fixed prompts, NegMining (SPEC §10) and the
NEG folder, each against a straightforward implementation written here."""
import csv
import json
import sys
import types

import numpy as np
import pytest
import torch

from helpers import make_random_cache
from iim.errors import IIMError
from iim.negatives import encode_texts, quantile_similarity, read_vocabulary, select_lowest
from iim.negatives import mining
from iim.negatives.encode import adj_prompt, noun_prompt
from iim.text import tokenize
from test_score_cli import run_cli


# ---- straightforward references ----------------------------------------------------------------
def reference_quantile(cand, ids, q):
    """For each candidate, the q quantile (linear) of its cosines to every ID prompt, by loops."""
    out = []
    for c in cand.double().numpy():
        cos = [float(c @ i / (np.linalg.norm(c) * np.linalg.norm(i))) for i in ids.double().numpy()]
        out.append(np.quantile(cos, q))            # numpy's default is the linear method
    return np.array(out)


def reference_select(d, parts, keep):
    chosen = [False] * len(d)
    for part in set(parts):
        idx = [j for j, p in enumerate(parts) if p == part]
        idx.sort(key=lambda j: (d[j], j))
        for j in idx[:int(keep * len(idx))]:
            chosen[j] = True
    return chosen


def write_vocab(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, words in files.items():
        (folder / name).write_text("".join(w + "\n" for w in words))
    return folder


VOCAB = {"noun.b.txt": ["tree", "house", "dog"], "noun.a.txt": ["cat", "hot_dog", "", "dog"],
         "adj.all.txt": ["red", "very  big", "red"], "verb.x.txt": ["run"], "notes.md": ["x"]}


# ---- vocabulary -------------------------------------------------------------------------------
def test_folder_vocabulary_order_repeats_and_underscores(tmp_path):
    v = read_vocabulary(write_vocab(tmp_path / "v", VOCAB))
    assert v.files == ("adj.all.txt", "noun.a.txt", "noun.b.txt")             # sorted by name
    assert v.nouns == ["cat", "hot dog", "dog", "tree", "house"]              # "dog" counted once
    assert v.adjectives == ["red", "very big"]
    same = read_vocabulary(write_vocab(tmp_path / "w", {"noun.x.txt": v.nouns, "adj.y.txt": v.adjectives}))
    assert same.sha256 == v.sha256                # the hash is of the candidates, not of the file layout
    assert read_vocabulary(write_vocab(tmp_path / "u", {"noun.x.txt": v.nouns[:-1]})).sha256 != v.sha256


@pytest.mark.parametrize("files, message", [
    ({"noun.a.txt": ["", "  "], "adj.b.txt": []}, "hold no word"),
    ({"verb.a.txt": ["run"], "readme.txt": ["x"]}, r"no noun\.\*\.txt or adj\.\*\.txt"),
])
def test_bad_vocabulary_folders(tmp_path, files, message):
    with pytest.raises(IIMError, match=message):
        read_vocabulary(write_vocab(tmp_path / "v", files))
    with pytest.raises(IIMError, match="not a folder"):
        read_vocabulary(tmp_path / "missing")


def test_wordnet_without_its_data_names_the_downloader(tmp_path, monkeypatch):
    nltk = pytest.importorskip("nltk")
    from nltk.corpus.reader import CorpusReader, WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    fresh = LazyCorpusLoader("wordnet", WordNetCorpusReader,
                             LazyCorpusLoader("omw-1.4", CorpusReader, r".*/wn-data-.*\.tab", encoding="utf8"))
    monkeypatch.setattr(nltk.corpus, "wordnet", fresh)
    with pytest.raises(IIMError, match=r"python -m nltk\.downloader wordnet"):
        read_vocabulary("wordnet")


def test_negatives_wordnet_without_data_one_line(tmp_path, monkeypatch, capsys):
    nltk = pytest.importorskip("nltk")
    from nltk.corpus.reader import CorpusReader, WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(nltk.corpus, "wordnet", LazyCorpusLoader(
        "wordnet", WordNetCorpusReader, LazyCorpusLoader("omw-1.4", CorpusReader, r".*/wn-data-.*\.tab")))
    monkeypatch.chdir(tmp_path)                  # no folder named "wordnet" here
    cache = make_random_cache(tmp_path / "cache")
    code, _, err = run_cli(capsys, "negatives", "--cache", cache.root, "--vocab", "wordnet", "--out", tmp_path / "NEG")
    assert code == 2 and err.count("\n") == 1 and "python -m nltk.downloader wordnet" in err, err
    assert not (tmp_path / "NEG").exists()


def test_wordnet_without_nltk(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)
    with pytest.raises(IIMError, match=r"pip install nltk.*python -m nltk\.downloader wordnet"):
        read_vocabulary("wordnet")


def test_wordnet_is_read_by_lexicographer_file(monkeypatch):
    """A stand-in for nltk's WordNet: lemmas grouped by lexicographer file, files in name order."""
    def syn(lexname, *names):
        return types.SimpleNamespace(lexname=lambda: lexname, lemma_names=lambda: list(names))
    synsets = {"n": [syn("noun.plant", "oak", "fir"), syn("noun.animal", "sea_lion", "cat")],
               "a": [syn("adj.all", "red")], "s": [syn("adj.all", "crimson", "red"), syn("adj.pert", "solar")]}
    wn = types.SimpleNamespace(ensure_loaded=lambda: None, all_synsets=lambda pos: synsets[pos])
    corpus = types.ModuleType("nltk.corpus")
    corpus.wordnet = wn
    fake = types.ModuleType("nltk")
    fake.__version__, fake.corpus = "0-test", corpus
    monkeypatch.setitem(sys.modules, "nltk", fake)
    monkeypatch.setitem(sys.modules, "nltk.corpus", corpus)
    v = read_vocabulary("wordnet")
    assert v.nouns == ["cat", "sea lion", "fir", "oak"]
    assert v.adjectives == ["crimson", "red", "solar"]
    assert v.source == "wordnet (nltk 0-test)"


# ---- packed encoding ----------------------------------------------------------------------------
def test_packed_encoding_equals_encode_text(tiny_model, one_thread):
    model = tiny_model[0]
    texts = ([noun_prompt(w) for w in ["dog", "hot dog", "electric guitar player", "x", "dog"]]
             + [adj_prompt(w) for w in ["red", "very big"]] + ["sunset", "two words"])
    want = model.encode_text(tokenize(model, texts)).float()
    for batch in (1, 3, 100):
        got = encode_texts(model, texts, batch_size=batch)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert encode_texts(model, []).shape == (0, want.shape[1])
    with pytest.raises(IIMError, match="tokens long"):
        encode_texts(model, [noun_prompt(" ".join(["word"] * 80))])


# ---- NegMining ----------------------------------------------------------------------------------
def test_quantile_similarity_against_loops(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    cand, ids = torch.randn(37, 8, generator=gen) * 3, torch.randn(11, 8, generator=gen)
    for q in (0.95, 0.5, 1.0):
        np.testing.assert_allclose(quantile_similarity(cand, ids, q=q).numpy(), reference_quantile(cand, ids, q),
                                   atol=1e-5)
    monkeypatch.setattr(mining, "QUANTILE_ROWS", 30)      # chunked over candidates: the same values
    np.testing.assert_allclose(quantile_similarity(cand, ids, q=0.95).numpy(),
                               reference_quantile(cand, ids, 0.95), atol=1e-5)


def test_selection_against_sorting_by_hand():
    gen = torch.Generator().manual_seed(1)
    d = torch.randint(0, 6, (53,), generator=gen).float() / 5          # many ties: the earlier one wins
    parts = ["noun" if i % 3 else "adj" for i in range(53)]
    for keep in (0.15, 0.5, 1.0, 0.01):
        assert select_lowest(d, parts, keep=keep).tolist() == reference_select(d.tolist(), parts, keep)
    for keep in (0, -0.1, 1.5):
        with pytest.raises(IIMError, match=r"--keep .* \(0, 1\]"):
            select_lowest(d, parts, keep=keep)


# ---- iim negatives ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_random_cache(tmp_path_factory.mktemp("neg") / "cache")


def test_negatives_command_writes_the_folder(cache, tmp_path, capsys, tiny_model):
    vocab = write_vocab(tmp_path / "v", {"noun.x.txt": ["dog", "tree", "car", "house", "cup", "sun", "hill"],
                                         "adj.y.txt": ["red", "big", "soft", "old"]})
    code, out, err = run_cli(capsys, "negatives", "--cache", cache.root, "--vocab", vocab,
                             "--out", tmp_path / "NEG", "--keep", 0.5)
    assert code == 0, err
    assert "neglabel: 5 of 11 candidates kept (3 noun, 2 adj)" in out
    neg = tmp_path / "NEG"
    man = json.loads((neg / "manifest.json").read_text())
    assert man["settings"] == {"keep": 0.5, "quantile": 0.95}
    assert man["vocab"]["sha256"] == read_vocabulary(vocab).sha256
    assert man["cache_fingerprint"]["model"] == "iim-test-tiny"
    rows = list(csv.DictReader((neg / "candidates.csv").open()))
    words = [r["word"] for r in rows]
    assert [r["pos"] for r in rows] == ["noun"] * 7 + ["adj"] * 4
    # independently: encode_text on 77-token prompts, loop quantiles, sort by hand
    model = tiny_model[0]
    texts = [noun_prompt(w) for w in words[:7]] + [adj_prompt(w) for w in words[7:]]
    feats = model.encode_text(tokenize(model, texts)).float().detach()
    d = reference_quantile(feats, cache.global_prototypes(), 0.95)
    np.testing.assert_allclose([float(r["d"]) for r in rows], d, atol=1e-5)
    chosen = reference_select(d.tolist(), [r["pos"] for r in rows], 0.5)
    assert [r["chosen"] == "1" for r in rows] == chosen
    selected = [w for w, c in zip(words, chosen) if c]
    assert (neg / "selected.txt").read_text().splitlines() == selected
    emb = np.load(neg / "embeddings.npz")["neglabel"]
    np.testing.assert_allclose(emb, feats[torch.tensor(chosen)].numpy(), atol=1e-5)
    # CSP's pool: the same nouns, the adjectives replaced by the conjugated pool, mined the same way
    from iim.score.csp import csp_candidates
    csp_rows = list(csv.DictReader((neg / "csp_candidates.csv").open()))
    pool = csp_candidates(words[:7], words[7:])
    assert [r["word"] for r in csp_rows] == words[:7] + pool
    pool_feats = model.encode_text(tokenize(model, pool)).float().detach()
    d_csp = reference_quantile(torch.cat([feats[:7], pool_feats]), cache.global_prototypes(), 0.95)
    chosen_csp = reference_select(d_csp.tolist(), ["noun"] * 7 + ["csp"] * len(pool), 0.5)
    assert [r["chosen"] == "1" for r in csp_rows] == chosen_csp
    assert (neg / "csp_selected.txt").read_text().splitlines() == [
        w for w, c in zip(words[:7] + pool, chosen_csp) if c]
    # an existing folder is kept unless --overwrite
    code, _, err = run_cli(capsys, "negatives", "--cache", cache.root, "--vocab", vocab, "--out", neg)
    assert code == 2 and "--overwrite" in err
    code, out, err = run_cli(capsys, "negatives", "--cache", cache.root, "--vocab", vocab, "--out", neg,
                             "--overwrite")
    assert code == 0, err
    assert len((neg / "selected.txt").read_text().splitlines()) == int(0.15 * 7) + int(0.15 * 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NEG", "v"]       # no temporary folder left


@pytest.mark.parametrize("case", ["empty", "no_files", "keep0", "keep_big", "quantile", "no_out"])
def test_negatives_bad_input_one_line_nothing_written(cache, tmp_path, capsys, case):
    good = write_vocab(tmp_path / "good", {"noun.x.txt": ["dog", "tree"]})
    vocab = {"empty": write_vocab(tmp_path / "e", {"noun.x.txt": [""], "adj.y.txt": []}),
             "no_files": write_vocab(tmp_path / "n", {"words.txt": ["dog"]})}.get(case, good)
    extra = {"keep0": ["--keep", 0], "keep_big": ["--keep", 1.5], "quantile": ["--quantile", 2]}.get(case, [])
    out = [] if case == "no_out" else ["--out", tmp_path / "NEG"]
    code, stdout, err = run_cli(capsys, "negatives", "--cache", cache.root, "--vocab", vocab, *out, *extra)
    assert code == 2 and err.startswith("Error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "NEG").exists()


def test_a_failed_write_leaves_nothing(cache, tmp_path, capsys, monkeypatch):
    vocab = write_vocab(tmp_path / "v", {"noun.x.txt": ["dog", "tree"]})

    def broken(*a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", broken)
    code, _, err = run_cli(capsys, "negatives", "--cache", cache.root, "--vocab", vocab, "--out", tmp_path / "NEG")
    assert code == 2 and "no space" in err.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]
