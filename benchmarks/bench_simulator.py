"""Time the vectorised charged N-body generator against a per-trajectory loop in the reference's style.

    python benchmarks/bench_simulator.py [--k 2000] [--loop 50] [--chunk 1000]

Both run on the same initial states (seed-43 stream, 5 particles, 3-D, 5000 steps, every 100th recorded); the
loop's per-trajectory rate is extrapolated, and the two results are checked to agree bit for bit on the
trajectories both simulated.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from egnn.experiments.nbody.simulate import (
    PRESETS,
    n_frames,
    sample_initial_states,
    simulate_charged,
    simulate_charged_loop,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=2000, help="trajectories for the vectorised generator")
    parser.add_argument("--loop", type=int, default=50, help="trajectories for the per-trajectory loop")
    parser.add_argument("--chunk", type=int, default=1000, help="systems simulated together")
    parser.add_argument("--seed", type=int, default=43)
    args = parser.parse_args(argv)

    cfg = PRESETS["small"]
    length, freq = cfg["length"], cfg["sample_freq"]
    full = cfg["num_train"] + cfg["num_valid"] + cfg["num_test"]
    print(f"numpy {np.__version__}, python {platform.python_version()}, {platform.machine()}")
    print(f"{length} steps, every {freq}th recorded ({n_frames(length, freq)} frames), 5 particles, 3-D")

    t0 = time.perf_counter()
    init = sample_initial_states(np.random.RandomState(args.seed), max(args.k, args.loop))
    t_draw = (time.perf_counter() - t0) / max(args.k, args.loop)

    t0 = time.perf_counter()
    loc, vel = simulate_charged(
        init.loc[: args.k], init.vel[: args.k], init.charges[: args.k], n_steps=length, sample_freq=freq,
        chunk_size=args.chunk,
    )  # fmt: skip
    t_vec = (time.perf_counter() - t0) / args.k

    t0 = time.perf_counter()
    ref_loc, ref_vel = simulate_charged_loop(
        init.loc[: args.loop], init.vel[: args.loop], init.charges[: args.loop], n_steps=length, sample_freq=freq
    )
    t_loop = (time.perf_counter() - t0) / args.loop

    both = min(args.k, args.loop)
    same = np.array_equal(loc[:both], ref_loc[:both]) and np.array_equal(vel[:both], ref_vel[:both])
    diff = max(np.abs(loc[:both] - ref_loc[:both]).max(), np.abs(vel[:both] - ref_vel[:both]).max())
    print(f"random draws     : {t_draw * 1e6:8.1f} us / trajectory")
    print(f"vectorised       : {t_vec * 1e3:8.3f} ms / trajectory  ({args.k} trajectories, chunks of {args.chunk})")
    print(f"per-traj loop    : {t_loop * 1e3:8.3f} ms / trajectory  ({args.loop} trajectories)")
    print(f"speed-up         : {t_loop / t_vec:8.1f} x")
    print(f"identical on the {both} common trajectories: {same} (max |diff| {diff:.1e})")
    print(
        f"full small set ({full} trajectories), extrapolated: vectorised {full * (t_vec + t_draw):.0f} s, "
        f"loop {full * (t_loop + t_draw) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
