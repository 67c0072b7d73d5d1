"""Read EDM and EDM2 network-snapshot pickles (`network-snapshot-*.pkl`, `edm-*.pkl`, `edm2-*.pkl`)
without running them.

EDM and EDM2 store each network module through `torch_utils.persistence`: the pickle records the class
name, the constructor keywords, the module's `__dict__` and the *source code* of its module, which
EDM's own loader executes. This reader executes nothing: a restricted unpickler allows only the
handful of globals such snapshots use, turns every persistent object into an inert record of its
recorded state, and refuses anything else with an error that names the global.
"""

import collections
import io
import pickle

import numpy as np
import torch


PICKLE_PROTOCOL_OPCODE = b"\x80"
"""The first byte of every pickle of protocol 2 or newer (EDM's snapshots are protocol 3 or 4)."""


def is_pickle_file(path):
    """Whether `path` starts as every pickle of protocol 2 or newer does."""
    with open(path, "rb") as f:
        return f.read(1) == PICKLE_PROTOCOL_OPCODE


class EDMPickleError(ValueError):
    """The file is not a readable EDM network snapshot."""


class UnsafePickleError(EDMPickleError):
    """The pickle asks for a global outside the EDM-snapshot allow-list."""


class PersistentRecord:
    """An EDM persistent object as recorded: class name, constructor keywords and `__dict__`.
    The embedded `module_src` is dropped unread."""

    def __init__(self, class_name, state):
        self.class_name = class_name
        self.state = state

    @property
    def init_kwargs(self):
        return self.state.get("_init_kwargs", {})


class ModuleRecord:
    """A plain torch container module (ModuleDict, ModuleList, Sequential) as recorded."""

    def __setstate__(self, state):
        self.state = state


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
        raise EDMPickleError("malformed EDM persistent object (expected type 'class' with a state)")
    return PersistentRecord(str(meta.get("class_name")), meta["state"])


def _load_storage_bytes(data):
    # A storage inside an EDM pickle is a nested torch.save archive; read it with torch's own
    # restricted loader rather than torch.storage._load_from_bytes, which would unpickle freely.
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _numpy_array(cls, shape, typecode):
    # numpy's array reconstructor (EDM2's latent encoders keep their scale and bias as arrays); the
    # array's bytes follow in its state, which numpy restores.
    if cls is not np.ndarray:
        raise UnsafePickleError(f"refusing to rebuild a {cls!r} as a numpy array inside a snapshot")
    return np.ndarray.__new__(np.ndarray, shape, typecode)


class EasyDictRecord(dict):
    """dnnlib's EasyDict (a dict with attribute access), as a plain dict: EDM2's top-level snapshot object."""


def _numpy_scalar(dtype, data=None):
    # numpy's own reconstructor, wherever this numpy keeps it (numpy 1.x: numpy.core).
    try:
        from numpy._core.multiarray import scalar
    except ImportError:
        from numpy.core.multiarray import scalar
    if dtype.hasobject:
        raise UnsafePickleError("refusing a numpy object scalar inside an EDM snapshot")
    return scalar(dtype, data)


_CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")
_ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_array,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_array,
    ("dnnlib.util", "EasyDict"): EasyDictRecord,
    **{("torch.nn.modules.container", name): type(name, (ModuleRecord,), {}) for name in _CONTAINERS},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}': it is not one that EDM network snapshots "
                "use, so this file is either not an EDM snapshot or was tampered with")
        return target

    def persistent_load(self, pid):
        raise EDMPickleError("unexpected persistent id in pickle: this is not an EDM network snapshot")


def read_restricted_pickle(path, what="EDM network snapshot"):
    """Unpickle `path` with the allow-list above (plain records, dicts, tensors, numpy arrays)."""
    try:
        with open(path, "rb") as f:
            if not is_pickle_file(path):
                raise EDMPickleError(f"not an {what}: it is no pickle (it starts with {f.read(8)!r})")
            return _RestrictedUnpickler(f).load()
    except EDMPickleError as e:
        raise type(e)(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RuntimeError, MemoryError) as e:
        raise EDMPickleError(f"{path}: not a readable {what} "
                             f"(truncated or corrupt pickle: {type(e).__name__}: {e})") from e


def read_snapshot(path):
    """Unpickle an EDM or EDM2 snapshot into plain records. Returns the top-level dict (keys such as
    'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs', EDM2's 'encoder')."""
    data = read_restricted_pickle(path)
    if not isinstance(data, dict) or not isinstance(data.get("ema"), PersistentRecord):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise EDMPickleError(f"{path}: a pickle, but not an EDM network snapshot "
                             f"(expected a dict with an 'ema' network; found {keys})")
    return data


def _module_state(obj, where):
    if isinstance(obj, (PersistentRecord, ModuleRecord)) and isinstance(getattr(obj, "state", None), dict):
        return obj.state
    raise EDMPickleError(f"{where}: expected a recorded torch module, found {type(obj).__name__}")


def record_state_dict(record, prefix=""):
    """The `state_dict()` a live module would return, assembled from a recorded module tree."""
    state = _module_state(record, prefix or "<root>")
    out = collections.OrderedDict()
    for name, tensor in state.get("_parameters", {}).items():
        if tensor is not None:
            out[prefix + name] = tensor.detach().clone()
    transient = state.get("_non_persistent_buffers_set", set())
    for name, tensor in state.get("_buffers", {}).items():
        if tensor is not None and name not in transient:
            out[prefix + name] = tensor.detach().clone()
    for name, child in state.get("_modules", {}).items():
        if child is not None:
            out.update(record_state_dict(child, prefix + name + "."))
    return out


def snapshot_network(snapshot, source, key="ema"):
    """(class_name, init_kwargs, state_dict) of the network stored under `key` in a read snapshot."""
    record = snapshot.get(key)
    if not isinstance(record, PersistentRecord):
        raise EDMPickleError(f"{source}: no network under key {key!r}")
    if record.state.get("_init_args"):
        raise EDMPickleError(f"{source}: {record.class_name} was built with positional arguments; "
                             "only keyword-constructed networks are supported")
    return record.class_name, dict(record.init_kwargs), record_state_dict(record)
