"""Choosing a variant per kind on valid (`trl_sdpo.rec.study.selection`)."""

from test_rec_study import write_run

from trl_sdpo.rec.study import load_study
from trl_sdpo.rec.study.selection import select_variants


def _config(lr):
    return {"method": {"settings": {"learning_rate": lr}}}


def test_each_kind_keeps_its_best_variant_and_a_tie_keeps_the_default(tmp_path):
    # NDCG@5 of one row: rank 1 -> 1, rank 3 -> 1/log2(4) = 0.5; means over two seeds written out by hand
    write_run(tmp_path, "valid", "sdpo", 0, [3], config=_config(1e-5))  # 0.5
    write_run(tmp_path, "valid", "sdpo", 1, [3], config=_config(1e-5))  # 0.5
    write_run(tmp_path, "valid", "sdpo-lr1e-4", 0, [1], kind="sdpo", config=_config(1e-4))  # 1.0
    write_run(tmp_path, "valid", "sdpo-lr1e-4", 1, [3], kind="sdpo", config=_config(1e-4))  # 0.5 -> mean 0.75
    write_run(tmp_path, "valid", "dpo", 0, [1], config=_config(1e-5))
    write_run(tmp_path, "valid", "dpo-lr1e-4", 0, [1], kind="dpo", config=_config(1e-4))  # a tie
    write_run(tmp_path, "test", "sft-continued", 0, [1])  # another split: not a candidate
    chosen = select_variants(load_study(tmp_path))
    assert chosen["sdpo"]["method"] == "sdpo-lr1e-4" and chosen["sdpo"]["learning_rate"] == 1e-4
    assert chosen["sdpo"]["candidates"] == {"sdpo": 0.5, "sdpo-lr1e-4": 0.75}
    assert chosen["dpo"]["method"] == "dpo" and chosen["dpo"]["learning_rate"] == 1e-5
    assert "sft-continued" not in chosen


def test_a_tie_between_variants_keeps_the_lower_learning_rate(tmp_path):
    # the study preset's rule: no default on valid, so a tie between variants goes to the lower rate
    for method, lr in (("dpo-lr1e-4", 1e-4), ("dpo-lr1e-5", 1e-5), ("dpo-lr3e-5", 3e-5)):
        write_run(tmp_path, "valid", method, 0, [3], kind="dpo", config=_config(lr))  # all 0.5
    write_run(tmp_path, "valid", "sdpo-lr1e-4", 0, [1], kind="sdpo", config=_config(1e-4))  # 1.0: the best wins
    write_run(tmp_path, "valid", "sdpo-lr1e-5", 0, [3], kind="sdpo", config=_config(1e-5))
    chosen = select_variants(load_study(tmp_path))
    assert chosen["dpo"]["method"] == "dpo-lr1e-5" and chosen["dpo"]["learning_rate"] == 1e-5
    assert chosen["sdpo"]["method"] == "sdpo-lr1e-4"


def test_results_markdown_shows_the_choice_with_held_out_rewards(tmp_path):
    from trl_sdpo.rec.study.report import results_markdown

    heldout = {"accuracy": 0.75, "margin": 0.5, "row_accuracy": [1.0, 0.5], "row_margins": [1.0, 0.0]}
    write_run(tmp_path, "valid", "sdpo-lr1e-4", 0, [1], kind="sdpo", config=_config(1e-4), heldout=heldout)
    write_run(tmp_path, "valid", "sdpo-lr1e-5", 0, [3], kind="sdpo", config=_config(1e-5))
    write_run(tmp_path, "valid", "dpo-lr1e-5", 0, [3], kind="dpo", config=_config(1e-5))  # one variant: no choice
    text = results_markdown(tmp_path, n_boot=10)
    assert "Settings chosen on `valid`" in text
    lines = [line for line in text.splitlines() if line.startswith("| sdpo |")]
    assert lines[0].split(" | ")[1:8] == ["sdpo-lr1e-4 (chosen)", "0.0001", "1", "1.0000", "1.0000", "0.750", "+0.500"]
    assert lines[1].split(" | ")[1:8] == ["sdpo-lr1e-5", "1e-05", "1", "0.5000", "0.0000", "-", "-"]
    assert not any(line.startswith("| dpo |") for line in text.splitlines())


def test_no_choice_is_shown_on_test_or_for_a_sweep_at_one_learning_rate(tmp_path):
    from trl_sdpo.rec.study.report import selection_markdown

    for split in ("valid", "test"):
        write_run(tmp_path, split, "sdpo", 0, [1], config=_config(1e-5))
        write_run(tmp_path, split, "sdpo-k7", 0, [3], kind="sdpo", config=_config(1e-5))  # a k sweep
    runs = load_study(tmp_path)
    assert selection_markdown(runs, "valid") == [] and selection_markdown(runs, "test") == []
    write_run(tmp_path, "test", "sdpo-lr1e-4", 0, [1], kind="sdpo", config=_config(1e-4))
    assert selection_markdown(load_study(tmp_path), "test") == []
