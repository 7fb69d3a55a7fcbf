"""The ``eis-hil`` command. Subcommands are added here as their issues land.

Command output goes to stdout; logs (structlog) go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

import protocol as p

from . import __version__, can_cli, convert_cli
from ._cli_util import StatusLine, add_event_loop_arg, add_listen_args, read_secret
from ._logging import configure_logging
from ._loop import run as run_loop
from .frame_text import describe
from .protocol_demo import run_demo

if TYPE_CHECKING:
    from .server import HilServer

log = structlog.get_logger(__name__)


def _write(text: str) -> None:
    sys.stdout.write(text)


DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "us06_25c.yaml"


async def _serve(args: argparse.Namespace, scenario: Path, demo_seconds: float | None = None) -> int:
    from .testing import start_server

    secret = read_secret(args)
    server = await start_server(
        scenario,
        model_dir=_model_dir(args),
        seed=args.seed,
        host=args.host,
        port=args.port,
        speed=args.speed,
        secret=secret,
        max_clients=args.max_clients,
        record=getattr(args, "record", None),
    )
    tasks: list[asyncio.Task[Any]] = []
    if demo_seconds is not None:
        # About four state lines per second of wall time, whatever the speed.
        divider = max(1, round(args.speed / server.engine.dt_s / 4)) if args.speed > 0 else 100
        tasks.append(asyncio.create_task(_demo_client(server.port, secret, demo_seconds, divider)))
    banner = (
        f"eis-hil serving {scenario.name} on {args.host}:{server.port} at {args.speed:g}x; Ctrl-C stops\n"
    )
    return await serve_until_stopped(server, banner, tasks)


async def serve_until_stopped(
    server: HilServer, banner: str, tasks: list[asyncio.Task[Any]] | None = None
) -> int:
    """Run a started server until SIGINT/SIGTERM or until one of ``tasks`` ends; then BYE to every client,
    recording flushed. A failing task (the demo client) is raised, so it cannot pass for a clean run."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(stop.wait()), *(tasks or [])]
    _write(banner)
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    await server.stop()
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    return 0


async def _demo_client(port: int, secret: bytes | None, seconds: float, divider: int) -> None:
    from .client import HilClient

    client = await HilClient.connect("127.0.0.1", port, name="demo-bms", secret=secret)
    assert client.hello is not None
    hello = client.hello
    _write(
        f"client connected: model {hello.model_id} ({hello.model_hash.hex()[:12]}..), scenario "
        f"{hello.scenario_id}, {hello.cell_count} cell(s), {hello.freq_hz.size} frequencies\n"
    )
    await client.subscribe(divider=divider)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while (left := end - loop.time()) > 0:
            try:
                frame = await client.next_frame(timeout=left)
            except TimeoutError:
                break
            _write(describe(frame) + "\n")
    finally:
        bad = len(client.errors)
        _write(f"client: {client.received} frames, {client.gaps} sequence gaps, {bad} bad frames\n")
        await client.close()


def _scenario_command(command: str, body: Callable[[], int]) -> int:
    """Run a command that loads a scenario and a model: a bad scenario prints every issue (file, line, key),
    a missing model or file is one log line; both exit 2."""
    from .capture import CaptureError
    from .model.store import ModelLoadError
    from .scenario import ScenarioError

    try:
        return body()
    except ScenarioError as exc:
        for issue in exc.errors:
            _write(f"{issue}\n")
        return 2
    except (ModelLoadError, CaptureError, ValueError, OSError) as exc:
        log.error(command, error=str(exc))
        return 2


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        serving = _serve(args, Path(args.scenario))
        return _scenario_command("serve", lambda: run_loop(serving, args.event_loop))
    except KeyboardInterrupt:  # Ctrl-C while the model loads, before the signal handlers are installed
        return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.protocol_only:
        result = run_demo(_write, seconds=int(args.seconds), cells=args.cells)
        return 0 if result.intact_frames_lost == 0 else 1
    args.host, args.port, args.seed, args.max_clients = "127.0.0.1", 0, None, 8
    try:
        return _scenario_command(
            "demo",
            lambda: run_loop(_serve(args, Path(args.scenario), demo_seconds=args.seconds), args.event_loop),
        )
    except KeyboardInterrupt:
        return 0


def _read_capture(source: str, as_hex: bool) -> bytes:
    raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    if not as_hex:
        return raw
    text = raw.decode("ascii", errors="replace")
    digits = "".join(ch for ch in text if ch in "0123456789abcdefABCDEF")
    if len(digits) % 2:
        raise ValueError(f"{source}: odd number of hex digits ({len(digits)})")
    return bytes.fromhex(digits)


def cmd_decode(args: argparse.Namespace) -> int:
    try:
        data = _read_capture(args.file, args.hex)
    except (OSError, ValueError) as exc:
        log.error("cannot read capture", file=args.file, error=str(exc))
        return 2
    decoder = p.FrameDecoder()
    decoder.feed(data)
    decoder.feed_eof()
    for item in decoder.events():
        if args.json and isinstance(item, p.Frame):
            _write(
                json.dumps(
                    {
                        "seq": item.seq,
                        "type": p.MsgType(item.message.MSG_TYPE).name,
                        "flags": item.flags,
                        "fields": item.message.to_dict(),
                    }
                )
                + "\n"
            )
        else:
            _write(describe(item) + "\n")
    stats = decoder.stats
    _write(f"{len(data)} bytes: {stats.frames} frames, {stats.errors} errors {dict(stats.errors_by_kind)}\n")
    return 0 if stats.errors == 0 else 1


def _model_dir(args: argparse.Namespace) -> Path:
    from .model.store import BUNDLED_MODEL_DIR

    return Path(args.model) if args.model else BUNDLED_MODEL_DIR


def cmd_train(args: argparse.Namespace) -> int:
    from .eis_data import DataNotFoundError, EisDataError, load_all
    from .model.train import TrainConfig, train

    try:
        spectra = load_all(args.data, simulated=args.simulated)
        for extra in args.extra:
            spectra = spectra + convert_cli.read_spectra_arg(extra, args)
    except (DataNotFoundError, EisDataError) as exc:
        log.error("cannot read training data", error=str(exc))
        return 2
    spectra = spectra.clean()
    config = TrainConfig(seed=args.seed, epochs=args.epochs)
    every = max(1, args.epochs // 20)

    def progress(epoch: int, metrics: dict[str, float]) -> None:
        if epoch % every == 0 or epoch == args.epochs - 1:
            log.info("epoch", epoch=epoch + 1, of=args.epochs, **{k: round(v, 6) for k, v in metrics.items()})

    meta = train(spectra, Path(args.out), config, progress)
    for key, value in meta["metrics"].items():
        _write(f"{key:22} median {value['median']:.2%}  p90 {value['p90']:.2%}  n={value['n']}\n")
    _write(f"model written to {args.out} in {meta['train_seconds']} s\n")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .eis_data import DataNotFoundError, load_all
    from .model.evaluate import evaluate, format_table
    from .model.store import ModelLoadError, load_keras_model

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

        from .model.cv import cross_validate, format_cv
        from .model.train import TrainConfig

        known = {f.name for f in dc.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in meta.raw["config"].items() if k in known})
        epochs = args.cv_epochs or (config.epochs // 4 if args.fast else config.epochs)
        config = dc.replace(config, epochs=epochs, val_fraction=0.0)
        cv_spectra = spectra.filter(lambda s: s.source in meta.input_ranges or s.profile in meta.input_ranges)
        if args.fast:
            cv_spectra = _every_nth_cycle(cv_spectra, 4)
        try:
            cv = cross_validate(
                cv_spectra,
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


def _every_nth_cycle(spectra: Any, n: int) -> Any:
    """Every n-th spectrum of each cell in cycle order (fast mode: zhang2020's cycles are near copies)."""
    keep: set[int] = set()
    for cell in spectra.cells():
        ordered = sorted(spectra.filter(cells=[cell]), key=lambda s: s.cycle or 0)
        keep.update(id(s) for s in (ordered[::n] if ordered[0].cycle is not None else ordered))
    return spectra.filter(lambda s: id(s) in keep)


def cmd_profiles(args: argparse.Namespace) -> int:
    from .model.profiles import list_profiles
    from .model.store import ModelLoadError, read_metadata

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

    from .model.profiles import resolve
    from .model.runtime import NumpyPinn
    from .model.spectra_io import (
        InputError,
        OperatingPoint,
        check_point,
        read_freqs,
        read_points,
        write_spectra,
    )
    from .model.store import ModelLoadError, read_metadata

    try:
        meta = read_metadata(_model_dir(args))
        if args.points:
            points = read_points(Path(args.points))
        else:
            if None in (args.profile, args.soc, args.temp_c, args.soh):
                raise InputError("give --points FILE, or all of --profile --soc --temp-c --soh")
            points = [OperatingPoint(args.profile, args.soc, args.temp_c, args.soh)]
            check_point(points[0], "command line")
        resolved = [resolve(p.profile, meta) for p in points]
        if args.freqs:
            freqs = read_freqs(Path(args.freqs))
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
            write_spectra(handle, freqs, z)
        log.info("spectra written", path=args.out, spectra=len(points), points=freqs.size)
    else:
        write_spectra(sys.stdout, freqs, z)
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
    from .eis_data import EisDataError, SpectrumSet
    from .model.calibrate import (
        CalibrationInputError,
        calibrate_cell,
        check_calibration_input,
        format_report,
        predict,
    )
    from .model.dataset import to_arrays
    from .model.profiles import NAME_RE, Profile, profiles_dir, save_calibrated
    from .model.store import ModelLoadError, load_keras_model, read_metadata

    # Everything that can be refused is refused before the fit (and before TensorFlow loads).
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
        spectra = convert_cli.read_spectra_arg(args.spectra, args)
    except (ModelLoadError, EisDataError, CalibrationInputError, OSError) as exc:
        log.error("calibrate", error=str(exc))
        return 2
    relabelled = SpectrumSet.of(dataclasses.replace(s, profile=args.profile) for s in spectra)
    data = to_arrays(relabelled, meta.profiles, {})
    ids = [s.cell_id.rsplit("/", 1)[-1] if s.cycle is None else str(s.cycle) for s in relabelled]
    try:
        model, _ = load_keras_model(_model_dir(args))
        check_calibration_input(data, str(args.spectra), ids, predict(model, data), force=args.force)
    except (ModelLoadError, CalibrationInputError) as exc:
        log.error("calibrate", error=str(exc))
        return 2
    report = calibrate_cell(model, data)
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
    from .model.export import export_tflite, format_report
    from .model.store import ModelLoadError

    try:
        report = export_tflite(_model_dir(args), Path(args.out), args.quantize)
    except (ModelLoadError, ValueError) as exc:
        log.error("cannot export", error=str(exc))
        return 2
    _write(json.dumps(report, indent=1) + "\n" if args.json else format_report(report))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .sim.run import DEFAULT_MAX_S, run_scenario, run_sweep, speed_text

    started = time.monotonic()
    fmt = "csv" if args.csv else "parquet"
    max_s = args.max_s if args.max_s is not None else DEFAULT_MAX_S

    # A status line redrawn in place on a terminal (stderr), a log line every 10 s otherwise.
    status = StatusLine()

    def progress(simulated_s: float, steps: int) -> None:
        speed = speed_text(simulated_s, time.monotonic() - started)
        of = f" of {max_s:g}" if args.max_s is not None else ""
        if not status.show(f"running: {simulated_s:.0f}{of} s simulated, {steps} steps, {speed}"):
            log.info("running", simulated_s=round(simulated_s, 1), steps=steps, speed=speed)

    def sweep_progress(done: int, total: int) -> None:
        wall_s = round(time.monotonic() - started, 1)
        if not status.show(f"sweep: {done} of {total} runs done, {wall_s} s"):
            log.info("sweep", runs_done=done, of=total, wall_s=wall_s)

    def compute() -> list[dict[str, Any]]:
        if args.seeds:
            return run_sweep(
                Path(args.file),
                Path(args.out),
                args.seeds,
                model_dir=_model_dir(args),
                max_s=max_s,
                fmt=fmt,
                progress=sweep_progress,
            )
        return [
            run_scenario(
                Path(args.file),
                Path(args.out),
                model_dir=_model_dir(args),
                seed=args.seed,
                max_s=max_s,
                fmt=fmt,
                progress=progress,
            )
        ]

    def body() -> int:
        try:
            results = compute()
        finally:
            status.close()
        for r in results:
            _write(
                f"{r['scenario_name']} seed {r['seed']}: {r['simulated_s']:.1f} s simulated "
                f"in {r['wall_s']:.1f} s "
                f"({speed_text(r['simulated_s'], r['wall_s'])}), {r['rows']['states']} state rows, "
                f"{r['rows']['spectra']} spectrum points, {r['rows']['faults']} fault events"
                f"{'' if r['finished'] else ' (stopped at --max-s)'}\n"
            )
        _write(f"written to {args.out}\n")
        return 0

    return _scenario_command("run", body)


def cmd_validate(args: argparse.Namespace) -> int:
    from .scenario import validate_files

    issues = validate_files(args.files)
    for issue in issues:
        _write(f"{issue}\n")
    _write(f"{len(args.files)} file(s) checked, {len(issues)} error(s)\n")
    return 1 if issues else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eis-hil",
        description="EIS hardware-in-the-loop server for BMS development",
        allow_abbrev=False,  # or a command's --log would be taken for an abbreviation of --log-json
    )
    parser.add_argument("--version", action="version", version=f"eis-hil {__version__}")
    parser.add_argument(
        "--log-json", action="store_true", help="logs as JSON lines (default: human-readable)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", help="model directory (model.keras + metadata.json); default: the bundled model"
        )

    demo = sub.add_parser("demo", help="server with the bundled model and a default scenario, and a client")
    model_arg(demo)
    demo.add_argument("--scenario", default=str(DEFAULT_SCENARIO), help="scenario (default: US06 at 25 C)")
    demo.add_argument("--seconds", type=float, default=20, help="how long the client prints (default 20 s)")
    demo.add_argument("--speed", type=float, default=60.0, help="simulation speed (default 60x real time)")
    demo.add_argument("--protocol-only", action="store_true", help="the protocol loopback demo instead")
    demo.add_argument("--cells", type=int, default=4, help="cells (protocol-only demo)")
    add_event_loop_arg(demo)
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="stream a scenario to TCP clients in real time")
    model_arg(serve)
    serve.add_argument("scenario", help="scenario YAML")
    add_listen_args(serve, "1 = real time, N = N times faster, 0 = as fast as the slowest client reads")
    serve.add_argument("--seed", type=int, help="seed (default: the scenario's)")
    serve.add_argument(
        "--record",
        metavar="FILE",
        help="also record the whole stream (all cells, all kinds) to a capture file",
    )
    serve.set_defaults(func=cmd_serve)

    decode = sub.add_parser("decode", help="decode a byte capture (file or -) and list its frames and errors")
    decode.add_argument("file", help="capture file, or - for stdin")
    decode.add_argument("--hex", action="store_true", help="the capture is hex text (whitespace ignored)")
    decode.add_argument("--json", action="store_true", help="frames as JSON lines")
    decode.set_defaults(func=cmd_decode)

    train = sub.add_parser("train", help="train the PINN on the measured EIS data (needs TensorFlow)")
    train.add_argument("--out", required=True, help="output model directory")
    train.add_argument("--epochs", type=int, default=1200)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--data", help="data directory (default: $EIS_HIL_DATA or ../shared/data)")
    train.add_argument(
        "--extra", nargs="*", default=[], help="extra spectra: generic CSV or instrument files"
    )
    train.add_argument(
        "--simulated",
        action="store_true",
        help="add the PyBaMM-simulated LG M50 source (profile lgm50_pybamm)",
    )
    convert_cli.add_point_arguments(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate",
        help="accuracy on unseen cells (grouped CV: PINN, plain MLP, nearest neighbour) and physical checks",
    )
    model_arg(ev)
    ev.add_argument("--data", help="data directory (default: $EIS_HIL_DATA or ../shared/data)")
    ev.add_argument(
        "--cv",
        type=int,
        metavar="K",
        help="grouped K-fold cross-validation over whole cells, retraining the PINN with the model's own "
        "settings per fold (about K x the model's training time; --fast for a quarter of the epochs and "
        "every 4th zhang2020 cycle)",
    )
    ev.add_argument("--fast", action="store_true", help="with --cv: fewer epochs and spectra, for iterating")
    ev.add_argument("--cv-epochs", type=int, help="with --cv: PINN epochs per fold (overrides --fast)")
    ev.add_argument("--seed", type=int, default=0, help="with --cv: seed of the fold assignment")
    ev.add_argument("--mlp-epochs", type=int, default=400, help="training epochs of the plain-MLP baseline")
    ev.add_argument("--json", help="also write the results as JSON to this file")
    ev.set_defaults(func=cmd_evaluate)

    prof = sub.add_parser("profiles", help="list cell profiles with their trained input ranges")
    model_arg(prof)
    prof.set_defaults(func=cmd_profiles)

    spec = sub.add_parser("spectrum", help="impedance spectra at given operating points, as CSV")
    model_arg(spec)
    spec.add_argument("--profile")
    spec.add_argument("--soc", type=float, help="state of charge, 0..1")
    spec.add_argument("--temp-c", type=float, help="cell temperature in degrees C")
    spec.add_argument("--soh", type=float, help="state of health, 0..1")
    spec.add_argument("--points", help="CSV with columns profile,soc,temp_c,soh (one spectrum per row)")
    spec.add_argument("--freqs", help="file with one frequency in Hz per line (default: the profile's grid)")
    spec.add_argument("--out", help="output CSV (default: stdout)")
    spec.set_defaults(func=cmd_spectrum)

    cal = sub.add_parser("calibrate", help="fit a profile for one physical cell from its measured spectra")
    model_arg(cal)
    cal.add_argument("--profile", required=True, help="built-in profile the cell belongs to")
    cal.add_argument(
        "--spectra",
        required=True,
        help="measured spectra of one cell: the generic CSV format (several spectrum_ids at different SOH "
        "also fit the cell's aging rate) or an instrument file",
    )
    cal.add_argument("--name", required=True, help="name of the new profile")
    cal.add_argument("--replace", action="store_true", help="overwrite an existing profile of that name")
    cal.add_argument("--force", action="store_true", help="accept |Z| far from the profile (e.g. mOhm check)")
    convert_cli.add_point_arguments(cal)
    cal.set_defaults(func=cmd_calibrate)

    exp = sub.add_parser("export-tflite", help="write the PINN (physics layer included) as a .tflite model")
    model_arg(exp)
    exp.add_argument("--out", required=True, help="output .tflite file")
    exp.add_argument("--quantize", choices=["float32", "int8"], default="float32")
    exp.add_argument("--json", action="store_true", help="print the full report as JSON")
    exp.set_defaults(func=cmd_export_tflite)

    run = sub.add_parser("run", help="run a scenario as fast as possible into files (no network)")
    model_arg(run)
    run.add_argument("file", help="scenario YAML")
    run.add_argument("--out", required=True, help="output directory")
    run.add_argument("--seed", type=int, help="seed (default: the scenario's)")
    run.add_argument(
        "--seeds", type=int, nargs="+", help="a sweep: one run per seed, in parallel on all cores"
    )
    run.add_argument("--max-s", type=float, help="stop after this many simulated seconds (default 7 days)")
    run.add_argument("--csv", action="store_true", help="CSV files instead of Parquet")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check scenario files without running them")
    val.add_argument("files", nargs="+", metavar="FILE")
    val.set_defaults(func=cmd_validate)

    conv = sub.add_parser(
        "convert", help="potentiostat files (Gamry, BioLogic, ...) to the generic CSV and back"
    )
    convert_cli.add_arguments(conv)
    conv.set_defaults(func=convert_cli.run)

    canb = sub.add_parser("can-bridge", help="send cell states as CAN frames defined by a DBC (python-can)")
    can_cli.add_arguments(canb)
    canb.set_defaults(func=can_cli.run)

    # Commands that live in their own modules: each has ``register(subparsers)`` and keeps its imports
    # light at module level (the parser is built on every invocation).
    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


_COMMAND_MODULES = ("mock_bms", "capture_cli", "serial_bridge", "replay")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json=args.log_json, level=args.log_level)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
