"""``rdrop``: a router over small subcommands (``ls``, ``run``, ``report``, ``compare``).

Experiments load only inside a subcommand, so ``rdrop --help`` stays fast. ``key=value``
overrides and flags may come in any order (``rdrop run image --quick seeds=1``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

__all__ = ["build_parser", "main"]

DEFAULT_OUT = "runs"  # the same as rdrop_experiments.runner.DEFAULT_OUT, without importing torch


def _cmd_ls(args: argparse.Namespace) -> int:
    from rdrop_experiments import list_experiments

    for exp in list_experiments():
        kind = "ablation" if "ablation" in exp.tags else "family"
        print(f"{exp.name:<24} [{kind}] {exp.description}")
        if args.verbose:
            print(f"    metric: {exp.metric} ({'higher' if exp.higher_is_better else 'lower'} is "
                  f"better); all: {', '.join(exp.metrics)}")
            if exp.data:
                print(f"    data: {exp.data}")
            if exp.paper:
                print(f"    paper: {exp.paper}")
            print("    variants:")
            for vname, overrides in sorted(exp.variants.items()):
                items = " ".join(f"{k}={v}" for k, v in overrides.items())
                print(f"      {vname}: {items}")
            if len(exp.grid) > 1 or exp.grid[0]:
                print(f"    grid: {list(map(dict, exp.grid))}")
            print("    config:")
            for key, value in vars(exp.config).items():
                print(f"      {key} = {value!r}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from rdrop_experiments import list_experiments, parse_overrides
    from rdrop_experiments.launch import make_launcher
    from rdrop_experiments.registry import get_experiment
    from rdrop_experiments.runner import (
        RunsFailedError,
        execute_plan,
        format_plan,
        plan_runs,
        preflight,
    )

    names = [t for t in args.items if "=" not in t]
    overrides = [t for t in args.items if "=" in t]
    if args.all:
        names += [e.name for e in list_experiments() if "family" in e.tags and e.name not in names]
    if not names:
        print("rdrop run: name an experiment (see `rdrop ls`) or pass --all.", file=sys.stderr)
        return 2
    variant = "quick" if args.quick else args.variant
    grid = not args.no_grid
    launcher = make_launcher(args.launcher, args.address)  # Ray connects at the first preflight
    # Plan and check once, every experiment's every planned config, before the first run starts.
    experiments = {n: get_experiment(n) for n in names}
    parsed = {n: parse_overrides(type(e.config), overrides) for n, e in experiments.items()}
    plans = {n: plan_runs(e, args.out, parsed[n], variant=variant, grid=grid)
             for n, e in experiments.items()}
    for name in names:  # devices, committed results, writable folders: before the first run
        preflight(plans[name], args.out, variant=variant, allow_committed=args.allow_committed,
                  write=not args.dry_run, launcher=launcher)
    if args.dry_run:
        for name in names:
            print(format_plan(plans[name], force=args.force))
        return 0

    def execute(name: str) -> list[dict]:
        return execute_plan(experiments[name], plans[name], out=args.out, variant=variant,
                            overrides=parsed[name], grid=grid, progress=not args.no_progress,
                            force=args.force, launcher=launcher)

    def report(name: str, outcome: list[dict] | Exception) -> int:
        if isinstance(outcome, RunsFailedError):  # --launcher ray: the other runs are written
            print(f"rdrop run {name}: {outcome}", file=sys.stderr)
            return 1
        print(f"{name}: {len(outcome)} finished run(s) under {os.path.join(args.out, name)}")
        return 0

    if launcher is None:  # here, one run after another; a run that raises stops the command
        return max(report(name, _outcome(execute, name)) for name in names)
    # the cluster schedules every experiment's runs at once (one sender thread each)
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {name: pool.submit(_outcome, execute, name) for name in names}
    return max(report(name, future.result()) for name, future in futures.items())


def _outcome(execute: Callable[[str], list[dict]], name: str) -> list[dict] | Exception:
    """``execute(name)``'s records, or the :class:`RunsFailedError` it ended with (the other
    runs finished and were written); any other error propagates."""
    from rdrop_experiments.runner import RunsFailedError

    try:
        return execute(name)
    except RunsFailedError as exc:
        return exc


def _design():  # type: ignore[no-untyped-def]
    """What the registry says, as data for the reports (the reading wing imports no registry)."""
    from rdrop_experiments.design import Design
    from rdrop_experiments.registry import discover
    from rdrop_experiments.scale import CELLS, missing_runs

    try:
        return Design.of(discover().values(), cells=CELLS, missing_runs=missing_runs)
    except Exception as exc:  # a broken family module must not break the report (as before)
        print(f"rdrop: warning: the registry could not be read ({type(exc).__name__}: {exc}); "
              "reading the records alone (ties by label, 3 seeds assumed).", file=sys.stderr)
        return None


def _cmd_report(args: argparse.Namespace) -> int:
    from rdrop_experiments.report import build_report
    from rdrop_experiments.storage import DuplicateRunError

    try:
        text = build_report(args.results, out=args.out, plots=not args.no_plots,
                            experiments=args.experiment or None,
                            include_quick=args.include_quick, design=_design())
    except DuplicateRunError as exc:
        print(f"rdrop report: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


def _cmd_scale(args: argparse.Namespace) -> int:
    from rdrop_experiments.launch import make_launcher
    from rdrop_experiments.runner import RunsFailedError
    from rdrop_experiments.scale import CELLS, get_cell, run_cell, run_extra_arms

    if args.costs:
        return _print_costs(args.out, [n for n in args.cells if "=" not in n] or None)
    if args.list or not (args.cells or args.all):
        for cell in CELLS:
            print(f"{cell.name:<34} seeds={cell.seeds}  {cell.config_overrides()}")
        return 0
    if overrides := [n for n in args.cells if "=" in n]:
        print(f"rdrop scale: error: {' '.join(overrides)}: a cell's config is registered (rdrop "
              "scale --list), so scale takes no key=value overrides. To run one setting with "
              "your own values: rdrop run FAMILY --no-grid KEY=VALUE ...", file=sys.stderr)
        return 2
    flags = [name for name in ("cheaper", "tuned_dropout", "plateau") if getattr(args, name)]
    if len(flags) > 1:
        given = " and ".join("--" + f.replace("_", "-") for f in flags)
        print(f"rdrop scale: error: {given} are separate sets of extra arms; pass one per "
              "command (run the command once with each).", file=sys.stderr)
        return 2
    cells = list(CELLS) if args.all else [get_cell(n) for n in args.cells]
    launcher = make_launcher(args.launcher, args.address)
    status = 0
    for cell in cells:
        extra = flags[0] if flags else None
        try:
            if extra:
                run_extra_arms(cell, args.out, progress=not args.no_progress,
                               dry_run=args.dry_run, arms=extra, launcher=launcher)
            else:
                run_cell(cell, args.out, progress=not args.no_progress, dry_run=args.dry_run,
                         launcher=launcher)
        except RunsFailedError as exc:  # --launcher ray: the cell's other runs are written
            print(f"rdrop scale {cell.name}: {exc}", file=sys.stderr)
            status = 1  # the next cells still run
        except ValueError as exc:
            if not extra:
                raise
            flag = extra.replace("_", "-")
            print(f"rdrop scale {cell.name} --{flag}: {exc}", file=sys.stderr)
            return 2
    return status


def _print_costs(root: str, cells: list[str] | None) -> int:
    from rdrop_experiments.costs import cell_costs, costs_markdown, larger_cells

    try:
        measured = cell_costs(root, cells)
    except FileNotFoundError as exc:
        print(f"rdrop scale --costs: error: {exc}", file=sys.stderr)
        return 2
    if not measured:
        print(f"rdrop scale --costs: no records under {root}"
              + (f" for {', '.join(cells)}" if cells else "") + ".", file=sys.stderr)
        return 2
    print(costs_markdown(measured))
    print(f"\nmeasured: {sum(c.hours for c in measured):.1f} hours in all; a 4x larger cell "
          "per family and model (linear in size; if the data has that many examples):\n")
    print(costs_markdown(larger_cells(measured)))
    return 0


def _cmd_advise(args: argparse.Namespace) -> int:
    from rdrop_experiments.advise import AdviseError, advise

    try:
        print(advise(args.path, args.results, _design()))
    except AdviseError as exc:
        print(f"rdrop advise: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_tryout(args: argparse.Namespace) -> int:
    from rdrop_experiments.tryout import record_tryout

    try:
        alphas = tuple(float(a) for a in args.alphas.split(","))
        result = record_tryout(args.record, out=args.out, seeds=args.seeds, alphas=alphas,
                               budget=args.budget, progress=not args.no_progress)
    except ValueError as exc:  # TryoutError, ConfigError, and rdrop.tryout's input errors
        print(f"rdrop tryout: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from rdrop_experiments.compare import compare_folders

    try:
        print(compare_folders(args.old, args.new))
    except ValueError as exc:
        print(f"rdrop compare: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _launcher_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--launcher", choices=("local", "ray"), default="local",
        help="where the runs train: local = in this process, one after another (default); "
             "ray = each (setting, seed) run as one Ray task on a Ray cluster, a lost worker "
             "retried from the run's checkpoint, records written by this process (pip install "
             "'torch-rdrop-experiments[ray]'; docs/CLUSTER.md)")
    parser.add_argument(
        "--address", default=None,
        help="with --launcher ray: the cluster to join (auto, HOST:6379, ray://HOST:10001); "
             "default: $RAY_ADDRESS, else a Ray cluster on this machine for this command")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="rdrop",
        description="R-Drop evidence suite: list, run and report baseline vs R-Drop experiments.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_ls = sub.add_parser("ls", help="list experiments and their configs")
    p_ls.add_argument("-v", "--verbose", action="store_true", help="show configs and variants")
    p_ls.set_defaults(func=_cmd_ls)

    p_run = sub.add_parser(
        "run",
        help="run (or resume) experiments",
        description="Run experiments; finished (method, seed) runs under --out are skipped, and "
        "runs another process is doing are left to it. Overrides are key=value (tuples "
        "comma-separated), e.g. seeds=5 device=cuda pass_dropouts=0.1,0.3, before or after "
        "the flags. Every value, the device and the output folder are checked before any "
        "training. An experiment with a grid (rdrop ls -v) runs each grid setting; your values "
        "never lose to it in silence: methods=... picks the grid's arms (methods=rdrop runs "
        "only its R-Drop settings), and a key the grid sets (alpha, dropout, ...) is an error. "
        "To run one setting with your own values, add --no-grid: rdrop run image --no-grid "
        "alpha=0.6 methods=rdrop.",
    )
    p_run.add_argument("items", nargs="*", metavar="EXPERIMENT|key=value")
    p_run.add_argument("--all", action="store_true", help="every family (not the ablations)")
    p_run.add_argument("--quick", action="store_true", help="the <= 60 s smoke variant")
    p_run.add_argument("--variant", default=None, help="a named variant (see rdrop ls -v)")
    p_run.add_argument("--out", default=DEFAULT_OUT,
                       help=f"output root (default: {DEFAULT_OUT}/, ignored by git)")
    p_run.add_argument("--no-progress", action="store_true", help="no progress output")
    p_run.add_argument("--no-grid", action="store_true",
                       help="run one setting: the config with your key=value values, not the "
                       "experiment's grid")
    p_run.add_argument("--dry-run", action="store_true",
                       help="validate every value and print the plan; train nothing")
    p_run.add_argument("--force", action="store_true", help="rerun finished runs too")
    p_run.add_argument("--allow-committed", action="store_true",
                       help="let a --quick run write into a git-tracked folder such as results/")
    _launcher_flags(p_run)
    p_run.set_defaults(func=_cmd_run)

    p_rep = sub.add_parser("report", help="tables and plots from saved results")
    p_rep.add_argument("--results", default=DEFAULT_OUT,
                       help=f"root holding run JSONs (default: {DEFAULT_OUT}; the committed "
                       "evidence: --results results)")
    p_rep.add_argument("--out", default=None, help="where to write (default: --results)")
    p_rep.add_argument("--experiment", action="append", help="only these (repeatable)")
    p_rep.add_argument("--no-plots", action="store_true")
    p_rep.add_argument("--include-quick", action="store_true",
                       help="keep quick (smoke) runs beside full ones (default: left out)")
    p_rep.set_defaults(func=_cmd_report)

    p_sc = sub.add_parser(
        "scale", help="run (or resume) cells of the scale map (docs/EXPERIMENTS.md)",
        description="Each cell is a family at one training-set size: its registered grid, "
                    "the epoch stopping rule, grid edges extended until the choice is "
                    "interior. Rerunning a command resumes it. Without cells: list them.")
    p_sc.add_argument("cells", nargs="*", help="cell names (see `rdrop scale --list`)")
    p_sc.add_argument("--all", action="store_true", help="every registered cell, in order")
    p_sc.add_argument("--list", action="store_true", help="list the cells and exit")
    p_sc.add_argument("--costs", action="store_true",
                      help="print each cell's measured CPU/GPU-hours (from the records under "
                           "--out) and an extrapolated cost of a 4x larger cell per family and "
                           "model; train nothing")
    p_sc.add_argument("--out", default="results/scale", help="root folder (default results/scale)")
    p_sc.add_argument("--cheaper", action="store_true",
                      help="in finished cells, the fraction arms of issue 20 at the cell's "
                           "chosen alpha (docs/EXPERIMENTS.md)")
    p_sc.add_argument("--tuned-dropout", action="store_true",
                      help="in finished cells, R-Drop at the dropout the baseline chose and the "
                           "alpha R-Drop chose, both on validation (docs/EXPERIMENTS.md)")
    p_sc.add_argument("--plateau", action="store_true",
                      help="the plateau-start arm (rdrop.PlateauStart, alpha grid 1, 10 "
                           "extended at an edge; rerun until nothing is left; "
                           "docs/EXPERIMENTS.md)")
    p_sc.add_argument("--dry-run", action="store_true", help="plan the first grid only")
    p_sc.add_argument("--no-progress", action="store_true", help="no progress bars")
    _launcher_flags(p_sc)
    p_sc.set_defaults(func=_cmd_scale)

    p_adv = sub.add_parser(
        "advise", help="how to measure R-Drop on a baseline run: its plateau and the tryout",
        description="Reads one baseline run (a record of `rdrop run`, or a Hugging Face "
                    "trainer_state.json with loss and eval_loss in its log_history, beside its "
                    "checkpoint-* folders) and prints where the registered plateau rule fires, "
                    "the checkpoint to branch from and the tryout command; with a scale map "
                    "under --results, its nearest cells as context. Works from any folder.")
    p_adv.add_argument("path", help="a run record (.json) or a trainer_state.json")
    p_adv.add_argument("--results", default="results",
                       help="a folder with the scale map, for context (default results; "
                            "skipped when absent)")
    p_adv.set_defaults(func=_cmd_advise)

    p_try = sub.add_parser(
        "tryout", help="does R-Drop pay on this baseline run? branch from its plateau and measure",
        description="From a baseline record of `rdrop run`: where the registered plateau rule "
                    "fires on its validation curve, R-Drop and plain continuations from there "
                    "over SEEDS seeds (the record's own first) and an alpha grid extended at an "
                    "edge, within the compute the baseline spent after that point; prints Δ at "
                    "the baseline's compute, R-Drop's best Δ and a verdict (rdrop.tryout).")
    p_try.add_argument("record", help="a baseline record (.json) of `rdrop run`")
    p_try.add_argument("--seeds", type=int, default=2, help="seeds in all (default 2)")
    p_try.add_argument("--alphas", default="1,10", help="the alpha grid (default 1,10)")
    p_try.add_argument("--budget", type=float, default=None,
                       help="plain-step equivalents after the branch (default: the baseline's)")
    p_try.add_argument("--out", default="runs/tryout", help="where the continuations go")
    p_try.add_argument("--no-progress", action="store_true", help="no progress lines")
    p_try.set_defaults(func=_cmd_tryout)

    p_cmp = sub.add_parser(
        "compare", help="pair the runs of two result folders and show how far reruns moved",
        description="Runs pair by config hash, method and seed (not by experiment name).")
    p_cmp.add_argument("old", help="folder of the earlier records")
    p_cmp.add_argument("new", help="folder of the reruns")
    p_cmp.set_defaults(func=_cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rdrop`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting positionals at the first flag; take key=value items after it too.
    stray = [t for t in extra if t.startswith("-") or "=" not in t]
    if stray or (extra and args.command != "run"):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.items = [*args.items, *extra]
    from rdrop_experiments.config import ConfigError

    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return status
    except (ConfigError, FileNotFoundError, PermissionError, ImportError) as exc:
        # User errors (bad override, missing data or optional package): one clear line.
        print(f"rdrop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`rdrop ls -v | head`): stop quietly, as cat and ls do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
