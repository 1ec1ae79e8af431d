import json

import pytest

from honed.core.config import override
from honed.core.errors import StoreError
from honed.core.report import write_report
from honed.core.runner import check_run_dir, run_experiment
from tests.core.toy_experiment import ToyConfig, ToyExperiment


def test_result_aggregates_seeds_and_computes_claims(runs):
    result = run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    assert result.arms["ours"]["acc"]["mean"] == pytest.approx(2.0)
    assert result.arms["ours"]["acc"]["std"] == pytest.approx(1.0)
    assert [c.verdict for c in result.claims] == ["holds", "fails", "holds"]
    assert result.status == "2 hold, 1 fail, 0 inconclusive"
    assert result.claims[0].measured == pytest.approx(1.0) and result.claims[0].interval == (1.0, 1.0)
    assert result.arms["ours"]["correct"]["examples"] == [10, 10, 10]
    saved = json.loads((runs / "99-toy" / "default" / "result.json").read_text())
    assert saved["schema"] == "honed-result-v2" and saved["verdicts"] == {"holds": 2, "fails": 1, "inconclusive": 0}
    assert (runs / "99-toy" / "default" / "plot.png").stat().st_size > 1000


def test_finished_seeds_are_not_recomputed_after_a_kill(runs):
    ToyExperiment.calls.clear()
    ToyExperiment.fail_on_seed = 2
    try:
        with pytest.raises(RuntimeError, match="killed"):
            run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    finally:
        ToyExperiment.fail_on_seed = -1
    folder = runs / "99-toy" / "default"
    assert ToyExperiment.calls == [0, 1] and not (folder / "result.json").exists()
    run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    assert ToyExperiment.calls == [0, 1, 2]  # seeds 0 and 1 came from disk
    run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    assert ToyExperiment.calls == [0, 1, 2]  # a finished run is loaded, not recomputed
    assert (folder / "result.json").exists()


def test_a_folder_of_another_config_is_refused(runs):
    folder = runs / "99-toy" / "default"
    check_run_dir(folder, "99-toy", ToyConfig())
    with pytest.raises(StoreError, match="another config"):
        check_run_dir(folder, "99-toy", override(ToyConfig(), {"offset": 2.0}))


def test_resume_inside_a_seed_uses_the_cached_parts(runs):
    ToyExperiment.calls.clear()
    folder = runs / "99-toy" / "default" / "seed_0"
    folder.mkdir(parents=True)
    (folder / "part_ours.json").write_text(json.dumps({"acc": 42.0, "correct": [1.0]}))
    result = run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu")
    assert result.arms["ours"]["acc"]["mean"] == 42.0


def test_log_reports_each_computed_part_once_and_not_loaded_ones(runs):
    lines = []
    run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu", log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("seed 0: ours done in ")
    lines.clear()
    (runs / "99-toy" / "default" / "result_seeds_0.json").unlink()
    (runs / "99-toy" / "default" / "seed_0" / "seed_result.json").unlink()
    run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu", log=lines.append)
    assert lines == []  # the part was loaded from its file, not computed


def test_a_corrupt_seed_result_is_named_kept_aside_and_recomputed(runs):
    folder = runs / "99-toy" / "default" / "seed_0"
    folder.mkdir(parents=True)
    (folder / "seed_result.json").write_text("{not json")
    lines = []
    result = run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu", log=lines.append)
    assert result.arms["base"]["acc"]["mean"] == 0.0
    assert any("seed_result.json is corrupt" in line and "recomputing" in line for line in lines)
    assert (folder / "seed_result.json.corrupt").read_text() == "{not json"


def test_a_damaged_part_fails_its_checksum_and_is_recomputed(runs):
    run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu")
    seed = runs / "99-toy" / "default" / "seed_0"
    part = seed / "part_ours.json"
    part.write_text(part.read_text().replace('"acc": 1.0', '"acc": 7.0'))  # a flipped digit on disk
    (seed / "seed_result.json").unlink()
    (runs / "99-toy" / "default" / "result_seeds_0.json").unlink()
    lines = []
    result = run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu", log=lines.append)
    assert result.arms["ours"]["acc"]["mean"] == 1.0
    assert any("part_ours.json fails its checksum" in line for line in lines)


def test_report_renders_tables_claims_and_plot(runs):
    run_experiment(ToyExperiment(), ToyConfig(), "small", runs, "cpu")
    md, page, count = write_report(runs)
    text = md.read_text()
    assert count == 1 and "| gain | paper: +0.5 | 1 | [1, 1] | >= 0.5 | holds |  |" in text
    assert "| big gain | paper: +10 | 1 | [1, 1] | >= 10 | FAILS |  |" in text
    assert "| ours above chance | an arm at chance cannot show a gain | 0.9 |" in text
    assert "| offset as configured | the config's offset | 1 | >= 0 | ok |" in text
    assert "2 ± 1" in text and "plot.png" in text
    assert "data:image/png;base64," in page.read_text()


def test_method_arms_are_recognised_by_name_or_suffix(runs):
    result = run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu")
    assert result.is_method_arm("ours") and result.is_method_arm("large/ours")
    assert not result.is_method_arm("base") and not result.is_method_arm("yours")


def test_environment_records_the_threads_the_seeds_ran_with(runs):
    import dataclasses

    result = run_experiment(ToyExperiment(), dataclasses.replace(ToyConfig.smoke(), threads=1), "smoke", runs, "cpu")
    assert result.environment["threads"] == 1 and result.environment["torch"]


def test_wide_arms_tables_are_turned_so_each_metric_is_a_row():
    from honed.core.experiment import Result
    from honed.core.report import readable_arms_table

    def result(metrics: int) -> Result:
        stat = {"mean": 1.0, "std": 0.0, "values": [1.0]}
        arms = {arm: {f"m{i}": stat for i in range(metrics)} for arm in ("ours", "base")}
        return Result(id="99-toy", title="t", family="f", preset="small", seeds=[0], config={}, environment={},
                      runtime_s=0.0, method=["ours"], baselines=["base"], arms=arms, extra={}, curves={},
                      claims=[], notes=[])

    header, rows = readable_arms_table(result(3))
    assert header == ["arm", "role", "m0", "m1", "m2"] and len(rows) == 2
    header, rows = readable_arms_table(result(12))
    assert header == ["metric", "ours (ours)", "base (baseline)"]
    assert [r[0] for r in rows] == [f"m{i}" for i in range(12)] and rows[5] == ["m5", "1", "1"]


def test_a_cached_result_from_other_code_is_flagged_not_recomputed(runs):
    lines = []
    first = run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu", log=lines.append)
    assert len(first.environment["honed_source"]) == 12
    done = runs / "99-toy" / "default" / "result_seeds_0.json"
    data = json.loads(done.read_text())
    data["environment"]["honed_source"] = "000000000000"
    done.write_text(json.dumps(data))
    lines.clear()
    again = run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu", log=lines.append)
    assert again.environment["honed_source"] == "000000000000"  # loaded, not recomputed
    assert len(lines) == 1 and "other honed code" in lines[0] and "--force" in lines[0]


def test_pieces_written_by_other_honed_code_are_recomputed_not_mixed_in(runs):
    run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu")
    seed = runs / "99-toy" / "default" / "seed_0"
    part = seed / "part_ours.json"
    stored = json.loads(part.read_text())
    assert stored["source"]  # every part records the honed source that wrote it
    stored["source"], stored["value"]["acc"] = "0123456789ab", 7.0
    from honed.core.store import value_digest
    stored["sha256"] = value_digest(stored["value"])  # a valid file, written by other code
    part.write_text(json.dumps(stored))
    seed_file = seed / "seed_result.json"
    old_seed = json.loads(seed_file.read_text())
    old_seed["source"] = "0123456789ab"
    seed_file.write_text(json.dumps(old_seed))
    (runs / "99-toy" / "default" / "result_seeds_0.json").unlink()
    lines = []
    result = run_experiment(ToyExperiment(), ToyConfig.smoke(), "smoke", runs, "cpu", log=lines.append)
    assert result.arms["ours"]["acc"]["mean"] == 1.0  # recomputed by this code, not the stored 7.0
    assert sum("written by other honed code" in line and "recomputing" in line for line in lines) == 2
