"""One process of a multi-process run on loopback (started by test_parallel.py, not collected by pytest)."""

import json
import sys

import jax
import numpy as np


def main():
    process_id, num_processes, port, run_dir, out = sys.argv[1:6]
    from tests.helpers import tiny_config
    from sftjax.train.loop import train

    cfg = tiny_config(run_dir, **{"mesh.coordinator": f"127.0.0.1:{port}" if int(num_processes) > 1 else "",
                                  "mesh.num_processes": int(num_processes), "mesh.process_id": int(process_id)})
    logs: list[str] = []
    summary = train(cfg, log=logs.append)
    params = jax.tree.leaves(summary["state"]["params"])
    flat = np.concatenate([np.asarray(p.addressable_data(0)).ravel() for p in params])  # replicated: local copy
    np.save(out, flat)
    with open(out + ".json", "w") as f:
        json.dump({"devices": jax.device_count(), "processes": jax.process_count(), "log": logs}, f)


if __name__ == "__main__":
    main()
