"""benchmarks/quality_study.py: its table pairs each option with the baseline's run of the same training seed, and a
run trains and scores what it says (tiny: a few steps)."""

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_study():
    spec = importlib.util.spec_from_file_location("quality_study", os.path.join(REPO, "benchmarks", "quality_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(option, seed, fids, student_calls=2):
    scores = {str(k): dict(fid=fid, class_accuracy=0.99) for k, fid in enumerate(fids)}
    return dict(option=option, seed=seed, options={}, train_seconds=10.0, student_calls=student_calls, teacher_calls=1,
                scores={"ema_0.99": scores, "raw": scores})


def test_the_table_gives_means_over_seeds_and_the_difference_paired_by_training_seed(tmp_path):
    study = load_study()
    runs = [fake_run("baseline", 0, [3.0, 3.2]), fake_run("baseline", 1, [5.0, 5.2]),
            fake_run("finite_difference=second", 1, [5.5, 5.7], 3), fake_run("finite_difference=second", 0, [2.0, 2.2], 3)]
    path = tmp_path / "study.json"
    path.write_text(json.dumps(dict(meta=dict(teacher="t.pt"), runs=runs,
                                    teachers={"t.pt": {"0": dict(fid=1.9, class_accuracy=0.995)}})))
    lines = study.table([str(path)]).splitlines()
    baseline, second = lines[2], lines[3]
    assert baseline.startswith("| baseline | 0,1 | 4.10 ± 1.41 | — |")
    # paired by seed: seed 0 −1.0, seed 1 +0.5 → −0.25 ± 1.06 (unpaired, the means would differ by −0.25 ± nothing)
    assert second.startswith("| finite_difference=second | 1,0 | 3.85 ± 2.47 | -0.25 ± 1.06 |")
    assert second.endswith("| 3 + 1 |") and "| 0.14 |" in second  # spread over evaluation seeds: stdev(x, x + 0.2)
    assert "teacher t.pt, Heun 18 steps, evaluation seed 0 | — | 1.90 |" in lines[4]


def test_a_run_trains_its_steps_and_scores_its_networks_and_bad_options_are_refused_first(tmp_path):
    study = load_study()
    study.main(["--options", "baseline,finite_difference=second", "--seeds", "0", "--eval_seeds", "0,1", "--steps",
                "2", "--num_samples", "50", "--json", str(tmp_path / "study.json")])
    result = json.loads((tmp_path / "study.json").read_text())
    assert [(run["option"], run["student_calls"]) for run in result["runs"]] == [
        ("baseline", 2), ("finite_difference=second", 3)]
    for run in result["runs"]:
        assert set(run["scores"]) == {"ema_0.99", "raw"} and set(run["scores"]["raw"]) == {"0", "1"}
    assert result["runs"][0]["scores"]["raw"]["0"] != result["runs"][0]["scores"]["raw"]["1"]  # other samples
    assert list(result["teachers"]) == ["digits-ddpmpp.pt"] and set(result["teachers"]["digits-ddpmpp.pt"]) == {"0", "1"}
    for bad, reason in (("finite_difference=third", "finite_difference"), ("finite_differnce=second", "unknown")):
        with pytest.raises(ValueError, match=reason):
            study.main(["--options", f"baseline,{bad}", "--json", str(tmp_path / "bad.json")])
    assert not (tmp_path / "bad.json").exists()


def test_settings_apply_to_every_run_and_an_option_goes_on_top():
    study = load_study()
    assert study.run_options("baseline") == {}
    assert study.run_options("baseline", "lr=0.01")["lr"] == 0.01
    both = study.run_options("lr=0.002+finite_difference=second", "lr=0.01+start_scales=40")
    assert (both["lr"], both["finite_difference"], both["start_scales"]) == (0.002, "second", 40)
    assert study.network_calls(both) == (3, 1)
    assert study.network_calls(study.run_options("guide_model_path=g.pt+guidance=1.5")) == (2, 2)
