"""Charged-particle N-body simulator that reproduces the EGNN paper's reference data set.

The reference (vgsatorras/egnn, ``n_body_system/dataset``) simulates one system at a time in a Python loop.
Here the same arithmetic runs on a batch of systems at once with NumPy broadcasting, in float64, and the
random draws are replayed in the reference's exact order, so ``generate_dataset(seed=43, ...)`` gives the
reference's ``nbody_small`` files (up to the last bits of the BLAS kernel, amplified by chaos).

Physics, as in the reference:

* ``M`` particles with charges ``q_i = +-1`` (probability 1/2 each), unit masses, in ``n`` dimensions;
  initial positions ``N(0, loc_std^2)`` with ``loc_std = (M / 5) ** (1/3)``, initial velocities of random
  direction and norm 0.5; positions outside ``[-5, 5]`` at ``t = 0`` are reflected once into the box (the
  reference's ``box_size=5`` wall, which it applies only to the initial state).
* force on ``i``: ``F_i = sum_j k q_i q_j (x_i - x_j) / |x_i - x_j|^3`` with ``k = 1`` (like charges repel),
  each component clipped to ``[-0.1 / dt, 0.1 / dt]``; squared distances are computed as
  ``|a|^2 + |b|^2 - 2 a.b`` with the same BLAS call per system as the reference.
* time stepping: ``v += dt F(x)`` then, for every step ``i = 1, 2, ...``: ``x += dt v``, record ``(x, v)``
  when ``i % sample_freq == 0``, ``v += dt F(x)`` (kick-drift, i.e. symplectic Euler), ``dt = 0.001``.
* the reference writes the initial state into frame 0 but its frame counter starts at 0, so the first
  recording (step ``sample_freq``) overwrites it: frame ``k`` is the state after ``(k + 1) * sample_freq``
  steps, and a run of ``T`` steps yields ``T / sample_freq - 1`` frames (49 for 5000 / 100).
* per trajectory the reference also draws two ``[frames, n, M]`` Gaussian noise arrays after the simulation
  (multiplied by ``noise_var = 0``); they are drawn here as well so the stream stays aligned.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PRESETS",
    "InitialStates",
    "default_loc_std",
    "edges_from_charges",
    "generate_dataset",
    "generate_split",
    "generate_to_dir",
    "n_frames",
    "sample_initial_states",
    "simulate_charged",
    "simulate_charged_loop",
]

DT = 1e-3
"""Reference time step."""
VEL_NORM = 0.5
"""Reference initial speed (``--initial_vel 1``); ``--initial_vel 0`` uses 1e-16."""
BOX_SIZE = 5.0
"""Reference box half-width, applied only to reflect the initial positions."""
CHARGE_TYPES = np.array([-1.0, 0.0, 1.0])
CHARGE_PROB = (0.5, 0.0, 0.5)

PRESETS: dict[str, dict] = {
    # `generate_dataset.py --num-train 10000 --seed 43 --sufix small`: the paper's N-body experiment (Table 2),
    # which uses frames 30 -> 40 (steps 3100 -> 4100).
    "small": dict(
        num_train=10000, num_valid=2000, num_test=2000, sample_freq=100, length=5000, seed=43, suffix="small"
    ),
    # `generate_dataset.py --num-train 50000 --sample-freq 500` (the reference's "nbody" set, used by the
    # data-efficiency sweep with frames 6 -> 8, i.e. steps 3500 -> 4500). The reference command passes no
    # --seed or --sufix, so its defaults apply: seed 42, empty suffix, 2000/2000 valid/test, length 5000.
    "large": dict(num_train=50000, num_valid=2000, num_test=2000, sample_freq=500, length=5000, seed=42, suffix=""),
}

SPLITS = ("train", "valid", "test")


def default_loc_std(n_particles: int) -> float:
    """The reference's initial position spread: ``1 * (M / 5) ** (1/3)`` (constant density in 3-D)."""
    return 1.0 * (float(n_particles) / 5.0) ** (1 / 3)


def n_frames(length: int, sample_freq: int) -> int:
    """Number of recorded frames for a run of ``length`` steps: ``length / sample_freq - 1``."""
    if sample_freq <= 0 or length % sample_freq != 0:
        raise ValueError(f"length ({length}) must be a positive multiple of sample_freq ({sample_freq})")
    frames = length // sample_freq - 1
    if frames < 1:
        raise ValueError(f"length {length} with sample_freq {sample_freq} records no frame")
    return frames


def edges_from_charges(charges: np.ndarray) -> np.ndarray:
    """``edges[b, i, j] = q_i q_j`` (diagonal included, as the reference stores it), shape ``[B, M, M]``."""
    q = np.asarray(charges, dtype=np.float64)
    if q.ndim == 2:
        q = q[..., None]
    return np.matmul(q, q.transpose(0, 2, 1))


@dataclass
class InitialStates:
    """Initial conditions of ``B`` systems in the reference layout.

    Attributes:
        charges: ``[B, M, 1]`` charges.
        loc: ``[B, n, M]`` initial positions (after the reference's one-off reflection into the box).
        vel: ``[B, n, M]`` initial velocities.
        loc_noise, vel_noise: ``[B, frames, n, M]`` observation noise (already scaled by ``noise_var``),
            only kept when ``noise_var != 0``, else ``None``.
    """

    charges: np.ndarray
    loc: np.ndarray
    vel: np.ndarray
    loc_noise: np.ndarray | None = None
    vel_noise: np.ndarray | None = None

    def __len__(self) -> int:
        return self.loc.shape[0]


def _reflect_into_box(loc: np.ndarray, vel: np.ndarray, box_size: float) -> None:
    """The reference's ``_clamp``: one elastic reflection off the walls ``+-box_size``, in place."""
    if np.any(loc >= 3 * box_size) or np.any(loc <= -3 * box_size):
        raise ValueError(f"initial position beyond 3 * box_size = {3 * box_size} (the reference asserts here)")
    over = loc > box_size
    loc[over] = 2 * box_size - loc[over]
    vel[over] = -np.abs(vel[over])
    under = loc < -box_size
    loc[under] = -2 * box_size - loc[under]
    vel[under] = np.abs(vel[under])


def sample_initial_states(
    rng: np.random.RandomState | int,
    num: int,
    n_particles: int = 5,
    dim: int = 3,
    *,
    frames: int = 49,
    loc_std: float | None = None,
    vel_norm: float = VEL_NORM,
    box_size: float | None = BOX_SIZE,
    noise_var: float = 0.0,
) -> InitialStates:
    """Draw ``num`` initial states exactly as ``num`` successive reference trajectories would.

    Per trajectory the reference draws, from the global legacy NumPy stream: charges
    (``choice`` over ``[-1, 0, 1]`` with ``p = [1/2, 0, 1/2]``: ``M`` uniforms), positions ``randn(n, M)``,
    velocities ``randn(n, M)`` (then normalised), and after simulating two noise arrays
    ``randn(frames, n, M)``. The noise draws do not depend on the simulation, so all of them are made here
    (which is cheap) and the simulation can then run vectorised. ``frames`` must match the simulation's
    frame count (``n_frames(length, sample_freq)``) for the stream to stay aligned.

    Args:
        rng: a legacy ``RandomState`` (advanced in place, so successive calls continue the stream, like the
            reference's train -> valid -> test) or an int seed (``np.random.seed(seed)`` equivalent).
        num: number of trajectories.
        n_particles, dim: ``M`` and ``n``.
        frames: recorded frames per trajectory (only sizes the noise draws).
        loc_std: initial position std (default: ``default_loc_std(M)``).
        vel_norm: initial speed.
        box_size: reflect initial positions beyond ``+-box_size`` (reference: 5); ``None`` disables.
        noise_var: observation noise scale (reference: 0; the draws are made either way).
    """
    if isinstance(rng, (int, np.integer)):
        rng = np.random.RandomState(int(rng))
    if not isinstance(rng, np.random.RandomState):
        raise TypeError("rng must be a numpy.random.RandomState or an int seed (the reference's legacy stream)")
    if dim < 1 or n_particles < 1:
        raise ValueError("dim and n_particles must be positive")
    std = default_loc_std(n_particles) if loc_std is None else loc_std
    charges = np.empty((num, n_particles, 1))
    loc = np.empty((num, dim, n_particles))
    vel = np.empty((num, dim, n_particles))
    keep_noise = noise_var != 0.0
    loc_noise = np.empty((num, frames, dim, n_particles)) if keep_noise else None
    vel_noise = np.empty((num, frames, dim, n_particles)) if keep_noise else None
    p = list(CHARGE_PROB)
    for b in range(num):
        charges[b] = rng.choice(CHARGE_TYPES, size=(n_particles, 1), p=p)
        x = rng.randn(dim, n_particles) * std
        v = rng.randn(dim, n_particles)
        v_norm = np.sqrt((v**2).sum(axis=0)).reshape(1, -1)
        v = v * vel_norm / v_norm
        if box_size is not None:
            _reflect_into_box(x, v, box_size)
        loc[b], vel[b] = x, v
        nl = rng.randn(frames, dim, n_particles)
        nv = rng.randn(frames, dim, n_particles)
        if keep_noise:
            loc_noise[b] = nl * noise_var
            vel_noise[b] = nv * noise_var
    return InitialStates(charges, loc, vel, loc_noise, vel_noise)


def _sum_like_numpy(term, n: int, out: np.ndarray) -> np.ndarray:
    """``out = sum_j term(j)`` for ``j < n``, rounded exactly like NumPy's ``sum`` over a contiguous axis.

    NumPy adds fewer than 8 numbers left to right and longer runs pairwise (8 running partial sums,
    recursive halving above 128); doing the same keeps the reference's bits in the batch-last layout.
    """

    def run(lo: int, count: int, res: np.ndarray) -> None:
        if count < 8:
            res[...] = term(lo)
            for j in range(lo + 1, lo + count):
                res += term(j)
        elif count <= 128:
            acc = [np.array(term(lo + j)) for j in range(8)]
            j = 8
            while j < count - count % 8:
                for k in range(8):
                    acc[k] += term(lo + j + k)
                j += 8
            np.add(acc[0] + acc[1], acc[2] + acc[3], out=res)
            res += (acc[4] + acc[5]) + (acc[6] + acc[7])
            for k in range(j, count):
                res += term(lo + k)
        else:
            half = count // 2
            half -= half % 8
            rest = np.empty_like(res)
            run(lo, half, res)
            run(lo + half, count - half, rest)
            res += rest

    run(0, n, out)
    return out


class _ForceKernel:
    """Batched force evaluation with preallocated buffers, in the batch-last layout ``[n, M, B]``.

    Every float operation is the reference's, in the reference's order, so each system gets the bits the
    reference's per-system code would give: the Gram matrix ``x^T x`` goes through one BLAS ``syrk`` per
    system (as the reference's ``A.dot(A.T)``), everything else is element-wise with the batch innermost.
    """

    def __init__(self, edges: np.ndarray, dim: int, strength: float, clip: float | None) -> None:
        B, M, _ = edges.shape
        self.M = M
        self.scaled_edges = np.ascontiguousarray((strength * edges).transpose(1, 2, 0))  # [M, M, B]
        self.clip = clip
        self.points = np.empty((B, M, dim))
        self.gram = np.empty((B, M, M))
        self.sq = np.empty((dim, M, B))
        self.norm = np.empty((M, B))
        self.r3 = np.empty((M, M, B))
        self.size = np.empty((M, M, B))
        self.diff = np.empty((dim, M, M, B))
        self.force = np.empty((dim, M, B))
        self.diag = self.size.reshape(M * M, B)[:: M + 1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Clipped forces ``[n, M, B]`` at positions ``x`` ``[n, M, B]`` (the returned buffer is reused)."""
        # squared distances |a|^2 + |b|^2 - 2 a.b, as the reference's _l2
        np.copyto(self.points, x.transpose(2, 1, 0))
        np.matmul(self.points, self.points.transpose(0, 2, 1), out=self.gram)  # syrk per system
        np.multiply(x, x, out=self.sq)
        self.norm[...] = self.sq[0]
        for k in range(1, x.shape[0]):
            self.norm += self.sq[k]
        np.add(self.norm[:, None, :], self.norm[None, :, :], out=self.r3)
        self.gram *= 2.0
        self.r3 -= self.gram.transpose(1, 2, 0)
        # k q_i q_j / |r|^3; the diagonal (|r|^2 ~ +-1e-16) is zeroed afterwards
        with np.errstate(divide="ignore", invalid="ignore"):
            np.power(self.r3, 1.5, out=self.r3)
            np.divide(self.scaled_edges, self.r3, out=self.size)
        self.diag[...] = 0.0
        # F_i = sum_j size_ij (x_i - x_j), component-wise clipped
        np.subtract(x[:, :, None, :], x[:, None, :, :], out=self.diff)
        self.diff *= self.size[None]
        _sum_like_numpy(lambda j: self.diff[:, :, j], self.M, self.force)
        if self.clip is not None:
            np.clip(self.force, -self.clip, self.clip, out=self.force)
        return self.force


def _check_state(loc0: np.ndarray, vel0: np.ndarray, charges: np.ndarray) -> tuple[np.ndarray, ...]:
    loc0 = np.array(loc0, dtype=np.float64, copy=True)
    vel0 = np.array(vel0, dtype=np.float64, copy=True)
    q = np.asarray(charges, dtype=np.float64)
    if loc0.ndim != 3 or vel0.shape != loc0.shape:
        raise ValueError(f"loc0 and vel0 must both be [B, n, M]; got {loc0.shape} and {vel0.shape}")
    B, dim, M = loc0.shape
    if dim < 1 or M < 1:
        raise ValueError(f"need at least one axis and one particle; got loc0 of shape {loc0.shape}")
    if q.ndim == 3 and q.shape[-1] == 1:
        q = q[..., 0]
    if q.shape != (B, M):
        raise ValueError(f"charges must be [B, M] or [B, M, 1] with B={B}, M={M}; got {np.shape(charges)}")
    return loc0, vel0, q


def simulate_charged(
    loc0: np.ndarray,
    vel0: np.ndarray,
    charges: np.ndarray,
    *,
    n_steps: int = 5000,
    sample_freq: int = 100,
    dt: float = DT,
    clip: float | None = None,
    interaction_strength: float = 1.0,
    chunk_size: int = 1000,
    progress: object | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ``B`` charged systems at once (vectorised over systems, float64, reference arithmetic).

    Args:
        loc0, vel0: initial positions and velocities ``[B, n, M]`` (trajectory, axis, particle).
        charges: ``[B, M]`` or ``[B, M, 1]``.
        n_steps: the reference's ``T`` (``--length``); must be a multiple of ``sample_freq``.
        sample_freq: record every ``sample_freq`` steps.
        dt: time step.
        clip: force components are clipped to ``[-clip, clip]``; ``None`` means the reference's ``0.1 / dt``,
            ``math.inf`` disables clipping.
        interaction_strength: Coulomb constant ``k``.
        chunk_size: systems simulated together (bounds memory and keeps buffers in cache).
        progress: optional object with ``update(n)`` (e.g. a tqdm bar), advanced per finished chunk.

    Returns:
        ``(loc, vel)``, each ``[B, frames, n, M]`` with ``frames = n_steps / sample_freq - 1``; frame ``k`` is
        the state after ``(k + 1) * sample_freq`` steps.
    """
    loc0, vel0, q = _check_state(loc0, vel0, charges)
    frames = n_frames(n_steps, sample_freq)
    max_f = 0.1 / dt if clip is None else float(clip)
    max_f = None if math.isinf(max_f) else max_f
    B, dim, M = loc0.shape
    edges = edges_from_charges(q)
    loc = np.empty((B, frames, dim, M))
    vel = np.empty((B, frames, dim, M))
    last = frames * sample_freq  # steps after the last recording are never saved by the reference
    chunk = max(1, int(chunk_size))
    for start in range(0, B, chunk):
        sl = slice(start, min(B, start + chunk))
        x = np.ascontiguousarray(loc0[sl].transpose(1, 2, 0))  # [n, M, b]: systems innermost
        v = np.ascontiguousarray(vel0[sl].transpose(1, 2, 0))
        kernel = _ForceKernel(edges[sl], dim, interaction_strength, max_f)
        step = np.empty_like(x)
        np.multiply(kernel(x), dt, out=step)  # first kick at t = 0
        v += step
        counter = 0
        for i in range(1, last + 1):
            np.multiply(v, dt, out=step)
            x += step
            if i % sample_freq == 0:
                loc[sl, counter] = x.transpose(2, 0, 1)
                vel[sl, counter] = v.transpose(2, 0, 1)
                counter += 1
            if i < last:
                np.multiply(kernel(x), dt, out=step)
                v += step
        if progress is not None:
            progress.update(sl.stop - sl.start)
    return loc, vel


def simulate_charged_loop(
    loc0: np.ndarray,
    vel0: np.ndarray,
    charges: np.ndarray,
    *,
    n_steps: int = 5000,
    sample_freq: int = 100,
    dt: float = DT,
    clip: float | None = None,
    interaction_strength: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Straightforward one-system-at-a-time loop in the reference's style (slow; for checks and benchmarks).

    Same signature and result as :func:`simulate_charged`; it runs all ``n_steps - 1`` steps like the
    reference, including the unrecorded tail.
    """
    loc0, vel0, q = _check_state(loc0, vel0, charges)
    frames = n_frames(n_steps, sample_freq)
    max_f = 0.1 / dt if clip is None else float(clip)
    B, dim, M = loc0.shape
    loc = np.zeros((B, frames, dim, M))
    vel = np.zeros((B, frames, dim, M))
    for b in range(B):
        qb = q[b].reshape(M, 1)
        edges = qb.dot(qb.T)
        x, v = loc0[b].copy(), vel0[b].copy()

        def force(x: np.ndarray, edges: np.ndarray = edges) -> np.ndarray:
            pts = x.T
            sq = (pts**2).sum(axis=1)
            d2 = sq.reshape(M, 1) + sq.reshape(1, M) - 2 * pts.dot(pts.T)
            with np.errstate(divide="ignore", invalid="ignore"):
                size = interaction_strength * edges / np.power(d2, 1.5)
            np.fill_diagonal(size, 0)
            diff = np.stack([np.subtract.outer(x[k], x[k]) for k in range(dim)])
            f = (size.reshape(1, M, M) * diff).sum(axis=-1)
            f[f > max_f] = max_f
            f[f < -max_f] = -max_f
            return f

        v += dt * force(x)
        counter = 0
        for i in range(1, n_steps):
            x += dt * v
            if i % sample_freq == 0:
                loc[b, counter], vel[b, counter] = x, v
                counter += 1
            v += dt * force(x)
    return loc, vel


def generate_split(
    rng: np.random.RandomState,
    num: int,
    *,
    n_particles: int = 5,
    dim: int = 3,
    length: int = 5000,
    sample_freq: int = 100,
    vel_norm: float = VEL_NORM,
    noise_var: float = 0.0,
    chunk_size: int = 1000,
    progress: object | None = None,
) -> dict[str, np.ndarray]:
    """Draw (advancing ``rng``) and simulate ``num`` trajectories: ``dict(loc, vel, edges, charges)``.

    Layout and dtypes are the reference's: ``loc``/``vel`` ``[S, frames, n, M]``, ``edges`` ``[S, M, M]``,
    ``charges`` ``[S, M, 1]``, all float64.
    """
    frames = n_frames(length, sample_freq)
    init = sample_initial_states(rng, num, n_particles, dim, frames=frames, vel_norm=vel_norm, noise_var=noise_var)
    loc, vel = simulate_charged(
        init.loc, init.vel, init.charges, n_steps=length, sample_freq=sample_freq,
        chunk_size=chunk_size, progress=progress,
    )  # fmt: skip
    if init.loc_noise is not None:
        loc += init.loc_noise
        vel += init.vel_noise
    return dict(loc=loc, vel=vel, edges=edges_from_charges(init.charges), charges=init.charges)


def generate_dataset(
    num_train: int,
    num_valid: int,
    num_test: int,
    seed: int,
    n_particles: int = 5,
    dim: int = 3,
    length: int = 5000,
    sample_freq: int = 100,
    progress: bool = True,
    *,
    length_test: int | None = None,
    vel_norm: float = VEL_NORM,
    noise_var: float = 0.0,
    chunk_size: int = 1000,
) -> dict[str, dict[str, np.ndarray]]:
    """The reference's ``generate_dataset.py``: train, valid, test in that order from one seeded stream.

    Returns ``{"train": {...}, "valid": {...}, "test": {...}}`` with ``loc, vel, edges, charges`` each.
    """
    from tqdm.auto import tqdm

    rng = np.random.RandomState(seed)
    sizes = dict(train=num_train, valid=num_valid, test=num_test)
    out: dict[str, dict[str, np.ndarray]] = {}
    with tqdm(total=sum(sizes.values()), desc="n-body", unit="traj", disable=not progress) as bar:
        for split, num in sizes.items():
            bar.set_postfix_str(split)
            steps = length_test if (split == "test" and length_test is not None) else length
            out[split] = generate_split(
                rng, num, n_particles=n_particles, dim=dim, length=steps, sample_freq=sample_freq,
                vel_norm=vel_norm, noise_var=noise_var, chunk_size=chunk_size, progress=bar,
            )  # fmt: skip
    return out


def generate_to_dir(
    out_dir: str | Path,
    preset: str = "small",
    num_train: int | None = None,
    seed: int | None = None,
    dim: int = 3,
    n_particles: int = 5,
    progress: bool = True,
    num_valid: int | None = None,
    num_test: int | None = None,
) -> list[Path]:
    """Generate a preset (optionally overriding its split sizes / seed) and write the reference's files.

    Returns the written paths. The file suffix is the preset's (``..._charged5_initvel1small.npy``).
    """
    from .files import SPLITS, save_split_files, split_file_names

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = dict(PRESETS[preset])
    existing = [Path(out_dir) / name for split in SPLITS
                for name in split_file_names(split, n_particles, cfg["suffix"]).values()
                if (Path(out_dir) / name).exists()]
    if existing:  # never overwrite a data set (it may be another run's, or the reference's own files)
        raise ValueError(f"{existing[0]} already exists; generate into another --out (data files are never "
                         f"overwritten)")
    t0 = time.perf_counter()
    data = generate_dataset(
        num_train=cfg["num_train"] if num_train is None else num_train,
        num_valid=cfg["num_valid"] if num_valid is None else num_valid,
        num_test=cfg["num_test"] if num_test is None else num_test,
        seed=cfg["seed"] if seed is None else seed,
        n_particles=n_particles,
        dim=dim,
        length=cfg["length"],
        sample_freq=cfg["sample_freq"],
        progress=progress,
    )
    paths = save_split_files(out_dir, data, n_particles=n_particles, suffix=cfg["suffix"])
    if progress:
        print(f"wrote {len(paths)} files to {out_dir} in {time.perf_counter() - t0:.1f} s")
    return paths
