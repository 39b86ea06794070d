"""docs/scores.md's schema table: well formed, and able to fail (the files themselves are checked against it
in test_score_cli.py and test_pipeline.py)."""

from schema_utils import key_regex, schema_problems, schema_rows


def test_the_schema_table_is_there_and_each_key_is_documented_once():
    rows = schema_rows()
    assert len(rows) >= 30
    patterns = [p for p, _ in rows]
    assert len(patterns) == len(set(patterns))
    assert all(meaning for _, meaning in rows)
    for key in (
        "generated.fid_inf",
        "real_reference.fid",
        "feature_spaces.classifier/blocks.fid_inf_multiple",
        "generated.fid_inf_ci95",
        "headline_features.weights_sha256",
    ):
        assert sum(bool(key_regex(p).match(key)) for p in patterns) == 1, key


def test_a_renamed_or_dropped_key_is_reported():
    good = {"generated": {"fid": 1.0}, "real_reference": {"fid": 1.0}}
    problems = schema_problems({**good, "reference": {"fid": 1.0}})
    assert "undocumented key reference.fid" in problems
    assert "documented key <part>.fid_inf is missing" in problems
    assert not any("input" in p for p in problems)  # documented as belonging to `mnistgan score` only
