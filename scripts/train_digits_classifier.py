"""Train the digits detector: a small CNN classifier on the training split of scikit-learn's digits,
whose penultimate features give digit FID and whose decisions give conditional accuracy.

    python scripts/train_digits_classifier.py --out model_zoo/digits-classifier.pt

Prints the held-out accuracy. Refuses to replace an existing file unless --overwrite is given.
"""

import argparse
import os
import sys
import time

from pid_diffusion.startup import quiet_interrupt_while_importing

with quiet_interrupt_while_importing():
    import torch

    from pid_diffusion.digits import DigitsUnavailableError, accuracy, load_digits, save_classifier, train_classifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--out", default="model_zoo/digits-classifier.pt", help="classifier file to write")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and shifts")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not args.overwrite:
        sys.exit(f"error: {args.out} exists; pass --overwrite to replace it")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    try:
        images, labels = load_digits("train")
        held_images, held_labels = load_digits("held_out")
    except DigitsUnavailableError as e:
        sys.exit(f"error: {e}")
    started = time.time()
    model = train_classifier(images, labels, steps=args.steps, seed=args.seed)
    print(f"trained in {time.time() - started:.0f} s: train accuracy {accuracy(model, images, labels):.4f}, "
          f"held-out accuracy {accuracy(model, held_images, held_labels):.4f} ({len(held_labels)} digits)")
    save_classifier(model, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
