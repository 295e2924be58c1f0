"""The device samplers (training.samplers) draw from exactly the distribution of the worlds'
reference samplers (World.sample), and complete batches with the worlds' own targets.

Distribution checks, each sampler against its reference with fixed seeds, n sequences each:

- per position and token, the two counts are two binomials with one p under the null;
  given their sum, the device count is hypergeometric (Fisher's exact test): every cell's
  two-sided p-value must exceed 1e-4 / (number of cells) (Bonferroni: a family-wise level
  of 1e-4, so a correct sampler fails with probability below 1e-4 whatever the seeds);
- every token the device draws has positive probability under the world (its exact
  negative log-likelihood is finite), and the mean exact NLL per sequence (the loss floor)
  agrees with the reference's (Welch's z within 4.9, two-sided p ~ 1e-6);
- taxi: every trip is valid on its map and ends at its destination; shortest paths are
  shortest; held-out pairs stay on their side.

A wrong sampler fails the same checks (the negative controls below), so they can fail.
"""
import numpy as np
import pytest
import torch
from scipy.stats import hypergeom

from nextlat_probe.training import samplers
from nextlat_probe.training.batches import DeviceBatches
from nextlat_probe.worlds import make_world
from nextlat_probe.worlds.hmm import HMM

N = 6000
ALPHA = 1e-4
#: the CPU always; a CUDA device too where there is one (its generator draws other numbers)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def frequency_p_values(ref: np.ndarray, dev: np.ndarray, vocab: int) -> np.ndarray:
    """Fisher's exact two-sided p-value of every (position, token) cell seen in either sample."""
    n, L = ref.shape
    assert dev.shape == ref.shape
    cr = np.stack([np.bincount(ref[:, t], minlength=vocab) for t in range(L)])
    cd = np.stack([np.bincount(dev[:, t], minlength=vocab) for t in range(L)])
    k = cr + cd
    seen = k > 0
    kd, ks = cd[seen], k[seen]
    lo = hypergeom.cdf(kd, 2 * n, ks, n)
    hi = hypergeom.sf(kd - 1, 2 * n, ks, n)
    return np.minimum(1.0, 2 * np.minimum(lo, hi))


def per_sequence_nll(world, tokens: np.ndarray) -> np.ndarray:
    """Each sequence's summed exact NLL over its scored targets (inf for an impossible one)."""
    targets, scored = world.output_targets(tokens)
    p = np.take_along_axis(world.target_probs(tokens), targets[..., None], axis=-1)[..., 0]
    with np.errstate(divide="ignore"):
        return np.where(scored, -np.log(p), 0.0).sum(axis=1)


def draw(world, length, n=N, seed=0, device="cpu") -> np.ndarray:
    sampler = samplers.sampler_for(world, length, device)
    return sampler.draw(n, torch.Generator(device=device).manual_seed(seed)).cpu().numpy()


def check_same_distribution(world, length, dev=None, device="cpu"):
    """The assertions of the module docstring; returns the device tokens."""
    ref = world.sample(N, length, seed=12345).tokens
    dev = draw(world, length, device=device) if dev is None else dev
    assert dev.dtype == np.int64 and dev.shape == ref.shape
    p = frequency_p_values(ref, dev, world.vocab_size)
    assert p.min() > ALPHA / p.size, f"cell p = {p.min():.2e} < {ALPHA / p.size:.2e}"
    a, b = per_sequence_nll(world, ref), per_sequence_nll(world, dev)
    assert np.isfinite(b).all(), "the device drew a token of probability zero"
    z = (a.mean() - b.mean()) / np.sqrt(a.var() / N + b.var() / N + 1e-30)
    assert abs(z) < 4.9, f"mean exact NLL {a.mean():.5f} (reference) vs {b.mean():.5f} (device): z = {z:.1f}"
    return dev


def custom_hmm():
    rng = np.random.default_rng(7)
    T = rng.random((3, 4, 4)) * (rng.random((3, 4, 4)) < 0.6)
    T[0, :, 0] += 0.1  # every state can move
    return HMM(T / T.sum(axis=(0, 2))[None, :, None], name="custom")


WORLDS = {
    "mess3": (lambda: make_world("mess3"), 8),
    "rrxor": (lambda: make_world("rrxor"), 9),
    "z1r": (lambda: make_world("z1r"), 7),
    "custom_T": (custom_hmm, 6),
    "a5_tagging": (lambda: make_world("a5"), 6),
    "a5_interleaved": (lambda: make_world("a5", form="interleaved"), 7),
    "pathstar": (lambda: make_world("pathstar", degree=2, length=2, nodes=8), None),
    "taxi_random": (lambda: make_world("taxi", map_size=4, max_len=8, min_len=2), None),
    "taxi_hidden": (lambda: make_world("taxi", map_size=4, max_len=6, origin="hidden"), None),
    "taxi_shortest": (lambda: make_world("taxi", map_size=4, walk="shortest"), None),
    "taxi_noisy_holdout": (lambda: make_world("taxi", map_size=5, walk="noisy", noise=0.3, holdout=0.3), None),
}


def world_of(name):
    """(world, sequence length) of a ``WORLDS`` entry."""
    make, length = WORLDS[name]
    world = make()
    return world, length or world.default_length


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(WORLDS))
def test_device_sampler_draws_the_reference_distribution(name, device):
    world, length = world_of(name)
    dev = check_same_distribution(world, length, device=device)
    if name.startswith("taxi"):
        check = world.check_sequences(dev)
        assert check["valid"].all()  # legal, ended, and (visible origin) at the destination
    if name in ("taxi_random", "taxi_shortest", "taxi_noisy_holdout"):
        origin, dest = dev[:, 0], dev[:, 1]
        turns = ((dev >= world.dir0) & (dev < world.dir0 + 8)).sum(axis=1)
        if name == "taxi_shortest":  # the path is a shortest one, and the floor is exactly 0
            assert np.array_equal(turns, world.distances[origin, dest])
            assert world.exact_cross_entropy(dev) == 0.0
        if name == "taxi_noisy_holdout":
            assert not world.is_held_out(origin, dest).any() and (turns <= world.max_len).all()
            held = world.variant(pairs="held_out")
            d2 = draw(held, held.default_length, n=500, device=device)
            assert held.is_held_out(d2[:, 0], d2[:, 1]).all() and held.check_sequences(d2)["valid"].all()
    if name == "pathstar":
        g = world.parse(dev)  # every prompt is a path-star graph
        valid, reached = world.is_path_to_leaf(dev, world.path_tokens(dev))
        assert valid.all() and reached.all()
        assert world.exact_cross_entropy(dev) == 0.0 and (g.start == g.centre).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(WORLDS))
def test_device_targets_are_the_worlds_targets(name, device):
    world, length = world_of(name)
    for tokens in (draw(world, length, n=64, seed=3, device=device), world.sample(64, length, seed=3).tokens):
        t = torch.as_tensor(tokens, device=device)
        targets, scored = samplers.output_targets(world, t)
        want_t, want_s = world.output_targets(tokens)
        assert np.array_equal(scored.cpu().numpy(), want_s)
        assert np.array_equal(targets.cpu().numpy()[want_s], want_t[want_s])
        assert np.array_equal(samplers.position_mask(world, t).cpu().numpy(), world.position_mask(tokens))


def test_a_wrong_sampler_fails_the_checks():
    """Negative controls: the checks see a changed parameter and a changed walk."""
    with pytest.raises(AssertionError, match="cell p"):
        check_same_distribution(make_world("rrxor"), 9, dev=draw(make_world("rrxor", p1=0.6), 9))
    taxi = make_world("taxi", map_size=4, walk="noisy", noise=0.2)
    with pytest.raises(AssertionError):
        check_same_distribution(taxi, taxi.default_length, dev=draw(taxi.variant(noise=0.05), taxi.default_length))


def test_worlds_a_sampler_does_not_know_fall_back_to_the_host():
    class Doubled(HMM):
        def sample(self, n, length, seed=None):  # another distribution: not ours to imitate
            return super().sample(n, length, seed)

    world = Doubled(make_world("z1r").T)
    assert not samplers.supports(world) and samplers.sampler_for(world, 5, "cpu") is None
    assert samplers.supports(make_world("z1r"))


def test_random_walks_with_held_out_pairs_are_drawn_by_the_host_reference(tmp_path):
    """Random walks conditioned on the pair split have no device sampler: the default falls
    back to the host one (the conditioned reference), and asking for the device is refused."""
    from nextlat_probe.errors import UsageError
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    world = make_world("taxi", map_size=4, walk="random", holdout=0.3)
    assert not samplers.supports(world) and samplers.sampler_for(world, world.default_length, "cpu") is None
    assert samplers.supports(make_world("taxi", map_size=4, walk="shortest", holdout=0.3))
    with pytest.raises(UsageError, match="held-out pairs"):
        DeviceBatches(world, 4, world.default_length, 0, torch.device("cpu"))
    cfg = TrainConfig(world="taxi", world_options={"map_size": 4, "walk": "random", "holdout": 0.3},
                      objective="gpt", steps=2, batch_size=4, eval_every=2, save_every=2, n_val=8, device="cpu",
                      warmup_steps=1)
    res = train(cfg, out_dir=tmp_path / "run", progress=False)
    state = torch.load(res.checkpoint, weights_only=True)
    assert state["train_config"]["sampler_used"] == "host"
    rows = world.sample(4, world.default_length, seed=0).tokens  # the host draws respect the split
    assert not world.is_held_out(rows[:, 0], rows[:, 1]).any()


def test_device_batches_are_a_function_of_seed_and_step():
    """Chunked draws: any order of steps, any instance, the same batch for a step; steps
    (and chunks) differ from each other."""
    world = make_world("taxi", map_size=4, max_len=8)
    L = world.default_length
    a = DeviceBatches(world, 5, L, seed=1, device=torch.device("cpu"), chunk=3)
    b = DeviceBatches(world, 5, L, seed=1, device=torch.device("cpu"), chunk=3)
    forward = [a.tokens(s).clone() for s in range(1, 8)]
    backward = {s: b.tokens(s).clone() for s in reversed(range(1, 8))}
    assert all(torch.equal(forward[s - 1], backward[s]) for s in range(1, 8))
    assert not torch.equal(forward[0], forward[1]) and not torch.equal(forward[2], forward[3])
    other = DeviceBatches(world, 5, L, seed=2, device=torch.device("cpu"), chunk=3)
    assert not torch.equal(other.tokens(1), forward[0])
    assert a.settings() == {"sampler_used": "device", "sampler_chunk": 3, "sampler_device": "cpu"}
