r"""Sample images from a PID student (one step) or its teacher (any official sampler).

    python scripts/image_sample.py --training_mode one_shot_pinn_edm_edm_one_shot \
        --model_path experiment/pid_cifar10/ema_0.99995_800000.pt --num_samples 50000 --batch_size 500
    mpirun -np 4 python scripts/image_sample.py --training_mode one_shot_pinn_edm_edm_teacher \
        --model_path model_zoo/edm-cifar10-32x32-uncond-vp.pkl --sampler heun_deter --steps 18
    python scripts/image_sample.py --preset edm2-img512-s-guid-fid --num_samples 64 --batch_size 16

Writes $OPENAI_LOGDIR/samples_{N}x{H}x{W}x3.npz (arr_0: uint8 NHWC, arr_1: labels when
class-conditional) and samples_grid.png; a folder that holds either already is refused unless
--overwrite True. Sample i depends only on (--seed, i): the same images come out whatever the batch
size or number of processes, and another seed gives other images. A student checkpoint's
architecture, σ_min and σ_max come from the run_config.json beside it (a different --sigma_min or
--sigma_max is refused); the network flags are needed only for files without one.
"""

import os

from pid_diffusion.startup import quiet_interrupt_while_importing

with quiet_interrupt_while_importing():
    from pid_diffusion import cli, dist
    from pid_diffusion.evaluation.sampling import (load_sampling_model, run_generation, samples_files_in,
                                                   samples_npz_path, save_samples_npz)
    from pid_diffusion.generate import check_class_label, save_grid
    from pid_diffusion.log import prepare_log_dir
    from pid_diffusion.process import run_script

GRID_FILE = "samples_grid.png"


def sample_to_folder(args, given, info):
    options = cli.sampling_options(args)
    cli.generation_request(args, given)  # its values are checked before the model is loaded
    loaded = load_sampling_model(args.training_mode, args.model_path, cli.network_flags(args, given), info.device,
                                 options, given, cli.guidance(args), args.vae_path)
    request = cli.generation_request(args, given, loaded)
    check_class_label(request.class_label, loaded.label_dim)  # before the output folder is made
    out_dir = dist.broadcast_object(cli.default_log_dir() if dist.is_main() else None)
    outputs = (samples_npz_path(out_dir, request.num_samples, loaded.output_shape(info.device)),
               os.path.join(out_dir, GRID_FILE))
    existing = list(dict.fromkeys([*samples_files_in(out_dir), *filter(os.path.exists, outputs)]))
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing[0]} exists (samples of an earlier run); nothing was replaced. Give another "
                              "folder (OPENAI_LOGDIR), or --overwrite True to replace it")
    if dist.is_main():
        prepare_log_dir(out_dir)
    images, labels, indices, _ = run_generation(loaded.model, loaded.shape, loaded.label_dim, request, loaded.options,
                                                info.device, decode=loaded.decode)
    images, labels = dist.gather_in_order(images, labels, indices)
    if dist.is_main():
        path = save_samples_npz(images, labels, out_dir)
        shown = min(64, len(images))
        caption = (f"{os.path.basename(args.model_path)}: samples {request.first_index}-{request.first_index + shown - 1} "
                   f"of seed {request.seed}, {loaded.options['sampler']}"
                   + (f" {loaded.options['steps']} steps" if loaded.options["sampler"] != "oneshot" else "")
                   + (" (class in the corner)" if labels is not None else ""))
        save_grid(images[:64], outputs[1], caption=caption, labels=None if labels is None else labels[:64])
        for earlier in sorted(set(existing) - set(outputs)):  # another N: the folder holds this run's samples alone
            os.remove(earlier)
            print(f"removed {os.path.basename(earlier)} (samples of an earlier run; --overwrite True)", flush=True)
        print(f"wrote {path} and {GRID_FILE} ({loaded.options['sampler']}, seed {request.seed})", flush=True)


def main(argv=None):
    args, given = cli.parse_sampling(argv, __doc__)
    run_script(lambda info: sample_to_folder(args, given, info))


if __name__ == "__main__":
    main()
