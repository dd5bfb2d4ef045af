"""The Optuna sampler a search space asks for."""

from __future__ import annotations

from robusttune.errors import ConfigError
from robusttune.space import SamplerName, SearchSpace

# Samplers that model complete trials only: a trial a scheduler stops early (told PRUNED) stays unknown to them, so
# they may propose it again and again (measured: GP + MO-ASHA re-proposed one stopped configuration 106 times in a
# 117-trial replay; docs/results/search-efficiency.md)
BLIND_TO_STOPPED = frozenset({SamplerName.GP, SamplerName.BOTORCH})


def make_sampler(space: SearchSpace, seed: int):
    """The Optuna sampler the space asks for (multi-objective capable except grid/random, which need none)."""
    import optuna

    options = dict(space.sampler.options)
    name = space.sampler.name
    try:
        if name is SamplerName.TPE:
            return optuna.samplers.TPESampler(seed=seed, **options)
        if name is SamplerName.NSGA2:
            return optuna.samplers.NSGAIISampler(seed=seed, **options)
        if name is SamplerName.GP:
            return optuna.samplers.GPSampler(seed=seed, **options)
        if name is SamplerName.BOTORCH:
            return _botorch(seed, options, multi_objective=space.multi_objective)
        if name is SamplerName.RANDOM:
            return optuna.samplers.RandomSampler(seed=seed, **options)
        return optuna.samplers.GridSampler(space.grid(), seed=seed, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"space '{space.name}': sampler.options not accepted by the {name.value} sampler: {error}") from None


def _botorch(seed: int, options: dict, *, multi_objective: bool):
    """BoTorch's Bayesian optimisation through optuna-integration, an extra (``pip install 'robusttune[botorch]'``).
    On several objectives it maximises qNEHVI, the noisy expected hypervolume improvement (the integration's default
    is qEHVI, which takes the evaluations as exact; ours carry the training's noise)."""
    try:
        from optuna_integration import BoTorchSampler
        from optuna_integration.botorch import qnehvi_candidates_func
    except ImportError:
        raise ConfigError("sampler botorch needs optuna-integration and botorch: pip install 'robusttune[botorch]'") from None
    if multi_objective:
        options = {"candidates_func": qnehvi_candidates_func, **options}
    return BoTorchSampler(seed=seed, **options)
