import os
import subprocess
import sys

import pytest

from pid_diffusion import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script,flags", [
    ("cm_train.py", {**cli.MODEL_FLAGS, **cli.TRAIN_FLAGS}),
    ("image_sample.py", {**cli.MODEL_FLAGS, **cli.SAMPLE_FLAGS}),
    ("fid_evaluation.py", {**cli.MODEL_FLAGS, **cli.SAMPLE_FLAGS, **cli.FID_FLAGS}),
])
def test_every_flag_has_help(script, flags):
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in flags:
        assert f"--{name}" in done.stdout


def test_booleans_and_ignored_flags(capsys):
    assert cli.str2bool("Yes") is True and cli.str2bool("0") is False
    with pytest.raises(Exception, match="expected a boolean"):
        cli.str2bool("maybe")
    assert cli.given_flags(["--lr", "1", "--ema_rate=0.9", "x"]) == {"lr", "ema_rate"}
    cli.warn_ignored({"num_heads", "lr"}, cli.MODEL_FLAGS | cli.TRAIN_FLAGS)
    assert "--num_heads" in capsys.readouterr().err
