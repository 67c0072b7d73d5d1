import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ")]


def test_ci_runs_exactly_the_readme_commands():
    setup, tests = _readme_commands()[:2]  # then the activation of the environment
    ci = [line.strip() for line in open(os.path.join(REPO, ".ci", "run")) if line.strip()
          and not line.startswith("#") and not line.startswith("set ") and not line.startswith("cd ")]
    assert ci == [setup, tests]


def test_model_zoo_readme_lists_every_file_the_code_looks_for():
    listed = open(os.path.join(REPO, "model_zoo", "README.md")).read()
    from pid_diffusion import lpips
    from pid_diffusion.evaluation.detectors import DIGITS_CLASSIFIER_FILE, INCEPTION_FILE, VGG16_FILE
    from pid_diffusion.evaluation.statistics import REFERENCE_STATS
    for name in (INCEPTION_FILE, VGG16_FILE, lpips.VGG16_WEIGHTS_FILE, lpips.LPIPS_WEIGHTS_FILE,
                 "edm-cifar10-32x32-uncond-vp.pkl", "edm-imagenet-64x64-cond-adm.pkl", "digits-ddpmpp.pt",
                 DIGITS_CLASSIFIER_FILE,
                 *(os.path.basename(path) for path, _ in REFERENCE_STATS.values())):
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


DOCUMENTS = ("README.md", *(os.path.join("docs", name) for name in sorted(os.listdir(os.path.join(REPO, "docs")))
                            if name.endswith(".md")), os.path.join("model_zoo", "README.md"))


def documented_commands():
    """(document, command) of every command in a code block of the README and docs/ that runs a script of the
    repository (a block: lines indented by four spaces; a trailing backslash continues the line)."""
    found = []
    for document in DOCUMENTS:
        lines = []
        for line in open(os.path.join(REPO, document)).read().splitlines():
            if not (line.startswith("    ") and line.strip()):
                lines.append("")
            elif lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + line.strip()
            else:
                lines.append(line.strip())
        # inline code that runs something: `mpirun -np 2 python scripts/cm_train.py`, `python scripts/x.py --flag`
        text = open(os.path.join(REPO, document)).read()
        lines += [span for span in re.findall(r"`([^`]+)`", text)
                  if re.match(r"(\w+=\S+ )*(python3?|\.venv/bin/python|mpirun|torchrun|bash) ", span)]
        for line in lines:
            for command in re.split(r"&&|;", line):
                if re.search(r"\b(scripts|benchmarks)/\w+\.(py|sh)\b", command):
                    found.append((document, command.strip()))
    return found


class Parsed(Exception):
    """A script's arguments parsed: stop before it does any work."""


def test_every_documented_command_names_a_script_that_exists_and_accepts_its_flags(monkeypatch):
    import argparse
    import importlib.util
    import shlex

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        original(parser, args, namespace)  # argparse's own errors (unknown or badly typed flags) exit with 2
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    commands = documented_commands()
    assert len(commands) > 20  # the README and docs are read
    checked = 0
    for document, command in commands:
        tokens = shlex.split(command)
        index = next(i for i, token in enumerate(tokens) if re.fullmatch(r"(scripts|benchmarks)/\w+\.(py|sh)", token))
        script, args = tokens[index], tokens[index + 1:]
        assert os.path.isfile(os.path.join(REPO, script)), (document, command)
        runner = tokens[index - 1] if index else ""
        if "torchrun" in tokens[:index]:  # torchrun starts the Python script itself
            runner = "python"
        if script.endswith(".sh"):
            assert runner == "bash", f"{document}: {command!r} runs a bash script without bash"
            continue
        assert runner in ("python", "python3", ".venv/bin/python"), \
            f"{document}: {command!r} runs {script} without python (the scripts are not executable)"
        if any(marker in command for marker in ("<", "…", "...")):  # a placeholder: only the script is checked
            continue
        spec = importlib.util.spec_from_file_location(f"documented_{checked}", os.path.join(REPO, script))
        module = importlib.util.module_from_spec(spec)
        monkeypatch.syspath_prepend(os.path.dirname(os.path.join(REPO, script)))
        spec.loader.exec_module(module)
        try:
            module.main(args) if "argv" in module.main.__code__.co_varnames else None
        except Parsed:
            checked += 1
        except SystemExit as e:  # --help exits 0
            if e.code == 0:
                checked += 1
                continue
            raise AssertionError(f"{document}: {command!r}: its flags are refused (exit {e.code})") from None
    assert checked > 10
