"""The metrics beside FID on fixed inputs: closed forms (one-hot classes, sets a hand can check, the MMD² written
out), and parity with torch-fidelity's implementations (a test-only dependency, as piq is for LPIPS)."""

import itertools
import os

import pytest
import torch

from pid_diffusion.evaluation.metrics import inception_score, kernel_inception_distance, precision_recall, unbiased_mmd2

CONFIDENT = 200.0
"""A logit margin at which softmax is one-hot to float64's precision."""


def one_hot_logits(classes):
    return CONFIDENT * torch.nn.functional.one_hot(torch.as_tensor(classes), 10).to(torch.float64)


def test_inception_score_closed_forms_and_the_split_rule():
    interleaved = one_hot_logits([i % 10 for i in range(200)])  # every split holds every class equally
    assert inception_score(interleaved) == pytest.approx((10.0, 0.0), abs=1e-9)
    assert inception_score(one_hot_logits([3] * 200)) == pytest.approx((1.0, 0.0), abs=1e-12)  # identical rows
    sorted_by_class = one_hot_logits(sorted(i % 10 for i in range(200)))  # split k holds class k alone
    assert inception_score(sorted_by_class) == pytest.approx((1.0, 0.0), abs=1e-9)
    assert inception_score(sorted_by_class, splits=1)[0] == pytest.approx(10.0, abs=1e-9)  # the splits decide
    two_halves = one_hot_logits([0] * 100 + [i % 2 for i in range(100)])  # 5 splits of 1, 5 of 2
    assert inception_score(two_halves) == pytest.approx((1.5, 0.5), abs=1e-9)  # standard deviation with ddof 0
    with pytest.raises(ValueError, match="at least 10 samples of class logits"):
        inception_score(torch.zeros(9, 10))


def test_inception_score_equals_torch_fidelity_s():
    fidelity = pytest.importorskip("torch_fidelity.metric_isc")
    logits = torch.randn(1003, 1008, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    expected = fidelity.isc_features_to_metric(logits, splits=10, shuffle=False)
    mean, std = inception_score(logits)
    assert mean == pytest.approx(expected["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(expected["inception_score_std"], rel=1e-9)
    assert inception_score(logits.flip(0))[0] != pytest.approx(mean, rel=1e-6)  # the order is the sample index


def test_precision_recall_closed_forms():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    generated = torch.tensor([[0.5], [10.0], [11.0], [12.0]])
    # real radii (k = 1) are 1: only 0.5 lies in a real ball; the generated ball of 0.5 (radius 9.5) holds all
    assert precision_recall(real, generated, k=1) == (0.25, 1.0)
    assert precision_recall(generated, real, k=1) == (1.0, 0.25)  # the roles swap
    assert precision_recall(real, real, k=1) == (1.0, 1.0)
    with pytest.raises(ValueError, match="need more than 3 samples"):
        precision_recall(real[:3], generated)
    with pytest.raises(ValueError, match="N × d of the same d"):
        precision_recall(real, torch.zeros(4, 2))


def test_precision_recall_equal_torch_fidelity_s():
    fidelity = pytest.importorskip("torch_fidelity.metric_prc")
    generator = torch.Generator().manual_seed(2)
    real = torch.randn(300, 16, generator=generator, dtype=torch.float64)
    generated = 1.3 * torch.randn(250, 16, generator=generator, dtype=torch.float64) + 0.4
    expected = fidelity.prc_features_to_metric(generated, real, prc_neighborhood=3, prc_batch_size=100,
                                               save_cpu_ram=False, verbose=False)
    precision, recall = precision_recall(real, generated)
    # torch-fidelity averages in float32 (0.272 reads 0.27200001); one sample more or less moves a share by 1/300
    assert (precision, recall) == (pytest.approx(expected["precision"], abs=1e-6),
                                   pytest.approx(expected["recall"], abs=1e-6))
    assert 0 < precision < 1 and 0 < recall < 1 and precision != recall  # neither test is empty


def test_the_real_set_s_radii_are_computed_once_and_give_the_same_precision_recall():
    from pid_diffusion.evaluation import metrics

    generator = torch.Generator().manual_seed(3)
    real = metrics.RealFeatures(torch.randn(300, 8, generator=generator), "real.npz")
    generated = [torch.randn(200, 8, generator=generator) + shift for shift in (0.0, 0.5)]
    computed = []
    original = metrics._neighbour_radii
    metrics._neighbour_radii = lambda features, k: computed.append(len(features)) or original(features, k)
    try:
        options = metrics.MetricOptions(("pr",))
        answers = [options.measure(features, None, real, 0) for features in generated]
    finally:
        metrics._neighbour_radii = original
    assert computed == [300, 200, 200]  # the real set's once, each generated set's once
    for features, answer in zip(generated, answers):
        assert (answer["precision"][0], answer["recall"][0]) == metrics.precision_recall(real.features, features)
    assert answers[0] != answers[1]
    assert real.identity == dict(real_images="real.npz", real_sha256=real.identity["real_sha256"])
    assert metrics.RealFeatures(real.features + 1e-9, "real.npz").identity != real.identity


def test_the_vgg16_detector_loads_nvidia_s_torchscript_file_and_names_it_when_missing(tmp_path):
    from pid_diffusion.evaluation.detectors import load_detector

    class StandIn(torch.nn.Module):
        def forward(self, images, return_features: bool = True):
            return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)

    torch.jit.script(StandIn()).save(str(tmp_path / "vgg16.pt"))
    detector = load_detector("vgg16", str(tmp_path / "vgg16.pt"))
    images = torch.rand(3, 3, 8, 8) * 255
    assert torch.equal(detector(images, return_features=True), StandIn()(images))
    with pytest.raises(FileNotFoundError, match="VGG16 detector vgg16.pt not found at .*stylegan2-ada-pytorch.*vgg16.pt"):
        load_detector("vgg16", str(tmp_path / "missing.pt"))


def test_kid_is_the_unbiased_mmd2_written_out_and_equals_torch_fidelity_s():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(6, 4, generator=generator, dtype=torch.float64) + 0.5

    def kernel(a, b):
        return (float(a @ b) / 4 + 1) ** 3

    m = 6
    within = sum(kernel(s[i], s[j]) for s in (x, y) for i, j in itertools.permutations(range(m), 2))
    cross = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
    written_out = within / (m * (m - 1)) - 2 * cross / m ** 2
    assert unbiased_mmd2(x, y) == pytest.approx(written_out, rel=1e-12)
    # a subset of every sample: each subset is a permutation of the sets, so every one gives the written-out value
    assert kernel_inception_distance(y, x, subset_size=6, subsets=5) == (
        pytest.approx(written_out, rel=1e-12), pytest.approx(0.0, abs=1e-12), 6)
    assert kernel_inception_distance(x, x, subset_size=6, subsets=1)[0] < 0 < written_out  # unbiased: can dip below 0

    fidelity = pytest.importorskip("torch_fidelity.metric_kid")
    real = torch.randn(120, 8, generator=generator, dtype=torch.float64)
    generated = torch.randn(100, 8, generator=generator, dtype=torch.float64) * 1.2
    expected = fidelity.kid_features_to_metric(generated, real, kid_subsets=20, kid_subset_size=50, rng_seed=7,
                                               verbose=False)
    mean, std, size = kernel_inception_distance(real, generated, subset_size=50, subsets=20, seed=7)
    assert (mean, std, size) == (pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-10),
                                 pytest.approx(expected["kernel_inception_distance_std"], rel=1e-8), 50)
    assert kernel_inception_distance(real, generated, subset_size=50, subsets=20, seed=7)[0] == mean  # same seed
    assert kernel_inception_distance(real, generated, subset_size=50, subsets=20, seed=8)[0] != mean  # another
    assert kernel_inception_distance(real, generated)[2] == 100  # min(n_real, n_generated, 1000)
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_inception_distance(real[:1], generated)


def test_kid_from_the_whole_sets_kernels_equals_kid_from_each_subset_s(monkeypatch):
    """Small sets (the digits demo) sum each subset's blocks of the whole sets' kernels; large ones (50,000 samples)
    compute each subset's kernels: one answer."""
    from pid_diffusion.evaluation import metrics

    generator = torch.Generator().manual_seed(5)
    real = torch.randn(150, 16, generator=generator, dtype=torch.float64)
    generated = torch.randn(130, 16, generator=generator, dtype=torch.float64) * 1.1 + 0.2
    whole = kernel_inception_distance(real, generated, subset_size=60, subsets=30, seed=4)
    called = []
    monkeypatch.setattr(metrics, "unbiased_mmd2", lambda x, y: called.append(1) or unbiased_mmd2(x, y))
    assert kernel_inception_distance(real, generated, subset_size=60, subsets=30, seed=4) == whole and not called
    monkeypatch.setattr(metrics, "KID_WHOLE_KERNELS", 150 ** 2)  # too small for these sets: subset by subset
    by_subset = kernel_inception_distance(real, generated, subset_size=60, subsets=30, seed=4)
    assert len(called) == 30 and whole[2] == by_subset[2] == 60
    assert whole[:2] == (pytest.approx(by_subset[0], rel=1e-12), pytest.approx(by_subset[1], rel=1e-10))


class BiasedStandInInception(torch.nn.Module):
    """Called like NVIDIA's TorchScript Inception: pool features with return_features=True, else the softmax of
    its `output` layer, with that layer's bias unless no_output_bias (which StyleGAN3's Inception Score sets)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(4)
        self.projection = torch.nn.Parameter(torch.randn(48, 16, generator=generator))
        self.output = torch.nn.Linear(16, 8)
        with torch.no_grad():
            self.output.weight.copy_(3 * torch.randn(8, 16, generator=generator))
            self.output.bias.copy_(4 * torch.randn(8, generator=generator))

    def forward(self, images: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        features = torch.tanh(torch.nn.functional.adaptive_avg_pool2d(images / 255.0, 4).flatten(1) @ self.projection)
        if return_features:
            return features
        bias = None if no_output_bias else self.output.bias
        return torch.nn.functional.linear(features, self.output.weight, bias).softmax(dim=1)


def test_the_inception_score_comes_from_the_fid_pass_without_the_output_bias():
    from pid_diffusion.evaluation.detectors import detector_input, gives_class_logits
    from pid_diffusion.evaluation.statistics import DetectorTally

    detector = torch.jit.script(BiasedStandInInception().eval())
    images = torch.rand(60, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    tally = DetectorTally(detector, (3, 8, 8), keep_samples=True)
    tally.update(images, None, range(60))
    _, logits = tally.samples()  # the output layer applied to the FID pass's features: no second pass
    pixels = detector_input(images)
    with torch.no_grad():
        unbiased = detector(pixels, no_output_bias=True).to(torch.float64)
        biased = detector(pixels).to(torch.float64)
    assert inception_score(logits) == pytest.approx(inception_score(unbiased.log()), rel=1e-5)  # the network's own
    assert inception_score(logits)[0] != pytest.approx(inception_score(biased.log())[0], rel=1e-3)  # the bias matters
    assert gives_class_logits(detector) and not gives_class_logits(torch.jit.script(torch.nn.Identity()))


def test_images_are_read_from_a_samples_file_a_folder_or_a_zip_alike(tmp_path):
    import zipfile

    import numpy as np
    from PIL import Image

    from pid_diffusion.evaluation.sampling import read_images

    pixels = (np.arange(5 * 4 * 6 * 3) % 256).astype(np.uint8).reshape(5, 4, 6, 3)
    np.savez(tmp_path / "samples_5x4x6x3.npz", pixels, np.arange(5))
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        for name in sorted(os.listdir(folder)):
            archive.write(folder / name, name)
    for path in (tmp_path / "samples_5x4x6x3.npz", folder, tmp_path / "images.zip"):
        assert torch.equal(read_images(str(path)), torch.from_numpy(pixels)), path
    Image.fromarray(pixels[0, :, :4]).save(folder / "999.png")  # another size
    with pytest.raises(ValueError, match="images of several sizes or modes"):
        read_images(str(folder))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        read_images(str(tmp_path / "empty"))
    np.savez(tmp_path / "floats.npz", pixels.astype(np.float32))
    with pytest.raises(ValueError, match="not a samples file"):
        read_images(str(tmp_path / "floats.npz"))
    with pytest.raises(FileNotFoundError, match="no such file or folder of images"):
        read_images(str(tmp_path / "missing"))


TINY_HUB = '''
import torch


class TinyViT(torch.nn.Module):
    """Stands in for DINOv2 ViT-L/14: a 224 × 224 image → a class token of FEATURES values."""

    def __init__(self):
        super().__init__()
        self.project = torch.nn.Linear(3 * 4 * 4, FEATURES)

    def forward(self, x):
        return self.project(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def dinov2_vitl14(pretrained=True, **kwargs):
    assert not pretrained, "the test loads its own weights"
    return TinyViT()
'''


def tiny_hub(folder, features):
    folder.mkdir()
    (folder / "hubconf.py").write_text(TINY_HUB.replace("FEATURES", str(features)))
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tiny_hub_{features}", folder / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = module.dinov2_vitl14(pretrained=False)
    torch.save(network.state_dict(), folder / "weights.pth")
    return network


def test_fd_dinov2_s_detector_loads_from_a_local_hub_and_preprocesses_as_edm2(tmp_path):
    import numpy as np
    from PIL import Image

    from pid_diffusion.evaluation.detectors import DINOv2Detector, load_detector

    network = tiny_hub(tmp_path / "hub", 1024)
    detector = load_detector("dinov2", str(tmp_path / "hub" / "weights.pth"), dinov2_repo=str(tmp_path / "hub"))
    pixels = torch.randint(0, 256, (3, 3, 20, 20), generator=torch.Generator().manual_seed(6)).to(torch.float32)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    resized = torch.nn.functional.interpolate(pixels, size=(224, 224), mode="bicubic", antialias=True)
    assert torch.allclose(detector.preprocess(pixels), (resized / 255 - mean) / std, atol=1e-6)
    assert not torch.equal(resized, resized.round())  # the torch path keeps the floats (not re-quantised)
    with torch.no_grad():
        features = detector(pixels)
        assert features.shape == (3, 1024) and features.dtype == torch.float64
        assert torch.allclose(features, network(detector.preprocess(pixels)).double(), atol=1e-6)  # its weights
    pil = DINOv2Detector(network, "pil")
    by_pil = np.stack([np.asarray(Image.fromarray(image.astype(np.uint8)).resize((224, 224), Image.Resampling.BICUBIC))
                       for image in pixels.permute(0, 2, 3, 1).numpy()])
    expected = (torch.from_numpy(by_pil).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(pil.preprocess(pixels), expected, atol=1e-6)
    assert not torch.allclose(pil.preprocess(pixels), detector.preprocess(pixels), atol=1e-3)  # the two modes differ
    grey = pixels[:, :1]
    assert torch.equal(detector.preprocess(grey), detector.preprocess(grey.expand(-1, 3, -1, -1)))
    assert detector.question_name == "dinov2 (resize torch)" and pil.question_name == "dinov2 (resize pil)"

    tiny_hub(tmp_path / "other", 16)
    other = load_detector("dinov2", str(tmp_path / "other" / "weights.pth"), dinov2_repo=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="not N × 1,024"):
        other(pixels)
    with pytest.raises(ValueError, match="needs both --dinov2_repo"):
        load_detector("dinov2", dinov2_repo=str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="no hubconf.py there"):
        load_detector("dinov2", str(tmp_path / "hub" / "weights.pth"), dinov2_repo=str(tmp_path))


def test_fd_dinov2_is_measured_against_the_fd_dinov2_entry_of_edm2_s_statistics(tmp_path):
    import pickle

    import numpy as np

    from pid_diffusion.evaluation.detectors import load_detector
    from pid_diffusion.evaluation.statistics import reference_stats

    tiny_hub(tmp_path / "hub", 1024)
    dinov2 = load_detector("dinov2", str(tmp_path / "hub" / "weights.pth"), dinov2_repo=str(tmp_path / "hub"))
    mu_fid, mu_dino = np.zeros(2048), np.ones(1024)
    with open(tmp_path / "img64.pkl", "wb") as f:
        pickle.dump({"fid": {"mu": mu_fid, "sigma": np.eye(2048)}, "fd_dinov2": {"mu": mu_dino, "sigma": np.eye(1024)}},
                    f)
    mu, sigma = reference_stats("edm2-img64", str(tmp_path / "img64.pkl"), dinov2)
    assert np.array_equal(mu, mu_dino) and sigma.shape == (1024, 1024)
    mu, _ = reference_stats("edm2-img64", str(tmp_path / "img64.pkl"), load_detector("pixels"))
    assert np.array_equal(mu, mu_fid)  # another detector: the Inception entry
    with open(tmp_path / "fid-only.pkl", "wb") as f:
        pickle.dump({"fid": {"mu": mu_fid, "sigma": np.eye(2048)}}, f)
    with pytest.raises(ValueError, match="with a 'fd_dinov2' entry"):
        reference_stats("edm2-img64", str(tmp_path / "fid-only.pkl"), dinov2)
