"""The flags with which ``sample`` and ``evaluate`` load a trained run: its workdir, a mesh, multi-host set-up.

On several hosts (a TPU pod slice, GPU nodes) run the same command on every
host with ``--distributed``: the run's parameters are restored sharded over
all hosts' devices, every host decodes its share of the rows, and process 0
prints and writes the results.
"""

from __future__ import annotations

from absl import flags

from gpt2_jax import runs, sharding

WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to load.", required=True)
MESH = flags.DEFINE_string(
    "mesh", "", "Mesh to load the run onto, data,fsdp,tensor (-1 = the rest, e.g. -1,1,2); empty = the run's own."
)
DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host: call jax.distributed.initialize() first (the same command on every host)."
)
COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", "", "With --distributed: host:port of process 0 (empty = from the cluster's environment)."
)
NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "With --distributed: processes (0 = from the environment).")
PROCESS_ID = flags.DEFINE_integer("process_id", -1, "With --distributed: this process's rank (-1 = from the env).")


def load_run() -> runs.Run:
    """The run the flags name, on their mesh (after joining the other hosts when ``--distributed``)."""
    if DISTRIBUTED.value:
        sharding.initialize_distributed(COORDINATOR_ADDRESS.value, NUM_PROCESSES.value, PROCESS_ID.value)
    return runs.load(WORKDIR.value, runs.parse_mesh(MESH.value))
