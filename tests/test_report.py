import pandas as pd
import pytest

from mnistgan.lab.report import END, START, mean_std, replace_section, results_table


def fake_runs():
    rows = []
    for loss, fids in [("ns", [10.0, 12.0, 14.0]), ("hinge", [5.0, 7.0, 9.0])]:
        for seed, fid in enumerate(fids):
            rows.append(
                {
                    "status": "FINISHED",
                    "params.seed": str(seed),
                    "params.train.loss": loss,
                    "params.train.model": "dcgan-small",
                    "params.train.d_norm": "none",
                    "params.train.ema": "0.999",
                    "params.train.lr": "0.0002",
                    "params.train.batch_size": "64",
                    "params.train.steps": "100",
                    "params.train.conditional": "False",
                    "params.tracking.experiment": "x",
                    "metrics.generated.fid": fid,
                    "metrics.generated.inception_score": 9.0,
                    "metrics.real_reference.fid": 1.5,
                    "metrics.train_seconds": 60.0 + seed,
                    "tags.device": "cpu",
                }
            )
    rows.append({**rows[0], "status": "FAILED", "metrics.generated.fid": 1000.0})
    return pd.DataFrame(rows)


def test_groups_by_recipe_over_seeds_sorted_by_fid():
    table = results_table(fake_runs())
    lines = [line for line in table.splitlines() if line.startswith("| dcgan-small")]
    assert len(lines) == 2  # two recipes, the failed run left out
    assert "hinge" in lines[0] and "ns" in lines[1]  # best FID first
    assert "| 3 | 7.00 ± 2.00 |" in lines[0] and "| 3 | 12.00 ± 2.00 |" in lines[1]
    assert "reference" in table and "1.50" in table


def test_mean_std_single_value_and_nan():
    assert mean_std([2.0], "{:.1f}") == "2.0"
    assert mean_std([float("nan")], "{:.1f}") == "-"
    assert mean_std([1.0, 3.0], "{:.1f}") == "2.0 ± 1.4"


def test_empty_store():
    assert "No evaluated runs" in results_table(pd.DataFrame())


def test_replace_section():
    text = f"a\n{START}\nold\n{END}\nb"
    assert replace_section(text, "new\n") == f"a\n{START}\nnew\n{END}\nb"
    with pytest.raises(ValueError, match="markers"):
        replace_section("no markers", "x")


def test_fid_joins_seconds_by_step_and_the_plot_is_drawn(tmp_path):
    from mnistgan.lab.report import fid_against_seconds, fid_seconds_png

    joined = fid_against_seconds([(500, 300.0), (1000, 200.0), (1500, 150.0)], [(500, 31.5), (1000, 60.2)])
    assert joined == [(31.5, 300.0), (60.2, 200.0)]  # a step without seconds is left out
    png = tmp_path / "fid.png"
    fid_seconds_png({"a": [joined, [(30.0, 310.0)]], "b": [[]]}, png, floor=30.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recipe_runs_are_named_and_budgets_shown():
    from mnistgan.lab.recipes import recipe_overrides

    row = {f"params.train.{k}": str(v) for k, v in recipe_overrides("default").items()}
    row |= {"params.train.steps": "1000000", "params.train.max_seconds": "200.0"}
    label = __import__("mnistgan.lab.report", fromlist=["recipe_label"]).recipe_label(row)
    assert label.startswith("`default`: dcgan-small, ns") and "conditional" in label and label.endswith("200 s)")
    assert "d_width" not in label and "r1_weight" not in label  # params.yaml's values: nothing to name
    row = {f"params.train.{k}": str(v) for k, v in recipe_overrides("previous-default").items()}
    label = __import__("mnistgan.lab.report", fromlist=["recipe_label"]).recipe_label(row | {"params.train.steps": "9"})
    assert label.startswith("`previous-default`: ") and "r1_weight 0.0" in label  # what differs is named


def test_scores_of_different_extractors_are_never_averaged_and_the_table_says_so():
    runs = fake_runs()
    assert "Warning" not in results_table(runs) and "extractor" not in results_table(runs)
    runs["tags.extractor.weights_sha256"] = "aaaa1111"
    same = results_table(runs)
    assert "Warning" not in same  # one extractor: nothing to say
    runs.loc[runs.index[2], "tags.extractor.weights_sha256"] = "bbbb2222"  # the ns recipe's third seed
    mixed = results_table(runs)
    assert "Warning: these scores come from 2 different feature extractors (aaaa1111, bbbb2222)" in mixed
    rows = [line for line in mixed.splitlines() if line.startswith("| dcgan-small")]
    assert len(rows) == 3  # the odd run is its own row, not averaged into its recipe's
    assert any(r.endswith("| bbbb2222 |") and "| 1 |" in r for r in rows)


def test_compare_tables_name_the_extractor_and_warn_when_they_differ():
    from mnistgan.lab.report import compare_tables

    runs = fake_runs().iloc[:2].copy()
    runs["run_id"] = ["r1", "r2"]
    runs["tags.extractor.weights_sha256"] = ["aaaa1111", "bbbb2222"]
    title, header, rows = compare_tables(runs)[1]
    assert "Warning" in title and "not comparable" in title
    assert ["extractor (classifier sha256)", "aaaa1111", "bbbb2222", "-"] in rows


def test_at_budget_keeps_only_runs_of_that_many_seconds():
    from mnistgan.lab.report import at_budget

    runs = fake_runs()
    runs["params.train.max_seconds"] = ["290.0", "290.0", "200.0", "290.0", "0.0", "290.0", "290.0"]
    kept = at_budget(runs, 290)
    assert len(kept) == 5 and set(kept["params.train.max_seconds"]) == {"290.0"}
    assert at_budget(runs, None) is runs
    assert len(at_budget(fake_runs(), 290)) == 0  # runs without a seconds budget: none at this budget


def test_welch_verdict_says_better_worse_or_within_noise():
    from mnistgan.lab.report import welch_verdict

    # FID: lower is better. Far apart with small spreads: real; overlapping spreads: noise.
    assert welch_verdict([5.0, 5.2, 4.9], [28.0, 28.5, 27.9], "fid").startswith("better (p=")
    assert welch_verdict([28.0, 28.5, 27.9], [5.0, 5.2, 4.9], "fid").startswith("worse (p=")
    assert welch_verdict([0.70, 0.72, 0.71], [0.60, 0.61, 0.62], "precision").startswith("better")
    assert welch_verdict([27.0, 30.0, 28.0], [28.0, 29.5, 27.0], "fid").startswith("within noise")
    assert welch_verdict([27.0], [28.0, 29.5], "fid") == ""  # one seed: no spread to test against
    from scipy.stats import ttest_ind

    p = ttest_ind([10.0, 12.0, 14.0], [5.0, 7.0, 9.0], equal_var=False).pvalue
    assert welch_verdict([10.0, 12.0, 14.0], [5.0, 7.0, 9.0], "fid") == f"worse (p={p:.2g})"  # Welch's p-value


def test_interval_verdict_uses_both_widths():
    from mnistgan.lab.report import interval_verdict

    assert interval_verdict(27.8, (26.8, 29.1), 28.5, (27.4, 29.7), "fid") == "within noise"
    assert interval_verdict(27.8, (26.8, 29.1), 46.6, (45.0, 48.3), "fid") == "better"
    assert interval_verdict(0.60, (0.59, 0.61), 0.67, (0.66, 0.68), "recall") == "worse"


def test_results_table_marks_each_recipe_against_the_default(monkeypatch):
    from mnistgan.lab import report

    monkeypatch.setattr(
        report, "recipe_label", lambda row: "`default`: ns" if row["params.train.loss"] == "ns" else "`hinge`: hinge"
    )
    table = results_table(fake_runs())
    hinge = next(line for line in table.splitlines() if line.startswith("| `hinge`"))
    default = next(line for line in table.splitlines() if line.startswith("| `default`"))
    assert "7.00 ± 2.00 (better, p=0.038)" in hinge  # 7 +- 2 against 12 +- 2, 3 seeds each: Welch p = 0.038
    assert "9.000 (" not in hinge  # the same score in both: no verdict is claimed
    assert "(" not in default.split("|")[3]  # the default itself has no verdict
    assert "Welch's t-test" in table


def test_compare_verdict_table_from_the_runs_intervals():
    from mnistgan.lab.report import verdict_table

    g = "metrics.generated.fid"
    runs = pd.DataFrame(
        [
            {g: 27.8, f"{g}_ci95_low": 26.8, f"{g}_ci95_high": 29.1},
            {g: 46.6, f"{g}_ci95_low": 45.0, f"{g}_ci95_high": 48.3},
            {g: 28.5, f"{g}_ci95_low": 27.4, f"{g}_ci95_high": 29.7},
        ]
    )
    title, header, rows = verdict_table(runs, ["a", "b", "c"])
    assert header == ["score", "a vs b", "a vs c", "b vs c"]
    assert rows == [["fid", "better", "within noise", "worse"]]
    assert verdict_table(runs[[g]], ["a", "b", "c"]) is None  # runs of older code
