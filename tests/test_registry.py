"""iim.registry names each method and evaluator once; the tables, the demo rows, predict's choices and the
help texts are derived from it (checked here against the values they had when typed by hand)."""
import subprocess
import sys

from iim import registry as R


def test_the_registry_is_ground_floor():
    code = "import sys, iim.registry; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'click', 'numpy') or m.startswith('iim.') and m != 'iim.registry' and m != 'iim._version'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_report_labels_and_rows_come_from_the_registry():
    from iim.score.report import LABELS
    from iim.score.summary import METHOD_ORDER, PAPER_ROWS
    assert {k: LABELS[k] for k in R.EVALUATORS} == {
        "mcm": "MCM", "gl_mcm": "GL-MCM", "r_mcm": "R-MCM", "r_mcm_star": "R-MCM*", "s_mcm": "S-MCM",
        "s_mcm_star": "S-MCM*", "i2t": "i2t", "i2t_star": "i2t*", "t2i": "t2i", "knn": "KNN",
        "neglabel": "NegLabel", "csp": "CSP", "adaneg": "AdaNeg"}
    assert METHOD_ORDER == ("coop", "locoop", "localprompt", "iim")
    assert PAPER_ROWS == {"zero_shot": ("mcm", "gl_mcm", "r_mcm_star", "s_mcm_star", "neglabel", "csp", "adaneg",
                                        "s_mcm_hand_mined"),
                          "coop": ("mcm", "gl_mcm"), "locoop": ("mcm", "gl_mcm"), "localprompt": ("r_mcm",),
                          "iim": ("r_mcm", "s_mcm", "s_mcm_learned_mined", "s_mcm_learned_learned_mined")}
    assert set(e for m in (*R.METHODS.values(), R.ZERO_SHOT) for e in m.evaluators) <= set(LABELS)


def test_method_labels_and_score_k():
    assert {n: m.label for n, m in R.METHODS.items()} == {"coop": "CoOp", "locoop": "LoCoOp",
                                                          "localprompt": "Local-Prompt", "iim": "IIM"}
    assert R.method(None).label == "IIM" and R.method("zero_shot").label == "0-shot"
    assert R.method("someday").label == "someday"
    from iim.train.methods import score_k
    assert score_k({"method": "localprompt"}, 50) == 10 and score_k({"method": "iim"}, 7) == 7
    assert score_k(None, 50) == 50 and R.score_k("coop") == R.TEST_K == 50


def test_demo_rows_as_they_were_typed():
    from iim.demo.run import NAMES, ROWS
    assert ROWS == (
        ("MCM (0-shot)", "zero", "mcm"), ("GL-MCM (0-shot)", "zero", "gl_mcm"),
        ("R-MCM* (0-shot)", "zero", "r_mcm_star"), ("S-MCM* (0-shot)", "zero", "s_mcm_star"),
        ("NegLabel (0-shot)", "zero", "neglabel"), ("CSP (0-shot)", "zero", "csp"),
        ("AdaNeg (0-shot)", "zero", "adaneg"), ("S-MCM + mined negatives (0-shot)", "zero", "s_mcm_hand_mined"),
        ("CoOp + MCM (4-shot)", "coop", "mcm"), ("CoOp + GL-MCM (4-shot)", "coop", "gl_mcm"),
        ("LoCoOp + MCM (4-shot)", "locoop", "mcm"), ("LoCoOp + GL-MCM (4-shot)", "locoop", "gl_mcm"),
        ("Local-Prompt + R-MCM (4-shot)", "localprompt", "r_mcm"),
        ("KNN (4-shot)", "iim", "knn"), ("IIM + R-MCM (4-shot)", "iim", "r_mcm"),
        ("IIM + S-MCM (4-shot)", "iim", "s_mcm"),
        ("IIM + S-MCM + mined negatives (4-shot)", "iim", "s_mcm_learned_learned_mined"),
        ("IIM official + R-MCM (4-shot)", "official", "r_mcm"),
        ("IIM official + S-MCM (4-shot)", "official", "s_mcm"))
    assert NAMES == {"iim": "IIM", "official": "IIM official", "coop": "CoOp", "locoop": "LoCoOp",
                     "localprompt": "Local-Prompt"}


def test_predict_choices_are_the_scores_a_detector_computes():
    from iim.score.scores import SCORE_KEYS
    assert R.PREDICT_EVALUATORS == SCORE_KEYS
    from iim.cli import load_command
    (opt,) = [p for p in load_command("predict").params if p.name == "evaluator"]
    assert opt.help == "Evaluator: S-MCM (runs), MCM (zero-shot), or GL-MCM, R-MCM, R-MCM*, S-MCM*, i2t, i2t*, t2i."


def test_needs():
    needs = {k: e.needs for k, e in R.EVALUATORS.items() if e.needs}
    assert needs == {"r_mcm": ("run", "negatives"), "s_mcm": ("run", "negatives"), "i2t": ("run", "negatives"),
                     "knn": ("support",), "neglabel": ("vocabulary",), "csp": ("vocabulary",),
                     "adaneg": ("vocabulary",)}
