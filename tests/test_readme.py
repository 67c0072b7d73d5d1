import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ")]


def test_ci_runs_exactly_the_readme_commands():
    setup, tests = _readme_commands()
    ci = [line.strip() for line in open(os.path.join(REPO, ".ci", "run")) if line.strip()
          and not line.startswith("#") and not line.startswith("set ") and not line.startswith("cd ")]
    assert ci == [setup, tests]


def test_model_zoo_readme_lists_every_file_the_code_looks_for():
    listed = open(os.path.join(REPO, "model_zoo", "README.md")).read()
    from pid_diffusion import fid, lpips
    for name in (fid.INCEPTION_FILE, lpips.VGG16_WEIGHTS_FILE, lpips.LPIPS_WEIGHTS_FILE,
                 "edm-cifar10-32x32-uncond-vp.pkl", "edm-imagenet-64x64-cond-adm.pkl", "digits-ddpmpp.pt",
                 fid.DIGITS_CLASSIFIER_FILE,
                 *(os.path.basename(path) for path, _ in fid.REFERENCE_STATS.values())):
        assert name in listed, name
    for script in ("distill_pid_diffusion.sh", "image_sampling.sh", "fid_eval.sh", "quickstart.sh"):
        text = open(os.path.join(REPO, "scripts", script)).read()
        for path in re.findall(r"model_zoo/[\w./-]+\.(?:pkl|pt|npz|pth)", text):
            assert os.path.basename(path) in listed, (script, path)


def test_code_and_docs_cite_only_files_of_the_repository():
    """The project is self-contained: every docs/*.md it names exists, and no notes outside it are cited."""
    cited = set()
    for folder in ("pid_diffusion", "scripts", "benchmarks", "docs", "model_zoo", "tests", "."):
        root = os.path.join(REPO, folder)
        for name in os.listdir(root):
            if not name.endswith((".py", ".md", ".sh")) or name == "test_readme.py":
                continue
            text = open(os.path.join(root, name)).read()
            assert "official-pid" not in text, os.path.join(folder, name)
            cited |= set(re.findall(r"docs/[\w-]+\.md", text))
    assert "docs/differences.md" in cited
    assert all(os.path.isfile(os.path.join(REPO, path)) for path in cited), cited
