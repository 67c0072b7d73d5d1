"""Teacher families: everything that knows one family of networks, behind one small interface.

A family says how its networks are built from their recorded constructor keywords (a "config"),
how the official flags describe one, which network classes its snapshot `.pkl` files may hold, how
its state-dict keys map onto the raw network, how its raw network becomes a PID student, and builds
its frozen teacher: a module called D(x, σ, class_labels) with `img_channels`, `img_resolution`
and `label_dim`, which every sampler and the PID loss use as they are.

A config names its family under FAMILY_KEY; configs without the key (every file written so far)
are EDM's. Adding a family is one module with a `TeacherFamily` subclass and one `register` call
below.
"""

import dataclasses

from ..files import ModelFileError, TeacherLoadError

FAMILY_KEY = "family"
DEFAULT_FAMILY = "edm"
"""The family of configs that name none, and the one the official network flags describe."""
MAX_LISTED = 5


class TeacherFamily:
    """The interface of a family (see the module docstring); a subclass implements every method."""

    name = None
    snapshot_classes = ()
    """Class names of the network stored in the family's snapshot `.pkl` files."""
    architecture_flags = None
    """The dataclass of the flags that describe the family's networks for files that do not record one."""
    sampling_protocol = {}
    """The sampling and evaluation defaults of the family's models (teachers and their students) where they differ
    from the original PID code's, by flag name (sampler, steps, clip_denoised, seed, num_samples, detector_feed,
    seed_ranges, ...): image_sample.py, fid_evaluation.py and FID during training take them for the flags not
    given."""
    rewrites_weights_in_training = False
    """Whether its networks rewrite their own weights in every training-mode call (EDM2's forced weight
    normalisation): a student of such a family is called once per step (--batched_student True)."""

    def check_flag_names(self, flags):
        """Refuse names in `flags` that are not the family's architecture flags."""
        valid = sorted(field.name for field in dataclasses.fields(self.architecture_flags))
        unknown = sorted(set(flags) - set(valid))
        if unknown:
            raise TypeError(f"unknown network flag(s) {unknown}; valid: {valid}")

    def config_from_flags(self, flags):
        """The config of the network that the architecture flags `flags` (those given) describe."""
        raise NotImplementedError

    def from_snapshot(self, snapshot, source):
        """(config, state dict) of the teacher in a snapshot `.pkl` read by edm_pickle.read_snapshot."""
        raise NotImplementedError

    def check_flags(self, source, config, flags):
        """Refuse architecture flags given for a file whose recorded config they contradict."""
        raise NotImplementedError

    def network_state_dict(self, state_dict):
        """A state dict of the teacher (or of a bare network) with the raw network's keys."""
        raise NotImplementedError

    def build_teacher(self, config, state_dict, source, attention_implementation="sdpa"):
        """The frozen teacher (eval mode, no gradients) of a config and its state dict."""
        raise NotImplementedError

    def student_config(self, teacher_config, dropout):
        """The config of the raw student network that distils a teacher of `teacher_config`."""
        raise NotImplementedError

    def build_network(self, config, attention_implementation="sdpa"):
        """The raw network (no preconditioning) of a student config."""
        raise NotImplementedError

    def image_decoder(self, config, vae_path=""):
        """None for a network of pixels; for one of latents, the codec whose call turns its samples into
        uint8 pixels (pid_diffusion/latents.py); `vae_path` replaces the autoencoder the file names."""
        return None


_FAMILIES = {}


def register(family):
    _FAMILIES[family.name] = family
    return family


def family_named(name):
    if name not in _FAMILIES:
        raise ModelFileError(f"unknown network family {name!r}; this pid_diffusion knows {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def family_of(config):
    """The family of a recorded config."""
    return family_named(config.get(FAMILY_KEY, DEFAULT_FAMILY))


def family_of_snapshot(class_name, source):
    """The family whose snapshot files hold networks of class `class_name`."""
    for family in _FAMILIES.values():
        if class_name in family.snapshot_classes:
            return family
    known = ", ".join(name for family in _FAMILIES.values() for name in family.snapshot_classes)
    raise TeacherLoadError(f"{source}: the snapshot holds a {class_name}; PID distils the teachers of the families it "
                         f"knows ({known}), e.g. EDM's edm-*.pkl releases")


def describe_mismatch(expected, found):
    """The first missing, unexpected and wrongly shaped keys between two state dicts."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k}: file {tuple(found[k].shape)} vs network {tuple(expected[k].shape)}"
              for k in expected if k in found and found[k].shape != expected[k].shape]
    lines = []
    for title, items in (("missing from the file", missing), ("not in the network", unexpected),
                         ("shape differs", shapes)):
        if items:
            more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
            lines.append(f"  {title}: {', '.join(items[:MAX_LISTED])}{more}")
    return "\n".join(lines)


def load_strictly(module, state_dict, source, what, hint=None, error=ModelFileError):
    """module.load_state_dict(strict=True), or `error` listing the first missing, unexpected and wrongly
    shaped keys (instead of torch's full dump), followed by hint() if given."""
    problems = describe_mismatch(module.state_dict(), state_dict)
    if problems:
        raise error(f"{source}: the weights do not fit {what}:\n{problems}{hint() if hint else ''}")
    module.load_state_dict(state_dict, strict=True)


from .edm import EDM  # noqa: E402  (a family module uses the helpers above)
from .edm2 import EDM2  # noqa: E402

register(EDM)
register(EDM2)
