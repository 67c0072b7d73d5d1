import os

import pytest
import torch

FIXTURES = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "edm"))
FIXTURE_NETWORKS = ("edm_ddpmpp_small_seed0", "edm_adm_small_seed0")


def relative_error(actual, expected):
    actual, expected = actual.to(torch.float64), expected.to(torch.float64)
    return ((actual - expected).norm() / expected.norm()).item()


def fixture_path(name):
    path = os.path.join(FIXTURES, name)
    if not os.path.exists(path):
        pytest.skip(f"reference fixture {path} not found: ../shared/fixtures exists only in the "
                    "developers' checkout, not in a user's clone")
    return path


def load_fixture(name):
    return torch.load(fixture_path(name + ".pt"), weights_only=True)


@pytest.fixture(params=FIXTURE_NETWORKS)
def edm_fixture(request):
    return load_fixture(request.param)


def tiny_song_config(**overrides):
    """EDMPrecond keywords of a small DDPM++ that runs in milliseconds on CPU."""
    config = dict(img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet", model_channels=16,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    config.update(overrides)
    return config


def save_random_teacher(path, config):
    """A teacher file whose every weight is random and non-zero (EDM zero-initialises some layers)."""
    from pid_diffusion.checkpoint import save_teacher
    from pid_diffusion.networks import EDMPrecond

    teacher = EDMPrecond(**config)
    for p in teacher.parameters():
        p.data.normal_(0, 0.05)
    save_teacher(teacher, path, config)
    return teacher


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A tiny class-conditional DDPM++ teacher file with random non-zero weights (the same ones every run)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.manual_seed(0)
    save_random_teacher(path, tiny_song_config(label_dim=3))
    return str(path)


def small_run_config(teacher_path, log_dir, **overrides):
    """A TrainConfig of two l2 steps of 4 images, checkpointed at step 2, logged every step."""
    from pid_diffusion.trainer import TrainConfig

    values = dict(teacher_model_path=teacher_path, log_dir=str(log_dir), global_batch_size=4, loss_norm="l2",
                  ema_rate="0.9", log_interval=1, save_interval=2, total_training_steps=2, lr=1e-3)
    values.update(overrides)
    return TrainConfig(**values)
