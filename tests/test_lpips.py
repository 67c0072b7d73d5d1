import pytest
import torch
import torchvision

from conftest import relative_error
from tolerances import between_implementations, lpips_roundings
from pid_diffusion.losses import lpips_distance
from pid_diffusion.lpips import LPIPS

piq = pytest.importorskip("piq", reason="piq is the LPIPS reference; install the test extra: pip install -e '.[test]'")

CHANNELS = (64, 128, 256, 512, 512)


@pytest.fixture
def random_weights(tmp_path, monkeypatch):
    """Random VGG16 and LPIPS weights where torch's hub cache and piq look for the real ones."""
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), checkpoints / "vgg16-397923af.pth")
    lin = [torch.rand(1, c, 1, 1) for c in CHANNELS]
    torch.save(lin, checkpoints / "lpips_weights.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.chdir(tmp_path)
    return checkpoints, lin


def test_matches_piq_lpips(random_weights):
    reference = piq.LPIPS(replace_pooling=True, reduction="none")
    ours = LPIPS()  # found in torch's hub cache
    x, y = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(ours(x, y), reference(x, y)) <= between_implementations(lpips_roundings(ours, 32))


def test_pid_wrapper_matches_piq_at_224(random_weights):
    reference = piq.LPIPS(replace_pooling=True, reduction="none")
    a, b = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    up = lambda v: torch.nn.functional.interpolate(v, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = reference((up(a) + 1) / 2, (up(b) + 1) / 2)
        ours = LPIPS()
        assert relative_error(lpips_distance(ours, a, b), expected) <= between_implementations(lpips_roundings(ours, 224))


def test_weight_layouts_and_lookup_order(random_weights, tmp_path):
    checkpoints, lin = random_weights
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    expected = LPIPS()(x, y)
    lpips_package_layout = {f"lin{k}.model.1.weight": w for k, w in enumerate(lin)}
    assert torch.equal(LPIPS(lin_weights=lpips_package_layout)(x, y), expected)
    explicit = LPIPS(vgg_weights=str(checkpoints / "vgg16-397923af.pth"), lin_weights=lin)
    assert torch.equal(explicit(x, y), expected)
    # ./model_zoo comes before the hub cache
    (tmp_path / "model_zoo").mkdir()
    torch.save([w * 2 for w in lin], tmp_path / "model_zoo" / "lpips_weights.pt")
    doubled = LPIPS()
    # the distance is linear in the final weights: doubling them doubles it, up to the last sum's rounding
    assert torch.allclose(doubled(x, y), 2 * expected, rtol=between_implementations(sum(CHANNELS)), atol=0)


def test_gradient_flows_to_the_input_only(random_weights):
    lpips = LPIPS()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    lpips(x, torch.rand(2, 3, 32, 32)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips.parameters())


def test_wrong_weight_files_are_explained(random_weights, tmp_path):
    with pytest.raises(ValueError, match="expected 5 tensors"):
        LPIPS(lin_weights=[torch.rand(1, 64, 1, 1)])
    with pytest.raises(ValueError, match="VGG16 weights"):
        LPIPS(vgg_weights={"features.0.weight": torch.rand(3, 3, 3, 3)})
    checkpoints, _ = random_weights
    for name in ("vgg16-397923af.pth", "lpips_weights.pt"):
        truncated = tmp_path / name
        truncated.write_bytes((checkpoints / name).read_bytes()[:1000])
        with pytest.raises(ValueError, match=f"{name}: cannot read this torch file"):
            LPIPS(**{"vgg_weights" if name.startswith("vgg") else "lin_weights": str(truncated)})
