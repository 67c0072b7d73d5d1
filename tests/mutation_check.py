"""Does the suite catch wrong code? Apply each small change of MUTATIONS to a copy of the project, one at a
time, run the tests that cover it, and report every change that no test noticed (a survivor).

    .venv/bin/python tests/mutation_check.py              # every mutation, two at a time
    .venv/bin/python tests/mutation_check.py --jobs 8 ema_rate loss_norm   # some of them, by name

The copies live in a temporary folder, never in this checkout, and have no ../shared beside them, so the
tests run as CI runs them: without the reference fixtures. Exit status 0 when every mutation was caught,
1 when one survived, 2 when one no longer applies (its code changed: update its entry). It takes about
8 minutes on two cores with --jobs 2; it is not part of the README's test command.
"""

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("pid_diffusion", "scripts", "tests", "model_zoo", "setup.py", "README.md")


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str       # relative to the repository
    old: str        # must occur exactly once in the file
    new: str
    tests: tuple    # pytest node ids or files, relative to the repository


M = Mutation
FORMULAS = "tests/test_formulas.py"
SAMPLERS = "tests/test_samplers.py"
OPTIONS = "tests/test_options.py"
CLI = "tests/test_cli.py"
EDM_LOSS = "tests/test_digits.py::test_edm_loss_against_a_hand_computation"
FID_QUESTIONS = "tests/test_sampling_fid.py::test_a_results_row_answers_only_the_question_it_measured"
LAUNCHERS = "tests/test_launchers.py"
WATCHING = "tests/test_watching.py"
EDM2 = "tests/test_edm2.py"
MUTATIONS = (
    # --- the table of the tests issue, row by row
    M("ema_rate", "pid_diffusion/ema.py", "weight = 1.0 - self.rate(rate, updates_before)",
      "weight = self.rate(rate, updates_before)", (FORMULAS,)),
    M("loss_norm", "pid_diffusion/trainer.py", "labels, self.config.loss_norm,", "labels, \"l2\",", (FORMULAS,)),
    M("weight_schedule", "pid_diffusion/trainer.py", "self.config.weight_schedule, lpips,", "\"karras\", lpips,",
      (FORMULAS,)),
    M("weighting_dropped", "pid_diffusion/losses.py", "return weight * distance", "return distance", (FORMULAS,)),
    M("last_level_never_drawn", "pid_diffusion/schedules.py", "indices = torch.randint(0, num_scales, (",
      "indices = torch.randint(0, num_scales - 1, (", (FORMULAS,)),
    M("optimizer_options_dropped", "pid_diffusion/loop.py",
      "options = dict(lr=config.lr, weight_decay=config.weight_decay, eps=config.opt_eps)",
      "options = dict(lr=config.lr)", (FORMULAS,)),
    M("lr_anneal_ignored", "pid_diffusion/loop.py", "return self.config.lr * (1 - min(step / self.config.lr_anneal_steps, 1.0))",
      "return self.config.lr", (FORMULAS,)),
    M("progressive_stuck", "pid_diffusion/trainer.py", "if config.scale_mode == \"fixed\":", "if True:", (FORMULAS,)),
    M("process_seed_ignored", "pid_diffusion/loop.py", "derived_seed(PROCESS, config.seed, self.info.rank)",
      "derived_seed(PROCESS, 0, self.info.rank)", (FORMULAS,)),
    M("step_seed_ignored", "pid_diffusion/loop.py", "seeded_generator(STEP, self.config.seed, step, self.device)",
      "seeded_generator(STEP, 0, step, self.device)", ("tests/test_reliability.py",)),
    M("sampling_seed_ignored", "pid_diffusion/generate.py", "[seeded_generator(SAMPLE, seed, index)",
      "[seeded_generator(SAMPLE, 0, index)", ("tests/test_reliability.py",)),
    M("churn_cap", "pid_diffusion/samplers.py", "min(s_churn / num_steps, math.sqrt(2) - 1)",
      "min(s_churn / num_steps, 1.0)", (SAMPLERS,)),
    M("churn_window", "pid_diffusion/samplers.py", "if s_tmin <= sigma <= s_tmax else 0.0", "if True else 0.0",
      (SAMPLERS,)),
    M("heun_s_noise", "pid_diffusion/samplers.py", "* s_noise * randn_like(x)", "* randn_like(x)", (SAMPLERS,)),
    M("dpm_s_noise", "pid_diffusion/samplers.py", "randn_like(x) * s_noise * (sigma_hat", "randn_like(x) * (sigma_hat",
      (SAMPLERS,)),
    M("dpm_midpoint", "pid_diffusion/samplers.py", "((sigma_hat ** (1 / 3) + sigma_next ** (1 / 3)) / 2) ** 3",
      "(sigma_hat + sigma_next) / 2", (SAMPLERS,)),
    M("ancestral_noise_size", "pid_diffusion/samplers.py", "x = x + randn_like(x) * sigma_up",
      "x = x + randn_like(x) * sigma_next", (SAMPLERS,)),
    M("multistep_renoising", "pid_diffusion/samplers.py", "math.sqrt(t_next ** 2 - sigma_min ** 2)", "t_next",
      (SAMPLERS,)),
    M("one_step_clamp", "pid_diffusion/samplers.py", "return denoiser(x, sigma, labels).clamp(-1, 1)",
      "return denoiser(x, sigma, labels)", (SAMPLERS,)),
    M("sampling_steps_fixed", "pid_diffusion/cli.py", "steps=args.steps,", "steps=18,", (OPTIONS,)),
    M("sampling_s_noise_ignored", "pid_diffusion/cli.py", "s_noise=args.s_noise,", "s_noise=1.0,", (OPTIONS,)),
    M("clip_denoised_ignored", "pid_diffusion/cli.py", "clip_denoised=args.clip_denoised)", "clip_denoised=True)",
      (OPTIONS,)),
    M("detector_feed_ignored", "pid_diffusion/evaluation/walk.py", "feed=resolve_feed(args.detector_feed, loaded.protocol)",
      "feed=resolve_feed(\"float\", loaded.protocol)", (FID_QUESTIONS,)),
    M("student_dropout_zero", "pid_diffusion/families/edm.py", "\"dropout\": dropout,", "\"dropout\": 0.0,", (FORMULAS,)),
    M("one_point_grid_at_sigma_min", "pid_diffusion/schedules.py", "torch.tensor([float(sigma_max)]",
      "torch.tensor([float(sigma_min)]", (SAMPLERS,)),
    M("noise_label_half_log", "pid_diffusion/precond.py", "noise_labels = t.log() / 4", "noise_labels = t.log() / 2",
      (FORMULAS, "tests/test_pid.py")),
    M("compile_never", "pid_diffusion/speed.py", "if module is None or not self.compile:", "if module is None:",
      ("tests/test_speed_options.py::test_compiled_step_equals_the_eager_step_with_micro_batches",)),
    M("preset_beats_given_flags", "pid_diffusion/cli.py", "presets.items() if name not in given}", "presets.items()}",
      (OPTIONS, CLI)),
    M("given_means_not_the_default", "pid_diffusion/settings.py", "if getattr(namespace, name) is not None}",
      "if getattr(namespace, name) not in (None, self.declared[name].default)}", (CLI,)),
    M("resume_compares_nothing", "pid_diffusion/loop.py",
      "return tuple(dict.fromkeys((*defining_settings(type(self.config)), \"network_config\")))",
      "return (\"network_config\",)",
      ("tests/test_run_folder.py::test_changed_settings_are_refused_or_recorded_never_restarted",)),
    M("digits_reference_from_training_split", "pid_diffusion/evaluation/statistics.py", "images, _ = load_digits(\"all\")",
      "images, _ = load_digits(\"train\")", (OPTIONS,)),
    M("student_output_scaled", "pid_diffusion/precond.py", "return start_weight * z + (1 - start_weight) * raw",
      "return 1.001 * (start_weight * z + (1 - start_weight) * raw)", (FORMULAS,)),
    M("teacher_at_partner_level", "pid_diffusion/losses.py", "target = teacher(x_t.detach(), t, class_labels)",
      "target = teacher(x_t_next.detach(), t_next, class_labels)", (FORMULAS,)),
    M("loss_summed_over_pixels", "pid_diffusion/losses.py", "distance = _mean_over_pixels((implied - target) ** 2)",
      "distance = ((implied - target) ** 2).flatten(1).sum(1)", (FORMULAS,)),
    M("l2_doubled", "pid_diffusion/losses.py", "distance = _mean_over_pixels((implied - target) ** 2)",
      "distance = 2 * _mean_over_pixels((implied - target) ** 2)", (FORMULAS,)),
    # --- the other options of the four scripts, and formulas the table did not list
    M("edm_c_skip", "pid_diffusion/networks/edm_precond.py", "c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)",
      "c_skip = sigma_data / (sigma ** 2 + sigma_data ** 2)", (FORMULAS,)),
    M("edm_c_out", "pid_diffusion/networks/edm_precond.py", "c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()",
      "c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2)", (FORMULAS,)),
    M("edm_c_noise", "pid_diffusion/networks/edm_precond.py", "c_noise = sigma.log() / 4", "c_noise = sigma.log() / 2",
      (FORMULAS,)),
    M("l1_is_l2", "pid_diffusion/losses.py", "distance = _mean_over_pixels((implied - target).abs())",
      "distance = _mean_over_pixels((implied - target) ** 2)", (FORMULAS,)),
    M("karras_weight_constant", "pid_diffusion/losses.py", "snr + 1.0 / sigma_data ** 2", "snr + 1.0 / sigma_data",
      (FORMULAS,)),
    M("partner_index_forward_at_the_end", "pid_diffusion/schedules.py",
      "torch.where(index + 1 == num_scales, index - 1, index + 1)", "index + 1", (FORMULAS,)),
    M("rho_ignored", "pid_diffusion/trainer.py", "self.config.rho, generator, self.device)",
      "7.0, generator, self.device)", (FORMULAS,)),
    M("sigma_range_ignored", "pid_diffusion/trainer.py", "num_scales, self.config.sigma_min, self.config.sigma_max,",
      "num_scales, 0.002, 80.0,", (FORMULAS,)),
    M("microbatch_gradients_averaged", "pid_diffusion/loop.py", "(loss * scale).backward()",
      "(loss * scale / len(starts)).backward()", ("tests/test_trainer.py::test_microbatches_sum_gradients_like_the_original",)),
    M("teacher_loss_weight", "pid_diffusion/losses.py", "(sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2",
      "(sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data)", (EDM_LOSS,)),
    M("teacher_loss_summed_over_pixels", "pid_diffusion/losses.py",
      "* _mean_over_pixels((denoised.to(images.dtype) - images) ** 2)",
      "* ((denoised.to(images.dtype) - images) ** 2).flatten(1).sum(1)", (EDM_LOSS,)),
    M("teacher_sigma_distribution", "pid_diffusion/losses.py", "(p_mean + p_std * log_normal_draws).exp()",
      "(p_mean + log_normal_draws).exp()", (EDM_LOSS,)),
    M("heun_second_order_dropped", "pid_diffusion/samplers.py", "(0.5 * d_cur + 0.5 * d_prime)", "d_cur", (SAMPLERS,)),
    M("euler_sign", "pid_diffusion/samplers.py", "x = x + (sigma_next - sigma) * to_d(", "x = x + (sigma - sigma_next) * to_d(",
      (SAMPLERS,)),
    M("sampling_sigma_max_ignored", "pid_diffusion/cli.py", "sigma_max=args.sigma_max, rho=args.rho,",
      "sigma_max=80.0, rho=args.rho,", (OPTIONS,)),
    M("sampling_rho_ignored", "pid_diffusion/cli.py", "rho=args.rho, s_churn", "rho=7.0, s_churn", (OPTIONS,)),
    M("sampling_churn_ignored", "pid_diffusion/cli.py", "s_churn=args.s_churn,", "s_churn=0.0,", (OPTIONS,)),
    M("num_samples_ignored", "pid_diffusion/cli.py", "GenerationRequest(value(\"num_samples\"),", "GenerationRequest(8,",
      (OPTIONS,)),
    M("detector_ignored", "pid_diffusion/evaluation/walk.py", "detector = load_detector(args.detector,",
      "detector = load_detector(\"inception\",", (FID_QUESTIONS,)),
    M("slurm_host_padding", "pid_diffusion/dist.py", "else prefix + first + suffix",
      "else prefix + str(int(first)) + suffix", (LAUNCHERS,)),
    M("slurm_port_ignores_step", "pid_diffusion/dist.py", "SLURM_PORT_BASE + (job + step) % SLURM_PORT_RANGE",
      "SLURM_PORT_BASE + job % SLURM_PORT_RANGE", (LAUNCHERS,)),
    M("srun_tasks_apart_unchecked", "pid_diffusion/dist.py", "        check_one_group(world)\n", "", (LAUNCHERS,)),
    M("evaluation_noise_of_another_seed", "pid_diffusion/trainer.py",
      "GenerationRequest(self.config.eval_samples, self.batch, self.config.seed)",
      "GenerationRequest(self.config.eval_samples, self.batch, self.config.seed + 1)", (WATCHING,)),
    M("evaluation_without_the_raw_network", "pid_diffusion/trainer.py", "for rate in self.ema.rates), (\"model\", None)]",
      "for rate in self.ema.rates)]", (WATCHING,)),
    M("evaluation_features_not_gathered", "pid_diffusion/trainer.py", "            tally.all_reduce()\n",
      "            pass\n", (WATCHING,)),
    M("grid_of_the_raw_network", "pid_diffusion/trainer.py", "name, rate = self.shown_networks()[0]",
      "name, rate = self.shown_networks()[-1]", (WATCHING,)),
    M("tensorboard_without_the_numbers", "pid_diffusion/log.py",
      "            self.scalars({k: v for k, v in row.items() if k != \"step\"}, row[\"step\"])\n", "",
      (WATCHING,)),
    M("fid_reference_ignored", "pid_diffusion/evaluation/walk.py",
      "reference_stats(args.fid_dataset, args.ref_path or None, detector, device=device)\n    measured_with",
      "reference_stats(args.fid_dataset, None, detector, device=device)\n    measured_with", (FID_QUESTIONS,)),
    M("fid_sample_count_ignored", "pid_diffusion/evaluation/walk.py",
      "request = dataclasses.replace(first, first_index=k * first.num_samples)",
      "request = dataclasses.replace(first, num_samples=8, first_index=k * first.num_samples)",
      (FID_QUESTIONS,)),
    # --- EDM2 teachers
    M("guidance_reversed", "pid_diffusion/guidance.py", ".lerp(guided, self.guidance)",
      ".lerp(guided, 1 / self.guidance)", (EDM2,)),
    M("forced_weight_normalisation_dropped", "pid_diffusion/networks/edm2.py",
      "                self.weight.copy_(normalize(weight))  # forced weight normalisation\n", "                pass\n",
      (EDM2,)),
    M("latents_decoded_without_unscaling", "pid_diffusion/latents.py",
      "unscaled = (latents.to(torch.float32) - self.bias.to(latents.device)) / self.scale.to(latents.device)",
      "unscaled = latents", (EDM2,)),
    # --- EDM2 proven (#39): the one-line errors a probe found passing the suite, and the conventions
    M("mp_sum_unscaled", "pid_diffusion/networks/edm2.py", "return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)",
      "return a.lerp(b, t)", (EDM2,)),
    M("constant_channel_zeros", "pid_diffusion/networks/edm2.py", "torch.cat([x, torch.ones_like(x[:, :1])], dim=1)",
      "torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)", (EDM2,)),
    M("edm2_unet_fed_x", "pid_diffusion/networks/edm2.py", "raw = self.unet((c_in * x).to(dtype),",
      "raw = self.unet(x.to(dtype),", (EDM2,)),
    M("latent_bias_read_as_zero", "pid_diffusion/families/edm2.py",
      'bias = np.asarray(state["bias"], dtype=np.float64).reshape(-1).tolist()', "bias = [0.0] * len(scale)",
      (EDM2,)),
    M("latents_decoded_as_minus_one_to_one", "pid_diffusion/latents.py",
      "decoded.to(torch.float32).clamp(0, 1).mul(PIXEL_LEVELS).to(torch.uint8)",
      "decoded.to(torch.float32).clamp(-1, 1).mul(127.5).add(128).clamp(0, 255).to(torch.uint8)", (EDM2,)),
    M("decoded_pixels_mapped_again", "pid_diffusion/generate.py", "    if images.dtype == torch.uint8:\n        return images\n",
      "", (EDM2,)),
    M("unconditional_guide_refused", "pid_diffusion/guidance.py", "if guide.label_dim not in (0, denoiser.label_dim):",
      "if guide.label_dim != denoiser.label_dim:", (EDM2,)),
    M("family_protocol_ignored", "pid_diffusion/evaluation/sampling.py",
      "options = sampler_options(training_mode, **{**options, **protocol})", "pass", (EDM2,)),
    M("sample_ranges_overlap", "pid_diffusion/generate.py", "indices = [first_index + index for index in batch]",
      "indices = list(batch)", (EDM2,)),
    M("preset_guide_dropped", "pid_diffusion/presets.py",
      '"guide_model_path": preset.guide_path, "guidance": preset.guidance,', "", (EDM2,)),
    # --- the host-free step and the CIFAR-10 testbed (#25)
    M("fp16_gradients_left_scaled", "pid_diffusion/fp16_step.py",
      "return scale.float(), scale.reciprocal().float().reshape(1)",
      "return scale.float(), torch.ones(1, device=scale.device)",
      ("tests/test_trainer.py::test_fp16_gradients_are_unscaled_before_the_update_and_the_norms",)),
    M("fp16_non_finite_step_applied", "pid_diffusion/loop.py",
      "discarded = overflowed if prior is None else overflowed | prior.overflowed",
      "discarded = torch.zeros_like(overflowed) if prior is None else prior.overflowed",
      ("tests/test_trainer.py::test_fp16_loss_scale_skips_a_non_finite_gradient_and_grows",)),
    # --- resumes and FID rows that keep their word (#40)
    M("resumed_optimizer_keeps_saved_settings", "pid_diffusion/loop.py",
      "group.update(weight_decay=self.config.weight_decay, eps=self.config.opt_eps)", "pass",
      ("tests/test_run_folder.py::test_optimizer_settings_changed_on_resume_are_checked_recorded_and_applied",)),
    M("earlier_resume_replaces_later_checkpoints", "pid_diffusion/loop.py", "if config.resume_checkpoint and later:",
      "if False:", ("tests/test_run_folder.py::test_resuming_an_earlier_step_in_its_folder_never_replaces_the_later_"
                    "checkpoints",)),
    M("later_sigma_applies_backwards", "pid_diffusion/checkpoint.py",
      "run_config = settings_at_step(run_config, checkpoint_step(path))", "pass",
      ("tests/test_run_folder.py::test_each_checkpoint_samples_at_the_noise_levels_it_was_trained_with",)),
    M("fid_row_by_file_name", "pid_diffusion/evaluation/walk.py", '"weights_sha256": weights}', "}", (FID_QUESTIONS,)),
    M("nan_fid_row_answers", "pid_diffusion/evaluation/results.py", "if not math.isfinite(float(row[table.value])):",
      "if False:", ("tests/test_sampling_fid.py::test_a_non_finite_fid_in_the_results_file_is_damage_reported_with_its_"
                    "line",)),
    # --- the fp16 step decided on the device (#43)
    M("first_fp16_step_applied_on_overflow", "pid_diffusion/loop.py",
      "attempt.applied = not bool(overflowed.item())", "attempt.applied = True",
      ("tests/test_trainer.py::test_fp16_forward_overflow_stops_instead_of_retrying_the_step_forever",)),
    M("speculated_step_kept_after_overflow", "pid_diffusion/loop.py",
      "discarded = overflowed if prior is None else overflowed | prior.overflowed",
      "discarded = overflowed", ("tests/test_fp16_step.py",)),
    M("discarded_step_random_numbers_kept", "pid_diffusion/loop.py",
      "        self._set_device_random_state(attempt.random_state)\n", "", ("tests/test_fp16_step.py",)),
    M("rollback_inexact", "pid_diffusion/fp16_step.py", "torch._foreach_mul_(self.copies, discarded)",
      "torch._foreach_mul_(self.copies, discarded * 0.999)", ("tests/test_fp16_step.py",)),
    M("skipped_step_moves_the_ema", "pid_diffusion/loop.py", "self.ema.update(attempt.step, kept)",
      "self.ema.update(attempt.step)", ("tests/test_fp16_step.py",)),
    M("skipped_step_counts_its_norms", "pid_diffusion/loop.py",
      "self.norm_totals += self._norms(parameters) * kept", "self.norm_totals += self._norms(parameters)",
      ("tests/test_fp16_step.py",)),
    M("loss_scale_growth_in_float32", "pid_diffusion/fp16_step.py",
      "torch.tensor(value, dtype=torch.float64, device=device)", "torch.tensor(value, device=device)",
      ("tests/test_fp16_step.py",)),
    M("speculation_past_a_log_step", "pid_diffusion/loop.py",
      "and following % cfg.log_interval != 0 and", "and", ("tests/test_fp16_step.py",)),
    M("discarded_loss_tallied", "pid_diffusion/loop.py",
      "finite, bad = torch.where(attempt.applied, finite, 0.0), bad & attempt.applied", "pass",
      ("tests/test_fp16_step.py",)),
    M("fp16_forward_overflow_retried", "pid_diffusion/loop.py",
      "if int(dist.all_reduce_sum((~torch.isfinite(loss)).long()).item()):", "if False:",
      ("tests/test_trainer.py::test_fp16_forward_overflow_stops_instead_of_retrying_the_step_forever",)),
    M("teacher_data_at_native_size", "pid_diffusion/teacher_trainer.py",
      'at_size(images, network["img_resolution"], network["img_channels"])', "images",
      ("tests/test_digits.py::test_teacher_trainer_at_another_resolution_makes_the_network_and_data_it_names",)),
    M("larger_digits_block_averaged", "pid_diffusion/digits.py", "return inverse @ grey @ inverse.T",
      "return F.avg_pool2d(grey, grey.shape[-1] // RESOLUTION)",
      ("tests/test_digits.py::test_larger_digits_are_judged_as_the_real_digits_they_were_made_from",)),
    M("benchmark_default_is_eager", "pid_diffusion/benchmark_modes.py",
      'preset_values(TrainConfig, "auto", device_type, use_fp16=base == "use_fp16")',
      'preset_values(TrainConfig, "eager", device_type, use_fp16=base == "use_fp16")',
      ("tests/test_speed_options.py::test_benchmark_modes_and_overrides",)),
    # --- the third reliability round's last items (2026-12-07)
    M("slow_divergence_ignored", "pid_diffusion/loop.py", "if loss > DIVERGENCE_FACTOR * lowest_logged_loss:", "if False:",
      ("tests/test_run_folder.py::test_a_loss_rising_slowly_stops_the_run_before_its_weights_are_saved",)),
    M("teacher_weights_not_defining", "pid_diffusion/trainer.py", "return (*super().defining_settings(), TEACHER_WEIGHTS)",
      "return super().defining_settings()",
      ("tests/test_run_folder.py::test_a_teacher_or_guide_replaced_at_the_same_path_is_a_changed_run",)),
    M("second_signal_says_nothing", "pid_diffusion/loop.py",
      "raise TrainingInterrupted(self._steps_lost(signal_number), signal_number)",
      "raise TrainingInterrupted(f\"stopped by {signal.Signals(signal_number).name}\", signal_number)",
      ("tests/test_run_folder.py::test_a_second_signal_before_the_save_stops_at_once_and_says_which_steps_are_lost",)),
    M("other_samples_files_kept", "scripts/image_sample.py", "os.remove(earlier)", "pass",
      ("tests/test_reliability.py::test_sampling_never_replaces_samples_unless_asked",)),
    M("shortened_row_accepted", "pid_diffusion/evaluation/results.py", "None in row or None in row.values()", "None in row",
      ("tests/test_sampling_fid.py::test_a_shortened_results_row_is_damage_not_a_row_of_the_originals_format",)),
    M("results_dir_ignored", "pid_diffusion/evaluation/walk.py", "out_dir = args.results_dir or args.exp_dir",
      "out_dir = args.exp_dir",
      ("tests/test_sampling_fid.py::test_a_walk_writes_its_results_outside_the_folder_it_measures_when_asked",)),
    M("ignored_flags_not_last", "pid_diffusion/settings.py", "return len(self.group_order) + 1", "return -1",
      ("tests/test_cli.py::test_help_groups_the_options_by_what_they_set_with_the_ignored_ones_last",)),
    M("loop_answers_not_recorded", "pid_diffusion/trainer.py", "        if step == self.step:  # FIDs of the weights",
      "        if False:  # FIDs of the weights", ("tests/test_watching.py::test_fid_during_training_equals_the_fid_walk",)),
    M("loop_answers_wrong_weights", "pid_diffusion/trainer.py",
      "weights[name] = weights_digest(shown) if dist.is_main() else None",
      "weights[name] = weights_digest(self.student) if dist.is_main() else None",
      ("tests/test_watching.py::test_fid_during_training_equals_the_fid_walk",)),
    # --- the metrics beside FID (2026-12-07)
    M("is_std_ddof_1", "pid_diffusion/evaluation/metrics.py", "return float(np.mean(scores)), float(np.std(scores))",
      "return float(np.mean(scores)), float(np.std(scores, ddof=1))",
      ("tests/test_metrics.py::test_inception_score_closed_forms_and_the_split_rule",)),
    M("pr_counts_itself", "pid_diffusion/evaluation/metrics.py", ".kthvalue(k + 1, dim=1)", ".kthvalue(k, dim=1)",
      ("tests/test_metrics.py::test_precision_recall_closed_forms",)),
    M("kid_biased", "pid_diffusion/evaluation/metrics.py", "off_diagonal = sum(float(kernel.sum() - kernel.diagonal().sum())",
      "off_diagonal = sum(float(kernel.sum())",
      ("tests/test_metrics.py::test_kid_is_the_unbiased_mmd2_written_out_and_equals_torch_fidelity_s",)),
    M("inception_score_with_the_output_bias", "pid_diffusion/evaluation/detectors.py",
      "return features.to(torch.float64) @ output_layer_weight(detector).to(features.device, torch.float64).T",
      "return detector.output(features).to(torch.float64)",
      ("tests/test_metrics.py::test_the_inception_score_comes_from_the_fid_pass_without_the_output_bias",)),
    M("dinov2_requantised", "pid_diffusion/evaluation/detectors.py",
      'x = torch.nn.functional.interpolate(x, size=(DINOV2_SIDE, DINOV2_SIDE), mode="bicubic", antialias=True)',
      'x = torch.nn.functional.interpolate(x, size=(DINOV2_SIDE, DINOV2_SIDE), mode="bicubic", antialias=True).round()',
      ("tests/test_metrics.py::test_fd_dinov2_s_detector_loads_from_a_local_hub_and_preprocesses_as_edm2",)),
    M("dinov2_against_inception_statistics", "pid_diffusion/evaluation/statistics.py",
      'entry = "fd_dinov2" if isinstance(detector, DINOv2Detector) else "fid"', 'entry = "fid"',
      ("tests/test_metrics.py::test_fd_dinov2_is_measured_against_the_fd_dinov2_entry_of_edm2_s_statistics",)),
    M("fd_dinov2_row_names_the_fid_detector", "pid_diffusion/evaluation/metrics.py",
      "return dict(self.against, resize=getattr(self.detector, \"resize\", \"\"))",
      "return dict(resize=getattr(self.detector, \"resize\", \"\"))",
      ("tests/test_digits.py::test_fd_dinov2_is_a_second_detector_on_the_same_samples_and_equals_dinov2_s_own_fid",)),
    M("second_detector_not_fed_by_the_walk", "pid_diffusion/evaluation/sampling.py",
      "for each in ([] if tally is None else [tally]) + list(more_tallies):",
      "for each in ([] if tally is None else [tally]):",
      ("tests/test_digits.py::test_fd_dinov2_is_a_second_detector_on_the_same_samples_and_equals_dinov2_s_own_fid",)),
    M("real_radii_recomputed", "pid_diffusion/evaluation/metrics.py", "        if k not in self._radii:\n",
      "        if True:\n",
      ("tests/test_metrics.py::test_the_real_set_s_radii_are_computed_once_and_give_the_same_precision_recall",)),
    M("range_summary_worst", "pid_diffusion/evaluation/walk.py",
      "best = min(values) if metric in LOWER_IS_BETTER else max(values)",
      "best = max(values) if metric in LOWER_IS_BETTER else min(values)",
      ("tests/test_edm2.py::test_the_fid_walk_measures_an_autoguided_teacher_as_its_own_question",)),
    M("kid_whole_kernels_keep_the_diagonal", "pid_diffusion/evaluation/metrics.py",
      "float(w @ kernel @ w - (w * kernel.diagonal()).sum())", "float(w @ kernel @ w)",
      ("tests/test_metrics.py::test_kid_from_the_whole_sets_kernels_equals_kid_from_each_subset_s",)),
    M("second_order_third_level_on_the_same_side", "pid_diffusion/schedules.py",
      "return torch.where(index == 0, 2, torch.where(index + 1 == num_scales, index - 2, index - 1))",
      "return torch.where(index + 1 == num_scales, index - 2, index + 2)",
      ("tests/test_formulas.py::test_the_three_point_difference_is_exact_on_a_quadratic_trajectory_where_the_two_point_one_errs",
       "tests/test_formulas.py::test_a_second_order_run_draws_the_first_order_run_s_levels_and_their_third")),
    M("second_order_ignored", "pid_diffusion/trainer.py", 'if self.config.finite_difference == "second":',
      "if False:", ("tests/test_formulas.py::test_a_second_order_run_draws_the_first_order_run_s_levels_and_their_third",)),
    M("pseudo_huber_c_per_value", "pid_diffusion/losses.py", "c = PSEUDO_HUBER_C * a[0].numel() ** 0.5",
      "c = PSEUDO_HUBER_C", (FORMULAS,)),
    M("real_images_ignored", "pid_diffusion/evaluation/metrics.py", "    if real_images:\n", "    if False:\n",
      ("tests/test_digits.py::test_the_walk_measures_is_pr_and_kid_beside_fid_in_a_long_table_whatever_the_process_count",)),
    M("training_metrics_not_recorded", "pid_diffusion/trainer.py", "            for row, question in metric_rows:",
      "            for row, question in []:",
      ("tests/test_digits.py::test_training_adds_the_asked_metrics_to_its_fid_and_the_walk_finds_them",)),
    M("samples_not_identified", "pid_diffusion/evaluation/walk.py", "weights_sha256=digest_of_arrays([images]),",
      'weights_sha256="",',
      ("tests/test_digits.py::test_samples_made_by_any_code_are_measured_as_checkpoints_are",)),
    M("kept_samples_out_of_order", "pid_diffusion/dist.py",
      "order = torch.as_tensor(sorted(range(len(all_indices)), key=all_indices.__getitem__), dtype=torch.long)",
      "order = torch.arange(len(all_indices))",
      ("tests/test_digits.py::test_the_walk_measures_is_pr_and_kid_beside_fid_in_a_long_table_whatever_the_process_count",)),
)


def apply(mutation, root):
    path = os.path.join(root, mutation.path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = text.count(mutation.old)
    if found != 1:
        return f"the code to change occurs {found} times in {mutation.path} (expected once): update the entry"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(mutation.old, mutation.new))
    return None


def copy_project(destination):
    for name in COPIED:
        source = os.path.join(REPO, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(destination, name),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif os.path.exists(source):
            shutil.copy(source, destination)


UNCHANGED = Mutation("unchanged code", "", "", "", tuple(sorted({test for m in MUTATIONS for test in m.tests})))
"""The baseline: every test the mutations use, on the code as it is. It must pass, or a mutation's failing
tests would say nothing."""


def run_one(mutation, timeout):
    """(name, outcome, seconds, detail): outcome is caught, survived, stale (the entry no longer applies) or
    error (pytest could not run the tests)."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="mutant-") as scratch:
        root = os.path.join(scratch, "repo")  # no ../shared beside it: the fixture tests skip, as in CI
        os.mkdir(root)
        copy_project(root)
        problem = apply(mutation, root) if mutation.path else None
        if problem:
            return mutation.name, "stale", 0.0, problem
        env = {**os.environ, "PYTHONPATH": root, "PYTHONDONTWRITEBYTECODE": "1"}
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests]
        try:
            done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return mutation.name, "error", time.time() - started, f"the tests ran past {timeout} s"
    seconds = time.time() - started
    outcome = {0: "survived", 1: "caught"}.get(done.returncode, "error")
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return mutation.name, outcome, seconds, summary if outcome == "survived" else done.stdout[-1500:] + done.stderr[-1500:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutations to run (default: all); --list shows them")
    parser.add_argument("--jobs", type=int, default=2, help="mutations tested at once (default: 2)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutation's tests (default: 900)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:40s} {m.path}: {m.old!r} → {m.new!r}")
        return 0
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; --list shows them")
    chosen = [known[name] for name in args.names] or list(MUTATIONS)
    _, outcome, seconds, detail = run_one(UNCHANGED, args.timeout)
    if outcome != "survived":  # the unchanged code must pass its tests
        print(f"the tests fail on the unchanged code ({seconds:.0f} s), so no mutation can be judged:\n{detail}")
        return 2
    print(f"baseline: the {len(UNCHANGED.tests)} test targets pass on the unchanged code ({seconds:.0f} s)", flush=True)
    outcomes = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        for name, outcome, seconds, detail in pool.map(lambda m: run_one(m, args.timeout), chosen):
            outcomes[name] = outcome
            print(f"{outcome:9s} {name:40s} {seconds:6.1f} s  {detail if outcome != 'caught' else ''}", flush=True)
    survivors = [n for n, o in outcomes.items() if o == "survived"]
    broken = [n for n, o in outcomes.items() if o in ("stale", "error")]
    print(f"{len(chosen)} mutations: {len(chosen) - len(survivors) - len(broken)} caught, {len(survivors)} survived"
          f"{', ' + str(len(broken)) + ' could not be tested' if broken else ''}")
    return 1 if survivors else 2 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
