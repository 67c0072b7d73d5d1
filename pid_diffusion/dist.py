"""One place that understands the launcher: mpirun (Open MPI or MPICH, through mpi4py), torchrun, Slurm's
srun, or a plain single process. One process per GPU; NCCL on CUDA, gloo on CPU.

Under mpirun, rank 0 picks a free TCP port and shares its address over MPI (as the original code
does), so `mpirun -np 8 python ...` and multi-node `mpirun -H host1:8,host2:8 ...` need no extra
environment. Under torchrun the usual MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE / LOCAL_RANK
are used. Under srun (no MPI plug-in needed) the task's SLURM_PROCID, SLURM_STEP_NUM_TASKS and
SLURM_LOCALID give the ranks, the first host of the step's node list is the address and the port is
derived from the job and step ids (MASTER_ADDR / MASTER_PORT override both). Without a launcher there
is no process group and every helper acts on one process.
"""

import datetime
import gc
import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

MPI_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK")
INIT_TIMEOUT = datetime.timedelta(minutes=30)
SLURM_PORT_BASE, SLURM_PORT_RANGE = 20000, 20000
"""srun's rendezvous port: SLURM_PORT_BASE + (job id + step id) mod SLURM_PORT_RANGE, the same on every task."""


class LaunchError(RuntimeError):
    """The processes cannot form their group as launched (the message says why and what to do)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"
    device: torch.device = torch.device("cpu")


_info = DistInfo()


def launcher_from_environment(environ=None):
    """'torchrun', 'mpirun', 'srun' or 'none', from the variables the launchers set. srun's tasks carry
    SLURM_STEP_NUM_TASKS; a batch script's own shell has SLURM_PROCID too, but no step, and is one process."""
    environ = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in environ or ("RANK" in environ and "WORLD_SIZE" in environ):
        return "torchrun"
    if any(v in environ for v in MPI_RANK_VARIABLES):
        return "mpirun"
    if "SLURM_PROCID" in environ and "SLURM_STEP_NUM_TASKS" in environ:
        return "srun"
    return "none"


SLURM_FIRST_HOST = re.compile(r"([\w.-]+)(?:\[(\d+)(?:-\d+)?(?:,[\d,-]*)?\]([\w.-]*))?(?:,|$)")
"""The first entry of a Slurm node list: a name, or prefix[ranges]suffix ("gpu[07-09,12]-ib,cpu1")."""


def first_slurm_host(node_list):
    """The first host of a Slurm node list: "gpu[07-09,12],cpu1" → "gpu07" (zero padding kept)."""
    match = SLURM_FIRST_HOST.match(node_list.strip())
    if not match:
        raise LaunchError(f"SLURM_STEP_NODELIST/SLURM_JOB_NODELIST {node_list!r} is not a Slurm node list (expected "
                          "e.g. gpu[01-04],gpu07); set MASTER_ADDR to the first node's address")
    prefix, first, suffix = match.groups()
    return prefix if first is None else prefix + first + suffix


def slurm_rendezvous(environ=None):
    """(rank, world size, local rank, (address, port)) of an srun task."""
    environ = os.environ if environ is None else environ
    try:
        rank, world = int(environ["SLURM_PROCID"]), int(environ["SLURM_STEP_NUM_TASKS"])
        local = int(environ.get("SLURM_LOCALID", 0))
        job, step = int(environ.get("SLURM_JOB_ID", 0)), int(environ.get("SLURM_STEP_ID", 0))
        port = int(environ.get("MASTER_PORT", SLURM_PORT_BASE + (job + step) % SLURM_PORT_RANGE))
    except ValueError as e:
        raise LaunchError(f"srun's task variables (or MASTER_PORT) are not whole numbers: {e}") from None
    if "MASTER_ADDR" in environ:
        host = environ["MASTER_ADDR"]
    elif environ.get("SLURM_STEP_NUM_NODES", "1") == "1":
        host = "127.0.0.1"  # one node: no name lookup needed
    else:
        node_list = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
        if not node_list:
            raise LaunchError("srun on several nodes without SLURM_STEP_NODELIST or SLURM_JOB_NODELIST: set "
                              "MASTER_ADDR to the first node's address")
        host = first_slurm_host(node_list)
    return rank, world, local, (host, port)


def check_one_group(world, environ=None):
    """srun started more tasks than the group has (e.g. `srun --mpi=pmi2` with an MPI that does not speak
    that PMI: every task believes it is alone): stop, instead of each task training on its own."""
    environ = os.environ if environ is None else environ
    tasks = environ.get("SLURM_STEP_NUM_TASKS")
    if tasks and tasks.isdigit() and int(tasks) > world:
        raise LaunchError(f"srun started {tasks} tasks but MPI sees {world} process(es): the tasks would train "
                          "apart. Launch with plain srun (no --mpi option: the tasks meet through Slurm's "
                          "variables), or with mpirun inside the allocation")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _local_rank(default):
    for name in LOCAL_RANK_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    return default


def _mpi_rendezvous():
    try:
        from mpi4py import MPI
    except Exception as e:  # ImportError, or "cannot load MPI library"
        raise LaunchError(
            f"launched by mpirun but mpi4py cannot be used ({e}). Install an MPI runtime with the "
            "package (pip install -e '.[mpich]') or launch with torchrun / a single process") from e
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    single_host = len(set(comm.allgather(socket.gethostname()))) == 1
    address = None
    if rank == 0:
        host = "127.0.0.1" if single_host else socket.gethostbyname(socket.getfqdn())
        address = (host, _free_port())
    address = comm.bcast(address, root=0)
    local = _local_rank(comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank())
    return rank, world, local, address


def visible_device_type():
    """'cuda' when a GPU is visible, else 'cpu': where the scripts run unless told."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_of_local_process(local, visible_gpus):
    """cuda:<local rank>: each process of a host drives a GPU of its own, as NCCL requires (two processes on one
    GPU stop inside NCCL with 'Duplicate GPU detected'); a process without one is refused here, saying why."""
    if local >= visible_gpus:
        raise LaunchError(f"process {local} of this host has no GPU of its own: {visible_gpus} GPU(s) visible, and "
                          "NCCL needs one per process. Start at most as many processes per host as it has GPUs "
                          f"(mpirun -np {visible_gpus}), or make more visible (CUDA_VISIBLE_DEVICES)")
    return torch.device("cuda", local)


def init(device=None):
    """Start the process group for whatever launched us. Returns the DistInfo (also kept for
    `info()`). `device` overrides the default: cuda:<local rank> when CUDA exists, else cpu."""
    global _info
    launcher = launcher_from_environment()
    if launcher == "torchrun":
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = _local_rank(0)
        init_method = "env://"
    elif launcher == "mpirun":
        rank, world, local, (host, port) = _mpi_rendezvous()
        check_one_group(world)
        init_method = f"tcp://{host}:{port}"
    elif launcher == "srun":
        rank, world, local, (host, port) = slurm_rendezvous()
        init_method = f"tcp://{host}:{port}"
    else:
        rank, world, local, init_method = 0, 1, 0, None
    if device is None:
        device = gpu_of_local_process(local, torch.cuda.device_count()) if visible_device_type() == "cuda" else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                                      timeout=INIT_TIMEOUT)
    _info = DistInfo(rank, world, local, launcher, device)
    return _info


def info():
    return _info


def is_distributed():
    return torch_dist.is_available() and torch_dist.is_initialized()


def is_main():
    return _info.rank == 0


def print0(*args, **kwargs):
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier():
    if is_distributed():
        torch_dist.barrier()


def all_reduce_sum(tensor):
    """Sum a tensor over processes in place (no-op for one process). Returns it."""
    if is_distributed():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor):
    """The largest value of a tensor over processes, in place. Returns it."""
    if is_distributed():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
    return tensor


def broadcast_tensors(tensors, src=0):
    if is_distributed():
        for tensor in tensors:
            torch_dist.broadcast(tensor, src)


def all_gather_objects(obj):
    """[every process's obj] in rank order, on every process ([obj] for one process)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, obj)
    return gathered


def gather_in_order(rows, more_rows, indices):
    """Every process's `rows` (and `more_rows`, which a process without batches lacks: None), each row with its
    sample index in `indices`, concatenated in sample-index order, on every process (a collective call)."""
    parts = all_gather_objects((rows, more_rows, list(indices)))
    all_indices = [i for _, _, idx in parts for i in idx]
    order = torch.as_tensor(sorted(range(len(all_indices)), key=all_indices.__getitem__), dtype=torch.long)
    more = [p[1] for p in parts if p[1] is not None]
    return torch.cat([p[0] for p in parts])[order], torch.cat(more)[order] if more else None


def broadcast_object(obj, src=0):
    if not is_distributed():
        return obj
    holder = [obj]
    torch_dist.broadcast_object_list(holder, src)
    return holder[0]


def shutdown():
    """Collect garbage (DDP wrappers alive at exit can abort the interpreter) and end the group."""
    global _info
    gc.collect()
    if is_distributed():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
    _info = DistInfo()
