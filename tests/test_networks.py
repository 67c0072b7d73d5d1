import pytest
import torch

from conftest import relative_error, tiny_song_config
from tolerances import PARITY_ORDER, between_implementations, network_roundings
from pid_diffusion.families import edm
from pid_diffusion.families.edm import network_state_dict
from pid_diffusion.networks import DhariwalUNet, EDMPrecond, SongUNet


def test_raw_network_and_denoiser_match_edm(edm_fixture):
    net = EDMPrecond(**edm_fixture["config"]).eval()
    net.load_state_dict(edm_fixture["state_dict"], strict=True)
    x, sigma, labels = edm_fixture["x"], edm_fixture["sigma"], edm_fixture.get("class_labels")
    c_in = 1 / (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25).sqrt()
    with torch.no_grad():
        raw = net.model(c_in * x, sigma.log() / 4, labels)
        denoised = net(x, sigma, labels)
    bound = between_implementations(network_roundings(net, edm_fixture["config"]["img_resolution"]))
    for ours, theirs in ((raw, edm_fixture["raw_output"]), (denoised, edm_fixture["denoised"])):
        assert relative_error(ours, theirs) <= bound and relative_error(ours, theirs) <= PARITY_ORDER


def test_edm_keys_load_strictly_with_and_without_prefix(edm_fixture):
    config = edm_fixture["config"]
    precond = EDMPrecond(**config)
    assert set(precond.state_dict()) == set(edm_fixture["state_dict"])
    raw_config = {k: v for k, v in config.items() if k not in ("img_resolution", "img_channels", "model_type")}
    net_class = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}[config["model_type"]]
    raw = net_class(img_resolution=config["img_resolution"], in_channels=config["img_channels"],
                    out_channels=config["img_channels"], **{**raw_config, "augment_dim": 0})
    raw.load_state_dict(network_state_dict(edm_fixture["state_dict"]), strict=True)


@pytest.mark.parametrize("model_type", ["SongUNet", "DhariwalUNet"])
def test_attn_resolutions_are_honoured(model_type):
    channels = 64  # ADM gives a block channels // 64 heads: narrower blocks have no attention at all
    for resolutions in ([8], [4], [8, 4]):
        net = EDMPrecond(**tiny_song_config(model_type=model_type, attn_resolutions=resolutions,
                                            model_channels=channels))
        with_attention = {int(k.split(".")[2].split("x")[0]) for k in net.state_dict()
                          if k.startswith("model.enc.") and ".qkv." in k}
        assert with_attention == set(resolutions)


@pytest.mark.parametrize("model_type", ["SongUNet", "DhariwalUNet"])
def test_dropout_is_honoured(model_type):
    net = EDMPrecond(**tiny_song_config(model_type=model_type, dropout=0.5))
    for p in net.parameters():  # make the zero-initialised output layers matter
        p.data.normal_(0, 0.3)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])
    with torch.no_grad():
        net.train()
        a, b = net(x, sigma), net(x, sigma)
        net.eval()
        c, d = net(x, sigma), net(x, sigma)
    assert not torch.equal(a, b)
    assert torch.equal(c, d)


def test_ncsnpp_configuration_runs():
    net = EDMPrecond(**tiny_song_config(embedding_type="fourier", encoder_type="residual", decoder_type="skip",
                                        channel_mult_noise=2, resample_filter=[1, 3, 3, 1]))
    assert net(torch.randn(2, 3, 8, 8), torch.tensor([0.5, 5.0])).shape == (2, 3, 8, 8)


def test_official_configurations_have_the_verified_parameter_counts():
    cifar = edm.config_from_flags(image_size=32, num_channels=128, num_res_blocks=4, attention_resolutions="2")
    imagenet = edm.config_from_flags(image_size=64, num_channels=192, num_res_blocks=3,
                                      attention_resolutions="2,4,8", class_cond=True)
    with torch.device("meta"):
        counts = [sum(p.numel() for p in EDMPrecond(**c).model.parameters()) for c in (cifar, imagenet)]
    assert counts == [55_732_739, 295_899_267]  # the original's CIFAR-10 and ImageNet-64 networks


def test_unknown_choices_are_named():
    with pytest.raises(ValueError, match="valid: SongUNet, DhariwalUNet"):
        EDMPrecond(**tiny_song_config(model_type="UNet"))
    with pytest.raises(ValueError, match="valid: standard, skip, residual"):
        EDMPrecond(**tiny_song_config(encoder_type="fancy"))
