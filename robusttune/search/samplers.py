"""The Optuna sampler a search space asks for."""

from __future__ import annotations

from robusttune.errors import ConfigError
from robusttune.space import SamplerName, SearchSpace


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
            return _botorch(seed, options)
        if name is SamplerName.RANDOM:
            return optuna.samplers.RandomSampler(seed=seed, **options)
        return optuna.samplers.GridSampler(space.grid(), seed=seed, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"space '{space.name}': sampler.options not accepted by the {name.value} sampler: {error}") from None


def _botorch(seed: int, options: dict):
    """BoTorch's Bayesian optimisation through optuna-integration (qNEHVI for two or three objectives): an extra,
    ``pip install 'robusttune[botorch]'``."""
    try:
        from optuna_integration import BoTorchSampler
    except ImportError:
        raise ConfigError("sampler botorch needs optuna-integration and botorch: pip install 'robusttune[botorch]'") from None
    return BoTorchSampler(seed=seed, **options)
