"""The method's claims, measured: train the main job once per ablation variant, same seed, same data, same
budget, and report held-out accuracy and accuracy-vs-step curves (one figure per group).

    python benchmarks/ablations.py --out runs/ablations                 # every group
    python benchmarks/ablations.py --out runs/ablations --groups loss,prompts --epochs 12

Each variant is `python -m affectvlm train` with the main job's defaults plus the variant's options, in its
own folder under --out; a finished variant is not trained again, so an interrupted sweep continues where it
stopped, and variants that share options (each group's default) train once. Writes OUT/ablations.json,
OUT/ablations.md (the table) and OUT/ablation-<group>.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from affectvlm.data.emotions import EMOTIONS
from affectvlm.data.views import DEFAULT_RECIPE, IMAGE_RECIPES
from affectvlm.geometry.normalise import DEFAULT_POSE, POSES
from affectvlm.model.prompts import PromptBank
from affectvlm.train.config import TrainConfig
from affectvlm.train.loop import accuracy_over_levels

ONE_TEMPLATE = "one-template-prompts.json"
NO_JITTER = "yaw=0,pitch=0,roll=0,distance=0,light=0"
NO_TRANSFORMS = "flip=0,rotation=0,crop_scale=1:1,crop_ratio=1:1,brightness=0,contrast=0"
MILD_TRANSFORMS = "flip=0.5,rotation=3,crop_scale=0.95:1,crop_ratio=0.97:1.03,brightness=0.05,contrast=0.05"

# group -> variant -> options added to the main job's; [] is the main job itself.
GROUPS: dict[str, dict[str, list[str]]] = {
    "loss": {"full loss": [], "image-text term only (CLIP-style)": ["--loss-weights", "0", "0", "1"],
             "without the triplet term": ["--loss-weights", "1", "0", "1"],
             "multiview terms weighted 2": ["--loss-weights", "2", "2", "1"]},
    "prompts": {"augmented prompt bank": [], "one template": ["--prompt-bank", ONE_TEMPLATE]},
    "augmentation": {"no view augmentation": [], "mixed view augmentation": ["--augment"],
                     "view mixing alone (mix 0.5)": ["--augment", NO_TRANSFORMS + ",mix=0.5"],
                     "mild transforms, mixing": ["--augment", MILD_TRANSFORMS + ",mix=0.2"]},
    "jitter": {"online views, no jitter": ["--source", "online", "--jitter", NO_JITTER],
               "online views, 3D jitter": ["--source", "online"]},
    "views": {"1 view": ["--views", "frontal"], "3 views": [], "5 views": ["--views", "frontal,left,right,up,down"]},
    "channels": {recipe: [] if recipe == DEFAULT_RECIPE else ["--recipe", recipe] for recipe in IMAGE_RECIPES},
    "pose": {pose: [] if pose == DEFAULT_POSE else ["--pose", pose] for pose in POSES},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/ablations", help="folder of the runs and the report")
    parser.add_argument("--groups", default=",".join(GROUPS), help="comma-separated groups (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the main job's)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report the variants already finished")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_one_template_bank(out / ONE_TEMPLATE)
    common = ["--seed", str(args.seed), "--cache-dir", str(out / "cache"), "--no-progress"]
    common += ["--epochs", str(args.epochs)] if args.epochs else []
    report = {}
    for group in args.groups.split(","):
        if group not in GROUPS:
            parser.error(f"unknown group '{group}' (choose from {', '.join(GROUPS)})")
        results = {name: run_variant(out, common + with_files_in(out, options), train=not args.report_only)
                   for name, options in GROUPS[group].items()}
        report[group] = {name: result for name, result in results.items() if result is not None}
        plot_group(group, report[group], out / f"ablation-{group}.png")
    (out / "ablations.json").write_text(json.dumps(report, indent=1))
    (out / "ablations.md").write_text(table(report))
    print(table(report))


def write_one_template_bank(path: Path) -> None:
    """A bank with one template (also used when subject attributes are known) and one word per slot and emotion
    (the first of the default bank's)."""
    emotions = PromptBank.default().as_dict()["emotions"]
    template = ["a 3D scan of a face showing {emotion}"]
    path.write_text(json.dumps({
        "templates": template, "attribute_templates": template,
        "emotions": {name: {slot: words[:1] for slot, words in slots.items()} for name, slots in emotions.items()},
    }, indent=1))


def with_files_in(out: Path, options: list[str]) -> list[str]:
    """The options with the files this script writes (the one-template bank) named by their path in `out`."""
    return [str(out / option) if option == ONE_TEMPLATE else option for option in options]


def run_variant(out: Path, options: list[str], train: bool = True) -> dict | None:
    """Train one variant (unless already finished) and return its evaluation records and wall time; None for an
    unfinished variant when `train` is false."""
    # The defaults a variant leaves implicit are part of its name: a run made before a default changed is not
    # taken for the new default's.
    defaults = TrainConfig()
    implicit = {"recipe": DEFAULT_RECIPE, "pose": DEFAULT_POSE, "lr": defaults.lr,
                "subjects": defaults.synthetic_subjects, "epochs": defaults.epochs}
    folder = out / ("run-" + hashlib.sha256(json.dumps([options, implicit]).encode()).hexdigest()[:10])
    result_file = folder / "result.json"
    if not result_file.is_file() and not train:
        return None
    if not result_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.jsonl").unlink(missing_ok=True)
        command = [sys.executable, "-m", "affectvlm", "train", "--out", str(folder), *options]
        print(" ".join(command), flush=True)
        started = time.perf_counter()
        with open(folder / "train.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
        evaluations = [record for record in map(json.loads, open(folder / "metrics.jsonl"))
                       if record["kind"] == "eval"]
        result = {"options": options, "seconds": time.perf_counter() - started, "evaluations": evaluations}
        result_file.write_text(json.dumps(result))
    result = json.loads(result_file.read_text())
    final = result["evaluations"][-1]
    return {**result, "folder": str(folder), "accuracy": final["accuracy"],
            "accuracy_3_4": accuracy_at(final, (3, 4))}


def accuracy_at(evaluation: dict, levels: tuple[int, ...]) -> float:
    strong = accuracy_over_levels(evaluation["by_intensity"], levels)
    return float("nan") if strong is None else strong[0]


def plot_group(group: str, variants: dict, path: Path) -> None:
    from affectvlm.plotting import plt, save_figure

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, result in variants.items():
        steps = [record["step"] for record in result["evaluations"]]
        line, = axis.plot(steps, [record["accuracy"] for record in result["evaluations"]], "o-", label=name)
        axis.plot(steps, [accuracy_at(record, (3, 4)) for record in result["evaluations"]], "--",
                  color=line.get_color())
    axis.axhline(1 / len(EMOTIONS), color="grey", lw=0.8)
    axis.set(xlabel="optimizer step", ylabel="held-out accuracy", ylim=(0, 1),
             title=f"ablation: {group} (solid: all, dashed: intensities 3-4)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def table(report: dict) -> str:
    lines = ["| group | variant | held-out accuracy | intensities 3-4 | wall time |", "|---|---|---|---|---|"]
    for group, variants in report.items():
        for name, result in variants.items():
            lines.append(f"| {group} | {name} | {result['accuracy']:.1%} | {result['accuracy_3_4']:.1%} | "
                         f"{result['seconds'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
