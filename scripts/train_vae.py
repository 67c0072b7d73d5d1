"""Train the digits autoencoder: a small KL autoencoder (diffusers' AutoencoderKL) on the training split of
scikit-learn's digits, with EDM2's convention (images in [0, 1] in and out), for EDM2 latent teachers.

    python scripts/train_vae.py --out model_zoo/digits-vae

Prints and writes (<out>/reconstruction.json) its reconstruction error on the 360 held-out digits: the RMSE
in pixel levels and the digit FID of the reconstructions against the real digits. Refuses to replace an
existing folder. Needs diffusers: pip install -e '.[latent]'.
"""

import argparse
import os
import sys
import time

from pid_diffusion.startup import quiet_interrupt_while_importing

with quiet_interrupt_while_importing():
    import torch

    from pid_diffusion.digits import DigitsUnavailableError, load_digits
    from pid_diffusion.evaluation.detectors import load_detector
    from pid_diffusion.evaluation.statistics import DetectorTally, digits_reference_stats
    from pid_diffusion.latents import LatentsUnavailableError
    from pid_diffusion.vae_trainer import reconstruction_rmse, reconstructions, save_autoencoder, train_autoencoder


def digit_fid(vae, images, detector_path):
    detector = load_detector("digits", detector_path or None)
    tally = DetectorTally(detector, images.shape[1:])
    tally.update(reconstructions(vae, images))
    return tally.fid(digits_reference_stats(detector))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--out", default="model_zoo/digits-vae", help="folder to write (diffusers' save_pretrained)")
    parser.add_argument("--steps", type=int, default=4000, help="optimizer steps")
    parser.add_argument("--batch_size", type=int, default=128, help="digits per step")
    parser.add_argument("--latent_channels", type=int, default=4, help="channels of the 4×4 latents")
    parser.add_argument("--kl_weight", type=float, default=1e-4, help="weight of the KL term (per element)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and batches")
    parser.add_argument("--detector_path", default="", help="digits classifier for the reconstructions' digit FID "
                                                            "(default: model_zoo/)")
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        parser.error(f"--out {args.out} exists; choose another folder or remove it first")
    for name in ("steps", "batch_size", "latent_channels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    try:
        images, _ = load_digits("train")
        held_out, _ = load_digits("held_out")
        started = time.time()
        vae = train_autoencoder(images, args.steps, args.batch_size, kl_weight=args.kl_weight,
                                latent_channels=args.latent_channels, seed=args.seed,
                                progress=lambda step, loss: print(f"step {step:>6d}  loss {loss:.6f}", flush=True))
        report = dict(steps=args.steps, seconds=round(time.time() - started, 1),
                      held_out_rmse_pixel_levels=reconstruction_rmse(vae, held_out),
                      held_out_digit_fid=digit_fid(vae, held_out, args.detector_path))
    except (DigitsUnavailableError, LatentsUnavailableError, OSError) as e:
        sys.exit(f"error: {e}")
    save_autoencoder(vae, args.out, report)
    print(f"trained in {report['seconds']:.0f} s; held-out digits reconstructed with RMSE "
          f"{report['held_out_rmse_pixel_levels']:.2f} pixel levels, digit FID {report['held_out_digit_fid']:.3f}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
