"""A plan report (Plan.report(details=True)) as text for a terminal: what `datagen counterexamples
--plan` prints."""

from __future__ import annotations

from typing import Any


def _one_line(text: str | None, width: int = 100) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= width else line[: width - 3] + "..."


def plan_text(report: dict[str, Any]) -> str:
    """Header (failures, kinds, budget, k and how it was chosen), then one block per cluster."""
    kinds = ", ".join(f"{kind}={n}" for kind, n in report["kinds"].items())
    scores = ", ".join(f"k={k}: {v}" for k, v in report["silhouette"].items())
    lines = [
        f"{report['failures']} failures ({kinds}), budget {report['budget']}, {report['k']} clusters",
        f"k: {report['k_chosen_by']}" + (f" (silhouette {scores})" if scores else ""),
        f"training set: {report['train'] or 'none (pass --train to show neighbours and decontaminate)'}",
    ]
    agreement = report.get("tag_agreement")
    if agreement:
        lines.append(f"tags: purity {agreement['purity']} over {agreement['tagged']} tagged failures")
    for c in report["clusters"]:
        lines += [
            "",
            f"cluster {c['id']}: {c['label']}  [{c['kind']}]  size {c['size']}, severity {c['severity']}, "
            f"budget {c['budget']} ({c['corrections']} corrections, {c['new_problems']} new)",
            f"  members: {', '.join(c['member_ids'])}",
        ]
        if c.get("not_corrected"):
            lines.append("  not corrected: " + ", ".join(f"{r}={n}" for r, n in c["not_corrected"].items()))
        if c.get("tags"):
            lines.append("  tags: " + ", ".join(f"{t}={n}" for t, n in c["tags"].items()))
        for example in c["central_examples"]:
            lines.append(f"  central {example['id']}: {_one_line(example['prompt'])}")
        for example in c["nearest_training_examples"]:
            lines.append(f"  nearest training {example['id']}: {_one_line(example['prompt'])}")
    if report.get("corrected_failure_ids"):
        lines += ["", "eval cases asked again as corrections (remove them from the held-out eval): "
                  + ", ".join(report["corrected_failure_ids"])]
    return "\n".join(lines)
