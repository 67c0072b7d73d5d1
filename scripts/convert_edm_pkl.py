"""Convert an EDM network snapshot (.pkl) into a .pt file that `torch.load(weights_only=True)` reads.

    python scripts/convert_edm_pkl.py model_zoo/edm-cifar10-32x32-uncond-vp.pkl [out.pt]

The output holds {"state_dict": EDMPrecond state dict, "config": EDMPrecond keyword arguments}
and loads with `pid_diffusion.checkpoint.load_teacher` (no network flags needed). Nothing inside
the .pkl is executed.
"""

import argparse
import os
import sys

from pid_diffusion.startup import quiet_interrupt_while_importing

with quiet_interrupt_while_importing():
    from pid_diffusion.checkpoint import TeacherLoadError, read_teacher_file
    from pid_diffusion.files import atomic_torch_save


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("pkl", help="EDM network snapshot, e.g. model_zoo/edm-cifar10-32x32-uncond-vp.pkl")
    parser.add_argument("out", nargs="?", help="output .pt (default: the input path with .pt)")
    args = parser.parse_args(argv)
    out = args.out or os.path.splitext(args.pkl)[0] + ".pt"
    try:
        config, state_dict = read_teacher_file(args.pkl)
    except TeacherLoadError as e:
        sys.exit(f"error: {e}")
    atomic_torch_save({"state_dict": state_dict, "config": config}, out)
    print(f"wrote {out}: {config['model_type']} at {config['img_resolution']}x{config['img_resolution']}, "
          f"{sum(v.numel() for v in state_dict.values()):,} values")


if __name__ == "__main__":
    main()
