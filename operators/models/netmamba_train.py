"""Fine-tune (or train) NetMamba on your own captures: a folder with one subfolder of pcap/pcapng
files per class, the layout of the public traffic datasets (USTC-TFC2016, ISCX-VPN2016, ...).

    python -m operators.models.netmamba_train traffic/ --out netmamba.pt --epochs 10
    costream train-netmamba traffic/ --out netmamba.pt --init netmamba_pretrained.pth

Every capture is cut into bidirectional flows exactly as the pipeline's `flows` node cuts them
(sensors.packets.flows, same timeouts and the same 5 x 320 bytes per flow), so a checkpoint trained
here sees at run time the bytes it was trained on. A stratified share of the flows (`--val-fraction`)
is held out; the accuracy and confusion matrix on it are printed at the end. The checkpoint holds
the state dict under the original key names (`{"model": ..., "classes": [...], "config": {...}}`);
the `netmamba` node reads the class names from it.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from operators.models.netmamba import NetMamba, NetMambaConfig, bytes_to_input, read_netmamba_checkpoint

log = logging.getLogger("costream.netmamba_train")
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")


@dataclass
class FlowDataset:
    flows: np.ndarray  # (N, 1600) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[str]
    files: int
    skipped_files: list[str]


def load_flows(root: str | Path, idle_timeout_s: float = 60.0, max_flows_per_class: int | None = None,
               min_packets: int = 1) -> FlowDataset:
    """Every flow of every capture under `root/<class>/`, as NetMamba's 1600 bytes."""
    from sensors.packets import CaptureFormatError, CaptureReader, FlowParams, assemble_flows, flow_bytes
    from sensors.packets.flows import FlowPacket

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {str(root)!r} does not exist; give a folder with one subfolder "
                                "of .pcap/.pcapng files per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and _captures(d))
    if len(class_dirs) < 2:
        raise ValueError(f"{root} has {len(class_dirs)} subfolders with captures; a classifier needs at least two "
                         "classes: root/<class>/*.pcap (e.g. root/web/a.pcap, root/dns/b.pcap)")
    params = FlowParams(idle_timeout_s=idle_timeout_s)
    flows: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    files = 0
    for label, class_dir in enumerate(class_dirs):
        count = 0
        for path in _captures(class_dir):
            files += 1
            packets: dict[str, list[np.ndarray]] = {}
            try:
                for event in assemble_flows(CaptureReader(path), params):
                    if isinstance(event, FlowPacket):
                        packets.setdefault(event.flow_id, []).append(event.representation)
            except (CaptureFormatError, OSError) as exc:
                log.warning("skipping %s: %s", path, exc)
                skipped.append(str(path))
                continue
            for reps in packets.values():
                if len(reps) < min_packets:
                    continue
                if max_flows_per_class is not None and count >= max_flows_per_class:
                    break
                flows.append(flow_bytes(reps))
                labels.append(label)
                count += 1
        if count == 0:
            raise ValueError(f"class {class_dir.name!r} has no IPv4 TCP/UDP flows in its captures ({class_dir}); "
                             "NetMamba classifies IPv4 flows only")
    return FlowDataset(np.stack(flows), np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs], files,
                       skipped)


def _captures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in CAPTURE_SUFFIXES)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out): `val_fraction` of each class held out (at least one per class of >= 2)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.asarray(sorted(train), dtype=np.int64), np.asarray(sorted(val), dtype=np.int64)


def evaluate(model: NetMamba, flows: np.ndarray, labels: np.ndarray, num_classes: int,
             batch_size: int = 256) -> tuple[float, np.ndarray]:
    """(accuracy, confusion matrix [true, predicted]) of the offline model."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(flows), batch_size):
            x = bytes_to_input(torch.from_numpy(flows[start:start + batch_size]))
            pred = model(x).argmax(dim=-1).numpy()
            np.add.at(confusion, (labels[start:start + batch_size], pred), 1)
    total = int(confusion.sum())
    return (int(np.trace(confusion)) / total if total else float("nan")), confusion


def format_confusion(confusion: np.ndarray, classes: Sequence[str]) -> str:
    width = max(6, max(len(c) for c in classes))
    head = " " * (width + 2) + " ".join(f"{c[:width]:>{width}}" for c in classes) + "   recall"
    lines = ["true \\ predicted", head]
    for i, name in enumerate(classes):
        row = confusion[i]
        recall = row[i] / row.sum() if row.sum() else float("nan")
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:>{width}d}" for v in row) + f"   {recall:6.1%}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="costream train-netmamba", description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="folder with one subfolder of .pcap/.pcapng files per class")
    p.add_argument("--out", type=Path, default=Path("netmamba.pt"), help="checkpoint to write (default netmamba.pt)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this NetMamba checkpoint (the original pre-training or fine-tuning output, or "
                        "ours); its head is replaced when the class count differs")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine decay to 1%%)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class's flows held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embed-dim", type=int, default=256, help="width when training from scratch")
    p.add_argument("--depth", type=int, default=4, help="Mamba blocks when training from scratch")
    p.add_argument("--d-state", type=int, default=16, help="SSM state size when training from scratch")
    p.add_argument("--expand", type=int, default=2, help="Mamba inner width / width when training from scratch")
    p.add_argument("--idle-timeout-s", type=float, default=60.0, help="flow idle timeout (as the flows node's)")
    p.add_argument("--max-flows-per-class", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _initial_model(args: argparse.Namespace, num_classes: int) -> NetMamba:
    if args.init is None:
        torch.manual_seed(args.seed)
        return NetMamba(NetMambaConfig(num_classes=num_classes, embed_dim=args.embed_dim, depth=args.depth,
                                       d_state=args.d_state, expand=args.expand))
    sd, _ = read_netmamba_checkpoint(args.init)
    if "head.weight" not in sd:  # a pre-training checkpoint: encoder only (plus its decoder)
        width = sd["pos_embed"].shape[2]
        sd = {**sd, "head.weight": torch.zeros(num_classes, width), "head.bias": torch.zeros(num_classes)}
    config = NetMambaConfig.from_state_dict(sd, num_classes=num_classes)
    torch.manual_seed(args.seed)
    model = NetMamba(config)
    keep = {k: v for k, v in sd.items() if k in model.state_dict() and v.shape == model.state_dict()[k].shape
            and not (k.startswith("head.") and sd["head.weight"].shape[0] != num_classes)}
    missing, _ = model.load_state_dict(keep, strict=False)
    dropped = sorted(set(sd) - set(keep))
    log.warning("initialised from %s (%d tensors); new: %s; not used: %s", args.init, len(keep), missing or "none",
                (dropped[:6] + ["..."]) if len(dropped) > 6 else dropped or "none")
    with torch.no_grad():
        if any(k.startswith("head.") for k in missing):
            torch.nn.init.trunc_normal_(model.head.weight, std=2e-5)  # as the original fine-tuning does
            model.head.bias.zero_()
    return model


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("epochs", "batch_size", "embed_dim", "depth", "d_state", "expand"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 < args.val_fraction < 1.0:
        raise SystemExit(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    try:
        data = load_flows(args.data, args.idle_timeout_s, args.max_flows_per_class)
    except (FileNotFoundError, ValueError) as exc:
        print(f"costream train-netmamba: {exc}", file=sys.stderr)
        return 2
    counts = np.bincount(data.labels, minlength=len(data.classes))
    print(f"{len(data.labels)} flows from {data.files} captures in {len(data.classes)} classes: "
          + ", ".join(f"{c} {n}" for c, n in zip(data.classes, counts))
          + (f"; {len(data.skipped_files)} unreadable captures skipped" if data.skipped_files else ""))
    train_idx, val_idx = stratified_split(data.labels, args.val_fraction, args.seed)
    print(f"train {len(train_idx)} flows, held out {len(val_idx)} flows")
    try:
        model = _initial_model(args, len(data.classes)).to(device)
    except (FileNotFoundError, ValueError) as exc:  # WeightsError is a ValueError
        print(f"costream train-netmamba: --init: {exc}", file=sys.stderr)
        return 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * math.ceil(len(train_idx) / args.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    flows = torch.from_numpy(data.flows)
    labels = torch.from_numpy(data.labels)
    rng = np.random.default_rng(args.seed)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} batches"),
                  TimeRemainingColumn(), TextColumn("{task.fields[status]}"), disable=args.no_progress,
                  transient=False) as progress:
        task = progress.add_task("training", total=steps, status="")
        for epoch in range(args.epochs):
            model.train()
            order = rng.permutation(train_idx)
            total_loss, seen = 0.0, 0
            for start in range(0, len(order), args.batch_size):
                batch = torch.from_numpy(order[start:start + args.batch_size])
                x = bytes_to_input(flows[batch]).to(device)
                y = labels[batch].to(device)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += float(loss.detach()) * len(batch)
                seen += len(batch)
                progress.update(task, advance=1, description=f"epoch {epoch + 1}/{args.epochs}",
                                status=f"loss {total_loss / seen:.4f}")
            model.cpu()
            accuracy, _ = evaluate(model, data.flows[val_idx], data.labels[val_idx], len(data.classes))
            model.to(device)
            progress.console.print(f"epoch {epoch + 1}/{args.epochs}: train loss {total_loss / seen:.4f}, "
                                   f"held-out accuracy {accuracy:.1%}")
    model.cpu().eval()
    accuracy, confusion = evaluate(model, data.flows[val_idx], data.labels[val_idx], len(data.classes))
    print(f"held-out accuracy: {accuracy:.4f} ({int(np.trace(confusion))}/{int(confusion.sum())} flows; chance "
          f"{counts.max() / counts.sum():.4f} by always answering the largest class)")
    print(format_confusion(confusion, data.classes))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "classes": data.classes, "config": asdict(model.config),
                "metrics": {"held_out_accuracy": float(accuracy), "confusion": confusion.tolist(),
                            "train_flows": int(len(train_idx)), "held_out_flows": int(len(val_idx))}}, args.out)
    print(f"wrote {args.out} ({time.perf_counter() - t0:.1f} s); use it with: costream run "
          f"pipelines/netmamba_traffic.yaml --set model.weights={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
