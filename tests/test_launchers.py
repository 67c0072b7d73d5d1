"""Slurm's srun as a launcher: the task variables give the ranks and the address, two tasks train the same
run as one process, and tasks that would train apart stop with one line."""

import os
import random
import re
import socket
import subprocess
import sys

import pytest
import torch

from pid_diffusion.dist import (SLURM_PORT_BASE, LaunchError, check_one_group, first_slurm_host, gpu_of_local_process,
                                launcher_from_environment, slurm_rendezvous)
from test_trainer import REPO, TINY_FLAGS, TRAIN_SCRIPT, load, run_difference_bounds, run_script

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def srun_task(rank, tasks, job_id, nodes=1, **extra):
    """The variables srun gives task `rank` of a step of `tasks` tasks (those this package reads)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("SLURM_")}
    env.update(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_STEP_NUM_TASKS=str(tasks),
               SLURM_NTASKS=str(tasks), SLURM_STEP_NUM_NODES=str(nodes), SLURM_JOB_ID=str(job_id), SLURM_STEP_ID="0",
               SLURM_STEP_NODELIST="localhost", SLURM_JOB_NODELIST="localhost")
    env.update(extra)
    return env


def test_slurm_variables_give_the_ranks_and_the_address():
    task = srun_task(3, 16, 4711, nodes=2, SLURM_STEP_NODELIST="gpu[07-09,12]-ib,cpu1", SLURM_LOCALID="3")
    assert launcher_from_environment(task) == "srun"
    assert slurm_rendezvous(task) == (3, 16, 3, ("gpu07-ib", SLURM_PORT_BASE + 4711))
    # every task of the step computes the same address and port; another job or step another port
    assert slurm_rendezvous({**task, "SLURM_PROCID": "0"})[3] == ("gpu07-ib", SLURM_PORT_BASE + 4711)
    assert slurm_rendezvous({**task, "SLURM_STEP_ID": "1"})[3][1] == SLURM_PORT_BASE + 4712
    assert slurm_rendezvous(srun_task(0, 8, 4711))[3] == ("127.0.0.1", SLURM_PORT_BASE + 4711)  # one node
    assert slurm_rendezvous({**task, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500"})[3] == ("10.0.0.5", 29500)
    # a batch script's own shell (no step) is one process; mpirun and torchrun inside an allocation win
    batch_shell = {k: v for k, v in task.items() if not k.startswith("SLURM_STEP")}
    assert launcher_from_environment(batch_shell) == "none"
    assert launcher_from_environment({**task, "OMPI_COMM_WORLD_RANK": "0"}) == "mpirun"
    assert launcher_from_environment({**task, "RANK": "0", "WORLD_SIZE": "2"}) == "torchrun"
    for node_list, host in (("n-01.cluster", "n-01.cluster"), ("a,b", "a"), ("node[1-3]", "node1")):
        assert first_slurm_host(node_list) == host


def test_bad_slurm_variables_are_named():
    for node_list in ("gpu[07", "[1-2]", "gpu[a-b]"):
        with pytest.raises(LaunchError, match=re.escape(f"{node_list!r} is not a Slurm node list") + ".*MASTER_ADDR"):
            slurm_rendezvous(srun_task(0, 16, 1, nodes=2, SLURM_STEP_NODELIST=node_list))
    with pytest.raises(LaunchError, match="not whole numbers"):
        slurm_rendezvous(srun_task(0, 16, "12a"))
    with pytest.raises(LaunchError, match="srun started 8 tasks but MPI sees 1 process"):
        check_one_group(1, {"SLURM_STEP_NUM_TASKS": "8"})
    check_one_group(8, {"SLURM_STEP_NUM_TASKS": "8"})
    check_one_group(1, {})


def test_each_process_of_a_host_gets_a_gpu_of_its_own_or_a_reason():
    """NCCL refuses two processes on one GPU deep inside its start ('Duplicate GPU detected'): a process whose local
    rank has no GPU is refused before, naming the counts and the fix."""
    assert gpu_of_local_process(0, 1) == torch.device("cuda", 0)
    assert gpu_of_local_process(3, 4) == torch.device("cuda", 3)
    with pytest.raises(LaunchError, match=r"process 1 of this host has no GPU of its own: 1 GPU\(s\) visible.*mpirun -np 1"):
        gpu_of_local_process(1, 1)
    with pytest.raises(LaunchError, match=r"process 4 .* 4 GPU\(s\) visible.*mpirun -np 4"):
        gpu_of_local_process(4, 4)


def _free_slurm_job_id():
    """A job id whose derived port is free here."""
    for _ in range(100):
        job_id = random.randrange(10000, 19000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", SLURM_PORT_BASE + job_id))
                return job_id
            except OSError:
                continue
    pytest.skip("no free port for the srun test")


def test_two_srun_tasks_train_the_run_of_one_process(teacher_path, tmp_path):
    args = ["--teacher_model_path", teacher_path, *TINY_FLAGS, "--total_training_steps", "3", "--save_interval", "3"]
    single = run_script(args, tmp_path / "one")
    assert single.returncode == 0, single.stderr
    job_id = _free_slurm_job_id()
    tasks = [subprocess.Popen([sys.executable, TRAIN_SCRIPT, *args], cwd=REPO, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**srun_task(rank, 2, job_id),
                                                           "OPENAI_LOGDIR": str(tmp_path / "srun")})
             for rank in (0, 1)]
    outputs = [task.communicate(timeout=240) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "2 process(es) on cpu" in outputs[0][0] and not outputs[1][0]  # rank 0 prints
    one, two = load(tmp_path / "one" / "model000003.pt"), load(tmp_path / "srun" / "model000003.pt")
    bounds = run_difference_bounds(teacher_path, tmp_path / "bounds", steps=3)
    assert all((one[k] - two[k]).norm() <= bounds[k] for k in one)


def test_tasks_that_would_train_apart_stop_with_one_line(teacher_path, tmp_path):
    # srun with an MPI plug-in this MPI does not speak: MPI says one process, srun says two tasks
    env = {**srun_task(0, 2, 1), "OMPI_COMM_WORLD_RANK": "0", "OPENAI_LOGDIR": str(tmp_path / "run")}
    done = subprocess.run([sys.executable, TRAIN_SCRIPT, "--teacher_model_path", teacher_path, *TINY_FLAGS], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "srun started 2 tasks but MPI sees 1 process(es)" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_the_sbatch_example_runs_the_paper_command_under_srun():
    sbatch = os.path.join(REPO, "scripts", "distill_pid_diffusion.sbatch")
    env = {**os.environ, "DRY_RUN": "1", "SLURM_NTASKS": "16"}
    printed = subprocess.run(["bash", sbatch, "cifar10", "--total_training_steps", "10"], env=env, cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert printed[0] == "OPENAI_LOGDIR=./experiment/pid_cifar10"
    assert printed[1].startswith("srun --ntasks 16 python ./scripts/cm_train.py ")
    assert printed[1].endswith("--total_training_steps 10 ")
    with open(sbatch) as f:
        directives = [line.split()[1] for line in f if line.startswith("#SBATCH")]
    assert {"--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--signal=TERM@300"} <= set(directives)
    outside = subprocess.run(["bash", sbatch], env={k: v for k, v in env.items() if k != "SLURM_NTASKS"}, cwd=REPO,
                             capture_output=True, text=True)
    assert outside.returncode != 0 and "submit this with sbatch" in outside.stderr
