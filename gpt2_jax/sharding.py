"""Device meshes and partition rules, on JAX's own SPMD engine (``jax.sharding``).

The mesh has three named axes:

* ``data``: plain data parallelism (parameters replicated);
* ``fsdp``: fully-sharded data parallelism (batch *and* parameters sharded);
* ``tensor``: tensor parallelism (attention heads and MLP columns sharded).

Batches are split over ``data`` x ``fsdp``.  Every parameter gets a
``PartitionSpec`` from :func:`param_spec`, chosen by its name: the input
dimension of a matmul kernel over ``fsdp`` and its output dimension over
``tensor`` for the column-parallel projections (``c_attn``, ``q_attn``,
``c_fc``), the other way round for the row-parallel ones (``c_proj``).  The
fused ``c_attn`` kernel ``[D, parts, D]`` splits each part alike, so a device
holds the queries, keys and values of its own heads and the projection moves
no weights between devices.
Optimizer moments follow their parameter, because their tree paths end with
the parameter's path.  ``jax.jit`` gets these shardings explicitly and XLA
inserts the collectives.

Activations are pinned too (:func:`constrain`, MaxText's "logical axis rules"):
rows over ``data`` x ``fsdp``, heads / MLP units / vocabulary over ``tensor``,
the model width unsharded.  Without these hints XLA's sharding propagation
follows the parameters into the activations: with ``fsdp`` it split the width
of ``[B, L, D]`` activations like the weights and gathered activations over
the batch instead of gathering the weights (``tests/test_sharding.py`` bounds
the bytes an ``fsdp`` step moves).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gpt2_jax.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

COLUMN_PARALLEL = ("c_attn", "q_attn", "c_fc")  # output dim split over heads / MLP units

# What each kind of activation dimension is split over (see ``constrain``).
ACTIVATION_AXES: dict[str, tuple[str, ...]] = {
    "batch": BATCH_AXES,
    "heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
}


def _describe(sizes) -> str:
    return "(" + ", ".join(f"{a}={s}" for a, s in zip(AXES, sizes, strict=True)) + ")"


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """Resolve the configured axis sizes (one of them may be -1 = the rest)."""
    sizes = [int(mesh_config[a]) for a in AXES]
    if sizes.count(-1) > 1:
        raise ConfigError(f"config.mesh: at most one axis may be -1, got {_describe(sizes)}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"config.mesh: axis sizes must be positive or -1, got {_describe(sizes)}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"config.mesh {_describe(sizes)}: {num_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) > num_devices:
        raise ConfigError(
            f"config.mesh {_describe(sizes)} needs {int(np.prod(sizes))} devices but only {num_devices} "
            "are available; shrink an axis or set one to -1 to use what there is"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_config, devices: list | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all devices, all hosts).

    A mesh with fixed axis sizes that need fewer devices than there are uses
    the first ones (e.g. ``data=1`` on a multi-device host runs on one device).
    """
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config, len(devices))
    used = int(np.prod(shape))
    if used < len(devices) and jax.process_count() > 1:
        raise ConfigError(f"config.mesh {_describe(shape)} must span all {len(devices)} devices of a multi-host run")
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices[:used])


def _fits(dim: int, axis: str, mesh: Mesh) -> str | None:
    return axis if dim % mesh.shape[axis] == 0 else None


def param_spec(names: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
    """Partition spec of the parameter at dict path ``names`` (e.g. ``("h_0", "attn", "c_attn", "kernel")``).

    A dimension that the mesh axis does not divide stays unsharded.
    """
    if not shape:
        return P()
    leaf = names[-1]
    layer = names[-2] if len(names) > 1 else ""
    if leaf == "kernel" and len(shape) in (2, 3):
        # [D_in, D_out], or a fused projection's [D_in, parts, D_out]: each part split alike.
        d_in, *parts, d_out = shape
        if layer in COLUMN_PARALLEL:
            return P(_fits(d_in, "fsdp", mesh), *[None] * len(parts), _fits(d_out, "tensor", mesh))
        return P(_fits(d_in, "tensor", mesh), *[None] * len(parts), _fits(d_out, "fsdp", mesh))
    if leaf == "bias" and layer in COLUMN_PARALLEL:
        return P(*[None] * (len(shape) - 1), _fits(shape[-1], "tensor", mesh))
    if leaf == "embedding":
        rows, width = shape
        # The token table is vocabulary-parallel; position tables only split their width.
        return P(_fits(rows, "tensor", mesh) if layer == "wte" else None, _fits(width, "fsdp", mesh))
    return P()


def _dict_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """``NamedSharding`` for every leaf of a params / train-state tree (shape-only leaves are fine)."""

    def leaf_sharding(path, leaf) -> NamedSharding:
        names = _dict_names(path)
        shape = tuple(np.shape(leaf))
        spec = param_spec(names, shape, mesh) if names else P()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over ``data`` x ``fsdp``; sequence dimension replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def _constraining_mesh() -> jax.sharding.AbstractMesh | None:
    """The mesh of the step being traced, when it has several devices (see :func:`constrain`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or not set(AXES) <= set(mesh.axis_names):
        return None
    return mesh


def _pieces(mesh: jax.sharding.AbstractMesh, kind: str | None) -> int:
    return int(np.prod([mesh.shape[a] for a in ACTIVATION_AXES[kind]])) if kind else 1


def shards(kind: str) -> int:
    """Into how many pieces :func:`constrain` splits a dimension of ``kind`` here (1 where it does not constrain)."""
    mesh = _constraining_mesh()
    return 1 if mesh is None else _pieces(mesh, kind)


def embedding_lookup(table_VxD: jax.Array, ids: jax.Array, rows: str | None) -> jax.Array:
    """``table``'s rows at ``ids``: ``[V, D]`` -> ``[*ids.shape, D]``.

    Under a mesh the table is gathered over ``fsdp`` first (``rows`` names how
    its rows stay split): FSDP moves weights, and a lookup in a table whose
    width is split would give activations split by width, not by batch.
    """
    return jnp.take(constrain(table_VxD, rows, None), ids, axis=0)


def constrain(x: jax.Array, *dims: str | None) -> jax.Array:
    """Pin the sharding of activation ``x``; ``dims`` names each dimension's kind.

    A kind from ``ACTIVATION_AXES`` ("batch", "heads", "mlp", "vocab") splits its
    dimension over those mesh axes; ``None`` keeps the dimension whole; a
    dimension the axes do not divide is left to XLA.  Only a step traced under
    :func:`traced_on` a mesh of several devices is constrained; everywhere else
    (decoding, the bare model, a one-device mesh) this is the identity: on one
    device the constraints would only cost time.
    """
    mesh = _constraining_mesh()
    if mesh is None:
        return x
    spec = []
    for size, kind in zip(x.shape, dims, strict=True):
        spec.append(None if not kind else ACTIVATION_AXES[kind] if size % _pieces(mesh, kind) == 0 else P.UNCONSTRAINED)
    return jax.lax.with_sharding_constraint(x, P(*spec))


def traced_on(mesh: Mesh, fn: Callable) -> Callable:
    """``fn`` with ``mesh``'s axes in scope while it is traced, so that :func:`constrain` applies inside it."""

    @functools.wraps(fn)
    def with_mesh_axes(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    # A functools.partial has no name of its own: take its function's, so that
    # profiles and XLA dumps name the program (jit_train_step, jit_eval_step).
    with_mesh_axes.__name__ = getattr(fn, "__name__", getattr(getattr(fn, "func", None), "__name__", "step"))
    return with_mesh_axes


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place a host batch on the mesh as global arrays split over the batch axes.

    ``batch`` is this process's share of the global batch (the whole batch on
    one host); ``jax.make_array_from_process_local_data`` assembles the global
    array across hosts.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def place_rows(inputs: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Put whole arrays (the same on every process) on ``mesh``: rows split over the batch axes where they divide.

    For decoding, where every process reads the same prompts; arrays whose
    first dimension the batch axes do not divide, and scalars, are replicated.
    """
    shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))

    def put(x) -> jax.Array:
        x = np.asarray(x)
        split = x.ndim > 0 and x.shape[0] % shards == 0
        return jax.device_put(x, batch_sharding(mesh) if split else replicated(mesh))

    return {k: put(v) for k, v in inputs.items()}


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """``jax.distributed.initialize()`` for a multi-host run (training, decoding, evaluation).

    Fields left unset are found in the cluster's environment (SLURM, Kubernetes, TPU pod slices).
    """
    jax.distributed.initialize(
        coordinator_address=coordinator_address or None,
        num_processes=num_processes or None,
        process_id=process_id if process_id >= 0 else None,
    )


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly multi-host) array on this process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def process_slice(global_batch_size: int) -> slice:
    """The rows of the global batch that this process feeds."""
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)
