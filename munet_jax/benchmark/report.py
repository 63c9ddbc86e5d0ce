"""The results files: `<device-kind>-<date>.json` and `.md` under --out.

A run merges its rows into that day's file for the device (rows of a setting
measured again are replaced), so sub-commands and settings may run separately.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

from munet_jax.benchmark import common

SECTIONS = ("inference", "video", "parts", "training", "pipeline", "stm_baseline")
# The flags each section reads: what its line in the Markdown's run list shows.
RUN_FLAGS = {
    "inference": ("size", "objects", "memory", "dtype", "conv3x3", "prepared", "memory_read", "decoder_conv",
                  "repeats"),
    "video": ("size", "objects", "video_frames", "dtype", "conv3x3", "prepared", "memory_read", "repeats"),
    "parts": ("size", "objects", "parts_memory", "dtype", "conv3x3", "prepared", "memory_read", "decoder_conv",
              "repeats"),
    "training": ("train_size", "batch", "memory_budget_gb", "fit_batch", "max_batch", "dtype", "conv3x3",
                 "memory_read", "decoder_conv", "repeats"),
    "pipeline": ("pipeline_batch", "pipeline_steps", "pipeline_warmup"),
    "stm_baseline": ("stm_results",),
}
STRIDE = 16


def read_stm_results(path: Path) -> list[dict]:
    """Rows of `benchmarks/stm_pytorch.py --json`, each with the run's torch facts and a
    `baseline_id` (file name and modification time) naming that STM run."""
    try:
        data = json.loads(Path(path).read_text())
        info, rows = data["info"], data["rows"]
        written = datetime.datetime.fromtimestamp(Path(path).stat().st_mtime).isoformat(timespec="seconds")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--stm_results {path}: not a benchmarks/stm_pytorch.py --json file ({error})") from error
    return [{**row, "torch": info.get("torch"), "threads": info.get("threads"), "measured": info.get("date"),
             "baseline_id": f"{Path(path).name}@{written}"} for row in rows]


def tag_compared_rows(inference_rows: list[dict], stm_rows: list[dict]) -> list[dict]:
    """Inference rows timed in the same invocation as `--stm_results`: marked as compared with that
    STM run, so that the report pairs them (and not rows measured by other code or at other times)."""
    ids = {r["baseline_id"] for r in stm_rows}
    return [{**r, "compared_with": next(iter(ids))} if len(ids) == 1 else r for r in inference_rows]


def _padded(image) -> list[int]:
    return [-(-int(v) // STRIDE) * STRIDE for v in image]


def stm_comparison(report: dict) -> list[tuple[dict, dict]]:
    """(STM row, munet_jax inference row) pairs of the same frame size (STM's padded size =
    the image padded to a multiple of 16), objects, memory frames, any compute dtype (STM's is
    float32; the issue's goal allows bfloat16 on CPUs with bfloat16 units), where the row was
    timed together with that STM run (`tag_compared_rows`; files from before it: any row)."""
    pairs = []
    for stm in report.get("stm_baseline") or []:
        for row in report.get("inference") or []:
            if stm.get("baseline_id") is not None and row.get("compared_with") != stm["baseline_id"]:
                continue
            if (row.get("config") == "full" and row["objects"] == stm["objects"]
                    and row["memory_frames"] == stm["memory_frames"] and _padded(row["image"]) == list(stm["size"])):
                pairs.append((stm, row))
    return pairs


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write(out_dir: Path, info: dict, sections: dict[str, list[dict]], settings: dict) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = common.result_stem(info)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    report = json.loads(json_path.read_text()) if json_path.exists() else {}
    report["device"] = {k: v for k, v in info.items() if k not in ("versions", "date", "load_average", "started")}
    report["versions"] = info["versions"]
    report["date"] = info["date"]
    if not isinstance(report.get("runs"), list):
        report["runs"] = []
    for name, rows in sections.items():
        report[name] = merge_rows(report.get(name) or [], rows)
        report["runs"].append({"section": name, "started": info.get("started"),
                               "load_average_at_start": info["load_average"], "settings": settings})
    report = _clean(report)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    tmp.replace(json_path)
    md_path.write_text(markdown(report))
    return json_path, md_path


SETTING_KEYS = ("config", "image", "bucket", "clip", "objects", "memory_frames", "frames", "dtype", "decoder_conv", "conv3x3",
                "prepared_kernels", "memory_read", "part",
                "per_device_batch", "source", "batch", "size")


def _setting(row: dict, keys) -> list:
    """The row's values of `keys` (the memory read of rows from before that setting: dense)."""
    return [common.memory_read_setting(row) if k == "memory_read" else row.get(k) for k in keys]


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """`old` rows without those of a setting that `new` measured again, then `new`
    (a run of one setting keeps the other settings measured earlier that day)."""
    def key(row):
        return json.dumps(_setting(row, SETTING_KEYS))

    replaced = {key(r) for r in new}
    return [r for r in old if key(r) not in replaced] + list(new)


def _batch_origin(row: dict) -> str:
    """How a training row's batch was chosen, for the table."""
    if row.get("batch_fit"):
        fit = row["batch_fit"]
        return f", largest under {fit['budget_gb']:.1f} GB (XLA memory analysis)"
    return ", largest that fits" if row.get("batch_searched_by_doubling") else ""


def _f(value, digits=1, scale=1.0):
    if value is None:
        return "n/a"
    return f"{value * scale:.{digits}f}"


def _mem(row) -> str:
    if row.get("device_peak_bytes"):
        return f"{row['device_peak_bytes'] / 2**20:.0f} (device peak)"
    m = row.get("memory")
    return "n/a" if not m else f"{m['peak_estimate'] / 2**20:.0f}"


def _same_setting(a: dict, b: dict) -> bool:
    keys = ("config", "bucket", "objects", "memory_frames", "dtype", "decoder_conv", "conv3x3", "prepared_kernels",
            "memory_read")
    return _setting(a, keys) == _setting(b, keys)


def _matching_step(report: dict, parts_row: dict) -> dict | None:
    for row in report.get("inference") or []:
        if _same_setting(row, parts_row):
            return row
    return None


def _peaks(rows: list[dict]) -> str:
    """'float32: 136 / 161 GFLOP/s (source)' per dtype and source: a measured CPU peak differs a little per run."""
    groups: dict[tuple, set] = {}
    for r in rows:
        if r.get("peak_gflops_per_s"):
            groups.setdefault((r["dtype"], r["peak_source"]), set()).add(round(r["peak_gflops_per_s"]))
    return "; ".join(f"{dtype}: {' / '.join(str(p) for p in sorted(peaks))} GFLOP/s ({source})"
                     for (dtype, source), peaks in sorted(groups.items()))


def markdown(report: dict) -> str:
    dev, ver = report["device"], report["versions"]
    lines = [
        f"# MUNet benchmark: {dev['device_kind']} ({dev['platform']}), {report['date']}",
        "",
        f"{dev['num_devices']} device(s), {dev['cpu_cores']} CPU cores ({dev['host']}); "
        + ", ".join(f"{k} {v}" for k, v in ver.items()) + ".",
        "",
        "Times: median (min) over the timed calls after a warm-up, each up to `jax.block_until_ready`. "
        "Compile: XLA compile time of the program (tracing/lowering not included). GFLOP: model FLOPs, XLA's "
        "cost analysis of the same program with direct convolutions (a Winograd decoder does fewer; loops "
        "such as the cost volume's scan may be counted once per loop body); GFLOP/s and MFU divide them by the "
        "time, so with Winograd convs they can pass the GEMM peak (fewer multiplications than credited). "
        "3x3 convs: their algorithm (`model.conv3x3`; 'prepared': the Winograd kernel transforms computed once "
        "per set of parameters, `InferenceEngine.prepare`, not in every frame; rows of older runs say 'decoder "
        "only' when only the decoder's convs could use Winograd). Memory read: `model.memory_read`, with what 'auto' ran "
        "in brackets (on XLA:CPU: the query-blocked read for bfloat16 keys and values, from 2026-12-07 on; "
        "for float32 the blocked online softmax when the memory spans more than one 4 MiB block of "
        "logits and keys + values have at most 256 channels; else dense); rows of runs before the setting "
        "existed say 'dense', the only read then. "
        "Memory MiB: the device allocator's peak so far in the process where the backend reports it (GPU), "
        "else the compiled program's arguments + outputs - aliased + temporaries (`memory_analysis()`). "
        "Recompiled: the jit cache grew during the timed loop.",
        "",
    ]
    for run in report.get("runs") or []:
        la = run.get("load_average_at_start")
        if la:
            st = run["settings"]
            what = " ".join(f"--{k} {st[k]}" for k in RUN_FLAGS.get(run["section"], ()) if k in st)
            lines.append(f"- {run.get('started') or ''} {run['section']} ({'tiny' if st.get('tiny') else 'full'}; "
                         f"{what}): load average at start {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f}")
    lines.append("")
    if report.get("inference"):
        lines += [
            "## Inference: one frame (the engine's jitted step)",
            "",
            "| config | image -> bucket | objects | memory frames | dtype | 3x3 convs | memory read | ms/frame | FPS "
            "| compile s | GFLOP/frame | GFLOP/s | MFU | memory MiB | recompiled |",
            "| --- | --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in report["inference"]:
            lines.append(
                f"| {r['config']} | {r['image'][0]}x{r['image'][1]} -> {r['bucket'][0]}x{r['bucket'][1]} "
                f"| {r['objects']} | {r['memory_frames']} | {r['dtype']} | {common.conv_label(r)} "
                f"| {common.read_label(r)} | {_f(r['median_ms'])} ({_f(r['min_ms'])}) "
                f"| {_f(r['fps'], 2)} | {_f(r['compile_s'])} | {_f(r['gflops'])} | {_f(r['achieved_gflops_per_s'])} "
                f"| {_f(r['mfu'], 1, 100)}% | {_mem(r)} | {r['recompiled_after_warmup']} |")
        lines += ["", "MFU against: " + _peaks(report["inference"]), ""]
    if report.get("video"):
        lines += [
            "## Inference: a whole video as one program (`segment_video`: init + `lax.scan` of the step)",
            "",
            "Frames already on the device; the engine's memory (a bank of `capacity` slots, every one read "
            "in every frame).",
            "",
            "| config | image -> bucket | objects | frames | capacity | dtype | 3x3 convs | memory read | ms/video "
            "| ms/frame | FPS | compile s | GFLOP/frame | GFLOP/s | MFU | memory MiB | recompiled |",
            "| --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| --- |",
        ]
        for r in report["video"]:
            lines.append(
                f"| {r['config']} | {r['image'][0]}x{r['image'][1]} -> {r['bucket'][0]}x{r['bucket'][1]} "
                f"| {r['objects']} | {r['frames']} | {r['capacity']} | {r['dtype']} | {common.conv_label(r)} "
                f"| {common.read_label(r)} | {_f(r['median_ms'])} ({_f(r['min_ms'])}) | {_f(r['ms_per_frame'], 2)} | {_f(r['fps'], 2)} "
                f"| {_f(r['compile_s'])} | {_f(None if r['gflops'] is None else r['gflops'] / r['frames'])} "
                f"| {_f(r['achieved_gflops_per_s'])} | {_f(r['mfu'], 1, 100)}% | {_mem(r)} "
                f"| {r['recompiled_after_warmup']} |")
        lines += ["", "MFU against: " + _peaks(report["video"]), ""]
    pairs = stm_comparison(report)
    if pairs:
        lines += [
            "## Against STM (PyTorch, same machine: `benchmarks/stm_pytorch.py`)",
            "",
            "STM's frame: Enc-Q, key/value, memory read, decoder per object, soft aggregation, Enc-M of the frame "
            "(no MU-Layer / MSAM); float32, random weights, flush-to-zero. munet_jax: the inference rows above "
            "(its frame also runs the MU-Layer and MSAM, and is padded to the engine's bucket).",
            "",
            "| frame | objects | memory frames | STM ms/frame (torch, threads) | munet_jax dtype | munet_jax 3x3 "
            "convs | munet_jax memory read | munet_jax ms/frame | speed-up (STM / munet_jax, medians) |",
            "| --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: |",
        ]
        for stm, r in pairs:
            lines.append(
                f"| {stm['size'][0]}x{stm['size'][1]} (munet_jax: {r['image'][0]}x{r['image'][1]} -> "
                f"{r['bucket'][0]}x{r['bucket'][1]}) | {stm['objects']} | {stm['memory_frames']} "
                f"| {_f(stm['median_ms'])} ({stm.get('torch')}, {stm.get('threads')}) | {r.get('dtype', 'float32')} "
                f"| {common.conv_label(r)} "
                f"| {common.read_label(r)} | {_f(r['median_ms'])} | {_f(stm['median_ms'] / r['median_ms'], 2)}x |")
        lines.append("")
    if report.get("parts"):
        lines += [
            "## Parts of a frame, each jitted alone",
            "",
            "| config | bucket | objects | memory frames | dtype | 3x3 convs | memory read | part | ms | share of frame "
            "| GFLOP | compile s |",
            "| --- | --- | ---: | ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for r in report["parts"]:
            share = r.get("share_of_frame")
            lines.append(
                f"| {r['config']} | {r['bucket'][0]}x{r['bucket'][1]} | {r['objects']} | {r['memory_frames']} "
                f"| {r['dtype']} | {common.conv_label(r)} | {common.read_label(r)} | {r['part']} | {_f(r['median_ms'])} ({_f(r['min_ms'])}) "
                f"| {_f(share, 1, 100) + '%' if share is not None else ''} "
                f"| {_f(None if r.get('flops') is None else r['flops'] / 1e9, 2)} | {_f(r.get('compile_s'))} |")
        for r in report["parts"]:
            if "mu_layer_plus_msam_share" in r:
                lines.append("")
                lines.append(f"{r['config']} {r['dtype']} 3x3 convs {common.conv_label(r)}, memory read "
                             f"{common.read_label(r)}: "
                             f"MU-Layer + MSAM = {_f(r['mu_layer_plus_msam_share'], 1, 100)}% "
                             f"of the summed frame; slowest part: {r['slowest_part']}. cost_volume is inside mu_layer.")
                if "mu_layer_plus_msam_step_share" in r:
                    lines.append(
                        f"Inside the compiled step, timed interleaved with the same step without them "
                        f"(`mu_layer.enabled=False`): {_f(r['step_ms'])} against {_f(r['step_without_mu_msam_ms'])} "
                        f"ms (mins {_f(r['step_min_ms'])} / {_f(r['step_without_mu_msam_min_ms'])}): "
                        f"**MU-Layer + MSAM = {_f(r['mu_layer_plus_msam_step_share'], 1, 100)}% of the step** "
                        f"(a part jitted alone also pays a call's fixed costs).")
                step = _matching_step(report, r)
                if step is not None:
                    parts = {p["part"]: p for p in report["parts"] if _same_setting(p, r)}
                    mu_msam = parts["mu_layer"]["median_ms"] + parts["msam"]["median_ms"]
                    lines.append(f"Against the measured step ({_f(step['median_ms'])} ms/frame, same setting): "
                                 f"MU-Layer + MSAM = {_f(mu_msam / step['median_ms'], 1, 100)}%, "
                                 f"sum of parts / step = {_f(r['median_ms'] / step['median_ms'], 2)}.")
        lines.append("")
    if report.get("training"):
        lines += [
            "## Training step (clip unroll + loss + AdamW)",
            "",
            "| config | clip | objects | dtype | 3x3 convs | memory read | batch/device (global) | ms/step | clips/s "
            "| compile s | GFLOP/step | GFLOP/s | MFU | memory MiB | recompiled |",
            "| --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in report["training"]:
            searched = _batch_origin(r)
            lines.append(
                f"| {r['config']} | {r['clip'][0]}x{r['clip'][1]}x{r['clip'][2]} | {r['objects']} | {r['dtype']} "
                f"| {common.conv_label(r)} | {common.read_label(r)} "
                f"| {r['per_device_batch']} ({r['global_batch']}){searched} | {_f(r['median_ms'])} ({_f(r['min_ms'])}) "
                f"| {_f(r['clips_per_s'], 2)} | {_f(r['compile_s'])} | {_f(r['gflops'])} | {_f(r['achieved_gflops_per_s'])} "
                f"| {_f(r['mfu'], 2, 100)}% | {_mem(r)} | {r['recompiled_after_warmup']} |")
        lines.append("")
    if report.get("pipeline"):
        lines += ["## Input pipeline (tf.data)", "", "| source | clip | batch | clips/s | ms/batch | CPU cores |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in report["pipeline"]:
            if "skipped" in r:
                lines.append(f"| skipped: {r['skipped']} | | | | | |")
                continue
            lines.append(f"| {r['source']} | {r['clip'][0]}x{r['clip'][1]}x{r['clip'][2]} | {r['batch']} "
                         f"| {_f(r['clips_per_s'])} | {_f(r['ms_per_batch'], 0)} | {r['cpu_cores']} |")
        lines.append("")
    return "\n".join(lines)
