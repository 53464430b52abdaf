"""Experiment configs are data: frozen dataclasses, changed only through ``key=value`` overrides.

Every family's config subclasses :class:`CommonConfig` (one level, no tower) and adds its own
fields. :func:`parse_overrides` turns ``["seeds=5", "alpha=0.6"]`` into typed values checked
against the dataclass fields, and :func:`apply_overrides` returns a new frozen config.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "ARMS",
    "LATE_FIELDS",
    "METHODS",
    "NON_RESULT_FIELDS",
    "RDROP_FIELDS",
    "SCHEDULE_TAGS",
    "START_RULES",
    "ArmSpec",
    "CommonConfig",
    "ConfigError",
    "apply_overrides",
    "arm_spec",
    "check_heads",
    "check_rates",
    "check_vocab_size",
    "config_key",
    "config_to_dict",
    "parse_overrides",
]


@dataclass(frozen=True)
class ArmSpec:
    """What sets an arm (``methods=``) apart; everything else comes from the config.

    Attributes:
        two_pass: R-Drop's passes on its R-Drop steps (False: one plain pass on every step, with
            the noise of its own; its run ignores :data:`RDROP_FIELDS`).
        zero_alpha: consistency weight 0 whatever ``alpha`` says (the passes' cross-entropies
            alone: the doubled-sample gradient without the KL term).
        stop_gradient: the second pass under ``no_grad``, a detached target (one backward).
        summary: one line for readers.
    """

    two_pass: bool = True
    zero_alpha: bool = False
    stop_gradient: bool = False
    summary: str = ""


# The arms, in the reports' order: the one table a new arm is added to.
ARMS = {
    "baseline": ArmSpec(two_pass=False, summary="one pass, cross-entropy"),
    "rdrop": ArmSpec(summary="R-Drop with the config's alpha"),
    "rdrop_alpha0": ArmSpec(zero_alpha=True, summary="R-Drop's passes, consistency weight 0"),
    "rdrop_stop_gradient": ArmSpec(stop_gradient=True,
                                   summary="R-Drop, second pass a detached target"),
}
METHODS = tuple(ARMS)


def arm_spec(method: str) -> ArmSpec:
    """The :class:`ArmSpec` of arm ``method``.

    Raises:
        ValueError: an unknown arm (the message lists the known ones).

    Example:
        >>> arm_spec("rdrop_stop_gradient").stop_gradient
        True
    """
    try:
        return ARMS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(ARMS)}.") from None


# The start rules the harness runs (``start_rule=NAME``; the arm is ``rdrop+NAME``): NAME -> the
# rule's class in rdrop.training.autostart, built with its registered defaults and the run's
# ``higher_is_better``. A new rule is one row here (and its class in the library).
START_RULES = {"plateau": "PlateauStart"}
# The schedule options that make an arm of their own (config field, its default, the tag the arm
# gets when the field differs from it; None: the field's value, a start rule's name): read by the
# reports' arm names and by the runner's labels.
SCHEDULE_TAGS = (("auto_start_patience", 0, "auto_start"), ("start_step", 0, "start"),
                 ("start_rule", "", None), ("second_pass_fraction", 1.0, "fraction"))

# Fields that only the R-Drop arm reads: a baseline run does not depend on them, so sweep points
# that differ only here share one baseline run (see ``config_key``).
RDROP_FIELDS = (
    "alpha",
    "num_passes",
    "every_k_steps",
    "pass_dropouts",
    "consistency",
    "rdrop_mode",
    "alpha_warmup_steps",
    "chunk_size",
    "second_pass_fraction",
    "start_step",
    "auto_start_patience",
    "start_rule",
)
# Fields that say which runs to do, not how one run goes: excluded from a run's identity.
NON_RESULT_FIELDS = ("seeds", "first_seed", "methods", "num_threads", "progress", "device",
                     "checkpoint_every_s")
# Fields added after records were committed: left out of a run's identity while they hold their
# default, so every earlier record keeps its key (a test recomputes the keys of results/). A new
# field that changes how a run goes is appended here.
LATE_FIELDS = ("eval_every_epochs", "patience_epochs", "stop_margin", "max_sample_pass_epochs",
               "second_pass_fraction", "start_step", "auto_start_patience", "noise", "arm_tag",
               "start_rule", "branch_seed", "branch_step")

C = TypeVar("C", bound="CommonConfig")


class ConfigError(ValueError):
    """A bad ``key=value`` override or an invalid config value (message says which and why)."""


@dataclass(frozen=True)
class CommonConfig:
    """Fields every experiment has. Families subclass this and add their own.

    Attributes:
        seeds: number of seeds per method (seeds ``first_seed .. first_seed + seeds - 1``).
        first_seed: first seed.
        methods: arms to run, a subset of :data:`ARMS`: ``baseline`` (one pass, CE),
            ``rdrop``, ``rdrop_alpha0`` (two passes, consistency weight 0: the doubled-sample
            gradient without the KL term), ``rdrop_stop_gradient`` (second pass under
            ``no_grad`` as a detached target).
        alpha: R-Drop consistency weight (per-row normalization of ``rdrop.rdrop_loss``).
        num_passes: dropout passes ``m >= 2`` for the R-Drop arm.
        every_k_steps: apply R-Drop on every k-th optimizer step (others: one plain pass).
        pass_dropouts: per-pass dropout rates for the R-Drop arm, e.g. ``(0.1, 0.3)``; empty
            means every pass uses the model's own rates. Length must equal ``num_passes``.
        consistency: ``"kl"`` (paper), ``"js"``, ``"mse"``, or ``"bernoulli"`` (multi-label
            sigmoid heads: BCE task terms, :func:`rdrop.multilabel_rdrop_loss`).
        noise: where the passes' randomness comes from (:mod:`rdrop.training.noise`), for every arm
            (the baseline's one pass too): ``dropout`` (the model's own), ``embedding:ALPHA``
            (NEFTune-style embedding noise), ``dropout:P`` (every dropout slot at ``P``),
            ``lora:P``.
        arm_tag: a name that sets these runs apart as their own arm in the report
            (``<method>+<arm_tag>``, :func:`rdrop_experiments.frontier.arm_name`) when the rule
            that chose their settings differs from the grid's, e.g. ``tuned_dropout`` (R-Drop
            at the dropout the baseline chose); no effect on training. ``""`` = none.
        rdrop_mode: ``"concat"`` (one forward over ``[x; x]``) or ``"twice"``.
        alpha_warmup_steps: linear alpha warm-up for the R-Drop arm (0 = none).
        second_pass_fraction: the second pass (and the consistency term) on the first
            ``ceil(r * B)`` rows of each batch only (``rdrop.RDrop(second_pass_fraction=)``);
            1.0 = every row (full R-Drop).
        start_step: plain single-pass steps before this optimizer step, R-Drop from it on
            (``rdrop.RDrop(start_step=)``; 0 = from the start).
        auto_start_patience: when > 0, R-Drop starts by :class:`rdrop.training.autostart.AutoStart`:
            after this many evaluation points without a better validation metric (the run's
            selection metric; validation only), from the next optimizer step on. The
            protocol's own patience then counts again from the switch.
        start_rule: a name of :data:`START_RULES`: ``"plateau"``: R-Drop starts by
            :class:`rdrop.PlateauStart` with the registered parameters (docs/EXPERIMENTS.md,
            "Plateau start") on the run's selection metric, before its optimum; the run is the
            baseline's up to there. Its arm is ``rdrop+<name>``. Empty: no rule.
        branch_seed, branch_step: with a ``branch_seed`` (an int), the run is the seed's run up to
            optimizer step ``branch_step``, then every generator (torch, Python, the batch
            order) is reseeded with ``branch_seed``: a continuation of that run from its
            checkpoint at ``branch_step`` with another seed (``rdrop tryout``). None: no branch.
        chunk_size: rows per chunk of the R-Drop loss (``rdrop_loss(chunk_size=...)``: the same
            values at a fraction of the memory; for large LM vocabularies). None = unchunked.
        max_steps: optimizer steps per run at most (a safety stop; the protocol stops on
            ``patience`` or ``max_sample_passes`` first).
        eval_every: steps between validation points on the curves.
        patience: stop after this many evaluation points without a strictly better validation
            metric (0 = never stop on patience).
        max_sample_passes: compute cap in training sample passes (forward+backward of one
            sample = 1; an R-Drop step over B samples = 2B), the same for every arm (0 = none).
        eval_every_epochs: evaluation spacing in epochs (passes over the training set); when
            > 0 it replaces ``eval_every`` (``round(eval_every_epochs * n_train / batch_size)``
            steps, at least 1), so the spacing holds at every training-set size.
        patience_epochs: the patience window in epochs; when > 0 it replaces ``patience``
            (``ceil(patience_epochs / eval_every_epochs)`` evaluation points).
        stop_margin: a run stops on patience only once it has *passed* its optimum: the last
            validation value is worse than the best by more than ``stop_margin`` (relative,
            ``|last - best| > stop_margin * |best|``); a flat plateau keeps training up to the
            cap. 0 = the patience window alone decides (the second protocol's rule).
        max_sample_pass_epochs: the compute cap in epochs of sample passes (the cap is
            ``max_sample_pass_epochs * n_train`` sample passes, the same for every arm); when
            > 0 it replaces ``max_sample_passes``.
        checkpoint_every_s: seconds between resumable checkpoints of a run (taken at
            evaluation points; not part of a run's identity). 0 = at every evaluation point.
        lr_schedule: ``constant`` (linear warm-up, then constant: the protocol's default, so
            no arm's schedule depends on when it stops) or ``linear`` (warm-up, then linear
            decay to 0 at ``max_steps``).
        batch_size: examples per optimizer step (before R-Drop's duplication).
        lr: peak learning rate; weight_decay: AdamW weight decay; warmup_steps: linear LR warm-up.
        num_threads: ``torch.set_num_threads`` for the run (the machine is shared).
        progress: show tqdm bars.
        device: ``cpu``, ``cuda``, ``cuda:1``, ... or ``auto`` (cuda if available); not part
            of a run's identity (see ``config_key``).
    """

    seeds: int = 3
    first_seed: int = 0
    methods: tuple[str, ...] = ("baseline", "rdrop")
    alpha: float = 1.0
    num_passes: int = 2
    every_k_steps: int = 1
    pass_dropouts: tuple[float, ...] = ()
    consistency: str = "kl"
    rdrop_mode: str = "concat"
    alpha_warmup_steps: int = 0
    second_pass_fraction: float = 1.0
    start_step: int = 0
    auto_start_patience: int = 0
    start_rule: str = ""
    branch_seed: int | None = None
    branch_step: int = 0
    chunk_size: int | None = None
    noise: str = "dropout"
    arm_tag: str = ""
    max_steps: int = 1000
    eval_every: int = 100
    patience: int = 0
    max_sample_passes: int = 0
    eval_every_epochs: float = 0.0
    patience_epochs: float = 0.0
    stop_margin: float = 0.0
    max_sample_pass_epochs: float = 0.0
    checkpoint_every_s: float = 300.0
    lr_schedule: str = "constant"
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    num_threads: int = 1
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check values; families extend this (call ``super().validate()``).

        Raises:
            ConfigError: the first invalid value, with the field name.
        """
        _check_numbers(self)
        _positive("seeds", self.seeds)
        _positive("max_steps", self.max_steps)
        _positive("eval_every", self.eval_every)
        if self.patience < 0 or self.max_sample_passes < 0:
            raise ConfigError("patience and max_sample_passes must be >= 0 (0 = off), got "
                              f"{self.patience} and {self.max_sample_passes}.")
        if self.patience_epochs and not self.eval_every_epochs:
            raise ConfigError("patience_epochs needs eval_every_epochs (both in epochs), got "
                              f"patience_epochs={self.patience_epochs}, eval_every_epochs=0.")
        if self.lr_schedule not in ("constant", "linear"):
            raise ConfigError(f"lr_schedule must be constant or linear, got {self.lr_schedule!r}.")
        _positive("batch_size", self.batch_size)
        _positive("num_threads", self.num_threads)
        if self.first_seed < 0:
            raise ConfigError(f"first_seed must be >= 0, got {self.first_seed}.")
        if not self.methods or any(m not in ARMS for m in self.methods):
            raise ConfigError(
                f"methods must be a non-empty subset of {tuple(ARMS)}, got {self.methods}."
            )
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods has duplicates: {self.methods}.")
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}.")
        if self.num_passes < 2:
            raise ConfigError(f"num_passes must be >= 2, got {self.num_passes}.")
        _positive("every_k_steps", self.every_k_steps)
        if self.pass_dropouts:
            if len(self.pass_dropouts) != self.num_passes:
                raise ConfigError(
                    f"pass_dropouts has {len(self.pass_dropouts)} rates but num_passes is "
                    f"{self.num_passes}; give one rate per pass, e.g. pass_dropouts=0.1,0.3."
                )
            if any(not 0.0 <= p < 1.0 for p in self.pass_dropouts):
                raise ConfigError(f"pass_dropouts must lie in [0, 1), got {self.pass_dropouts}.")
        if self.consistency not in ("kl", "js", "mse", "bernoulli"):
            raise ConfigError(f"consistency must be kl, js, mse or bernoulli, got "
                              f"{self.consistency!r}.")
        try:
            from rdrop.training.noise import parse_noise

            noise = parse_noise(self.noise)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        if self.pass_dropouts and noise.kind == "dropout" and noise.rate is not None:
            raise ConfigError(f"pass_dropouts sets each pass's dropout rate; noise={self.noise} "
                              "sets one rate for all passes. Use one of them.")
        if self.arm_tag and not self.arm_tag.replace("_", "").isalnum():
            raise ConfigError(f"arm_tag must be letters, digits and '_' (it names an arm in "
                              f"the report, e.g. tuned_dropout), got {self.arm_tag!r}.")
        if self.rdrop_mode not in ("concat", "twice"):
            raise ConfigError(f"rdrop_mode must be concat or twice, got {self.rdrop_mode!r}.")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1 rows per chunk of the R-Drop loss, or "
                              f"none for the unchunked loss; got {self.chunk_size}.")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}.")
        if self.warmup_steps < 0 or self.alpha_warmup_steps < 0:
            raise ConfigError("warmup_steps and alpha_warmup_steps must be >= 0.")
        if not 0.0 < self.second_pass_fraction <= 1.0:
            raise ConfigError(f"second_pass_fraction must lie in (0, 1], got "
                              f"{self.second_pass_fraction}.")
        if (self.branch_seed is not None and self.branch_seed < 0) or self.branch_step < 0:
            raise ConfigError(f"branch_seed must be >= 0 (or none: no branch) and branch_step "
                              f">= 0, got {self.branch_seed} and {self.branch_step}.")
        if self.start_rule and self.start_rule not in START_RULES:
            rules = ", ".join(f"{k} (rdrop.{v})" for k, v in START_RULES.items())
            raise ConfigError(f"start_rule must be one of {rules}, or empty, got "
                              f"{self.start_rule!r}.")
        if sum(map(bool, (self.start_step, self.auto_start_patience, self.start_rule))) > 1:
            raise ConfigError("start_step, auto_start_patience and start_rule each choose when "
                              "R-Drop starts; set one of them (the others 0 or empty).")

    @property
    def seed_list(self) -> list[int]:
        """The seeds this config runs."""
        return list(range(self.first_seed, self.first_seed + self.seeds))


def check_rates(cfg: Any, *names: str) -> None:
    """Raise ``ConfigError`` unless every field ``names`` of ``cfg`` lies in [0, 1) (dropout
    probabilities, label smoothing)."""
    for name in names:
        value = getattr(cfg, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must lie in [0, 1), got {value}.")


def check_heads(cfg: Any) -> None:
    """Raise ``ConfigError`` unless ``cfg.dim`` is divisible by ``cfg.heads`` (attention)."""
    if cfg.dim % cfg.heads:
        raise ConfigError(f"dim ({cfg.dim}) must be divisible by heads ({cfg.heads}).")


def check_vocab_size(cfg: Any, low: int = 50) -> None:
    """Raise ``ConfigError`` unless ``cfg.vocab_size >= low``."""
    if cfg.vocab_size < low:
        raise ConfigError(f"vocab_size must be >= {low}, got {cfg.vocab_size}.")


def _check_numbers(cfg: Any) -> None:
    """Every number of every field (tuples too) must be finite and >= 0: no field of any config
    takes a negative size, rate or count, and nan/inf would only fail later, mid-training."""
    import math

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(v):
                raise ConfigError(f"{f.name} must be a finite number, got {v}.")
            if v < 0:
                raise ConfigError(f"{f.name} must be >= 0, got {v}.")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}.")


# ------------------------------------------------------------------------------------ overrides
def _parse_scalar(tp: Any, text: str, key: str) -> Any:
    text = text.strip()
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {text!r}.")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {text!r}.") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {text!r}.") from None
    if tp is str:
        return text
    raise ConfigError(f"{key}: cannot parse a value of type {tp!r} from the command line.")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert ``value`` (a string from the CLI, or a Python value) to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
            return None
        return _coerce(args[0], value, key)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            parts = [p for p in value.replace(" ", "").split(",") if p != ""]
        elif isinstance(value, Iterable):
            parts = list(value)
        else:
            parts = [value]
        return tuple(_coerce(item_tp, p, key) for p in parts)
    if isinstance(value, str):
        return _parse_scalar(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}.")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got {value!r}.")
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_overrides(cls: type[C], items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into typed values for the config class ``cls``.

    Tuples are comma-separated (``methods=rdrop``, ``pass_dropouts=0.1,0.3``); booleans accept
    true/false/1/0; optional fields accept ``none``.

    Args:
        cls: a :class:`CommonConfig` subclass.
        items: strings of the form ``key=value``.

    Returns:
        ``{key: typed value}``.

    Raises:
        ConfigError: a string without ``=``, an unknown key (with the closest known keys), a
            key given twice, or a value that does not parse as the field's type.

    Example:
        >>> parse_overrides(CommonConfig, ["seeds=5", "alpha=0.6", "methods=rdrop"])
        {'seeds': 5, 'alpha': 0.6, 'methods': ('rdrop',)}
    """
    types_ = _field_types(cls)
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value.")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in given:  # which one should win is a guess: refuse it
            raise ConfigError(f"override {key!r} is given twice ({given[key]} and {item}); "
                              "pass each key once (a tuple as one comma-separated value).")
        given[key] = item
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown config key {key!r} for {cls.__name__}.{hint} "
                f"Known keys: {', '.join(sorted(types_))}."
            )
        out[key] = _coerce(types_[key], value, key)
    return out


def apply_overrides(config: C, overrides: Mapping[str, Any]) -> C:
    """Return a copy of ``config`` with ``overrides`` applied (values coerced and validated).

    Args:
        config: a frozen config instance.
        overrides: ``{field: value}``; values may be strings (as from the CLI) or Python values.

    Returns:
        A new frozen config.

    Raises:
        ConfigError: unknown field, unparsable or invalid value.

    Example:
        >>> cfg = apply_overrides(CommonConfig(), {"seeds": "2", "pass_dropouts": (0.1, 0.3)})
        >>> cfg.seeds, cfg.pass_dropouts
        (2, (0.1, 0.3))
    """
    types_ = _field_types(type(config))
    typed: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r} for {type(config).__name__}.{hint}")
        typed[key] = _coerce(types_[key], value, key)
    try:
        return dataclasses.replace(config, **typed)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def config_to_dict(config: CommonConfig) -> dict[str, Any]:
    """A JSON-ready dict of the config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_key(config: CommonConfig, method: str) -> str:
    """A short hash that identifies one arm's run for one seed, across processes.

    Excludes :data:`NON_RESULT_FIELDS`; for a one-pass arm (``baseline``, :data:`ARMS`) also
    resets :data:`RDROP_FIELDS` to their defaults, so an alpha sweep shares one baseline per
    seed.

    Example:
        >>> a = CommonConfig(alpha=0.5)
        >>> config_key(a, "baseline") == config_key(CommonConfig(alpha=5.0), "baseline")
        True
        >>> config_key(a, "rdrop") == config_key(CommonConfig(alpha=5.0), "rdrop")
        False
    """
    d = dataclasses.asdict(config)
    for k in NON_RESULT_FIELDS:
        d.pop(k, None)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for k in LATE_FIELDS:
        if k in d and d[k] == defaults[k]:
            del d[k]
    if method in ARMS and not ARMS[method].two_pass:  # one plain pass: no R-Drop field counts
        defaults = {f.name: f.default for f in dataclasses.fields(CommonConfig)}
        for k in RDROP_FIELDS:
            if k in LATE_FIELDS:  # at its default for every baseline: left out, as before it was
                d.pop(k, None)
            else:
                d[k] = defaults[k]
    payload = json.dumps({"class": type(config).__name__, "method": method, **d}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]
