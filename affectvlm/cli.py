"""The `affectvlm` command line: one subcommand per stage of the pipeline."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import import_module, metadata
from pathlib import Path

import affectvlm
from affectvlm._ext import _C, cuda_status

CHECKPOINT_SUFFIX = ".safetensors"  # how `affectvlm predict` tells a checkpoint from the inputs


def _package_status(distribution: str, module: str) -> dict:
    """Installed version of a dependency and whether it imports."""
    try:
        version = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return {"installed": False, "version": None, "error": None}
    try:
        import_module(module)
    except Exception as error:  # any import failure is worth reporting, not raising
        return {"installed": True, "version": version, "error": f"{type(error).__name__}: {error}"}
    return {"installed": True, "version": version, "error": None}


def collect_info() -> dict:
    torch_info = _package_status("torch", "torch")
    if torch_info["error"] is None and torch_info["installed"]:
        import torch

        torch_info["cuda_build"] = torch.version.cuda
        torch_info["cuda_available"] = torch.cuda.is_available()
    return {
        "affectvlm": affectvlm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch_info,
        "open_clip": _package_status("open_clip_torch", "open_clip"),
        "dali": _package_status("nvidia-dali-cuda130", "nvidia.dali"),
        "cuda": cuda_status().as_dict(),
        "cpu_code": _C.cpu_code() if _C is not None else None,
    }


def _print_info(info: dict) -> None:
    def package_line(status: dict) -> str:
        if not status["installed"]:
            return "not installed"
        return status["version"] + (f" (import fails: {status['error']})" if status["error"] else "")

    cuda = info["cuda"]
    print(f"affectvlm  {info['affectvlm']}  (Python {info['python']}, {info['platform']})")
    print(f"torch      {package_line(info['torch'])}")
    print(f"open_clip  {package_line(info['open_clip'])}")
    print(f"DALI       {package_line(info['dali'])}")
    built = f"built for CUDA {cuda['runtime_version']}" if cuda["kernels_built"] else "not built"
    usable = f"{cuda['gpu_count']} usable GPU(s)" if cuda["usable"] else f"no usable GPU: {cuda['reason']}"
    print(f"CUDA       kernels {built}; {usable}")
    cpu = {"x86-64-v3": "x86-64-v3 (AVX2) code", "baseline": "baseline (SSE2) code", None: "no compiled extension"}
    print(f"CPU        kernels run {cpu[info['cpu_code']]}")


def run_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from affectvlm.data.blendshapes import BlendshapeFaceModel, FaceModelError
    from affectvlm.data.synthetic import DEFAULT_FRAMES, generate_dataset, meshes_per_subject

    frames = args.frames or DEFAULT_FRAMES
    try:
        model = BlendshapeFaceModel.from_folder(args.blendshapes, args.recipe) if args.blendshapes else None
        with tqdm(total=args.subjects * meshes_per_subject(args.sequences, frames), unit="mesh",
                  desc="generate") as progress:
            samples = generate_dataset(args.out, args.subjects, args.seed, args.format, args.sequences, frames,
                                       model, on_mesh=progress.update)
    except (FaceModelError, OSError) as error:
        print(f"affectvlm generate: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(samples)} meshes of {args.subjects} subject(s) to {args.out}, labels in "
          f"{Path(args.out) / 'labels.csv'}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_generate_parser(commands) -> None:
    generate = commands.add_parser(
        "generate", help="write the built-in synthetic 3D/4D face dataset (meshes + labels.csv)",
        description="Write synthetic labelled faces: per subject one neutral face and six emotions at four "
                    "intensities, or with --sequences one neutral-apex-neutral sequence per emotion.")
    generate.add_argument("--out", required=True, help="output folder")
    generate.add_argument("--subjects", required=True, type=_positive_int, help="number of subjects")
    generate.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    generate.add_argument("--format", choices=["obj", "ply", "wrl"], default="obj", help="mesh file format")
    generate.add_argument("--sequences", action="store_true", help="write 4D sequences instead of static faces")
    generate.add_argument("--frames", type=_positive_int, help="frames per sequence (default 24, at least 3)")
    generate.add_argument("--blendshapes", metavar="MODEL_DIR",
                          help="drive the generator with this blendshape model instead of the built-in face")
    generate.add_argument("--recipe", metavar="FILE", help="JSON mapping each emotion to expression weights")
    generate.set_defaults(handler=run_generate, validate=lambda args: _validate_generate(generate, args))


def _validate_generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if bool(args.blendshapes) != bool(args.recipe):
        parser.error("--blendshapes and --recipe go together")
    if args.frames is not None and not args.sequences:
        parser.error("--frames needs --sequences")
    if args.frames is not None and args.frames < 3:
        parser.error("--frames must be at least 3 (neutral, apex, neutral)")


def stored_channels() -> tuple[str, ...]:
    """The raw render channels a dataset folder can supply: the rasteriser's channels of a fixed width (per-vertex
    attributes are not stored in mesh files)."""
    from affectvlm.ops.raster import CHANNEL_WIDTHS

    return tuple(name for name, width in CHANNEL_WIDTHS.items() if width is not None)


def run_render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from affectvlm.data.cache import CacheError, RenderSettings, render_dataset
    from affectvlm.data.datasets import DatasetError, index_dataset
    from affectvlm.data.mesh_cache import MeshCacheError, build_mesh_cache
    from affectvlm.geometry import MeshError

    channels = tuple(args.channels.split(",")) if args.channels else None
    settings = RenderSettings(views=tuple(args.views.split(",")), size=args.size, recipe=args.recipe,
                              channels=channels, dtype=args.dtype, projection=args.projection, layout=args.layout,
                              pose=args.pose)
    try:
        total = len(index_dataset(args.data, args.layout))
        with tqdm(total=total, unit="mesh", desc="meshes" if args.meshes else "render") as progress:
            if args.meshes:
                cache = build_mesh_cache(args.data, args.out, args.layout, on_samples=progress.update, pose=args.pose)
            else:
                outcome = render_dataset(args.data, args.out, settings, args.device, args.shard_size, args.batch,
                                         on_samples=progress.update)
    except (CacheError, MeshCacheError, DatasetError, MeshError, OSError, ValueError, RuntimeError) as error:
        print(f"affectvlm render: error: {error}", file=sys.stderr)
        return 1
    if args.meshes:
        print(f"cached {len(cache)} meshes of {len(cache.index['topologies'])} topologies in {args.out}")
        return 0
    reused = f" ({outcome.shards_reused} already complete, kept)" if outcome.shards_reused else ""
    print(f"rendered {len(outcome.index['samples'])} meshes x {len(settings.views)} views into "
          f"{len(outcome.index['shards'])} shard(s) in {args.out}{reused}")
    return 0


def _add_render_parser(commands) -> None:
    from affectvlm.geometry.normalise import DEFAULT_POSE, POSES

    render = commands.add_parser(
        "render", help="render a mesh dataset into multiview image shards (.npy) with an index",
        description="Render every mesh of a dataset folder (any layout `index_dataset` reads) in its canonical "
                    "frame into K views, written as shards of shape (n, K, C, H, W) plus index.json. Finished "
                    "shards are skipped when run again.")
    render.add_argument("data", help="dataset folder")
    render.add_argument("--out", required=True, help="cache folder")
    render.add_argument("--views", default="frontal,left,right",
                        help="comma-separated named views, see affectvlm.geometry.cameras.VIEW_PRESETS "
                             "(default frontal,left,right)")
    render.add_argument("--size", type=_positive_int, default=224, help="image side in pixels (default 224)")
    render.add_argument("--recipe", default=None,
                        help="the model's three input channels per view, an image recipe of affectvlm.data.views "
                             "(default: its DEFAULT_RECIPE)")
    render.add_argument("--channels", default=None,
                        help=f"store these raw channels instead of a recipe: comma-separated from "
                             f"{', '.join(stored_channels())}")
    render.add_argument("--projection", default="perspective", help="perspective (default) or orthographic")
    render.add_argument("--pose", choices=POSES, default=DEFAULT_POSE,
                        help="pose normalisation: register every face to the template face, or only centre and "
                             "scale it (default %(default)s)")
    render.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to render (default cpu)")
    render.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored dtype")
    render.add_argument("--shard-size", type=_positive_int, default=256, help="meshes per shard (default 256)")
    render.add_argument("--batch", type=_positive_int, default=32, help="meshes per kernel call (default 32)")
    render.add_argument("--layout", default="auto", help="dataset layout (default: detected)")
    render.add_argument("--meshes", action="store_true",
                        help="write the binary mesh cache that training renders from on the fly, instead of views")
    render.set_defaults(handler=run_render, validate=lambda args: _validate_render(render, args))


def _validate_render(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from affectvlm.data.views import IMAGE_RECIPES
    from affectvlm.geometry.cameras import PROJECTIONS, VIEW_PRESETS

    if args.projection not in PROJECTIONS:
        parser.error(f"unknown --projection '{args.projection}' (choose from {', '.join(PROJECTIONS)})")
    for view in args.views.split(","):
        if view not in VIEW_PRESETS:
            parser.error(f"unknown view '{view}' in --views (choose from {', '.join(VIEW_PRESETS)})")
    if args.recipe is not None and args.recipe not in IMAGE_RECIPES:
        parser.error(f"unknown --recipe '{args.recipe}' (choose from {', '.join(IMAGE_RECIPES)})")
    if args.meshes and (args.recipe is not None or args.channels is not None):
        parser.error("--meshes caches the meshes themselves: --recipe and --channels do not apply")
    if args.channels is not None:
        if args.recipe is not None:
            parser.error("--recipe and --channels exclude each other (a cache holds one or the other)")
        known = stored_channels()
        for channel in args.channels.split(","):
            if channel not in known:
                parser.error(f"unknown channel '{channel}' in --channels (choose from {', '.join(known)})")
        if len(set(args.channels.split(","))) != len(args.channels.split(",")):
            parser.error("--channels lists a channel twice")
    if args.device == "cuda" and not cuda_status().usable:
        parser.error(f"--device cuda: {cuda_status().reason}")


def run_train(args: argparse.Namespace) -> int:
    from affectvlm.train.main import run

    return run(args.train_config)


def _add_train_parser(commands) -> None:
    from affectvlm.train.config import add_arguments

    train = commands.add_parser(
        "train", help="train AffectVLM (one process; torchrun -m affectvlm.train for several)",
        description="Train AffectVLM on a dataset folder, a render or mesh cache, or (with no data) on generated "
                    "synthetic faces; `torchrun -m affectvlm.train` takes the same arguments.")
    add_arguments(train)
    train.set_defaults(handler=run_train, validate=lambda args: _validate_train(train, args))


def _validate_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from affectvlm.train.config import TrainConfig, validate

    try:
        args.train_config = TrainConfig.from_args(args)
        validate(args.train_config)
    except ValueError as error:
        parser.error(str(error))


def run_predict(args: argparse.Namespace) -> int:
    from affectvlm.predict import DEMO_CHECKPOINT, format_prediction, load_predictor, predict
    from affectvlm.train.checkpoint import CheckpointError

    checkpoint, inputs = DEMO_CHECKPOINT, args.inputs
    if inputs[0].endswith(CHECKPOINT_SUFFIX):
        checkpoint, inputs = inputs[0], inputs[1:]
    if not inputs:
        print("affectvlm predict: error: no mesh file or sequence folder to predict", file=sys.stderr)
        return 2
    try:
        predictor = load_predictor(checkpoint, args.device)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"affectvlm predict: error: {error}", file=sys.stderr)
        return 1
    results = predict(predictor, inputs, top_prompts=args.top_prompts)
    for result in results:
        if result.error:
            print(f"affectvlm predict: error: {result.error}", file=sys.stderr)
    good = [result for result in results if not result.error]
    if args.json:
        print(json.dumps([result.as_dict() for result in good], indent=2))
    else:
        for result in good:
            print(format_prediction(result))
    return 0 if len(good) == len(results) else 1


def _add_predict_parser(commands) -> None:
    predict = commands.add_parser(
        "predict", help="predict the expression of mesh files and 4D sequence folders with a checkpoint",
        description="Per input: the probability of each emotion, the predicted one and the best-matching prompts; "
                    "a folder of a sequence's frames gives the sequence's prediction and per-frame probabilities. "
                    "Meshes are rendered exactly as the checkpoint was trained.")
    predict.add_argument("inputs", nargs="+", metavar="[CHECKPOINT] FILE_OR_SEQUENCE_FOLDER",
                         help="a checkpoint written by affectvlm train or export (.safetensors; default: the demo "
                              "model), then the inputs")
    predict.add_argument("--json", action="store_true", help="print machine-readable JSON")
    predict.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    predict.add_argument("--top-prompts", type=_positive_int, default=3, help="best-matching prompts to show")
    predict.set_defaults(handler=run_predict)


def run_export(args: argparse.Namespace) -> int:
    from affectvlm.train.checkpoint import CheckpointError
    from affectvlm.train.export import export_model

    try:
        sizes = export_model(args.checkpoint, args.out)
    except (CheckpointError, OSError) as error:
        print(f"affectvlm export: error: {error}", file=sys.stderr)
        return 1
    print(f"exported {args.checkpoint} ({sizes['checkpoint_bytes'] / 2 ** 20:.1f} MB) as {args.out} "
          f"({sizes['exported_bytes'] / 2 ** 20:.1f} MB)")
    return 0


def _add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export", help="write a checkpoint's model alone, small, to ship or share",
        description="Write the model of a training checkpoint in float16 with only the token rows its prompt bank "
                    "uses (a few MB instead of tens); predict, evaluate and the app read it like a checkpoint, "
                    "training cannot resume from it.")
    export.add_argument("checkpoint", help="a checkpoint written by affectvlm train")
    export.add_argument("out", help="the file to write (.safetensors)")
    export.set_defaults(handler=run_export)


def run_evaluate(args: argparse.Namespace) -> int:
    from affectvlm.evaluate.command import run

    return run(args)


def _add_evaluate_parser(commands) -> None:
    from affectvlm.evaluate.command import __doc__ as description
    from affectvlm.evaluate.command import add_arguments

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a checkpoint, k-fold or BU-3DFE protocols, zero-shot models, robustness",
        usage="affectvlm evaluate CKPT DATA [--split test|train|all] [--json] [--out DIR]\n"
              "       affectvlm evaluate [DATA] --protocol kfold|bu3dfe [--folds K] [--fold k] [training options]\n"
              "       affectvlm evaluate --zero-shot MODEL [--pretrained TAG_OR_FILE] DATA\n"
              "       affectvlm evaluate CKPT --robustness [--perturbations NAMES]",
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate, validate=lambda args: _validate_evaluate(evaluate, args))


def _validate_evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from affectvlm.evaluate.command import positional_problem

    problem = positional_problem(args)
    if problem:
        parser.error(problem)
    if args.bins < 1:
        parser.error(f"--bins must be at least 1, got {args.bins}")
    if args.robustness_subjects < 1:
        parser.error(f"--robustness-subjects must be at least 1, got {args.robustness_subjects}")


def run_app(args: argparse.Namespace) -> int:
    """Become the Streamlit server of the app (affectvlm/app.py of this installation) until it is stopped."""
    import os

    from affectvlm.predict import DEMO_CHECKPOINT

    checkpoint = Path(args.checkpoint) if args.checkpoint else DEMO_CHECKPOINT
    if not checkpoint.is_file():
        print(f"affectvlm app: error: {checkpoint}: no such checkpoint file", file=sys.stderr)
        return 2
    script = Path(affectvlm.__file__).with_name("app.py")
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(args.port),
               "--server.address", args.address, "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
               "--", "--checkpoint", str(checkpoint.resolve())]
    sys.stdout.flush()
    os.execv(sys.executable, command)  # the server gets the signals (Ctrl+C) and the exit status directly


def _add_app_parser(commands) -> None:
    app = commands.add_parser(
        "app", help="start the app in the browser (Streamlit)",
        description="Start the AffectVLM app: upload a face mesh or a 4D sequence, or make a synthetic face, and see "
                    "the prediction, the views the model saw and an explanation on the face. Open the URL it "
                    "prints; stop it with Ctrl+C.")
    app.add_argument("--checkpoint", help="a checkpoint written by affectvlm train (default: the demo model)")
    app.add_argument("--port", type=_positive_int, default=8501, help="port to serve on (default %(default)s)")
    app.add_argument("--address", default="localhost",
                     help="address to serve on (default %(default)s; 0.0.0.0 for every network interface)")
    app.set_defaults(handler=run_app)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affectvlm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"affectvlm {affectvlm.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="versions of the package and its dependencies, and CUDA status")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=run_info)

    _add_generate_parser(commands)
    _add_render_parser(commands)
    _add_train_parser(commands)
    _add_predict_parser(commands)
    _add_export_parser(commands)
    _add_evaluate_parser(commands)
    _add_app_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "validate"):
        args.validate(args)
    return args.handler(args)
