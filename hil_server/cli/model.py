"""The model commands: train, evaluate, profiles, spectrum, calibrate, export-tflite."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from hil_server.cli._common import add_model_arg as model_arg
from hil_server.cli._common import add_point_arguments, read_spectra_arg
from hil_server.cli._common import model_dir as _model_dir
from hil_server.cli._common import write as _write

log = structlog.get_logger(__name__)


def cmd_train(args: argparse.Namespace) -> int:
    from hil_server.eis_data import DataNotFoundError, EisDataError, load_all
    from hil_server.model.interrupt import StopOnSignal
    from hil_server.model.train import TrainConfig, train

    try:
        spectra = load_all(args.data, simulated=args.simulated)
        for extra in args.extra:
            spectra = spectra + read_spectra_arg(extra, args)
    except (DataNotFoundError, EisDataError) as exc:
        log.error("cannot read training data", error=str(exc))
        return 2
    spectra = spectra.clean()
    config = TrainConfig(seed=args.seed, epochs=args.epochs)
    every = max(1, args.epochs // 20)

    def progress(epoch: int, metrics: dict[str, float]) -> None:
        if epoch % every == 0 or epoch == args.epochs - 1:
            log.info("epoch", epoch=epoch + 1, of=args.epochs, **{k: round(v, 6) for k, v in metrics.items()})

    with StopOnSignal() as stop:  # Ctrl-C or SIGTERM: the epochs trained so far are kept, not lost
        meta = train(spectra, Path(args.out), config, progress, stop.requested)
    for key, value in meta["metrics"].items():
        _write(f"{key:22} median {value['median']:.2%}  p90 {value['p90']:.2%}  n={value['n']}\n")
    if stop.signal is not None:
        _write(
            f"training interrupted ({stop.signal.name}) after {meta['epochs_trained']} of {args.epochs} "
            f'epochs: that model is written to {args.out} (metadata.json: "interrupted": true)\n'
        )
        return 128 + int(stop.signal)
    _write(f"model written to {args.out} in {meta['train_seconds']} s\n")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hil_server.eis_data import DataNotFoundError, load_all
    from hil_server.model.evaluate import evaluate, format_table
    from hil_server.model.store import ModelLoadError, load_keras_model

    if args.cv is not None and args.cv < 2:
        log.error("evaluate", error=f"--cv {args.cv}: need at least 2 folds")
        return 2
    if args.json:
        try:
            Path(args.json).touch()
        except OSError as exc:
            log.error("evaluate", error=f"--json {args.json}: cannot write ({exc.strerror})")
            return 2
    try:
        model, meta = load_keras_model(_model_dir(args))
        # every source whose profile the model knows (the simulated one only if it was trained on it)
        spectra = load_all(args.data, simulated=True).clean().filter(lambda s: s.profile in meta.profiles)
    except (ModelLoadError, DataNotFoundError) as exc:
        log.error("cannot evaluate", error=str(exc))
        return 2
    result: dict[str, Any] = {}
    text = []
    if args.cv is not None:
        import dataclasses as dc

        from hil_server.model.cv import cross_validate, format_cv
        from hil_server.model.train import TrainConfig

        known = {f.name for f in dc.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in meta.raw["config"].items() if k in known})
        epochs = args.cv_epochs or (config.epochs // 4 if args.fast else config.epochs)
        config = dc.replace(config, epochs=epochs, val_fraction=0.0)
        try:
            cv = cross_validate(
                spectra,
                args.cv,
                config=config,
                mlp_epochs=args.mlp_epochs,
                seed=args.seed,
                progress=lambda message: log.info("cross-validation", step=message),
            )
        except ValueError as exc:
            log.error("evaluate", error=str(exc))
            return 2
        result["cv"] = cv
        text.append(format_cv(cv))
        text.append("")
    result.update(evaluate(model, meta, spectra, mlp_epochs=args.mlp_epochs))
    text.append(format_table(result))
    _write("\n".join(text) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from hil_server.model.profiles import list_profiles
    from hil_server.model.store import ModelLoadError, read_metadata

    try:
        meta = read_metadata(_model_dir(args))
        profiles = list_profiles(meta)
    except ModelLoadError as exc:
        log.error("cannot list profiles", error=str(exc))
        return 2
    _write(f"{'profile':20} {'base':12} {'trained SOC':>12} {'temp C':>12} {'SOH':>12}\n")
    for prof in profiles:
        r = meta.input_ranges[prof.base]
        _write(
            f"{prof.name:20} {prof.base:12} {r['soc'][0]:5.2f}..{r['soc'][1]:<5.2f} "
            f"{r['temp_c'][0]:5.0f}..{r['temp_c'][1]:<5.0f} {r['soh'][0]:5.2f}..{r['soh'][1]:<5.2f}\n"
        )
    _write(
        "Outside the trained ranges the model extrapolates (Arrhenius in temperature, physical circuit "
        "everywhere).\n"
    )
    return 0


def cmd_spectrum(args: argparse.Namespace) -> int:

    from hil_server.cli._checks import FREQUENCY, check_fields, check_value
    from hil_server.model.profiles import resolve
    from hil_server.model.runtime import NumpyPinn
    from hil_server.model.spectra_io import (
        InputError,
        OperatingPoint,
        read_freqs,
        read_points,
        write_spectra,
    )
    from hil_server.model.store import ModelLoadError, read_metadata

    try:
        meta = read_metadata(_model_dir(args))
        if args.points:
            points = read_points(Path(args.points))
            for row, point in enumerate(points):  # the rows, as the options: scenario limits
                where = f"{args.points}: operating point {row + 1}"
                values = {"soc": point.soc, "temp_c": point.temp_c, "soh": point.soh}
                problem = check_fields("spectrum", where, values)
                if problem:
                    raise InputError(problem)
        else:
            if None in (args.profile, args.soc, args.temp_c, args.soh):
                raise InputError("give --points FILE, or all of --profile --soc --temp-c --soh")
            points = [OperatingPoint(args.profile, args.soc, args.temp_c, args.soh)]  # main checked them
        resolved = [resolve(p.profile, meta) for p in points]
        if args.freqs:
            freqs = read_freqs(Path(args.freqs))
            for f in freqs:
                problem = check_value("frequency", float(f), FREQUENCY)
                if problem:
                    raise InputError(f"{args.freqs}: {problem}")
        else:
            bases = {r.base for r in resolved}
            if len(bases) > 1:
                raise InputError("points of several profiles need one --freqs FILE")
            freqs = np.array(meta.raw["freq_grids"][bases.pop()])
        runtime = NumpyPinn.load(_model_dir(args))  # numpy only: no TensorFlow import
    except (InputError, ModelLoadError) as exc:
        log.error("spectrum", error=str(exc))
        return 2
    outside = _outside_trained_range(meta.input_ranges, resolved, points)
    if outside:
        log.warning("outside the trained range: the model extrapolates", **outside)
    # One definition of what a profile adds (model.profiles.cell_latent), the one the stream uses too:
    # zero for a built-in profile's typical cell, offsets (and aging) for a calibrated one.
    latents = np.vstack([r.latents([p.soh]) for r, p in zip(resolved, points, strict=True)])
    z = runtime.impedance(
        np.array([runtime.profile_index(r.base) for r in resolved]),
        np.array([[p.soc, p.temp_c, p.soh] for p in points]),
        freqs,
        latent=latents,
    ).astype(np.complex128)
    if args.out:
        with Path(args.out).open("w", encoding="utf-8") as handle:
            write_spectra(handle, freqs, z, points)
        log.info("spectra written", path=args.out, spectra=len(points), points=freqs.size)
    else:
        write_spectra(sys.stdout, freqs, z, points)
    return 0


def _outside_trained_range(
    ranges: dict[str, dict[str, list[float]]], resolved: list[Any], points: list[Any]
) -> dict[str, Any]:
    """Points outside their profile's trained (SOC, temp_c, SOH) range: count and the first one, for one
    warning (not one per point)."""
    count, first = 0, None
    for r, point in zip(resolved, points, strict=True):
        bounds = ranges.get(r.base)
        if bounds is None:
            continue
        off = [k for k in ("soc", "temp_c", "soh") if not bounds[k][0] <= getattr(point, k) <= bounds[k][1]]
        if off:
            count += 1
            if first is None:
                first = {
                    "profile": point.profile,
                    **{k: getattr(point, k) for k in off},
                    "trained": {k: bounds[k] for k in off},
                }
    return {"points": count, "of": len(points), "first": first} if count else {}


def cmd_calibrate(args: argparse.Namespace) -> int:
    from hil_server.eis_data import EisDataError, SpectrumSet
    from hil_server.model.calibrate import (
        CalibrationInputError,
        calibrate_cell,
        check_calibration_input,
        format_report,
        predict,
    )
    from hil_server.model.dataset import to_arrays
    from hil_server.model.profiles import NAME_RE, Profile, profiles_dir, save_calibrated
    from hil_server.model.store import ModelLoadError, load_keras_model, read_metadata

    # Everything that can be refused is refused before the fit; all but the mOhm check (which compares with
    # the model's typical cell) also before TensorFlow loads.
    try:
        meta = read_metadata(_model_dir(args))
        index = meta.profile_index(args.profile)
        if not NAME_RE.match(args.name):
            raise CalibrationInputError(
                f"--name {args.name!r}: use letters, digits, '_', '.', '-' (at most 64, starting with a "
                "letter or digit)"
            )
        if args.name in meta.profiles:
            raise CalibrationInputError(f"--name {args.name!r} is a built-in profile; choose another name")
        folder = profiles_dir()
        target = folder / f"{args.name}.json"
        if target.exists() and not args.replace:
            raise CalibrationInputError(
                f"profile {args.name!r} exists ({target}); pass --replace to overwrite it"
            )
        _check_writable_dir(folder)
        spectra = read_spectra_arg(args.spectra, args)
    except (ModelLoadError, EisDataError, CalibrationInputError, OSError) as exc:
        log.error("calibrate", error=str(exc))
        return 2
    relabelled = SpectrumSet.of(dataclasses.replace(s, profile=args.profile) for s in spectra)
    data = to_arrays(relabelled, meta.profiles, {})
    ids = [
        s.origin.rsplit("spectrum_id=", 1)[-1] if "spectrum_id=" in s.origin else s.cell_id
        for s in relabelled
    ]
    try:
        if not len(spectra):
            raise CalibrationInputError(f"{args.spectra}: no spectra")
        if len(spectra.cells()) > 1:
            raise CalibrationInputError(
                f"{args.spectra}: spectra of {len(spectra.cells())} cells ({', '.join(spectra.cells()[:3])}"
                f"{', ...' if len(spectra.cells()) > 3 else ''}); calibrate one cell per file"
            )
        # what needs no model first (points, Re > 0, the Im sign), then the mOhm check against the model
        check_calibration_input(data, str(args.spectra), ids, None, force=args.force)
        model, _ = load_keras_model(_model_dir(args))
        check_calibration_input(data, str(args.spectra), ids, predict(model, data), force=args.force)
    except (ModelLoadError, CalibrationInputError) as exc:
        log.error("calibrate", error=str(exc))
        return 2
    report = calibrate_cell(model, data)
    try:
        target = save_calibrated(
            Profile(
                args.name,
                meta.profiles[index],
                tuple(float(x) for x in report.fit.offset),
                meta.model_sha256,
                str(args.spectra),
                None if report.fit.rate is None else tuple(float(x) for x in report.fit.rate),
            ),
            folder,
        )
    except OSError as exc:
        log.error("calibrate", error=f"{folder}: cannot write the profile ({exc.strerror})")
        return 2
    _write(
        f"profile {args.name} (base {args.profile})\n{format_report(report, len(spectra))}\n"
        f"written to {target}; use it anywhere a profile name is accepted\n"
    )
    return 0


def _check_writable_dir(folder: Path) -> None:
    """Create ``folder`` if needed and prove it takes a file, before any work whose result goes there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".eis-hil-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"{folder}: cannot write there ({exc.strerror})") from None


def cmd_export_tflite(args: argparse.Namespace) -> int:
    from hil_server.model.export import export_tflite, format_report
    from hil_server.model.store import ModelLoadError

    try:
        report = export_tflite(_model_dir(args), Path(args.out), args.quantize)
    except (ModelLoadError, ValueError) as exc:
        log.error("cannot export", error=str(exc))
        return 2
    _write(json.dumps(report, indent=1) + "\n" if args.json else format_report(report))
    return 0


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument("--out", required=True, help="output model directory")
    train.add_argument("--epochs", type=int, default=3000)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--data", help="data directory (default: $EIS_HIL_DATA or ../shared/data)")
    train.add_argument("--extra", nargs="*", default=[], help="extra spectra in the generic CSV format")
    train.add_argument(
        "--simulated",
        action="store_true",
        help="add the PyBaMM-simulated LG M50 source (profile lgm50_pybamm)",
    )
    add_point_arguments(train)


def add_evaluate_arguments(ev: argparse.ArgumentParser) -> None:
    model_arg(ev)
    ev.add_argument("--data", help="data directory (default: $EIS_HIL_DATA or ../shared/data)")
    ev.add_argument(
        "--cv",
        type=int,
        metavar="K",
        help="grouped K-fold cross-validation over whole cells, retraining the PINN with the model's own "
        "settings per fold (about K x the model's training time; --fast for a quarter of the epochs)",
    )
    ev.add_argument("--fast", action="store_true", help="with --cv: a quarter of the epochs, for iterating")
    ev.add_argument("--cv-epochs", type=int, help="with --cv: PINN epochs per fold (overrides --fast)")
    ev.add_argument("--seed", type=int, default=0, help="with --cv: seed of the fold assignment")
    ev.add_argument("--mlp-epochs", type=int, default=400, help="training epochs of the plain-MLP baseline")
    ev.add_argument("--json", help="also write the results as JSON to this file")


def add_profiles_arguments(prof: argparse.ArgumentParser) -> None:
    model_arg(prof)


def add_spectrum_arguments(spec: argparse.ArgumentParser) -> None:
    model_arg(spec)
    spec.add_argument("--profile")
    spec.add_argument("--soc", type=float, help="state of charge, 0..1")
    spec.add_argument("--temp-c", type=float, help="cell temperature in degrees C, -40..85")
    spec.add_argument("--soh", type=float, help="state of health, above 0 up to 1.2 (as cells.soh)")
    spec.add_argument("--points", help="CSV with columns profile,soc,temp_c,soh (one spectrum per row)")
    spec.add_argument("--freqs", help="file with one frequency in Hz per line (default: the profile's grid)")
    spec.add_argument("--out", help="output CSV (default: stdout)")


def add_calibrate_arguments(cal: argparse.ArgumentParser) -> None:
    model_arg(cal)
    cal.add_argument("--profile", required=True, help="built-in profile the cell belongs to")
    cal.add_argument(
        "--spectra",
        required=True,
        help="measured spectra of one cell in the generic CSV format (several spectrum_ids at different SOH "
        "also fit the cell's aging rate)",
    )
    cal.add_argument("--name", required=True, help="name of the new profile")
    cal.add_argument("--replace", action="store_true", help="overwrite an existing profile of that name")
    cal.add_argument("--force", action="store_true", help="accept |Z| far from the profile (e.g. mOhm check)")
    add_point_arguments(cal)


def add_export_tflite_arguments(exp: argparse.ArgumentParser) -> None:
    model_arg(exp)
    exp.add_argument("--out", required=True, help="output .tflite file")
    exp.add_argument("--quantize", choices=["float32", "int8"], default="float32")
    exp.add_argument("--json", action="store_true", help="print the full report as JSON")


GROUP = {
    "train": (add_train_arguments, cmd_train),
    "evaluate": (add_evaluate_arguments, cmd_evaluate),
    "profiles": (add_profiles_arguments, cmd_profiles),
    "spectrum": (add_spectrum_arguments, cmd_spectrum),
    "calibrate": (add_calibrate_arguments, cmd_calibrate),
    "export-tflite": (add_export_tflite_arguments, cmd_export_tflite),
}
