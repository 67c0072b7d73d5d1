"""The command lines are made from the declared options: each flag once, given exactly when it is on
the command line (whatever its value), refused when abbreviated, warned about when PID ignores it."""

import dataclasses
import os
import subprocess
import sys

import pytest

from pid_diffusion import cli
from pid_diffusion.evaluation.detectors import DetectorOptions
from pid_diffusion.loop import LoopConfig
from pid_diffusion.settings import OptionParser, defining_settings, option, options_of, str2bool
from pid_diffusion.speed import SpeedSettings
from pid_diffusion.teacher_trainer import TeacherTrainConfig
from pid_diffusion.trainer import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSERS = {"cm_train.py": lambda argv: cli.parse_distillation(["--teacher_model_path", "t.pt", *argv]),
           "image_sample.py": cli.parse_sampling, "fid_evaluation.py": lambda argv: cli.parse_fid(["--exp_dir", "d", *argv]),
           "train_teacher.py": lambda argv: (cli.parse_teacher_training(argv), None)}


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_flag_has_help_with_its_default(script, capsys):
    with pytest.raises(SystemExit) as done:
        PARSERS[script](["--help"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    args, _ = PARSERS[script]([])
    for name in vars(args):
        assert f"--{name}" in shown, name
    if script in ("cm_train.py", "train_teacher.py"):  # presets only where --speed exists
        assert ("set by --speed" if script == "cm_train.py" else "autocast (default: 'fp32')") in shown, script


def test_each_script_shows_its_own_description():
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "cm_train.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "Distil an EDM teacher into a one-step PID student" in done.stdout


def test_a_flag_is_given_when_it_is_on_the_command_line_whatever_its_value():
    args, given = cli.parse_distillation(["--teacher_model_path", "t.pt", "--lr", "0.0001", "--ema_rate=0.9"])
    assert {"lr", "ema_rate", "teacher_model_path"} == given  # 0.0001 is lr's default and still given
    assert (args.lr, args.ema_rate, args.seed) == (1e-4, "0.9", 0)  # the others take their declared defaults
    # on a GPU the fast preset sets bf16 and channels-last: what is given wins, in either spelling
    for argv in (["--mixed_precision", "fp16", "--channels_last", "False"], ["--mixed_precision=fp16",
                                                                              "--channels_last=f"]):
        args, given = cli.parse_distillation(["--teacher_model_path", "t.pt", *argv])
        config = cli.distillation_config(args, given, "run", "cuda")
        assert (config.mixed_precision, config.channels_last, config.compile) == ("fp16", False, True), argv
    args, given = cli.parse_distillation(["--teacher_model_path", "t.pt"])
    config = cli.distillation_config(args, given, "run", "cuda")
    assert (config.mixed_precision, config.channels_last) == ("bf16", True)


@pytest.mark.parametrize("argv", [["--mixed_prec", "fp16"], ["--channels_l", "False"], ["--lr_anneal", "5"]])
def test_abbreviated_flags_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        cli.parse_distillation(["--teacher_model_path", "t.pt", *argv])
    assert refused.value.code == 2 and f"unrecognized arguments: {argv[0]}" in capsys.readouterr().err


def test_ignored_flags_are_accepted_with_a_warning(capsys):
    cli.parse_distillation(["--teacher_model_path", "t.pt", "--num_heads", "8", "--lr", "0.1"])
    err = capsys.readouterr().err
    assert "accepted but ignored by PID (as in the original): --num_heads" in err and "--lr" not in err
    cli.parse_sampling(["--dropout", "0.3", "--loss_norm", "l2", "--steps", "3"])  # training flags in sampling
    assert "ignored by PID (as in the original): --dropout, --loss_norm\n" in capsys.readouterr().err
    cli.parse_distillation(["--teacher_model_path", "t.pt", "--dropout", "0.3"])
    assert capsys.readouterr().err == ""  # the student's dropout in training


def test_booleans_and_a_flag_declared_twice():
    assert str2bool("Yes") is True and str2bool("0") is False
    with pytest.raises(Exception, match="expected a boolean"):
        str2bool("maybe")

    @dataclasses.dataclass(kw_only=True)
    class Other:
        lr: float = option(0.5, "another learning rate")

    with pytest.raises(ValueError, match="--lr is declared twice"):
        OptionParser(None, LoopConfig, Other)


def help_groups(text):
    """{group title: [flags]} of a --help text, in order."""
    groups, title = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            groups[title] = []
        elif title and line.startswith("  --"):
            groups[title].append(line.split()[0])
    return groups


def test_help_groups_the_options_by_what_they_set_with_the_ignored_ones_last(capsys):
    from pid_diffusion.settings import IGNORED_GROUP

    with pytest.raises(SystemExit):
        cli.parse_distillation(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: ") and text.splitlines()[0].endswith(" [options]")  # not 35 lines of flags
    groups = help_groups(text)
    titles = [t for t in groups if t != "options"]
    assert titles == [t for t in cli.HELP_ORDER if t in groups] + [IGNORED_GROUP]
    assert groups[IGNORED_GROUP] == ["--num_heads", "--num_heads_upsample", "--num_head_channels",
                                     "--use_checkpoint", "--use_scale_shift_norm", "--resblock_updown",
                                     "--use_new_attention_order", "--continuous", "--teacher_dropout", "--target_ema_mode",
                                     "--start_ema", "--distill_steps_per_iter", "--data_dir", "--schedule_sampler",
                                     "--methodology", "--use_target_model", "--random_init_stu"]
    assert "--lr" in groups[LoopConfig.HELP_GROUP] and "--loss_norm" in groups[TrainConfig.HELP_GROUP]
    assert {"--speed", "--use_fp16", "--mixed_precision"} <= set(groups[SpeedSettings.HELP_GROUP])
    assert {"--eval_interval", "--eval_samples", "--detector"} <= set(groups[DetectorOptions.HELP_GROUP])
    listed = [flag for flags in groups.values() for flag in flags]
    declared = cli._model_parser(None, True).add_options(TrainConfig).add_options(cli.DistillationFlags).declared
    assert sorted(listed) == sorted(f"--{name}" for name in declared)  # each flag once, in a group

    @dataclasses.dataclass(kw_only=True)
    class Untitled:
        knob: float = option(0.5, "a knob")

    with pytest.raises(TypeError, match="Untitled declares options but no HELP_GROUP"):
        OptionParser(None, Untitled)


def test_what_defines_a_run_and_the_teachers_defaults_are_declared_with_the_options():
    assert set(defining_settings(TrainConfig)) == {
        "teacher_model_path", "loss_norm", "weight_schedule", "start_scales", "end_scales", "scale_mode", "sigma_min",
        "sigma_max", "rho", "seed", "lr", "optimizer", "ema_rate", "global_batch_size", "guide_model_path", "guidance",
        "weight_decay", "opt_eps", "lr_anneal_steps", "fp16_scale_growth", "finite_difference", "level_distribution"}
    assert set(defining_settings(TeacherTrainConfig)) == {
        "dataset", "network_config", "p_mean", "p_std", "sigma_data", "seed", "lr", "optimizer", "ema_rate",
        "global_batch_size", "family", "lr_ref_steps", "lr_rampup_steps", "latent_vae", "weight_decay", "opt_eps",
        "lr_anneal_steps", "fp16_scale_growth"}
    # teacher training has its own defaults for the loop's options, LoopConfig keeps the distillation's
    args = cli.parse_teacher_training([])
    assert (args.lr, TeacherTrainConfig(log_dir="x").lr, LoopConfig(log_dir="x").lr) == (2e-3, 2e-3, 1e-4)
    assert cli.parse_teacher_training(["--lr", "0.01"]).lr == 0.01
    assert {f.name for f in options_of(TrainConfig)} >= {f.name for f in options_of(LoopConfig)}
