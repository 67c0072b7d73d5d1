"""EDM2's named configurations (the presets of EDM2's `generate_images.py`): one name gives the teacher
file, the guiding network and the guidance weight, for distillation (`cm_train.py --preset`), sampling
(`image_sample.py --preset`) and the FID walk (`fid_evaluation.py --preset`).

Each file is looked for in model_zoo/ first (where model_zoo/README.md says to put it) and otherwise
fetched once from the address EDM2 publishes it at. Guided presets of two kinds, with one formula
(pid_diffusion/guidance.py): `-guid-` pairs a class-conditional network with an unconditional XS one
(classifier-free guidance), `-autog-` with a smaller or shorter-trained network of the same labels
(autoguidance). `-fid` presets are EDM2's best by FID, `-dino` by FD_DINOv2; the figure EDM2 published
for each (63 network calls, 126 with a guide) is kept beside it.
"""

import dataclasses
import os

from .settings import option

EDM2_RELEASES = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions"
MODEL_ZOO = "model_zoo"


@dataclasses.dataclass(frozen=True)
class Preset:
    teacher: str
    """file name of the teacher in EDM2's releases"""
    guide: str = ""
    """file name of the guiding network ("" = none)"""
    guidance: float = 1.0
    published: str = ""
    """EDM2's figure for the preset, e.g. 'FID 3.53'"""

    @property
    def fid_dataset(self):
        """The --fid_dataset of EDM2's reference statistics for the preset's images."""
        return "edm2-img512" if self.teacher.startswith("edm2-img512") else "edm2-img64"

    @property
    def teacher_path(self):
        return release_path(self.teacher)

    @property
    def guide_path(self):
        return release_path(self.guide) if self.guide else ""


def release_path(file_name):
    """model_zoo/<file> if it is there, else the address EDM2 publishes it at (fetched once when used)."""
    local = os.path.join(MODEL_ZOO, file_name)
    return local if os.path.isfile(local) else f"{EDM2_RELEASES}/{file_name}"


PRESETS = {
    "edm2-img512-xs-fid": Preset("edm2-img512-xs-2147483-0.135.pkl", published="FID 3.53"),
    "edm2-img512-xs-dino": Preset("edm2-img512-xs-2147483-0.200.pkl", published="FD_DINOv2 103.39"),
    "edm2-img512-s-fid": Preset("edm2-img512-s-2147483-0.130.pkl", published="FID 2.56"),
    "edm2-img512-s-dino": Preset("edm2-img512-s-2147483-0.190.pkl", published="FD_DINOv2 68.64"),
    "edm2-img512-m-fid": Preset("edm2-img512-m-2147483-0.100.pkl", published="FID 2.25"),
    "edm2-img512-m-dino": Preset("edm2-img512-m-2147483-0.155.pkl", published="FD_DINOv2 58.44"),
    "edm2-img512-l-fid": Preset("edm2-img512-l-1879048-0.085.pkl", published="FID 2.06"),
    "edm2-img512-l-dino": Preset("edm2-img512-l-1879048-0.155.pkl", published="FD_DINOv2 52.25"),
    "edm2-img512-xl-fid": Preset("edm2-img512-xl-1342177-0.085.pkl", published="FID 1.96"),
    "edm2-img512-xl-dino": Preset("edm2-img512-xl-1342177-0.155.pkl", published="FD_DINOv2 45.96"),
    "edm2-img512-xxl-fid": Preset("edm2-img512-xxl-0939524-0.070.pkl", published="FID 1.91"),
    "edm2-img512-xxl-dino": Preset("edm2-img512-xxl-0939524-0.150.pkl", published="FD_DINOv2 42.84"),
    "edm2-img64-s-fid": Preset("edm2-img64-s-1073741-0.075.pkl", published="FID 1.58"),
    "edm2-img64-m-fid": Preset("edm2-img64-m-2147483-0.060.pkl", published="FID 1.43"),
    "edm2-img64-l-fid": Preset("edm2-img64-l-1073741-0.040.pkl", published="FID 1.33"),
    "edm2-img64-xl-fid": Preset("edm2-img64-xl-0671088-0.040.pkl", published="FID 1.33"),
    "edm2-img512-xs-guid-fid": Preset("edm2-img512-xs-2147483-0.045.pkl", "edm2-img512-xs-uncond-2147483-0.045.pkl",
                                      1.40, "FID 2.91"),
    "edm2-img512-xs-guid-dino": Preset("edm2-img512-xs-2147483-0.150.pkl", "edm2-img512-xs-uncond-2147483-0.150.pkl",
                                       1.70, "FD_DINOv2 79.94"),
    "edm2-img512-s-guid-fid": Preset("edm2-img512-s-2147483-0.025.pkl", "edm2-img512-xs-uncond-2147483-0.025.pkl",
                                     1.40, "FID 2.23"),
    "edm2-img512-s-guid-dino": Preset("edm2-img512-s-2147483-0.085.pkl", "edm2-img512-xs-uncond-2147483-0.085.pkl",
                                      1.90, "FD_DINOv2 52.32"),
    "edm2-img512-m-guid-fid": Preset("edm2-img512-m-2147483-0.030.pkl", "edm2-img512-xs-uncond-2147483-0.030.pkl",
                                     1.20, "FID 2.01"),
    "edm2-img512-m-guid-dino": Preset("edm2-img512-m-2147483-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl",
                                      2.00, "FD_DINOv2 41.98"),
    "edm2-img512-l-guid-fid": Preset("edm2-img512-l-1879048-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl",
                                     1.20, "FID 1.88"),
    "edm2-img512-l-guid-dino": Preset("edm2-img512-l-1879048-0.035.pkl", "edm2-img512-xs-uncond-2147483-0.035.pkl",
                                      1.70, "FD_DINOv2 38.20"),
    "edm2-img512-xl-guid-fid": Preset("edm2-img512-xl-1342177-0.020.pkl", "edm2-img512-xs-uncond-2147483-0.020.pkl",
                                      1.20, "FID 1.85"),
    "edm2-img512-xl-guid-dino": Preset("edm2-img512-xl-1342177-0.030.pkl", "edm2-img512-xs-uncond-2147483-0.030.pkl",
                                       1.70, "FD_DINOv2 35.67"),
    "edm2-img512-xxl-guid-fid": Preset("edm2-img512-xxl-0939524-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl",
                                       1.20, "FID 1.81"),
    "edm2-img512-xxl-guid-dino": Preset("edm2-img512-xxl-0939524-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl",
                                        1.70, "FD_DINOv2 33.09"),
    "edm2-img512-s-autog-fid": Preset("edm2-img512-s-2147483-0.070.pkl", "edm2-img512-xs-0134217-0.125.pkl", 2.10,
                                      "FID 1.34"),
    "edm2-img512-s-autog-dino": Preset("edm2-img512-s-2147483-0.120.pkl", "edm2-img512-xs-0134217-0.165.pkl", 2.45,
                                       "FD_DINOv2 36.67"),
    "edm2-img512-xxl-autog-fid": Preset("edm2-img512-xxl-0939524-0.075.pkl", "edm2-img512-m-0268435-0.155.pkl", 2.05,
                                        "FID 1.25"),
    "edm2-img512-xxl-autog-dino": Preset("edm2-img512-xxl-0939524-0.130.pkl", "edm2-img512-m-0268435-0.205.pkl", 2.30,
                                         "FD_DINOv2 24.18"),
    "edm2-img512-s-uncond-autog-fid": Preset("edm2-img512-s-uncond-2147483-0.070.pkl",
                                             "edm2-img512-xs-uncond-0134217-0.110.pkl", 2.85, "FID 3.86"),
    "edm2-img512-s-uncond-autog-dino": Preset("edm2-img512-s-uncond-2147483-0.090.pkl",
                                              "edm2-img512-xs-uncond-0134217-0.125.pkl", 2.90, "FD_DINOv2 90.39"),
    "edm2-img64-s-autog-fid": Preset("edm2-img64-s-1073741-0.045.pkl", "edm2-img64-xs-0134217-0.110.pkl", 1.70,
                                     "FID 1.01"),
    "edm2-img64-s-autog-dino": Preset("edm2-img64-s-1073741-0.105.pkl", "edm2-img64-xs-0134217-0.175.pkl", 2.20,
                                      "FD_DINOv2 31.85"),
}
"""EDM2's presets by name (its generate_images.py), with EDM2's published figure."""

ALIASES = {
    **{f"edm2-img64-{size}": f"edm2-img64-{size}-fid" for size in ("s", "m", "l", "xl")},
    **{f"edm2-img512-{size}": f"edm2-img512-{size}-fid" for size in ("xs", "s", "m", "l", "xl", "xxl")},
    "edm2-img64-s-autog": "edm2-img64-s-autog-fid",
}
"""The names scripts/distill_pid_diffusion.sh used before it took every preset."""


def preset_named(name):
    """The Preset of a name (or an alias); ValueError listing the names otherwise."""
    preset = PRESETS.get(ALIASES.get(name, name))
    if preset is None:
        raise ValueError(f"unknown --preset {name!r}; EDM2's presets: {', '.join(PRESETS)} (and the aliases "
                         f"{', '.join(ALIASES)})")
    return preset


@dataclasses.dataclass(kw_only=True)
class PresetOptions:
    HELP_GROUP = "EDM2 presets"

    preset: str = option("", "an EDM2 configuration by name (EDM2's generate_images.py presets, e.g. edm2-img512-xs-fid, "
                             "edm2-img512-s-guid-fid, edm2-img64-s-autog-fid): sets the teacher, its guide and "
                             "--guidance (model_zoo/ files, else EDM2's addresses) and --fid_dataset; explicit flags win")

    def preset_values(self, model_flag):
        """{flag: value} that --preset sets (`model_flag` names the teacher's flag); {} without a preset."""
        if not self.preset:
            return {}
        preset = preset_named(self.preset)
        return {model_flag: preset.teacher_path, "guide_model_path": preset.guide_path, "guidance": preset.guidance,
                "fid_dataset": preset.fid_dataset}


def describe_presets():
    """One line per preset: name, EDM2's figure, teacher address, guide address and weight (for downloading)."""
    lines = []
    for name, preset in PRESETS.items():
        guide = f"  guide {EDM2_RELEASES}/{preset.guide}  guidance {preset.guidance:g}" if preset.guide else ""
        lines.append(f"{name} ({preset.published}): {EDM2_RELEASES}/{preset.teacher}{guide}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe_presets())
